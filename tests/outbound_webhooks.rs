//! Tenant webhook endpoints and the signed deliveries the relay makes to them, observed from a
//! real receiver and checked with an independent Standard Webhooks verifier.

use std::net::SocketAddr;
use std::time::Duration;

use blackbox::receiver::{describe, fast_events, Receiver, Recorded, Reply};
use blackbox::{problem, FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(30);

async fn app_for(pool: PgPool, receivers: &[&Receiver]) -> TestApp {
    let addrs: Vec<SocketAddr> = receivers.iter().map(|r| r.addr()).collect();
    TestApp::spawn_with(store::Store::new(pool), move |s| fast_events(s, &addrs)).await
}

/// Sends a request with `key` and returns the status and the JSON body (`Null` when empty).
async fn call(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.request_as(key, method.clone(), path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {text}"))
    };
    (status, json)
}

async fn get(app: &TestApp, path: &str) -> Value {
    let (status, body) = call(app, &app.key, Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body:#}");
    body
}

/// Creates an endpoint and checks the creation answer; returns it (with its secret).
async fn create_endpoint_as(app: &TestApp, key: &str, body: Value) -> Value {
    let response = app
        .request_as(key, Method::POST, "/webhook-endpoints")
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let created: Value = response.json().await.expect("json");
    assert_eq!(status, 201, "creating {body}: {created:#}");
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        location.as_deref(),
        Some(format!("/webhook-endpoints/{id}").as_str())
    );
    let secret = created["secret"].as_str().expect("secret on creation");
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(
        blackbox::standard_webhooks::secret_key(secret)
            .expect("secret is base64")
            .len(),
        32,
        "32 random bytes"
    );
    created
}

async fn create_endpoint(app: &TestApp, body: Value) -> Value {
    create_endpoint_as(app, &app.key, body).await
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().expect("id").to_string()
}

/// Every delivery of an endpoint, newest first, following the cursor.
async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/webhook-endpoints/{endpoint}/deliveries?limit=100");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = get(app, &path).await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return items,
        }
    }
}

/// Waits until the endpoint's deliveries satisfy `done`.
async fn wait_deliveries(
    app: &TestApp,
    endpoint: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    app.eventually(what, || async {
        let current = deliveries(app, endpoint).await;
        if done(&current) {
            Ok(current)
        } else {
            Err(format!("deliveries of {endpoint}: {current:#?}"))
        }
    })
    .await
}

/// Waits until the JSON at `path` satisfies `done`.
async fn wait_json(app: &TestApp, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    app.wait_for_json(path, what, done).await
}

/// Creates an avatar and returns its id.
async fn new_avatar(app: &TestApp, name: &str) -> String {
    id_of(
        &app.create_avatar(json!({"name": name, "kind": "character"}))
            .await,
    )
}

