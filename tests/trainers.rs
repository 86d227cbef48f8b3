//! Every trainer the service offers trains end to end, and a trainer fal has withdrawn fails
//! the job with a code and the setting that picks another.

use blackbox::{FalOptions, TestApp};
use fal_sim::SubmitFault;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A `style` avatar with ten photos; returns its id.
async fn style_avatar(app: &TestApp) -> String {
    let avatar = app
        .create_avatar(json!({"name": "a style", "kind": "style"}))
        .await;
    let id = avatar["id"].as_str().unwrap().to_string();
    let files = (0..10)
        .map(|i| (format!("s{i}.jpg"), blackbox::images::jpeg(3000 + i)))
        .collect();
    assert_eq!(app.upload(&id, files).await.status(), 201);
    id
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_fast_lora_trainer_trains_end_to_end(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = style_avatar(&app).await;
    let started = app
        .start_training(&avatar, json!({"trainer": "fast_lora"}))
        .await;
    let id = started["id"].as_str().unwrap().to_string();
    let done = app
        .wait_for_json(&format!("/trainings/{id}"), "trained", |t| {
            t["model"].is_object() || t["status"] == "failed"
        })
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["trainer"], "fast_lora");
    assert_eq!(done["endpoint"], "fal-ai/flux-lora-fast-training");
    assert_eq!(done["model"]["model_type"], "lora");
    let avatar: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar["status"], "trained");
    assert_eq!(avatar["trained_model"]["training_id"], id.as_str());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_trainer_fal_has_withdrawn_fails_with_trainer_unavailable(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let avatar = style_avatar(&app).await;
    app.sim.as_ref().unwrap().fail_next_submits(
        1,
        SubmitFault::Respond {
            status: 404,
            body: Some(json!({"detail": "Application not found"})),
            error_type: None,
            retry_after_secs: None,
            with_request_id: false,
            user_timeout: false,
        },
    );
    let started = app.start_training(&avatar, json!({"trainer": "pro"})).await;
    let id = started["id"].as_str().unwrap().to_string();
    let done = app
        .wait_for_json(&format!("/trainings/{id}"), "failed", |t| {
            t["status"] == "failed"
        })
        .await;
    assert_eq!(done["error"]["code"], "trainer_unavailable", "{done:#}");
    let message = done["error"]["message"].as_str().unwrap();
    assert!(message.contains("FAL_TRAINER_BY_KIND"), "{message}");
    assert!(message.contains("fal-ai/flux-pro-trainer"), "{message}");
    // The avatar is free to train again with another trainer.
    let avatar: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(avatar["status"], "failed");
}
