use blackbox::{problem, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_migrated_reachable_database_is_ready(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ready"})
    );
}

#[tokio::test]
async fn readiness_fails_while_the_database_is_down() {
    // Nothing listens on this port: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store =
        store::Store::connect_lazy(&format!("postgres://nobody@127.0.0.1:{port}/none"), 2).unwrap();
    let app = TestApp::spawn_with(store, |_| {}).await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive even without a database");
    let (status, body) = problem(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (503, "not_ready"));
    assert_eq!(body["reasons"], json!(["database unreachable"]));

    // API calls answer 503, not 500, and say nothing of internals.
    let response = app
        .client
        .get(app.url("/avatars"))
        .bearer_auth("avk_anything")
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (503, "database_unavailable")
    );
    assert!(!body.to_string().contains(&port.to_string()));
}

#[sqlx::test(migrations = false)]
async fn readiness_fails_until_the_database_is_migrated(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let (status, body) = problem(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (503, "not_ready"));
    assert!(
        body["reasons"][0]
            .as_str()
            .unwrap()
            .contains("avatars migrate"),
        "{body}"
    );

    app.store.migrate().await.unwrap();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn metrics_count_requests_by_route_and_status(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = app
        .create_avatar(json!({"name": "m", "kind": "character"}))
        .await;
    for _ in 0..3 {
        app.request(
            Method::GET,
            &format!("/avatars/{}", avatar["id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap();
    }
    app.client.get(app.url("/avatars")).send().await.unwrap();
    app.client
        .get(app.url("/no-such-route"))
        .send()
        .await
        .unwrap();

    let text = app.scrape().await.text;
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle));
    assert!(
        has(r#"http_requests_total{method="GET",route="/avatars/{id}",status="200"} 3"#),
        "{text}"
    );
    assert!(
        has(r#"http_requests_total{method="POST",route="/avatars",status="201"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"http_requests_total{method="GET",route="/avatars",status="401"} 1"#),
        "{text}"
    );
    assert!(
        has(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        has(
            r#"http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/avatars/{id}"} 3"#
        ) || has(
            r#"http_request_duration_seconds_bucket{method="GET",route="/avatars/{id}",le="+Inf"} 3"#
        ),
        "{text}"
    );
}

/// Invented methods and paths never become label values: a client cannot grow the metric
/// series without bound.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn metric_labels_stay_bounded_under_invented_methods_and_paths(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for i in 0..20 {
        let method = Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        app.client
            .request(method, app.url(&format!("/random-{i}")))
            .send()
            .await
            .unwrap();
    }
    let text = app.scrape().await.text;
    assert!(!text.contains("BREW"), "{text}");
    assert!(!text.contains("/random-"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with(
            r#"http_requests_total{method="other",route="unmatched",status="404"} 20"#
        )),
        "{text}"
    );
}
