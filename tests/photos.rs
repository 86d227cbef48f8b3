use blackbox::images;
use blackbox::{problem, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

fn codes(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["file_name"].as_str().unwrap().to_string(),
                r["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn new_avatar(app: &TestApp) -> String {
    let avatar = app
        .create_avatar(json!({"name": "p", "kind": "character"}))
        .await;
    avatar["id"].as_str().unwrap().to_string()
}

/// Each file is rejected with its own code, and the good files of the batch are kept.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_mixed_batch_keeps_the_good_files_and_names_each_rejection(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = new_avatar(&app).await;
    let files = vec![
        ("good1.jpg".to_string(), images::jpeg(1)),
        ("truncated.jpg".to_string(), images::truncated_jpeg(2)),
        ("page.jpg".to_string(), images::html()),
        ("photo.heic".to_string(), images::heic()),
        ("anim.gif".to_string(), images::gif()),
        ("bomb.png".to_string(), images::huge_png_header()),
        ("empty.jpg".to_string(), Vec::new()),
        ("small.jpg".to_string(), images::small_jpeg(3)),
        ("good2.png".to_string(), images::png(4)),
        ("again.jpg".to_string(), images::jpeg(1)),
    ];
    let response = app.upload(&avatar, files).await;
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    let accepted: Vec<&str> = report["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(accepted, ["good1.jpg", "good2.png"]);
    let rejected = codes(&report["rejected"]);
    let expected = [
        ("truncated.jpg", "corrupt_image"),
        ("page.jpg", "unsupported_format"),
        ("photo.heic", "unsupported_format"),
        ("anim.gif", "unsupported_format"),
        ("bomb.png", "dimensions_too_large"),
        ("empty.jpg", "empty_file"),
        ("small.jpg", "too_small"),
        ("again.jpg", "duplicate_photo"),
    ];
    assert_eq!(
        rejected,
        expected.map(|(f, c)| (f.to_string(), c.to_string()))
    );
    // Formats rejected by name, so the caller knows what they sent.
    let messages: Vec<&str> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert!(
        messages[1].to_lowercase().contains("html"),
        "{}",
        messages[1]
    );
    assert!(
        messages[2].to_lowercase().contains("heic"),
        "{}",
        messages[2]
    );
    assert!(
        messages[3].to_lowercase().contains("gif"),
        "{}",
        messages[3]
    );

    let first = &report["accepted"][0];
    assert_eq!(
        (
            first["format"].as_str(),
            first["width"].as_u64(),
            first["height"].as_u64()
        ),
        (Some("jpeg"), Some(640), Some(800))
    );
    assert_eq!(first["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(report["avatar"]["photo_count"], 2);
    assert_eq!(report["avatar"]["status"], "draft");

    let listed: Value = app.get_json(&format!("/avatars/{avatar}/photos")).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert_eq!(app.blob_files().len(), 2, "only accepted photos are stored");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_batch_with_no_good_file_is_a_422_with_the_rejections(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = new_avatar(&app).await;
    let response = app
        .upload(&avatar, vec![("a.gif".into(), images::gif())])
        .await;
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (422, "photos_rejected")
    );
    assert_eq!(
        codes(&body["rejected"]),
        [("a.gif".to_string(), "unsupported_format".to_string())]
    );
    assert!(app.blob_files().is_empty());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn quality_problems_and_near_duplicates_are_warnings(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = new_avatar(&app).await;
    let response = app
        .upload(
            &avatar,
            vec![
                ("original.jpg".into(), images::jpeg(7)),
                ("copy.jpg".into(), images::near_copy_jpeg(7)),
                ("dark.jpg".into(), images::dark_jpeg(8)),
            ],
        )
        .await;
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    let warnings = |i: usize| -> Vec<String> {
        report["accepted"][i]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["code"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(warnings(0).is_empty(), "{:?}", warnings(0));
    assert!(
        warnings(1).contains(&"near_duplicate".to_string()),
        "{:?}",
        warnings(1)
    );
    assert!(
        warnings(2).contains(&"too_dark".to_string()),
        "{:?}",
        warnings(2)
    );
    assert_eq!(
        report["accepted"].as_array().unwrap().len(),
        3,
        "warnings do not reject"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_avatar_is_ready_at_the_minimum_and_refuses_past_the_maximum(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = new_avatar(&app).await;
    let batch = |from: u64, n: u64| {
        (from..from + n)
            .map(|i| (format!("p{i}.jpg"), images::jpeg(i)))
            .collect::<Vec<_>>()
    };

    let report: Value = app
        .upload(&avatar, batch(100, 9))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            report["avatar"]["photo_count"].as_u64(),
            report["avatar"]["status"].as_str()
        ),
        (Some(9), Some("draft"))
    );
    let report: Value = app
        .upload(&avatar, batch(200, 1))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            report["avatar"]["photo_count"].as_u64(),
            report["avatar"]["status"].as_str()
        ),
        (Some(10), Some("ready"))
    );

    // Up to 20: the 21st is refused with its own code, the rest of its batch kept.
    let report: Value = app
        .upload(&avatar, batch(300, 11))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["accepted"].as_array().unwrap().len(), 10);
    assert_eq!(
        codes(&report["rejected"]),
        [("p310.jpg".to_string(), "photo_limit_reached".to_string())]
    );
    assert_eq!(report["avatar"]["photo_count"], 20);

    // Deleting down below the minimum makes the avatar a draft again.
    let listed: Value = app.get_json(&format!("/avatars/{avatar}/photos")).await;
    let ids: Vec<String> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    for id in &ids[..11] {
        let response = app
            .request(Method::DELETE, &format!("/avatars/{avatar}/photos/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    let current: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(
        (current["photo_count"].as_u64(), current["status"].as_str()),
        (Some(9), Some("draft"))
    );
    assert_eq!(app.blob_files().len(), 9, "deleted photos' blobs are gone");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn malformed_requests_are_problems(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = new_avatar(&app).await;
    let path = format!("/avatars/{avatar}/photos");

    // No file part at all: only a text field.
    let form = reqwest::multipart::Form::new().text("note", "hello");
    let response = app
        .request(Method::POST, &path)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (422, "validation_failed")
    );
    assert_eq!(body["errors"][0]["code"], "no_files");

    // An empty multipart body.
    let response = app
        .request(Method::POST, &path)
        .header("content-type", "multipart/form-data; boundary=xyz")
        .body("--xyz--\r\n")
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str().unwrap()),
        (422, "no_files")
    );

    // A wrong content type.
    let response = app
        .request(Method::POST, &path)
        .header("content-type", "image/jpeg")
        .body(images::jpeg(1))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );

    // Multipart without a boundary, and garbage framing.
    for (content_type, body) in [
        ("multipart/form-data", "x"),
        ("multipart/form-data; boundary=b", "garbage"),
    ] {
        let response = app
            .request(Method::POST, &path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, problem_body) = problem(response).await;
        assert!(
            status == 400 || status == 422,
            "{content_type}: {status} {problem_body}"
        );
    }

    // Another tenant's avatar, and an unknown one.
    let other = app.new_key("tenant-b").await;
    let response = app
        .request_as(&other, Method::POST, &path)
        .multipart(reqwest::multipart::Form::new().part(
            "f",
            reqwest::multipart::Part::bytes(images::jpeg(1)).file_name("a.jpg"),
        ))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "avatar_not_found")
    );
    let response = app
        .request_as(&other, Method::GET, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert!(app.blob_files().is_empty());
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_file_over_the_size_limit_is_rejected_and_the_rest_kept(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.photos.max_photo_bytes = 200 * 1024;
    })
    .await;
    let avatar = new_avatar(&app).await;
    let big = images::encode(&images::picture(5, 900, 900), image::ImageFormat::Png);
    assert!(big.len() > 200 * 1024);
    let response = app
        .upload(
            &avatar,
            vec![("big.png".into(), big), ("ok.jpg".into(), images::jpeg(6))],
        )
        .await;
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        codes(&report["rejected"]),
        [("big.png".to_string(), "file_too_large".to_string())]
    );
    assert_eq!(report["accepted"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn deleting_an_avatar_deletes_its_photos_blobs(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let avatar = app.avatar_with_photos(3).await;
    assert_eq!(app.blob_files().len(), 3);
    let response = app
        .request(Method::DELETE, &format!("/avatars/{avatar}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(app.blob_files().is_empty());
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM photos")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM blob_deletions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0, "the deletion queue is drained");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_failed_blob_write_leaves_no_photo_and_no_blob(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let avatar = new_avatar(&app).await;
    // Make the blob directory unusable: a file where the avatar's folder must go.
    let tenant_dirs = app.blobs_dir.path().join("tenants");
    std::fs::write(&tenant_dirs, b"not a directory").unwrap();
    let response = app
        .upload(&avatar, vec![("a.jpg".into(), images::jpeg(1))])
        .await;
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (503, "storage_unavailable")
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM photos")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    std::fs::remove_file(&tenant_dirs).unwrap();
    assert!(app.blob_files().is_empty());
    let current: Value = app.get_json(&format!("/avatars/{avatar}")).await;
    assert_eq!(current["photo_count"], 0);
    // The same photo goes in once storage works again.
    let response = app
        .upload(&avatar, vec![("a.jpg".into(), images::jpeg(1))])
        .await;
    assert_eq!(response.status(), 201);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_upload_abandoned_mid_way_is_swept_with_its_blob(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let avatar = app.avatar_with_photos(1).await;
    // A process died after reserving a photo and writing part of its blob.
    let key = format!("tenants/x/avatars/{avatar}/photos/abandoned");
    app.blobs
        .put_bytes(&key, bytes::Bytes::from_static(b"partial"))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO photos (id, tenant_id, avatar_id, file_name, format, width, height, bytes, sha256,
             perceptual_hash, blob_key, created_at)
         SELECT gen_random_uuid(), tenant_id, id, 'x.jpg', 'jpeg', 600, 600, 7, 'abc', 0, $2,
             now() - interval '1 hour'
         FROM avatars WHERE id = $1::uuid",
    )
    .bind(&avatar)
    .bind(&key)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(app.blob_files().len(), 2);

    let state = app.service();
    service::workers::janitor::run_once(&state).await;

    assert!(!app.blobs.exists(&key).await.unwrap());
    assert_eq!(app.blob_files().len(), 1, "the stored photo stays");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM photos WHERE state = 'pending'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
    let listed: Value = app.get_json(&format!("/avatars/{avatar}/photos")).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn photos_can_be_fetched_from_the_callers_storage(pool: PgPool) {
    use axum::routing::get;
    let origin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let router = axum::Router::new()
        .route("/a.jpg", get(|| async { images::jpeg(41) }))
        .route("/b.jpg", get(|| async { images::jpeg(42) }))
        .route("/page.jpg", get(|| async { images::html() }));
    tokio::spawn(async move { axum::serve(origin, router).await.unwrap() });

    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.fetch.allow_http = true;
        settings.fetch.allowed_private = vec![origin_addr];
    })
    .await;
    let avatar = new_avatar(&app).await;
    let base = format!("http://{origin_addr}");
    let urls = json!({"urls": [
        format!("{base}/a.jpg"),
        format!("{base}/b.jpg"),
        format!("{base}/page.jpg"),
        format!("{base}/missing.jpg"),
        "http://127.0.0.1:9/x.jpg",
        "http://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
    ]});
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/photos"))
        .json(&urls)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["accepted"].as_array().unwrap().len(), 2);
    let rejected: Vec<String> = codes(&report["rejected"])
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        rejected,
        [
            "unsupported_format",
            "http_status",
            "forbidden_address",
            "forbidden_address",
            "scheme_not_allowed"
        ]
    );
}

/// A multipart body of `parts` empty file parts.
fn empty_parts(parts: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for i in 0..parts {
        body.extend_from_slice(
            format!(
                "--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"e{i}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(b"--b--\r\n");
    body
}

/// Empty or tiny parts cannot pile up without end: past the parts limit the whole request is
/// refused, naming the limit.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn an_upload_with_more_parts_than_the_limit_is_refused_naming_the_limit(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = new_avatar(&app).await;
    let send = |parts: usize| {
        app.request(Method::POST, &format!("/avatars/{avatar}/photos"))
            .header("content-type", "multipart/form-data; boundary=b")
            .body(empty_parts(parts))
            .send()
    };
    let (status, body) = problem(send(10_000).await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too_many_parts"))
    );
    assert_eq!(body["limit"], 100);

    // At the limit every part still gets its own answer.
    let (status, body) = problem(send(100).await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("photos_rejected"))
    );
    assert_eq!(body["rejected"].as_array().unwrap().len(), 100);
}

/// An exact duplicate (of a stored photo or of an earlier file in the request) and a file the
/// set has no room for are refused from their bytes alone: even a file that would not decode
/// gets that answer.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn duplicates_and_files_past_the_set_limit_are_refused_before_decoding(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.photos.min_photos = 1;
        settings.photos.max_photos = 2;
    })
    .await;
    let avatar = new_avatar(&app).await;
    let broken = images::truncated_jpeg(1);
    let response = app
        .upload(
            &avatar,
            vec![
                ("broken.jpg".into(), broken.clone()),
                ("again.jpg".into(), broken.clone()),
                ("good.jpg".into(), images::jpeg(2)),
            ],
        )
        .await;
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        codes(&report["rejected"]),
        [
            ("broken.jpg".to_string(), "corrupt_image".to_string()),
            ("again.jpg".to_string(), "duplicate_photo".to_string()),
        ]
    );
    let stored = report["accepted"][0]["id"].as_str().unwrap().to_string();

    let response = app
        .upload(
            &avatar,
            vec![
                ("copy.jpg".into(), images::jpeg(2)),
                ("second.jpg".into(), images::jpeg(3)),
                ("broken.jpg".into(), broken),
            ],
        )
        .await;
    assert_eq!(response.status(), 201);
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        codes(&report["rejected"]),
        [
            ("copy.jpg".to_string(), "duplicate_photo".to_string()),
            ("broken.jpg".to_string(), "photo_limit_reached".to_string()),
        ]
    );
    assert!(report["rejected"][0]["message"]
        .as_str()
        .unwrap()
        .contains(&stored));
    assert_eq!(report["avatar"]["photo_count"], 2);
}

