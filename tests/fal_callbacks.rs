//! fal callbacks that name no job of ours: kept small, few, and not for long.

use std::time::Duration;

use blackbox::{FalOptions, TestApp};
use serde_json::{json, Value};
use sqlx::PgPool;

async fn post_signed(app: &TestApp, request_id: &str, body: &[u8]) -> Value {
    let sim = app.sim.as_ref().unwrap();
    let mut request = app
        .client
        .post(app.url("/webhooks/fal"))
        .body(body.to_vec());
    let now = chrono::Utc::now().timestamp();
    for (name, value) in sim.webhook_headers(request_id, "sim-user", now, body) {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// What the inbox keeps of unknown requests, by request id.
async fn kept(pool: &PgPool) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT fal_request_id, body FROM webhook_inbox
         WHERE outcome = 'unknown_request' ORDER BY fal_request_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

fn callback(request_id: &str, padding: usize) -> Vec<u8> {
    json!({"request_id": request_id, "status": "OK", "payload": {"pad": "x".repeat(padding)}})
        .to_string()
        .into_bytes()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn unknown_callbacks_are_kept_small_few_and_not_for_long(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.unknown_callbacks.max_body_bytes = 1024;
        settings.unknown_callbacks.max_kept = 3;
        settings.unknown_callbacks.retention = Duration::from_secs(3600);
        settings.workers.janitor = Duration::from_millis(100);
    })
    .await;

    // A body over the limit is kept without it; small ones whole.
    let big = callback("r-1", 4096);
    assert_eq!(
        post_signed(&app, "r-1", &big).await["outcome"],
        "unknown_request"
    );
    for id in ["r-2", "r-3"] {
        post_signed(&app, id, &callback(id, 10)).await;
    }
    let inbox = kept(&pool).await;
    assert_eq!(inbox.len(), 3);
    assert_eq!(inbox[0].1, json!({"omitted_bytes": big.len()}));
    assert_eq!(inbox[1].1["request_id"], "r-2");

    // With as many kept as allowed, more are acknowledged and not kept.
    for id in ["r-4", "r-5"] {
        assert_eq!(
            post_signed(&app, id, &callback(id, 10)).await["outcome"],
            "unknown_request"
        );
    }
    let ids: Vec<String> = kept(&pool).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["r-1", "r-2", "r-3"]);

    // Past their retention they are forgotten, which makes room again.
    sqlx::query(
        "UPDATE webhook_inbox SET received_at = now() - interval '2 hours'
         WHERE fal_request_id IN ('r-1', 'r-2')",
    )
    .execute(&pool)
    .await
    .unwrap();
    app.eventually("expired unknown callbacks are forgotten", || async {
        let ids: Vec<String> = kept(&pool).await.into_iter().map(|(id, _)| id).collect();
        if ids == ["r-3"] {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    post_signed(&app, "r-6", &callback("r-6", 10)).await;
    let ids: Vec<String> = kept(&pool).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["r-3", "r-6"]);
}
