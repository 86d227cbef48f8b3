//! Deleting an avatar erases the person: every blob that holds them, and the personal data in
//! the job and generation rows kept for billing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use blackbox::{FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

fn blobs(app: &TestApp) -> BTreeSet<PathBuf> {
    app.blob_files().into_iter().collect()
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.request(Method::GET, path).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deleting_a_trained_avatar_removes_every_blob_of_the_person(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    // Someone else's photos, which must survive.
    let _other = app.avatar_with_photos(10).await;
    let baseline = blobs(&app);
    assert_eq!(baseline.len(), 10, "{baseline:?}");

    // The whole path: photos -> training (LoRA kept) -> generation (images kept).
    let avatar = app.avatar_with_photos(10).await;
    let training = app.start_training(&avatar, json!({"preset": "fast"})).await;
    let training_id = training["id"].as_str().unwrap().to_string();
    app.wait_for_json(&format!("/avatars/{avatar}"), "trained", |a| {
        a["status"] == "trained"
    })
    .await;
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/generations"))
        .json(&json!({"prompt": "a very personal prompt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let generation: Value = response.json().await.unwrap();
    let generation_id = generation["id"].as_str().unwrap().to_string();
    let done = app
        .wait_for_json(
            &format!("/generations/{generation_id}"),
            "the generation succeeded",
            |g| g["status"] == "succeeded",
        )
        .await;
    assert_eq!(done["items"][0]["images"].as_array().unwrap().len(), 1);

    let before = blobs(&app);
    let added: Vec<String> = before
        .difference(&baseline)
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        added.iter().filter(|p| p.contains("/photos/")).count(),
        10,
        "{added:#?}"
    );
    assert!(
        added.iter().any(|p| p.ends_with(".safetensors")),
        "{added:#?}"
    );
    assert!(
        added.iter().any(|p| p.ends_with("config.json")),
        "{added:#?}"
    );
    assert!(
        added.iter().any(|p| p.contains("/generations/")),
        "{added:#?}"
    );

    let response = app
        .request(Method::DELETE, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    app.eventually("every blob of the person is gone", || async {
        let now = blobs(&app);
        if now == baseline {
            Ok(())
        } else {
            Err(format!("left: {:#?}", now.difference(&baseline)))
        }
    })
    .await;

    // The rows kept for billing carry no personal data.
    let (status, training) = get(&app, &format!("/trainings/{training_id}")).await;
    assert_eq!(status, 200, "{training:#}");
    assert_eq!(training["status"], "succeeded");
    assert_eq!(training["trigger_phrase"], Value::Null, "{training:#}");
    assert_eq!(training["model"], Value::Null, "{training:#}");
    let (status, generation) = get(&app, &format!("/generations/{generation_id}")).await;
    assert_eq!(status, 200, "{generation:#}");
    assert!(
        !generation.to_string().contains("very personal"),
        "{generation:#}"
    );
    assert_eq!(
        generation["items"][0]["images"],
        json!([]),
        "{generation:#}"
    );
}

/// fal finished the training, but its LoRA is not kept yet (its file expired, custody keeps
/// retrying): deleting the avatar ends the training cancelled rather than leaving custody to
/// keep the person's weights for nobody, and every blob of the person goes.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deleting_an_avatar_whose_training_is_finishing_cancels_it(pool: PgPool) {
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), |settings| {
        settings.jobs.custody_max_attempts = 100;
        settings.jobs.custody_retry_interval = Duration::from_secs(3600);
    })
    .await;
    app.hold_next_callback();
    let baseline = blobs(&app);
    let avatar = app.avatar_with_photos(10).await;
    let started = app.start_training(&avatar, json!({})).await;
    let id = started["id"].as_str().unwrap().to_string();
    app.expire_lora_then_release_callback().await;
    app.eventually("custody failed once", || async {
        let (status, attempts): (String, i32) =
            sqlx::query_as("SELECT status, custody_attempts FROM jobs WHERE id = $1::uuid")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        if status == "finishing" && attempts >= 1 {
            Ok(())
        } else {
            Err(format!("{status} after {attempts} custody attempts"))
        }
    })
    .await;
    let (_, training) = get(&app, &format!("/trainings/{id}")).await;
    assert_eq!(training["status"], "in_progress", "{training:#}");

    let response = app
        .request(Method::DELETE, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    let (status, training) = get(&app, &format!("/trainings/{id}")).await;
    assert_eq!(status, 200, "{training:#}");
    assert_eq!(training["status"], "cancelled", "{training:#}");
    assert_eq!(training["error"]["message"], "the avatar was deleted");
    assert_eq!(training["model"], Value::Null);
    let models: i64 = sqlx::query_scalar("SELECT count(*) FROM models")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(models, 0);
    app.eventually("every blob of the person is gone", || async {
        let now = blobs(&app);
        if now == baseline {
            Ok(())
        } else {
            Err(format!("left: {:#?}", now.difference(&baseline)))
        }
    })
    .await;
}