/// A decode budget smaller than any photo makes decodes wait their turn; none fails.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn decodes_past_the_pixel_budget_wait_instead_of_failing(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.photos.decode_budget_pixels = 1;
    })
    .await;
    let first = new_avatar(&app).await;
    let second = new_avatar(&app).await;
    let batch = |from: u64| {
        (from..from + 4)
            .map(|i| (format!("p{i}.jpg"), images::jpeg(i)))
            .collect::<Vec<_>>()
    };
    let (a, b) = tokio::join!(
        app.upload(&first, batch(10)),
        app.upload(&second, batch(20))
    );
    for response in [a, b] {
        assert_eq!(response.status(), 201);
        let report: Value = response.json().await.unwrap();
        assert_eq!(report["accepted"].as_array().unwrap().len(), 4, "{report}");
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_photo_whose_upload_died_can_be_sent_again_one_lease_later(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool.clone()), |settings| {
        settings.jobs.lease = std::time::Duration::from_secs(3);
        settings.workers.janitor = std::time::Duration::from_millis(100);
    })
    .await;
    let avatar = app
        .create_avatar(json!({"name": "killed upload", "kind": "character"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let photo = images::jpeg(2);
    let first: Value = app
        .upload(&avatar, vec![("first.jpg".into(), photo.clone())])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["accepted"].as_array().unwrap().len(), 1);
    // The process storing the bytes died: its row stays pending, as a reservation.
    sqlx::query(
        "UPDATE photos SET state = 'pending', created_at = now() WHERE avatar_id = $1::uuid",
    )
    .bind(&avatar)
    .execute(&pool)
    .await
    .unwrap();
    let refused: Value = app
        .upload(&avatar, vec![("again.jpg".into(), photo.clone())])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        codes(&refused["rejected"]),
        [("again.jpg".to_string(), "duplicate_photo".to_string())]
    );
    // One lease (JOB_LEASE) later the janitor takes the dead reservation away.
    app.eventually("the same file to be taken again", || async {
        let report: Value = app
            .upload(&avatar, vec![("again.jpg".into(), photo.clone())])
            .await
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if report["accepted"].as_array().map_or(0, Vec::len) == 1 {
            Ok(())
        } else {
            Err(report.to_string())
        }
    })
    .await;
}
