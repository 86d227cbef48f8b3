//! The live event stream `GET /events` (Server-Sent Events), read over real HTTP with a small
//! parser of the SSE wire format.

use std::pin::Pin;
use std::time::Duration;

use blackbox::receiver::{fast_events, Receiver};
use blackbox::{problem, TestApp};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(30);

async fn app(pool: PgPool) -> TestApp {
    TestApp::spawn_with(store::Store::new(pool), |s| fast_events(s, &[])).await
}

/// One event of the stream.
#[derive(Debug, Clone, PartialEq)]
struct SseEvent {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseEvent {
    fn id(&self) -> &str {
        self.id.as_deref().expect("event has an id")
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }

    /// The id of the resource in the event's data (the deleted avatar's id here).
    fn subject(&self) -> String {
        self.json()["data"]["id"]
            .as_str()
            .expect("data.id")
            .to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Event(SseEvent),
    /// A `:` line, without the colon and one leading space.
    Comment(String),
}

/// A minimal reader of `text/event-stream`: `id`, `event` and (multi-line) `data` fields, an
/// empty line ending an event, `:` comment lines.
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Sse {
    async fn connect(app: &TestApp, key: &str, query: &str, last_event_id: Option<&str>) -> Sse {
        let response = Self::request(app, key, query, last_event_id).await;
        assert_eq!(response.status(), 200, "GET /events{query}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Sse {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            id: None,
            event: None,
            data: None,
        }
    }

    async fn request(
        app: &TestApp,
        key: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        // No overall timeout: the stream stays open as long as the test reads it.
        let client = reqwest::Client::new();
        let mut request = client
            .get(app.url(&format!("/events{query}")))
            .bearer_auth(key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("send")
    }

    /// The next event or comment; `None` when the deadline passes or the stream ends.
    async fn next_frame(&mut self, deadline: Duration) -> Option<Frame> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line).expect("stream is UTF-8");
                if let Some(frame) = self.line(&line) {
                    return Some(frame);
                }
            }
            match tokio::time::timeout_at(until, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                Ok(Some(Err(error))) => panic!("event stream broke: {error}"),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            if self.id.is_none() && self.event.is_none() && self.data.is_none() {
                return None;
            }
            return Some(Frame::Event(SseEvent {
                id: self.id.take(),
                event: self.event.take(),
                data: self.data.take().unwrap_or_default(),
            }));
        }
        if let Some(comment) = line.strip_prefix(':') {
            return Some(Frame::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_string(),
            ));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "id" => self.id = Some(value),
            "event" => self.event = Some(value),
            "data" => {
                self.data = Some(match self.data.take() {
                    Some(previous) => format!("{previous}\n{value}"),
                    None => value,
                })
            }
            _ => {}
        }
        None
    }

    /// The next event, skipping comments; panics after [`DEADLINE`].
    async fn next_event(&mut self) -> SseEvent {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(Frame::Event(event)) => return event,
                Some(Frame::Comment(_)) => continue,
                None => panic!("no event within {DEADLINE:?}"),
            }
        }
    }

    async fn events(&mut self, count: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.next_event().await);
        }
        events
    }
}

