//! The database connection: server-side timeouts on every pooled connection, a LISTEN
//! connection of its own, and a bounded wait for a connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use blackbox::{problem, wait_until, TestApp};
use sqlx::PgPool;
use store::notifications::Notification;
use store::{PoolSettings, Store};

/// A store on the test's database with `settings`, as `avatars serve` builds it.
fn store_with(pool: &PgPool, settings: PoolSettings) -> Store {
    Store::connect_lazy_with((*pool.connect_options()).clone(), &settings)
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn every_pooled_connection_carries_the_configured_timeouts(pool: PgPool) {
    let store = store_with(
        &pool,
        PoolSettings {
            statement_timeout: Duration::from_secs(1),
            idle_in_transaction_timeout: Duration::from_secs(2),
            ..PoolSettings::default()
        },
    );
    let shown: (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'),
                current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(shown, ("1s".to_string(), "2s".to_string()));

    // A runaway statement is cancelled by the server.
    let error = sqlx::query("SELECT pg_sleep(30)")
        .execute(store.pool())
        .await
        .unwrap_err();
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("57014"), "{error}");

    // A transaction left idle loses its session (and with it its locks).
    let mut tx = store.pool().begin().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let ended = wait_until(Duration::from_secs(20), || async {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&pool)
                .await
                .unwrap();
        !alive
    })
    .await;
    assert!(ended, "the idle transaction's session was never ended");
    assert!(sqlx::query("SELECT 1").execute(&mut *tx).await.is_err());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn listening_takes_no_connection_from_the_pool(pool: PgPool) {
    let store = store_with(
        &pool,
        PoolSettings {
            max_connections: 1,
            acquire_timeout: Duration::from_secs(1),
            ..PoolSettings::default()
        },
    );
    let mut notifications = store.listen().await.unwrap();
    // The pool's only connection is still free for queries, which announce through it.
    sqlx::query("SELECT pg_notify($1, '42')")
        .bind(store::events::EVENTS_CHANNEL)
        .execute(store.pool())
        .await
        .expect("the pool still has its connection");
    let heard = tokio::time::timeout(Duration::from_secs(20), notifications.recv())
        .await
        .expect("the notification arrives")
        .unwrap();
    assert_eq!(heard, Notification::EventsSequenced(42));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_exhausted_pool_answers_503_with_retry_after(pool: PgPool) {
    let settings = PoolSettings {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(1),
        ..PoolSettings::default()
    };
    let app = TestApp::spawn_with(store_with(&pool, settings), |_| {}).await;
    // Hold every pooled connection (the workers give theirs back between rounds).
    let held = std::sync::Mutex::new(Vec::new());
    let all_held = wait_until(Duration::from_secs(20), || async {
        if let Ok(connection) = app.store.pool().acquire().await {
            held.lock().unwrap().push(connection);
        }
        held.lock().unwrap().len() == settings.max_connections as usize
    })
    .await;
    assert!(all_held, "every pooled connection can be taken");
    let response = app
        .request(reqwest::Method::GET, "/avatars")
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (503, "database_unavailable")
    );
    let seconds: u64 = retry_after.expect("Retry-After is sent").parse().unwrap();
    assert!(seconds >= 1);
    drop(held);
    let response = app
        .request(reqwest::Method::GET, "/avatars")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Several replicas starting at once each run `avatars migrate` (the Kubernetes init step): the
/// migrator's advisory lock serialises them, so every one succeeds and each migration is
/// applied once.
#[sqlx::test(migrations = false)]
async fn migrations_started_by_several_replicas_at_once_apply_once(pool: PgPool) {
    let store = Store::new(pool.clone());
    // Each run opens a connection of its own, so the four contend in PostgreSQL.
    let runs = (0..4).map(|_| store.migrate());
    for run in futures_util::future::join_all(runs).await {
        run.expect("every concurrent run succeeds");
    }
    let applied: Vec<(i64, bool)> =
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<i64> = store::MIGRATOR.iter().map(|m| m.version).collect();
    assert_eq!(
        applied.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        expected,
        "each migration recorded once"
    );
    assert!(applied.iter().all(|(_, success)| *success));
}

/// A caller that stops waiting while its transaction's `BEGIN` is on the wire (a client that
/// hangs up, a worker being stopped) leaves no transaction open behind it: what the
/// connection's next user writes is committed, not held in a transaction nobody ends.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_transaction_abandoned_during_its_begin_does_not_swallow_later_writes(pool: PgPool) {
    let proxy = ReplyGate::start(&pool).await;
    // One connection, so the abandoned one is the one used next.
    let store = Store::connect_lazy_with(
        (*pool.connect_options())
            .clone()
            .host("127.0.0.1")
            .port(proxy.port),
        &PoolSettings {
            max_connections: 1,
            ..PoolSettings::default()
        },
    );
    store.ensure_tenant("before").await.expect("first write");

    proxy.hold_replies_from_the_next_begin();
    let abandoned = tokio::spawn({
        let store = store.clone();
        async move {
            // Deleting begins a transaction before anything else.
            store
                .delete_avatar(domain::TenantId::new(), domain::AvatarId::new())
                .await
        }
    });
    proxy.wait_for_begin().await;
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    proxy.release();

    store.ensure_tenant("after").await.expect("second write");
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM tenants ORDER BY name")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        names,
        ["after", "before"],
        "another session sees the write made after the abandoned BEGIN"
    );
    store.pool().close().await;
}

/// A TCP proxy to the test's PostgreSQL that, once armed, holds the server's replies from the
/// next `BEGIN` on, until released.
struct ReplyGate {
    port: u16,
    armed: Arc<AtomicBool>,
    holding: tokio::sync::watch::Sender<bool>,
}

impl ReplyGate {
    async fn start(pool: &PgPool) -> Self {
        let server = format!(
            "{}:{}",
            pool.connect_options().get_host(),
            pool.connect_options().get_port()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (holding, held) = tokio::sync::watch::channel(false);
        let armed = Arc::new(AtomicBool::new(false));
        let (hold, arm) = (holding.clone(), armed.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = tokio::net::TcpStream::connect(&server).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = upstream.into_split();
                let (hold, arm) = (hold.clone(), arm.clone());
                let saw_query = move |bytes: &[u8]| {
                    if bytes.windows(5).any(|w| w == b"BEGIN") && arm.swap(false, Ordering::SeqCst)
                    {
                        hold.send_replace(true);
                    }
                };
                tokio::spawn(forward(client_read, server_write, saw_query, None));
                let replies = forward(server_read, client_write, |_| {}, Some(held.clone()));
                tokio::spawn(replies);
            }
        });
        Self {
            port,
            armed,
            holding,
        }
    }

    fn hold_replies_from_the_next_begin(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until a `BEGIN` went to the server with its reply held.
    async fn wait_for_begin(&self) {
        let mut holding = self.holding.subscribe();
        tokio::time::timeout(Duration::from_secs(30), holding.wait_for(|held| *held))
            .await
            .expect("a BEGIN reaches the server within 30 s")
            .expect("the proxy runs");
    }

    fn release(&self) {
        self.holding.send_replace(false);
    }
}

/// Copies `from` to `to`, showing every chunk to `saw` first and, with a `gate`, passing it
/// on only while the gate is not holding.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut saw: impl FnMut(&[u8]) + Send + 'static,
    mut gate: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        saw(&buffer[..read]);
        if let Some(gate) = gate.as_mut() {
            if gate.wait_for(|holding| !*holding).await.is_err() {
                return;
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
