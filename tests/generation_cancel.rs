//! Cancelling a generation stops every item not yet finished, on fal too.

use blackbox::{FalOptions, TestApp};
use fal_sim::RequestFaults;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A `style` avatar trained into a Pro finetune; returns its id.
async fn trained_style_avatar(app: &TestApp) -> String {
    let avatar = app
        .create_avatar(json!({"name": "to generate with", "kind": "style"}))
        .await;
    let id = avatar["id"].as_str().unwrap().to_string();
    let files = (0..10)
        .map(|i| (format!("g{i}.jpg"), blackbox::images::jpeg(5000 + i)))
        .collect();
    assert_eq!(app.upload(&id, files).await.status(), 201);
    let response = app
        .request(Method::POST, &format!("/avatars/{id}/train"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.wait_for_json(&format!("/avatars/{id}"), "trained", |a| {
        a["status"] == "trained"
    })
    .await;
    id
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn cancelling_a_generation_cancels_its_unfinished_items_on_fal(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = trained_style_avatar(&app).await;
    let sim = app.sim.as_ref().unwrap();
    sim.fault_next_requests(
        2,
        None,
        RequestFaults {
            stall: true,
            ..Default::default()
        },
    );
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/generations"))
        .json(&json!({"prompts": ["a portrait at dawn", "a portrait at dusk"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    let id = started["id"].as_str().unwrap().to_string();
    app.wait_for_json(&format!("/generations/{id}"), "both items at fal", |g| {
        g["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|item| item["status"] == "submitted" || item["status"] == "in_progress")
    })
    .await;

    let response = app
        .request(Method::POST, &format!("/generations/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let cancelled: Value = response.json().await.unwrap();
    let items = cancelled["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(item["status"], "cancelled", "{cancelled:#}");
        assert_eq!(item["error"]["code"], "cancelled");
        let request = sim
            .request(item["fal_request_id"].as_str().unwrap())
            .unwrap();
        assert!(request.cancel_requested, "cancelled on fal: {request:?}");
    }
    assert!(cancelled["status"] != "in_progress" && cancelled["status"] != "pending");

    // Nothing is left to cancel.
    let again = app
        .request(Method::POST, &format!("/generations/{id}/cancel"))
        .send()
        .await
        .unwrap();
    let (status, problem) = blackbox::problem(again).await;
    assert_eq!(status, 409);
    assert_eq!(problem["code"], "generation_finished");

    // Another tenant's generation is not found.
    let other = app.new_key("tenant-b").await;
    let foreign = app
        .request_as(&other, Method::POST, &format!("/generations/{id}/cancel"))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
}
