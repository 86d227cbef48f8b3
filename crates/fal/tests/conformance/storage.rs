//! Storage upload (single and multipart, file and stream) and training archives.

use std::time::Duration;

use fal::models::{self, LoraTrainingOutput};
use fal::{FalError, ObjectLifecycle, SubmitOptions};

use crate::common::{self, client_for, poll_until_completed, received, TempFile};

async fn download(url: &url::Url) -> Vec<u8> {
    let response = reqwest::get(url.clone()).await.unwrap();
    assert!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn single_upload_initiates_with_lifecycle_then_puts_without_auth() {
    let env = common::start().await;
    let bytes = common::training_zip(2);
    let file = TempFile::with_bytes("photos.zip", &bytes);
    let lifecycle = ObjectLifecycle::expires_after(Duration::from_secs(3600));
    let uploaded = env
        .client
        .upload_file(&file.0, "application/zip", Some(&lifecycle))
        .await
        .expect("upload");
    assert!(!uploaded.multipart);
    assert_eq!(uploaded.size, bytes.len() as u64);
    assert!(uploaded.file_url.path().ends_with("_photos.zip"));

    let initiate = &received(&env.sim, "POST", "/rest/storage/upload/initiate")[0];
    assert_eq!(
        initiate.query_param("storage_type").as_deref(),
        Some("fal-cdn-v3")
    );
    assert_eq!(initiate.header("authorization"), Some("Key sim-key-id:***"));
    let lifecycle_header: serde_json::Value =
        serde_json::from_str(initiate.header("x-fal-object-lifecycle").unwrap()).unwrap();
    assert_eq!(
        lifecycle_header,
        serde_json::json!({"expiration_duration_seconds": 3600})
    );
    assert_eq!(
        initiate.body_json().unwrap(),
        serde_json::json!({"content_type": "application/zip", "file_name": "photos.zip"})
    );
    let puts: Vec<_> = env
        .sim
        .received_requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1);
    assert_eq!(
        puts[0].header("authorization"),
        None,
        "the signed URL needs no key"
    );
    assert_eq!(puts[0].header("content-type"), Some("application/zip"));
    assert_eq!(puts[0].body_len, bytes.len());
    assert_eq!(download(&uploaded.file_url).await, bytes);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn file_above_the_threshold_goes_up_in_parts() {
    let env = common::start().await;
    let client = client_for(&env.sim, env.sim.default_key().unwrap(), |c| {
        c.multipart_threshold = 1000;
        c.multipart_part_size = 400;
    });
    let bytes: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
    let file = TempFile::with_bytes("big.bin", &bytes);
    let uploaded = client
        .upload_file(&file.0, "application/octet-stream", None)
        .await
        .expect("upload");
    assert!(uploaded.multipart);
    assert_eq!(
        received(&env.sim, "POST", "/rest/storage/upload/initiate-multipart").len(),
        1
    );
    let parts: Vec<_> = env
        .sim
        .received_requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with("/cdn/multipart/"))
        .collect();
    assert_eq!(parts.len(), 7);
    assert!(
        parts.iter().all(|p| p.query_param("signature").is_some()),
        "the upload URL's query is kept"
    );
    assert_eq!(parts.iter().map(|p| p.body_len).sum::<usize>(), 2500);
    let complete: Vec<_> = env
        .sim
        .received_requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/complete"))
        .collect();
    assert_eq!(
        complete[0].body_json().unwrap()["parts"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(download(&uploaded.file_url).await, bytes);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn streams_upload_whole_or_in_parts() {
    let env = common::start().await;
    let client = client_for(&env.sim, env.sim.default_key().unwrap(), |c| {
        c.multipart_threshold = 1000;
        c.multipart_part_size = 300;
    });
    let chunks = || {
        futures_util::stream::iter(
            (0..12u8).map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![i; 100]))),
        )
    };
    let expected: Vec<u8> = (0..12u8).flat_map(|i| vec![i; 100]).collect();

    let whole = client
        .upload_stream(chunks(), "a.bin", "application/octet-stream", None, None)
        .await
        .unwrap();
    assert!(!whole.multipart);
    assert_eq!(whole.size, 1200);
    assert_eq!(download(&whole.file_url).await, expected);

    let parts = client
        .upload_stream(
            chunks(),
            "b.bin",
            "application/octet-stream",
            Some(1200),
            None,
        )
        .await
        .unwrap();
    assert!(parts.multipart);
    assert_eq!(download(&parts.file_url).await, expected);
    env.sim.shutdown().await;
}

