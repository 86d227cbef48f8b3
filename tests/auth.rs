use std::time::Duration;

use blackbox::{problem, TestApp};
use reqwest::Method;
use sqlx::PgPool;

/// Every way of failing authentication gets the same answer.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn missing_malformed_unknown_and_revoked_keys_get_the_same_401(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let revoked = app.new_key("tenant-a").await;
    let keys = app.store.list_api_keys(Some("tenant-a")).await.unwrap();
    let revoked_id = keys
        .iter()
        .find(|k| {
            revoked.starts_with(&k.prefix)
                && k.revoked_at.is_none()
                && !app.key.starts_with(&k.prefix)
        })
        .expect("the second key is listed")
        .id;
    app.store.revoke_api_key(revoked_id).await.unwrap();

    let attempts: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("basic scheme", Some(format!("Basic {}", app.key))),
        ("empty bearer", Some("Bearer ".into())),
        ("unknown key", Some("Bearer avk_doesnotexist".into())),
        ("revoked key", Some(format!("Bearer {revoked}"))),
    ];
    let mut bodies = Vec::new();
    for (what, header) in attempts {
        let mut request = app.client.get(app.url("/avatars"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        let (status, mut body) = problem(response).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["code"], "unauthorized", "{what}");
        body.as_object_mut().unwrap().remove("request_id");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "identical bodies: {bodies:#?}"
    );

    // The live key still works; the revoked one stays refused.
    let ok = app.request(Method::GET, "/avatars").send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_key_works_until_it_is_revoked(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let key = app.new_key("tenant-b").await;
    let before = app
        .request_as(&key, Method::GET, "/avatars")
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);

    let listed = app.store.list_api_keys(Some("tenant-b")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(key.starts_with(&listed[0].prefix));
    app.store.revoke_api_key(listed[0].id).await.unwrap();

    // The service may hold the key in its cache: it is refused once the revocation's
    // notification reaches the process.
    refused_soon(&app, &key).await;
    let after = app
        .request_as(&key, Method::GET, "/avatars")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn keys_are_stored_only_as_hashes(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT key_hash, prefix FROM api_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (hash, prefix) = &rows[0];
    assert_eq!(hash.len(), 32);
    assert!(
        app.key.len() > prefix.len() + 20,
        "only a short prefix is kept in clear"
    );
    let dump: Vec<(String,)> = sqlx::query_as("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!dump[0].0.contains(&app.key));
}

/// How the app checked keys so far: `(from its cache, from the database)`.
async fn key_checks(app: &TestApp) -> (f64, f64) {
    let scrape = app.scrape().await;
    let count = |source| {
        scrape
            .value("avatars_api_key_checks_total", &[("source", source)])
            .expect("the key check counter is exported")
    };
    (count("cache"), count("database"))
}

async fn status_as(app: &TestApp, key: &str) -> u16 {
    app.request_as(key, Method::GET, "/avatars")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Uses `key` until `app` answers it from its cache (the cache fills once the process
/// listens for notifications, shortly after it starts).
async fn cached(app: &TestApp, key: &str) {
    app.eventually("the key is answered from the cache", || async {
        let (before, _) = key_checks(app).await;
        assert_eq!(status_as(app, key).await, 200);
        let (after, _) = key_checks(app).await;
        if after > before {
            Ok(())
        } else {
            Err(format!("{after} checks from the cache"))
        }
    })
    .await;
}

/// Waits until `key` is refused by `app`.
async fn refused_soon(app: &TestApp, key: &str) {
    app.eventually("the revoked key is refused", || async {
        match status_as(app, key).await {
            401 => Ok(()),
            status => Err(format!("answered {status}")),
        }
    })
    .await;
}

fn long_lived_cache(settings: &mut api::Settings) {
    // Far longer than any wait of a test: only a notification can empty the cache.
    settings.api_key_cache.ttl = Duration::from_secs(3600);
}

async fn key_id(app: &TestApp, tenant: &str, key: &str) -> domain::ApiKeyId {
    app.store
        .list_api_keys(Some(tenant))
        .await
        .unwrap()
        .into_iter()
        .find(|k| key.starts_with(&k.prefix))
        .expect("the key is listed")
        .id
}

/// A replica that caches a key drops it as soon as another replica revokes it, without waiting
/// for the cache's TTL.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_key_revoked_through_one_replica_is_refused_by_another(pool: PgPool) {
    let a = TestApp::spawn_with(store::Store::new(pool), long_lived_cache).await;
    let b = a.replica().await;
    let key = a.new_key("tenant-r").await;
    cached(&a, &key).await;
    cached(&b, &key).await;

    a.running()
        .store
        .revoke_api_key(key_id(&a, "tenant-r", &key).await)
        .await
        .unwrap();

    // The revocation is heard on b's listening connection within milliseconds of its
    // commit; every later request is refused, on both replicas.
    refused_soon(&b, &key).await;
    assert_eq!(status_as(&a, &key).await, 401);
    for _ in 0..3 {
        assert_eq!(status_as(&b, &key).await, 401);
    }
    // Another key of the tenant is untouched.
    let other = a.new_key("tenant-r").await;
    assert_eq!(status_as(&b, &other).await, 200);
}

/// A cached key is answered without touching `api_keys`: with the table locked against
/// every read, requests with the cached key still succeed, while an uncached key waits.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_cached_key_is_checked_without_reading_the_database(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool.clone()), long_lived_cache).await;
    let uncached = app.new_key("tenant-a").await;
    cached(&app, &app.key).await;
    let (_, reads_before) = key_checks(&app).await;

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    for _ in 0..20 {
        let status = tokio::time::timeout(Duration::from_secs(10), status_as(&app, &app.key))
            .await
            .expect("a cached key needs no read of api_keys");
        assert_eq!(status, 200);
    }
    let waiting =
        tokio::time::timeout(Duration::from_millis(500), status_as(&app, &uncached)).await;
    assert!(waiting.is_err(), "an uncached key is read from api_keys");
    lock.rollback().await.unwrap();

    let (_, reads_after) = key_checks(&app).await;
    assert_eq!(
        reads_after - reads_before,
        1.0,
        "only the uncached key was read from the database"
    );
    assert_eq!(status_as(&app, &uncached).await, 200);
}

/// When the listening connection is lost, notifications sent meanwhile are lost too: the
/// cache is emptied, so a key revoked without the replica hearing it is refused once the
/// connection is back, long before the cache's TTL.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn losing_the_listening_connection_empties_the_key_cache(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool.clone()), long_lived_cache).await;
    cached(&app, &app.key).await;
    let id = key_id(&app, "tenant-a", &app.key).await;

    // Revoke the key with the announcing trigger held back: the notification is never sent,
    // as if it was sent while the replica was not listening.
    let mut unheard = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *unheard)
        .await
        .unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE id = $1")
        .bind(id.0)
        .execute(&mut *unheard)
        .await
        .unwrap();
    unheard.commit().await.unwrap();
    assert_eq!(
        status_as(&app, &app.key).await,
        200,
        "the cache answers for the key until it hears of the revocation"
    );

    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query ILIKE 'listen %'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(terminated, [true], "one listening connection per process");

    refused_soon(&app, &app.key).await;
}

/// `API_KEY_CACHE_TTL=0` turns the cache off: every request reads its key.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_zero_ttl_reads_every_key_from_the_database(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.api_key_cache.ttl = Duration::ZERO;
    })
    .await;
    let (hits_before, reads_before) = key_checks(&app).await;
    for _ in 0..5 {
        assert_eq!(status_as(&app, &app.key).await, 200);
    }
    let (hits_after, reads_after) = key_checks(&app).await;
    assert_eq!(hits_after, hits_before);
    assert_eq!(reads_after - reads_before, 5.0);
}

/// `API_KEY_CACHE_MAX_ENTRIES=1` holds one key: two keys used in turn each push the other
/// out, and both keep working.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_cache_of_one_entry_holds_the_last_key(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        long_lived_cache(settings);
        settings.api_key_cache.max_entries = 1;
    })
    .await;
    let other = app.new_key("tenant-b").await;
    cached(&app, &app.key).await;
    let (hits_before, reads_before) = key_checks(&app).await;
    for _ in 0..3 {
        assert_eq!(status_as(&app, &other).await, 200);
        assert_eq!(status_as(&app, &app.key).await, 200);
    }
    let (hits_after, reads_after) = key_checks(&app).await;
    assert_eq!(
        reads_after - reads_before,
        6.0,
        "each key pushed the other out"
    );
    assert_eq!(hits_after, hits_before);
    // The last key used stays cached.
    assert_eq!(status_as(&app, &app.key).await, 200);
    assert_eq!(key_checks(&app).await.0, hits_before + 1.0);
}
