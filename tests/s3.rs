//! The service on a real S3-compatible server (moto, started by `cargo xtask test`, with
//! authentication on): path-style requests signed with an issued key.

use blackbox::s3::TestS3;
use blackbox::{problem, FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn photos_models_and_images_live_in_s3(pool: PgPool) {
    let s3 = TestS3::from_env();
    let (blobs, prefix) = s3.fresh_store();
    let app = TestApp::spawn_with_fal(
        pool,
        FalOptions {
            blobs: Some(blobs),
            ..FalOptions::default()
        },
    )
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready on a reachable bucket");

    let avatar = app
        .create_avatar(json!({"name": "on s3", "kind": "character"}))
        .await;
    let id = avatar["id"].as_str().unwrap();
    let response = app.upload(id, blackbox::images::portrait_set(10)).await;
    assert_eq!(response.status(), 201);
    let photos: Value = app.get_json(&format!("/avatars/{id}/photos")).await;
    assert_eq!(photos["items"].as_array().unwrap().len(), 10);

    app.start_training(id, json!({"preset": "fast"})).await;
    app.wait_for_json(&format!("/avatars/{id}"), "trained", |avatar| {
        avatar["status"] == "trained"
    })
    .await;

    let response = app
        .request(Method::POST, &format!("/avatars/{id}/generations"))
        .json(&json!({"prompt": "in the mountains", "aspect_ratio": "1:1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let generation: Value = response.json().await.unwrap();
    let done = app
        .wait_for_json(
            &format!("/generations/{}", generation["id"].as_str().unwrap()),
            "a finished generation",
            |g| g["status"] != "pending" && g["status"] != "in_progress",
        )
        .await;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    let image = &done["items"][0]["images"][0];
    let response = app
        .request(Method::GET, image["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, image["bytes"].as_u64().unwrap());
    image::load_from_memory(&bytes).expect("the served image decodes");

    // Everything is in the bucket under the app's prefix, nothing on local disk: the 10
    // photos (each with its working copy or not), the LoRA file and the image.
    let keys: Vec<String> = s3
        .bucket_store()
        .keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|key| key.starts_with(&format!("{prefix}/")))
        .collect();
    assert!(keys.len() >= 12, "keys in the bucket: {keys:?}");
    assert!(
        app.blob_files().is_empty(),
        "nothing written to the local blob directory: {:?}",
        app.blob_files()
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_missing_bucket_is_not_ready(pool: PgPool) {
    let s3 = TestS3::from_env();
    let blobs = s3.store_with("no-such-bucket", "avatars", &s3.options());
    let app = TestApp::spawn_on_blobs(pool, blobs).await;

    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive without its bucket");
    let (status, body) = problem(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str().unwrap()), (503, "not_ready"));
    assert_eq!(
        body["reasons"],
        json!([
            "blob storage: s3 bucket no-such-bucket does not exist; check STORAGE_URL and the S3 settings"
        ])
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn refused_credentials_are_not_ready(pool: PgPool) {
    let s3 = TestS3::from_env();
    let wrong_secret = store::S3Options {
        secret_access_key: Some("not-the-secret".to_string().into()),
        ..s3.options()
    };
    let unknown_key = store::S3Options {
        access_key_id: Some("AKIAUNKNOWNKEY000000".into()),
        ..s3.options()
    };
    for options in [wrong_secret, unknown_key] {
        let blobs = s3.store_with(&s3.bucket, "avatars", &options);
        let app = TestApp::spawn_on_blobs(pool.clone(), blobs).await;
        let (status, body) =
            problem(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
        assert_eq!((status, body["code"].as_str().unwrap()), (503, "not_ready"));
        let expected = format!(
            "blob storage: s3 bucket {} refused the credentials; check STORAGE_URL and the S3 settings",
            s3.bucket
        );
        assert_eq!(body["reasons"], json!([expected]));
        assert!(!body.to_string().contains("not-the-secret"));
        assert!(!body.to_string().contains(&s3.secret_access_key));
        app.stop().await;
    }
}

/// Files several read pieces long (and one byte more) go in and come out whole, whether the
/// blobs live in a local directory (read in pieces on blocking threads, or in place) or in S3
/// (streamed).
#[tokio::test]
async fn blobs_longer_than_one_read_piece_arrive_whole_from_disk_and_from_s3() {
    use futures_util::TryStreamExt;

    let s3 = TestS3::from_env();
    let local_dir = tempfile::tempdir().unwrap();
    let stores = [
        ("local", store::BlobStore::local(local_dir.path()).unwrap()),
        ("s3", s3.fresh_store().0),
    ];
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    let original: Vec<u8> = (0..2 * store::FILE_CHUNK_BYTES + 1)
        .map(|n| (n * 7 % 251) as u8)
        .collect();
    std::fs::write(&source, &original).unwrap();

    for (name, blobs) in stores {
        let stored = blobs.put_file("long/blob", &source).await.unwrap();
        assert_eq!(stored, original.len() as u64, "{name}: bytes stored");

        let copy = work.path().join(format!("copy-{name}"));
        let copied = blobs.get_to_file("long/blob", &copy).await.unwrap();
        assert_eq!(copied, original.len() as u64, "{name}: bytes copied");
        assert!(
            std::fs::read(&copy).unwrap() == original,
            "{name}: copy differs"
        );

        let chunks: Vec<bytes::Bytes> = blobs
            .get_stream("long/blob")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(chunks.concat() == original, "{name}: streamed bytes differ");

        // A local blob is read where it is kept; a remote one is copied where asked.
        let scratch = work.path().join(format!("readable-{name}"));
        let readable = blobs.readable_path("long/blob", &scratch).await.unwrap();
        assert!(
            std::fs::read(&readable).unwrap() == original,
            "{name}: readable file differs"
        );
        match name {
            "local" => {
                assert!(readable.starts_with(local_dir.path()), "{readable:?}");
                assert!(!scratch.exists(), "a local blob is not copied");
            }
            _ => assert_eq!(readable, scratch),
        }

        let missing = blobs.get_to_file("no/such/blob", &copy).await.unwrap_err();
        assert!(
            matches!(missing, store::BlobError::NotFound(_)),
            "{name}: {missing}"
        );
        let missing = blobs
            .readable_path("no/such/blob", &scratch)
            .await
            .unwrap_err();
        assert!(
            matches!(missing, store::BlobError::NotFound(_)),
            "{name}: {missing}"
        );
    }
}