#[tokio::test]
async fn portrait_training_writes_a_valid_safetensors_lora() {
    let env = common::start().await;
    let url = common::upload_training_zip(&env.client, 4).await;
    let s = env
        .client
        .submit(
            models::PORTRAIT_TRAINER,
            &models::PortraitTrainerInput {
                images_data_url: url.to_string(),
                trigger_phrase: Some("TOK".into()),
                steps: Some(1000),
                ..Default::default()
            },
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    poll_until_completed(&env.client, &s.request_ref()).await;
    let output: LoraTrainingOutput = env
        .client
        .result_as(&s.request_ref())
        .await
        .expect("output");
    let lora = &output.diffusers_lora_file;
    assert_eq!(
        lora.file_name.as_deref(),
        Some("pytorch_lora_weights.safetensors")
    );
    let lora_url = url::Url::parse(&lora.url).unwrap();
    let mut stream = env.client.download(&lora_url).await.expect("download");
    let mut bytes = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let lora_get = received(&env.sim, "GET", lora_url.path());
    assert_eq!(
        lora_get[0].header("authorization"),
        None,
        "no key sent to the CDN"
    );
    assert_eq!(lora.file_size, Some(bytes.len() as u64));
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    let tensors: Vec<_> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .collect();
    assert!(!tensors.is_empty());
    let end = tensors
        .iter()
        .map(|(_, t)| t["data_offsets"][1].as_u64().unwrap())
        .max()
        .unwrap();
    assert_eq!(end as usize, bytes.len() - 8 - header_len);
    let config_url = url::Url::parse(&output.config_file.unwrap().url).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&download(&config_url).await).unwrap();
    assert_eq!(config["trigger_phrase"], "TOK");
    env.sim.shutdown().await;
}

async fn training_rejection(env: &common::Env, archive_url: String) -> fal::ValidationIssue {
    let s = env
        .client
        .submit(
            models::FAST_TRAINER,
            &serde_json::json!({"images_data_url": archive_url, "steps": 100}),
            &SubmitOptions::default(),
        )
        .await
        .unwrap();
    poll_until_completed(&env.client, &s.request_ref()).await;
    let err = env.client.result(&s.request_ref()).await.unwrap_err();
    let FalError::Validation { issues, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        issues[0].loc,
        vec![
            serde_json::json!("body"),
            serde_json::json!("images_data_url")
        ]
    );
    issues[0].clone()
}

#[tokio::test]
async fn training_archives_are_rejected_like_fal_does() {
    let env = common::start().await;
    let not_zip = TempFile::with_bytes("photos.zip", b"this is not a zip archive");
    let url = env
        .client
        .upload_file(&not_zip.0, "application/zip", None)
        .await
        .unwrap()
        .file_url;
    assert_eq!(
        training_rejection(&env, url.to_string()).await.kind,
        "invalid_archive"
    );

    let no_images = TempFile::with_bytes("empty.zip", &common::training_zip(0));
    let url = env
        .client
        .upload_file(&no_images.0, "application/zip", None)
        .await
        .unwrap()
        .file_url;
    assert_eq!(
        training_rejection(&env, url.to_string()).await.kind,
        "not_enough_images"
    );

    let missing = format!("{}/files/sim/never-uploaded.zip", env.sim.cdn_url());
    assert_eq!(
        training_rejection(&env, missing).await.kind,
        "file_download_error"
    );
    let remote = "https://example.com/photos.zip".to_owned();
    assert_eq!(
        training_rejection(&env, remote).await.kind,
        "file_download_error"
    );
    env.sim.shutdown().await;
}

#[tokio::test]
async fn expired_objects_and_outputs_are_gone() {
    let env = common::start().await;
    let now = ObjectLifecycle {
        expiration_duration_seconds: Some(0),
        initial_acl: None,
    };
    let file = TempFile::with_bytes("a.zip", &common::training_zip(1));
    let uploaded = env
        .client
        .upload_file(&file.0, "application/zip", Some(&now))
        .await
        .unwrap();
    assert_eq!(
        reqwest::get(uploaded.file_url.clone())
            .await
            .unwrap()
            .status(),
        404
    );
    let err = env
        .client
        .download(&uploaded.file_url)
        .await
        .err()
        .expect("gone");
    assert!(matches!(err, FalError::NotFound { .. }), "{err:?}");

    let options = SubmitOptions {
        output_lifecycle: Some(now),
        ..Default::default()
    };
    let input = serde_json::json!({"prompt": "x", "image_size": {"width": 8, "height": 8}});
    let s = env
        .client
        .submit(models::FLUX_LORA, &input, &options)
        .await
        .unwrap();
    poll_until_completed(&env.client, &s.request_ref()).await;
    let output: models::ImagesOutput = env.client.result_as(&s.request_ref()).await.unwrap();
    assert_eq!(
        reqwest::get(&output.images[0].url).await.unwrap().status(),
        404
    );
    env.sim.shutdown().await;
}