async fn new_avatar_as(app: &TestApp, key: &str, name: &str) -> String {
    let response = app
        .request_as(key, Method::POST, "/avatars")
        .json(&json!({"name": name, "kind": "character"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn delete_avatar_as(app: &TestApp, key: &str, id: &str) {
    let response = app
        .request_as(key, Method::DELETE, &format!("/avatars/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
}

async fn new_avatars(app: &TestApp, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        ids.push(new_avatar_as(app, &app.key, &format!("streamed {i}")).await);
    }
    ids
}

async fn delete_all(app: &TestApp, ids: &[String]) {
    for id in ids {
        delete_avatar_as(app, &app.key, id).await;
    }
}

fn subjects(events: &[SseEvent]) -> Vec<String> {
    events.iter().map(SseEvent::subject).collect()
}

fn assert_avatar_deleted(event: &SseEvent) {
    uuid::Uuid::parse_str(event.id()).expect("event id is a UUID");
    assert_eq!(event.event.as_deref(), Some("avatar.deleted"), "{event:?}");
    let body = event.json();
    assert_eq!(body["type"], "avatar.deleted");
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("timestamp"))
        .expect("RFC 3339 timestamp");
    assert!(body["data"].is_object());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_stream_on_one_replica_gets_events_made_through_another(pool: PgPool) {
    let receiver = Receiver::start().await;
    let addrs = vec![receiver.addr()];
    let a = TestApp::spawn_with(store::Store::new(pool), move |s| fast_events(s, &addrs)).await;
    let b = a.replica().await;
    let response = a
        .request(Method::POST, "/webhook-endpoints")
        .json(&json!({"url": receiver.url("/hook")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let avatars = new_avatars(&a, 3).await;

    let mut stream = Sse::connect(&b, &b.key, "", None).await;
    delete_all(&a, &avatars).await;
    let events = stream.events(3).await;
    assert_eq!(subjects(&events), avatars);
    for event in &events {
        assert_avatar_deleted(event);
    }

    // The stream carries the webhook's body, under the webhook's id.
    let requests = receiver
        .wait_for("3 webhooks", DEADLINE, |r| r.len() >= 3)
        .await;
    for event in &events {
        let request = requests
            .iter()
            .find(|r| r.webhook_id() == event.id())
            .unwrap_or_else(|| panic!("no webhook with id {}", event.id()));
        assert_eq!(
            event.data.as_bytes(),
            &request.body[..],
            "same JSON body as the webhook"
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_resumed_stream_gets_exactly_what_it_missed_then_live_events(pool: PgPool) {
    let app = app(pool).await;
    let avatars = new_avatars(&app, 17).await;

    let mut stream = Sse::connect(&app, &app.key, "", None).await;
    delete_all(&app, &avatars[0..3]).await;
    let seen = stream.events(3).await;
    assert_eq!(subjects(&seen), avatars[0..3]);
    drop(stream);

    delete_all(&app, &avatars[3..6]).await;
    let mut resumed = Sse::connect(&app, &app.key, "", Some(seen[2].id())).await;
    let missed = resumed.events(3).await;
    assert_eq!(subjects(&missed), avatars[3..6], "exactly the missed ones");
    delete_all(&app, &avatars[6..7]).await;
    let live = resumed.next_event().await;
    assert_eq!(live.subject(), avatars[6], "then live ones");
    let mut ids: Vec<&str> = seen
        .iter()
        .chain(&missed)
        .chain([&live])
        .map(SseEvent::id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7, "distinct ids");

    // Resuming from further back while events keep coming: history, then live, no gap and
    // no duplicate at the seam.
    let mut from_first = Sse::connect(&app, &app.key, "", Some(seen[0].id())).await;
    let (events, ()) = tokio::join!(from_first.events(16), delete_all(&app, &avatars[7..17]));
    assert_eq!(subjects(&events), avatars[1..17]);
    assert_eq!(events[0].id(), seen[1].id(), "ids are stable");
    assert_eq!(events[4].id(), missed[2].id());
    assert_eq!(events[5].id(), live.id());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn streams_are_filtered_by_avatar_and_type(pool: PgPool) {
    let app = app(pool).await;
    let avatars = new_avatars(&app, 3).await;
    let wanted = &avatars[2];

    let mut by_avatar = Sse::connect(&app, &app.key, &format!("?avatar_id={wanted}"), None).await;
    let mut by_both = Sse::connect(
        &app,
        &app.key,
        &format!("?avatar_id={wanted}&types=training.succeeded,avatar.deleted"),
        None,
    )
    .await;
    let mut by_type = Sse::connect(&app, &app.key, "?types=avatar.deleted", None).await;
    // The other avatars' events come first; a filtered stream must skip them.
    delete_all(&app, &avatars).await;
    assert_eq!(by_avatar.next_event().await.subject(), *wanted);
    assert_eq!(by_both.next_event().await.subject(), *wanted);
    assert_eq!(subjects(&by_type.events(3).await), avatars);

    for query in [
        "?avatar_id=not-a-uuid",
        "?job_id=42",
        "?types=avatar.exploded",
    ] {
        let response = Sse::request(&app, &app.key, query, None).await;
        let (status, body) = problem(response).await;
        assert_eq!(status, 422, "{query}: {body:#}");
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_idle_stream_gets_heartbeats(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |s| {
        fast_events(s, &[]);
        s.events.heartbeat = Duration::from_millis(200);
    })
    .await;
    let mut stream = Sse::connect(&app, &app.key, "", None).await;
    for _ in 0..2 {
        match stream.next_frame(Duration::from_secs(5)).await {
            Some(Frame::Comment(text)) => assert_eq!(text, "keep-alive"),
            other => panic!("expected a keep-alive comment, got {other:?}"),
        }
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_unknown_last_event_id_is_refused(pool: PgPool) {
    let app = app(pool).await;
    let check = |response: reqwest::Response| async move {
        let (status, body) = problem(response).await;
        assert_eq!(status, 422, "{body:#}");
        assert_eq!(body["errors"][0]["field"], "Last-Event-ID", "{body:#}");
        assert_eq!(body["errors"][0]["code"], "unknown_event_id", "{body:#}");
    };
    let unknown = uuid::Uuid::now_v7().to_string();
    check(Sse::request(&app, &app.key, "", Some(&unknown)).await).await;

    // Another tenant's event is unknown to this one.
    let avatars = new_avatars(&app, 1).await;
    let mut stream = Sse::connect(&app, &app.key, "", None).await;
    delete_all(&app, &avatars).await;
    let event = stream.next_event().await;
    let other = app.new_key("tenant-b").await;
    check(Sse::request(&app, &other, "", Some(event.id())).await).await;
    // Its own tenant may resume from it.
    let response = Sse::request(&app, &app.key, "", Some(event.id())).await;
    assert_eq!(response.status(), 200);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_tenant_streams_only_its_own_events(pool: PgPool) {
    let app = app(pool).await;
    let other = app.new_key("tenant-b").await;
    let ours = new_avatars(&app, 3).await;
    let theirs = new_avatar_as(&app, &other, "theirs").await;

    let mut our_stream = Sse::connect(&app, &app.key, "", None).await;
    let mut their_stream = Sse::connect(&app, &other, "", None).await;
    delete_all(&app, &ours[0..2]).await;
    delete_avatar_as(&app, &other, &theirs).await;
    delete_all(&app, &ours[2..3]).await;

    // Events arrive in commit order, so a leak would show before their own event.
    assert_eq!(their_stream.next_event().await.subject(), theirs);
    assert_eq!(subjects(&our_stream.events(3).await), ours);
}

/// A process's stream router learns where the events stand when it starts, and the process
/// may serve streams before that (the router waits for a connection like everyone else). A
/// stream that had already looked and found nothing still gets the events sequenced between,
/// and a stream of a tenant without events is still not woken.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_stream_opened_before_its_router_starts_gets_what_was_sequenced_meanwhile(pool: PgPool) {
    const STARTING: &str = "replica-starting";
    let app = app(pool.clone()).await;
    let avatar = new_avatars(&app, 1).await;
    // Another process, its workers (the router among them) not started yet, on connections
    // named so that the database shows what its feed has done.
    let options = (*pool.connect_options()).clone().application_name(STARTING);
    let starting = app.service_on(store::Store::new(
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy_with(options),
    ));
    let (mut feed, _) = open_feed(&app, &starting, &app.key).await;
    let (_quiet_feed, quiet) = open_feed(&app, &starting, &app.new_key("quiet").await).await;
    let next = tokio::spawn(async move { feed.next().await });
    app.eventually(
        "the starting process's feed to have read its events",
        || {
            let pool = pool.clone();
            async move {
                let finished: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE application_name = $1 AND state = 'idle'
                       AND query LIKE '%FROM outbox_events%position > $2%'",
                )
                .bind(STARTING)
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())?;
                if finished > 0 {
                    Ok(())
                } else {
                    Err("no finished read yet".into())
                }
            }
        },
    )
    .await;

    // The running app sequences an event (its own stream carries it) while the feed waits.
    let mut stream = Sse::connect(&app, &app.key, "", None).await;
    delete_all(&app, &avatar).await;
    assert_eq!(stream.next_event().await.subject(), avatar[0]);

    let workers = service::workers::spawn(starting.clone());
    let event = tokio::time::timeout(DEADLINE, next)
        .await
        .expect("the feed is woken within the deadline")
        .unwrap()
        .expect("the feed stays open");
    assert_eq!(event.payload["data"]["id"], avatar[0].as_str());
    assert_eq!(starting.streams.wakeups(quiet), 0);
    workers.stop(Duration::from_secs(5)).await;
}

/// An unfiltered feed of `key`'s tenant, opened on `service` without HTTP; and that tenant.
async fn open_feed(
    app: &TestApp,
    service: &service::Service,
    key: &str,
) -> (service::event_streams::Feed, domain::TenantId) {
    let caller = app
        .store
        .authenticate_key(&api::auth::hash_key(key))
        .await
        .unwrap()
        .expect("the key is live");
    let all = service::event_streams::event_filter(None, None, None).unwrap();
    let feed =
        service::event_streams::open_feed(service, caller.tenant_id, caller.key_id, all, None)
            .await
            .unwrap();
    (feed, caller.tenant_id)
}