async fn delete_avatar(app: &TestApp, id: &str) {
    let response = app
        .request(Method::DELETE, &format!("/avatars/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 204, "deleting avatar {id}");
}

/// Creates and deletes an avatar (one `avatar.deleted` event); returns the avatar's id.
async fn avatar_deleted_event(app: &TestApp) -> String {
    let id = new_avatar(app, "short-lived").await;
    delete_avatar(app, &id).await;
    id
}

fn delivered(d: &Value) -> bool {
    d["status"] == "delivered"
}

fn assert_signed(request: &Recorded, secret: &str) {
    if let Err(error) = request.verify(secret) {
        panic!(
            "request #{} does not verify ({error}): signature {:?}",
            request.seq,
            request.headers.get("webhook-signature")
        );
    }
}

/// The checks every delivered request must pass: content type, a UUID `webhook-id`, a body
/// `{"type","timestamp","data"}`, and a signature by `secret`.
fn assert_well_formed(request: &Recorded, secret: &str) {
    assert_eq!(request.method, Method::POST);
    assert!(
        request
            .header("content-type")
            .starts_with("application/json"),
        "{:?}",
        request.headers
    );
    uuid::Uuid::parse_str(request.webhook_id()).expect("webhook-id is a UUID");
    let body = request.json();
    assert!(body["type"].is_string(), "{body}");
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().expect("timestamp"))
        .expect("timestamp is RFC 3339");
    assert!(body["data"].is_object(), "{body}");
    assert_signed(request, secret);
}

// ---------------------------------------------------------------------------------------------
// Delivery of real events
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_trainings_events_arrive_in_order_signed_as_the_training(pool: PgPool) {
    let receiver = Receiver::start().await;
    let mut options = FalOptions {
        // The test's GETs watch the training: the lookups they cause see it start and progress.
        status_check_interval: Duration::from_millis(100),
        ..FalOptions::default()
    };
    // 500 steps of 0.6 s take about 3 s here.
    options.sim.time_factor = 0.01;
    let addrs = vec![receiver.addr()];
    let app = TestApp::spawn_with_fal_and(pool, options, move |s| fast_events(s, &addrs)).await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    let endpoint_id = id_of(&endpoint);

    let avatar = app.avatar_with_photos(10).await;
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/train"))
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let training_id = id_of(&response.json::<Value>().await.unwrap());
    let final_training = wait_json(
        &app,
        &format!("/trainings/{training_id}"),
        "succeeded with its model in custody",
        |t| t["model"].is_object(),
    )
    .await;

    let requests = receiver
        .wait_for("training.succeeded delivered", DEADLINE, |requests| {
            requests
                .iter()
                .any(|r| r.json()["type"] == "training.succeeded")
        })
        .await;
    let types: Vec<String> = requests
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    // Everything this receiver got is about this training.
    assert!(
        types.iter().all(|t| t.starts_with("training.")),
        "{types:?}"
    );
    let expected_prefix = ["training.queued", "training.submitted", "training.started"];
    assert!(
        types.len() >= 4 && types[..3] == expected_prefix[..],
        "order: {types:?}"
    );
    assert_eq!(types.last().unwrap(), "training.succeeded", "{types:?}");
    assert!(
        types[3..types.len() - 1]
            .iter()
            .all(|t| t == "training.progress"),
        "only progress between started and succeeded: {types:?}"
    );

    let mut progress_steps = Vec::new();
    for request in &requests {
        assert_well_formed(request, &secret);
        let body = request.json();
        let data = &body["data"];
        assert_eq!(data["id"], training_id.as_str(), "{body:#}");
        assert_eq!(data["avatar_id"], avatar.as_str(), "{body:#}");
        let expected_status = match body["type"].as_str().unwrap() {
            "training.queued" => "pending",
            "training.submitted" => "submitted",
            "training.started" | "training.progress" => "in_progress",
            "training.succeeded" => "succeeded",
            other => panic!("unexpected {other}"),
        };
        assert_eq!(data["status"], expected_status, "{body:#}");
        if body["type"] == "training.progress" {
            let progress = data["progress"].as_f64().expect("progress is a number");
            progress_steps.push((progress * 10.0).floor() as i64);
        }
    }
    // At most one progress event per 10% step, and progress never goes back.
    let mut sorted = progress_steps.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, progress_steps, "progress steps {progress_steps:?}");
    // The last event shows the training exactly as GET shows it now.
    assert_eq!(
        requests.last().unwrap().json()["data"],
        final_training,
        "training.succeeded data"
    );

    // webhook-id is the event id the delivery log records; one request per event.
    let log = wait_deliveries(&app, &endpoint_id, "all delivered", |items| {
        items.len() == requests.len() && items.iter().all(delivered)
    })
    .await;
    for request in &requests {
        let delivery = log
            .iter()
            .find(|d| d["event_id"] == request.webhook_id())
            .unwrap_or_else(|| panic!("no delivery for event {}", request.webhook_id()));
        assert_eq!(delivery["event_type"], request.json()["type"]);
        assert_eq!(delivery["endpoint_id"], endpoint_id.as_str());
        assert_eq!(delivery["attempt_count"], 1);
    }
    let ids: std::collections::HashSet<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(ids.len(), requests.len(), "{}", describe(&requests));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_failed_attempt_is_retried_with_the_same_id_and_body(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let app = app_for(pool, &[&receiver]).await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let secret = endpoint["secret"].as_str().unwrap();
    let avatar = avatar_deleted_event(&app).await;

    let requests = receiver.wait_for_requests_to("/hook", 2, DEADLINE).await;
    let (first, second) = (&requests[0], &requests[1]);
    assert_eq!(first.webhook_id(), second.webhook_id());
    assert!(second.webhook_timestamp() >= first.webhook_timestamp());
    assert_eq!(first.body, second.body, "identical body bytes");
    assert_well_formed(first, secret);
    assert_well_formed(second, secret);
    let body = second.json();
    assert_eq!(body["type"], "avatar.deleted");
    assert_eq!(body["data"]["id"], avatar.as_str());

    let log = wait_deliveries(&app, &id_of(&endpoint), "delivered", |items| {
        items.len() == 1 && delivered(&items[0])
    })
    .await;
    let delivery = &log[0];
    assert_eq!(delivery["event_id"], first.webhook_id());
    assert_eq!(delivery["event_type"], "avatar.deleted");
    assert_eq!(delivery["attempt_count"], 2);
    assert_eq!(delivery["last_status_code"], 200);
    assert!(delivery["delivered_at"].is_string(), "{delivery:#}");
    let attempts = delivery["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{delivery:#}");
    assert_eq!(attempts[0]["number"], 1);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["status_code"], 500);
    assert_eq!(attempts[1]["number"], 2);
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_eq!(attempts[1]["status_code"], 200);

    // The single delivery reads the same on its own.
    let one = get(
        &app,
        &format!(
            "/webhook-endpoints/{}/deliveries/{}",
            id_of(&endpoint),
            id_of(delivery)
        ),
    )
    .await;
    assert_eq!(&one, delivery);
    // Filtering the log by status.
    let failed = get(
        &app,
        &format!(
            "/webhook-endpoints/{}/deliveries?status=failed",
            id_of(&endpoint)
        ),
    )
    .await;
    assert_eq!(failed["items"], json!([]));
    let ok = get(
        &app,
        &format!(
            "/webhook-endpoints/{}/deliveries?status=delivered",
            id_of(&endpoint)
        ),
    )
    .await;
    assert_eq!(ok["items"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn redirects_are_not_followed(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Redirect("/elsewhere".into())]);
    let app = app_for(pool, &[&receiver]).await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    avatar_deleted_event(&app).await;

    // The 302 is a failure, retried at the endpoint's own URL, which then answers 200.
    let log = wait_deliveries(&app, &id_of(&endpoint), "delivered", |items| {
        items.len() == 1 && delivered(&items[0])
    })
    .await;
    let attempts = log[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{:#}", log[0]);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["status_code"], 302);
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert!(
        receiver.requests_to("/elsewhere").is_empty(),
        "the Location was followed: {}",
        describe(&receiver.requests())
    );
    assert_eq!(receiver.requests_to("/hook").len(), 2);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_relay_killed_mid_attempt_is_taken_over_after_its_lease(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Hold(200)]);
    let addrs = vec![receiver.addr()];
    let app = TestApp::spawn_with(store::Store::new(pool), move |s| {
        fast_events(s, &addrs);
        s.events.delivery_timeout = Duration::from_secs(1);
        s.events.relay_lease = Duration::from_secs(2);
    })
    .await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let endpoint_id = id_of(&endpoint);
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    avatar_deleted_event(&app).await;

    // The receiver has the request; the relay waits for its answer and is killed.
    let first = receiver.wait_for_requests_to("/hook", 1, DEADLINE).await[0].clone();
    let app = app.restart().await;
    receiver.release();

    // Before the lease expires the attempt can only be in flight.
    let early = deliveries(&app, &endpoint_id).await;
    assert_eq!(early.len(), 1, "{early:#?}");
    let attempts = early[0]["attempts"].as_array().unwrap();
    if attempts.len() == 1 {
        assert_eq!(attempts[0]["outcome"], "in_flight", "{:#}", early[0]);
        assert_eq!(attempts[0]["finished_at"], Value::Null);
    }

    let requests = receiver.wait_for_requests_to("/hook", 2, DEADLINE).await;
    assert_eq!(requests[1].webhook_id(), first.webhook_id());
    assert_eq!(requests[1].body, first.body);
    assert_well_formed(&requests[1], &secret);
    let log = wait_deliveries(&app, &endpoint_id, "delivered", |items| {
        items.len() == 1 && delivered(&items[0])
    })
    .await;
    let delivery = &log[0];
    assert_eq!(delivery["event_id"], first.webhook_id());
    let attempts = delivery["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{delivery:#}");
    assert_eq!(attempts[0]["outcome"], "abandoned", "{delivery:#}");
    assert_eq!(
        attempts.last().unwrap()["outcome"],
        "succeeded",
        "{delivery:#}"
    );
    assert_eq!(
        receiver.requests_to("/hook").len(),
        attempts.len(),
        "one request per attempt"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn racing_relays_deliver_each_event_exactly_once_in_order(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_for(pool, &[&receiver]).await;
    let other = app.replica().await;
    let mut avatars = Vec::new();
    for i in 0..30 {
        avatars.push(new_avatar(&app, &format!("racer {i}")).await);
    }
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    // Deleted one after the other, alternating instances: the events' order is this order.
    for (i, avatar) in avatars.iter().enumerate() {
        delete_avatar(if i % 2 == 0 { &app } else { &other }, avatar).await;
    }

    let log = wait_deliveries(&app, &id_of(&endpoint), "30 delivered", |items| {
        items.len() == 30 && items.iter().all(delivered)
    })
    .await;
    let requests = receiver.requests();
    let mut ids: Vec<&str> = requests.iter().map(|r| r.webhook_id()).collect();
    assert_eq!(
        requests.len(),
        30,
        "one call per event: {}",
        describe(&requests)
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 30, "{}", describe(&requests));
    for delivery in &log {
        assert_eq!(delivery["attempt_count"], 1, "{delivery:#}");
    }
    // One at a time, in event order.
    let order: Vec<String> = requests
        .iter()
        .map(|r| r.json()["data"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, avatars);
    for request in &requests {
        assert_well_formed(request, &secret);
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

async fn rotate(app: &TestApp, endpoint: &str, body: Option<Value>) -> Value {
    let (status, rotated) = call(
        app,
        &app.key,
        Method::POST,
        &format!("/webhook-endpoints/{endpoint}/rotate-secret"),
        body,
    )
    .await;
    assert_eq!(status, 200, "{rotated:#}");
    let secret = rotated["secret"].as_str().expect("new secret");
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        blackbox::standard_webhooks::secret_key(secret)
            .unwrap()
            .len(),
        32
    );
    rotated
}

fn expires_in_seconds(rotated: &Value) -> i64 {
    let at = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secrets_expire_at"]
            .as_str()
            .expect("previous_secrets_expire_at"),
    )
    .expect("RFC 3339");
    at.timestamp() - blackbox::standard_webhooks::now()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn rotated_secrets_sign_with_both_only_during_the_overlap(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_for(pool, &[&receiver]).await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let endpoint_id = id_of(&endpoint);
    let original = endpoint["secret"].as_str().unwrap().to_string();

    let rotated = rotate(&app, &endpoint_id, Some(json!({"overlap_seconds": 3600}))).await;
    let during = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(during, original);
    let left = expires_in_seconds(&rotated);
    assert!((3540..=3660).contains(&left), "expires in {left} s");
    avatar_deleted_event(&app).await;
    let request = receiver.wait_for_requests_to("/hook", 1, DEADLINE).await[0].clone();
    assert_well_formed(&request, &during);
    assert_signed(&request, &original);
    let entries: Vec<&str> = request.header("webhook-signature").split(' ').collect();
    assert_eq!(
        entries.len(),
        2,
        "one signature per live secret: {entries:?}"
    );
    // The newest secret's signature comes first.
    assert_signed_by_entry(&request, &during, entries[0]);
    assert_signed_by_entry(&request, &original, entries[1]);

    let rotated = rotate(&app, &endpoint_id, Some(json!({"overlap_seconds": 0}))).await;
    let after = rotated["secret"].as_str().unwrap().to_string();
    assert!(expires_in_seconds(&rotated) <= 1, "no overlap: {rotated:#}");
    avatar_deleted_event(&app).await;
    let request = receiver.wait_for_requests_to("/hook", 2, DEADLINE).await[1].clone();
    assert_well_formed(&request, &after);
    for old in [&during, &original] {
        assert!(
            request.verify(old).is_err(),
            "a retired secret still verifies: {:?}",
            request.header("webhook-signature")
        );
    }
    assert_eq!(
        request.header("webhook-signature").split(' ').count(),
        1,
        "{:?}",
        request.header("webhook-signature")
    );

    // Without a body the overlap is a day.
    let rotated = rotate(&app, &endpoint_id, None).await;
    let left = expires_in_seconds(&rotated);
    assert!((86340..=86460).contains(&left), "expires in {left} s");
    // The overlap is bounded.
    let (status, body) = call(
        &app,
        &app.key,
        Method::POST,
        &format!("/webhook-endpoints/{endpoint_id}/rotate-secret"),
        Some(json!({"overlap_seconds": 604_801})),
    )
    .await;
    assert_eq!(status, 422, "{body:#}");
    // Rotation never shows up in the endpoint itself.
    let shown = get(&app, &format!("/webhook-endpoints/{endpoint_id}")).await;
    assert!(shown.get("secret").is_none(), "{shown:#}");
}

fn assert_signed_by_entry(request: &Recorded, secret: &str, entry: &str) {
    assert_eq!(
        blackbox::standard_webhooks::verify(
            secret,
            request.webhook_id(),
            request.header("webhook-timestamp"),
            entry,
            &request.body,
        ),
        Ok(()),
        "entry {entry}"
    );
}

// ---------------------------------------------------------------------------------------------
// Where deliveries may go
// ---------------------------------------------------------------------------------------------

async fn refused(app: &TestApp, method: Method, path: &str, body: Value) -> (String, String) {
    let (status, problem) = problem(
        app.request(method, path)
            .json(&body)
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 422, "{body}: {problem:#}");
    (
        problem["errors"][0]["field"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        problem["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn private_addresses_are_refused(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_for(pool, &[&receiver]).await;
    let port = receiver.addr().port();
    // A port that is not the allowed one.
    let other = if port > 1024 { port - 1 } else { port + 1 };
    for url in [
        format!("http://127.0.0.1:{other}/hook"),
        format!("http://localhost:{other}/"),
        format!("http://127.0.0.2:{port}/hook"),
        format!("http://[::1]:{other}/hook"),
        format!("http://[::ffff:127.0.0.1]:{other}/hook"),
        format!("http://10.1.2.3:{other}/hook"),
        "http://192.168.1.1/hook".to_string(),
        "http://169.254.169.254/latest/meta-data".to_string(),
        "http://100.64.0.1/hook".to_string(),
        format!("http://0.0.0.0:{other}/hook"),
    ] {
        let got = refused(
            &app,
            Method::POST,
            "/webhook-endpoints",
            json!({"url": url}),
        )
        .await;
        assert_eq!(got, ("url".into(), "forbidden_address".into()), "{url}");
    }
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": format!("http://user:pw@{}/hook", receiver.addr())}),
    )
    .await;
    assert_eq!(got, ("url".into(), "userinfo_not_allowed".into()));
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": "not a url"}),
    )
    .await;
    assert_eq!(got, ("url".into(), "invalid_url".into()));

    // The allowed exact address is accepted, and a PATCH is held to the same rules.
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let got = refused(
        &app,
        Method::PATCH,
        &format!("/webhook-endpoints/{}", id_of(&endpoint)),
        json!({"url": format!("http://127.0.0.1:{other}/hook")}),
    )
    .await;
    assert_eq!(got, ("url".into(), "forbidden_address".into()));
    let shown = get(&app, &format!("/webhook-endpoints/{}", id_of(&endpoint))).await;
    assert_eq!(shown["url"], receiver.url("/hook"));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn plain_http_is_refused_unless_allowed(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |_| {}).await;
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": "http://8.8.8.8/hook"}),
    )
    .await;
    assert_eq!(got, ("url".into(), "scheme_not_allowed".into()));
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": "https://127.0.0.1:8443/hook"}),
    )
    .await;
    assert_eq!(got, ("url".into(), "forbidden_address".into()));
}

/// `avatars serve` (the settings every production process starts from) refuses a receiver on
/// the service's own machine; `WEBHOOK_ALLOW_LOOPBACK=true` lets one on any loopback port
/// receive over plain http, without `FETCH_ALLOW_HTTP` or an exact-address exception.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn loopback_receivers_are_refused_unless_configured(pool: PgPool) {
    let receiver = Receiver::start().await;
    let store = store::Store::new(pool);
    let as_served = TestApp::spawn_with(store.clone(), |_| {}).await;
    for url in [
        receiver.url("/hook"),
        receiver.url("/hook").replace("127.0.0.1", "localhost"),
    ] {
        let got = refused(
            &as_served,
            Method::POST,
            "/webhook-endpoints",
            json!({"url": url}),
        )
        .await;
        assert_eq!(got, ("url".into(), "scheme_not_allowed".into()), "{url}");
    }
    drop(as_served);

    let config = service::Config::from_lookup(|name| {
        (name == "WEBHOOK_ALLOW_LOOPBACK").then(|| "true".to_string())
    })
    .expect("valid configuration");
    let allow_loopback = api::Settings::from_config(&config).events.allow_loopback;
    let app = TestApp::spawn_with(store, move |s| {
        s.events.allow_loopback = allow_loopback;
        s.events.relay_poll = Duration::from_millis(20);
        s.events.sequencer_poll = Duration::from_millis(20);
    })
    .await;
    let url = receiver.url("/hook").replace("127.0.0.1", "localhost");
    let endpoint = create_endpoint(&app, json!({"url": url})).await;
    avatar_deleted_event(&app).await;
    wait_deliveries(&app, &id_of(&endpoint), "delivered", |items| {
        items.len() == 1 && delivered(&items[0])
    })
    .await;
    let received = receiver.wait_for_requests_to("/hook", 1, DEADLINE).await;
    received[0]
        .verify(endpoint["secret"].as_str().unwrap())
        .expect("signed delivery");
}

// ---------------------------------------------------------------------------------------------
// Disabling, replay
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn gone_disables_the_endpoint_until_re_enabled_and_replayed(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(410)]);
    let witness = Receiver::start().await;
    let app = app_for(pool, &[&receiver, &witness]).await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let endpoint_id = id_of(&endpoint);
    let secret = endpoint["secret"].as_str().unwrap().to_string();
    create_endpoint(&app, json!({"url": witness.url("/witness")})).await;
    avatar_deleted_event(&app).await;

    let log = wait_deliveries(&app, &endpoint_id, "failed", |items| {
        items.len() == 1 && items[0]["status"] == "failed"
    })
    .await;
    let delivery = log[0].clone();
    let delivery_id = id_of(&delivery);
    assert_eq!(
        delivery["attempt_count"], 1,
        "no retry after 410: {delivery:#}"
    );
    assert_eq!(delivery["last_status_code"], 410);
    assert_eq!(delivery["next_attempt_at"], Value::Null);
    assert_eq!(delivery["attempts"][0]["outcome"], "failed");
    assert_eq!(delivery["attempts"][0]["status_code"], 410);
    let shown = get(&app, &format!("/webhook-endpoints/{endpoint_id}")).await;
    assert_eq!(shown["enabled"], false, "{shown:#}");
    assert_eq!(shown["disabled_reason"], "gone");
    let first = receiver.requests_to("/hook")[0].clone();

    // A disabled endpoint gets no delivery for a new event (the witness shows it was sent).
    avatar_deleted_event(&app).await;
    witness.wait_for_requests_to("/witness", 2, DEADLINE).await;
    assert_eq!(deliveries(&app, &endpoint_id).await.len(), 1);

    let replay = format!("/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay");
    let (status, body) = problem(app.request(Method::POST, &replay).send().await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "webhook_endpoint_disabled")
    );

    let (status, enabled) = call(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/webhook-endpoints/{endpoint_id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{enabled:#}");
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);

    let (status, replayed) = call(&app, &app.key, Method::POST, &replay, None).await;
    assert_eq!(status, 202, "{replayed:#}");
    assert_eq!(replayed["id"], delivery_id.as_str());
    assert_eq!(replayed["status"], "pending");
    let requests = receiver.wait_for_requests_to("/hook", 2, DEADLINE).await;
    assert_eq!(
        requests[1].webhook_id(),
        first.webhook_id(),
        "same webhook-id"
    );
    assert_eq!(requests[1].body, first.body);
    assert_well_formed(&requests[1], &secret);
    let log = wait_deliveries(&app, &endpoint_id, "delivered again", |items| {
        items.len() == 1 && delivered(&items[0])
    })
    .await;
    let attempts = log[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{:#}", log[0]);
    assert_eq!(attempts[1]["outcome"], "succeeded");
    assert_eq!(attempts[1]["status_code"], 200);
    // The event that happened while disabled was never sent to it.
    assert!(receiver
        .requests()
        .iter()
        .all(|r| r.webhook_id() == first.webhook_id()));
}

// ---------------------------------------------------------------------------------------------
// Endpoint management
// ---------------------------------------------------------------------------------------------

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn endpoints_are_managed_without_ever_showing_the_secret(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = app_for(pool, &[&receiver]).await;
    let created = create_endpoint(&app, json!({"url": receiver.url("/a")})).await;
    let id = id_of(&created);
    assert_eq!(created["url"], receiver.url("/a"));
    assert_eq!(created["event_types"], Value::Null, "null = every type");
    assert_eq!(created["description"], Value::Null);
    assert_eq!(created["enabled"], true);
    assert_eq!(created["disabled_reason"], Value::Null);
    assert!(created["created_at"].is_string() && created["updated_at"].is_string());

    let shown = get(&app, &format!("/webhook-endpoints/{id}")).await;
    assert!(shown.get("secret").is_none(), "{shown:#}");
    let mut without_secret = created.clone();
    without_secret.as_object_mut().unwrap().remove("secret");
    assert_eq!(shown, without_secret);

    let second = create_endpoint(
        &app,
        json!({"url": receiver.url("/b"), "event_types": ["avatar.deleted", "training.succeeded"],
               "description": "billing"}),
    )
    .await;
    assert_eq!(
        second["event_types"],
        json!(["avatar.deleted", "training.succeeded"])
    );
    assert_eq!(second["description"], "billing");
    let third = create_endpoint(&app, json!({"url": receiver.url("/c")})).await;

    // Listed newest first, paginated, never with a secret.
    let page = get(&app, "/webhook-endpoints?limit=2").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], third["id"]);
    assert_eq!(items[1]["id"], second["id"]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest = get(&app, &format!("/webhook-endpoints?limit=2&cursor={cursor}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["id"], id.as_str());
    assert_eq!(rest["next_cursor"], Value::Null);
    let all = get(&app, "/webhook-endpoints").await;
    for item in all["items"].as_array().unwrap() {
        assert!(item.get("secret").is_none(), "{item:#}");
    }
    let listed_json = serde_json::to_string(&all).unwrap();
    for secret in [&created, &second, &third].map(|e| e["secret"].as_str().unwrap()) {
        assert!(!listed_json.contains(secret));
        assert!(!listed_json.contains(&secret["whsec_".len()..]));
    }

    // PATCH changes what it is given.
    let (status, patched) = call(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/webhook-endpoints/{id}"),
        Some(
            json!({"description": "ops", "event_types": ["training.failed"],
                    "url": receiver.url("/a2")}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{patched:#}");
    assert_eq!(patched["description"], "ops");
    assert_eq!(patched["event_types"], json!(["training.failed"]));
    assert_eq!(patched["url"], receiver.url("/a2"));
    assert!(patched.get("secret").is_none());
    let (_, patched) = call(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/webhook-endpoints/{id}"),
        Some(json!({"enabled": false})),
    )
    .await;
    assert_eq!(patched["enabled"], false);
    assert_eq!(patched["disabled_reason"], "disabled_by_caller");
    assert_eq!(patched["description"], "ops", "untouched fields stay");
    let (_, patched) = call(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/webhook-endpoints/{id}"),
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(patched["enabled"], true);
    assert_eq!(patched["disabled_reason"], Value::Null);

    // Validation.
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": receiver.url("/x"), "event_types": ["training.finished"]}),
    )
    .await;
    assert_eq!(got, ("event_types[0]".into(), "unknown_event_type".into()));
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": receiver.url("/x"), "event_types": ["avatar.deleted", "avatar.created"]}),
    )
    .await;
    assert_eq!(got, ("event_types[1]".into(), "unknown_event_type".into()));
    let got = refused(
        &app,
        Method::PATCH,
        &format!("/webhook-endpoints/{id}"),
        json!({"event_types": ["nope"]}),
    )
    .await;
    assert_eq!(got, ("event_types[0]".into(), "unknown_event_type".into()));
    let got = refused(
        &app,
        Method::POST,
        "/webhook-endpoints",
        json!({"url": receiver.url("/x"), "description": "d".repeat(501)}),
    )
    .await;
    assert_eq!(got, ("description".into(), "too_long".into()));
    create_endpoint(
        &app,
        json!({"url": receiver.url("/x"), "description": "d".repeat(500)}),
    )
    .await;

    // Deleted: gone for good.
    let (status, _) = call(
        &app,
        &app.key,
        Method::DELETE,
        &format!("/webhook-endpoints/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = problem(
        app.request(Method::GET, &format!("/webhook-endpoints/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "webhook_endpoint_not_found")
    );
    let (status, body) = problem(
        app.request(
            Method::GET,
            &format!(
                "/webhook-endpoints/{}/deliveries/{}",
                id_of(&second),
                uuid::Uuid::new_v4()
            ),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "delivery_not_found")
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn endpoints_get_only_the_event_types_they_subscribe_to(pool: PgPool) {
    let filtered = Receiver::start().await;
    let everything = Receiver::start().await;
    let app = app_for(pool, &[&filtered, &everything]).await;
    let only_trainings = create_endpoint(
        &app,
        json!({"url": filtered.url("/trainings"), "event_types": ["training.succeeded"]}),
    )
    .await;
    create_endpoint(&app, json!({"url": everything.url("/all")})).await;

    avatar_deleted_event(&app).await;
    everything.wait_for_requests_to("/all", 1, DEADLINE).await;
    assert!(deliveries(&app, &id_of(&only_trainings)).await.is_empty());
    assert!(filtered.requests().is_empty());

    // Subscribing to the type makes the next such event arrive.
    let (status, _) = call(
        &app,
        &app.key,
        Method::PATCH,
        &format!("/webhook-endpoints/{}", id_of(&only_trainings)),
        Some(json!({"event_types": ["training.succeeded", "avatar.deleted"]})),
    )
    .await;
    assert_eq!(status, 200);
    let avatar = avatar_deleted_event(&app).await;
    let got = filtered
        .wait_for_requests_to("/trainings", 1, DEADLINE)
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["type"], "avatar.deleted");
    assert_eq!(got[0].json()["data"]["id"], avatar.as_str());
    assert_well_formed(&got[0], only_trainings["secret"].as_str().unwrap());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn another_tenants_endpoints_are_not_found_and_get_nothing(pool: PgPool) {
    let receiver = Receiver::start().await;
    let theirs = Receiver::start().await;
    let app = app_for(pool, &[&receiver, &theirs]).await;
    let endpoint = create_endpoint(&app, json!({"url": receiver.url("/hook")})).await;
    let id = id_of(&endpoint);
    let other = app.new_key("tenant-b").await;
    create_endpoint_as(&app, &other, json!({"url": theirs.url("/b")})).await;

    for (method, path, body) in [
        (Method::GET, format!("/webhook-endpoints/{id}"), None),
        (
            Method::PATCH,
            format!("/webhook-endpoints/{id}"),
            Some(json!({"description": "mine now"})),
        ),
        (
            Method::POST,
            format!("/webhook-endpoints/{id}/rotate-secret"),
            None,
        ),
        (
            Method::GET,
            format!("/webhook-endpoints/{id}/deliveries"),
            None,
        ),
        (Method::DELETE, format!("/webhook-endpoints/{id}"), None),
    ] {
        let mut request = app.request_as(&other, method.clone(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, problem) = problem(request.send().await.unwrap()).await;
        assert_eq!(
            (status, problem["code"].as_str().unwrap()),
            (404, "webhook_endpoint_not_found"),
            "{method} {path}"
        );
    }
    let (status, listed) = call(&app, &other, Method::GET, "/webhook-endpoints", None).await;
    assert_eq!(status, 200);
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != id.as_str()),
        "{listed:#}"
    );
    // Still there, unchanged, for its owner.
    let shown = get(&app, &format!("/webhook-endpoints/{id}")).await;
    assert_eq!(shown["description"], Value::Null);

    // tenant-a's events reach tenant-a's endpoint and never tenant-b's.
    avatar_deleted_event(&app).await;
    receiver.wait_for_requests_to("/hook", 1, DEADLINE).await;
    // tenant-b's own event is the first thing its endpoint gets.
    let their_avatar = {
        let response = app
            .request_as(&other, Method::POST, "/avatars")
            .json(&json!({"name": "b", "kind": "character"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        id_of(&response.json::<Value>().await.unwrap())
    };
    let response = app
        .request_as(&other, Method::DELETE, &format!("/avatars/{their_avatar}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let got = theirs.wait_for_requests_to("/b", 1, DEADLINE).await;
    assert_eq!(
        got[0].json()["data"]["id"],
        their_avatar.as_str(),
        "{}",
        describe(&theirs.requests())
    );
    assert_eq!(
        receiver.requests().len(),
        1,
        "{}",
        describe(&receiver.requests())
    );
}

// ---------------------------------------------------------------------------------------------
// Generations
// ---------------------------------------------------------------------------------------------

/// Starts a generation and returns its id.
async fn start_generation(app: &TestApp, avatar: &str, body: Value) -> String {
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/generations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    id_of(&response.json::<Value>().await.unwrap())
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_generation_is_announced_once_when_all_its_items_are_done(pool: PgPool) {
    let receiver = Receiver::start().await;
    let addrs = vec![receiver.addr()];
    let app =
        TestApp::spawn_with_fal_and(pool, FalOptions::default(), move |s| fast_events(s, &addrs))
            .await;
    let endpoint = create_endpoint(
        &app,
        json!({"url": receiver.url("/hook"),
               "event_types": ["generation.succeeded", "generation.failed"]}),
    )
    .await;
    let secret = endpoint["secret"].as_str().unwrap().to_string();

    let avatar = app.avatar_with_photos(10).await;
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/train"))
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    wait_json(&app, &format!("/avatars/{avatar}"), "trained", |a| {
        a["status"] == "trained"
    })
    .await;

    // Three prompts finishing at about the same time: one event, after the last of them.
    let succeeded = start_generation(
        &app,
        &avatar,
        json!({"prompts": ["one", "two", "three"], "num_images": 2}),
    )
    .await;
    let finished = wait_json(
        &app,
        &format!("/generations/{succeeded}"),
        "succeeded",
        |g| g["status"] == "succeeded",
    )
    .await;

    // Every prompt refused by fal: the generation failed.
    app.sim.as_ref().unwrap().fault_next_requests(
        1,
        Some("fal-ai/flux-lora"),
        fal_sim::RequestFaults {
            fail: Some(fal_sim::FailSpec {
                status: 422,
                error: "The prompt was rejected".into(),
                error_type: "content_policy_violation".into(),
                body: Some(
                    json!({"detail": [{"loc": ["body", "prompt"], "msg": "rejected",
                                              "type": "content_policy_violation"}]}),
                ),
            }),
            ..fal_sim::RequestFaults::default()
        },
    );
    let failed = start_generation(&app, &avatar, json!({"prompt": "refused"})).await;
    let failed_view = wait_json(&app, &format!("/generations/{failed}"), "failed", |g| {
        g["status"] == "failed"
    })
    .await;

    let requests = receiver
        .wait_for("both generations announced", DEADLINE, |requests| {
            requests.len() >= 2
        })
        .await;
    let about = |id: &str| -> Vec<&Recorded> {
        requests
            .iter()
            .filter(|r| r.json()["data"]["id"] == id)
            .collect()
    };
    let [success] = about(&succeeded)[..] else {
        panic!(
            "one event for the succeeded generation: {}",
            describe(&requests)
        );
    };
    assert_well_formed(success, &secret);
    assert_eq!(success.json()["type"], "generation.succeeded");
    assert_eq!(
        success.json()["data"],
        finished,
        "the generation as GET shows it"
    );
    assert_eq!(
        success.json()["data"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["images"].as_array().unwrap().len())
            .sum::<usize>(),
        6
    );
    let [failure] = about(&failed)[..] else {
        panic!(
            "one event for the failed generation: {}",
            describe(&requests)
        );
    };
    assert_well_formed(failure, &secret);
    assert_eq!(failure.json()["type"], "generation.failed");
    assert_eq!(failure.json()["data"], failed_view);
    assert_eq!(
        failure.json()["data"]["items"][0]["error"]["code"],
        "content_policy_violation"
    );
}
