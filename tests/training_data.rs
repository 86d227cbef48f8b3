use std::io::{Cursor, Read, Write};

use blackbox::{images, problem, FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;
use zip::write::SimpleFileOptions;

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_training_archive_holds_the_photos_in_order_with_captions(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = app.avatar_with_photos(3).await;
    let state = app.service();
    let tenant = app.store.find_tenant_by_name("tenant-a").await.unwrap().id;
    let avatar_id = domain::AvatarId(avatar.parse().unwrap());
    let photos = app.store.photos_of(tenant, avatar_id).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.zip");
    let summary = service::training_data::build_training_archive(
        &state,
        &photos,
        Some("ohwx_person".into()),
        &first,
    )
    .await
    .unwrap();
    assert_eq!(summary.image_names, ["0001.jpg", "0002.jpg", "0003.jpg"]);
    assert_eq!(summary.caption_names, ["0001.txt", "0002.txt", "0003.txt"]);

    let bytes = std::fs::read(&first).unwrap();
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes.clone())).unwrap();
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).unwrap().name().to_string())
        .collect();
    assert_eq!(
        names,
        ["0001.jpg", "0001.txt", "0002.jpg", "0002.txt", "0003.jpg", "0003.txt"]
    );
    let mut caption = String::new();
    archive
        .by_name("0002.txt")
        .unwrap()
        .read_to_string(&mut caption)
        .unwrap();
    assert_eq!(caption, "ohwx_person");
    // Upright photos go in byte for byte: the first is the first uploaded.
    let mut image = Vec::new();
    archive
        .by_name("0001.jpg")
        .unwrap()
        .read_to_end(&mut image)
        .unwrap();
    assert_eq!(image, images::portrait(0));

    // The same photos give the same archive.
    let second = dir.path().join("second.zip");
    service::training_data::build_training_archive(
        &state,
        &photos,
        Some("ohwx_person".into()),
        &second,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&second).unwrap(), bytes);
}

fn zip_of(entries: Vec<(&str, Vec<u8>)>) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        writer
            .start_file(name, SimpleFileOptions::default())
            .unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// Serves `files` (path, bytes) on a loopback port and returns its address.
async fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut router = axum::Router::new();
    for (path, bytes) in files {
        router = router.route(
            path,
            axum::routing::get(move || async move { bytes.clone() }),
        );
    }
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// Serves `files` on a loopback port and returns an app allowed to fetch from it.
async fn app_with_origin(pool: PgPool, files: Vec<(&'static str, Vec<u8>)>) -> (TestApp, String) {
    let addr = serve_files(files).await;
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.fetch.allow_http = true;
        settings.fetch.allowed_private = vec![addr];
    })
    .await;
    (app, format!("http://{addr}"))
}

async fn inspect(app: &TestApp, url: &str) -> reqwest::Response {
    app.request(Method::POST, "/training-archives/inspect")
        .json(&json!({"images_data_url": url}))
        .send()
        .await
        .unwrap()
}

async fn inspect_for(app: &TestApp, url: &str, kind: &str) -> Value {
    let response = app
        .request(Method::POST, "/training-archives/inspect")
        .json(&json!({"images_data_url": url, "kind": kind}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_callers_archive_is_checked_for_faces_under_the_kinds_policy(pool: PgPool) {
    let faceless: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("img{i}.jpg"), images::jpeg(500 + i)))
        .collect();
    let faceless_zip = zip_of(
        faceless
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect(),
    );
    let portraits = images::portrait_set(10);
    let portraits_zip = zip_of(
        portraits
            .iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect(),
    );
    let (app, base) = app_with_origin(
        pool,
        vec![
            ("/faceless.zip", faceless_zip),
            ("/portraits.zip", portraits_zip),
        ],
    )
    .await;

    let report = inspect_for(&app, &format!("{base}/faceless.zip"), "character").await;
    assert_eq!(report["usable"], false, "{report}");
    assert_eq!(report["face_policy"], "require");
    assert_eq!(report["usable_images"], 0);
    for image in report["images"].as_array().unwrap() {
        assert_eq!(image["faces"]["findings"], json!(["no_face"]), "{image}");
        assert_eq!(image["counts"], false);
    }
    let report = inspect_for(&app, &format!("{base}/faceless.zip"), "style").await;
    assert_eq!(report["usable"], true, "{report}");
    assert_eq!(report["face_policy"], "off");
    assert_eq!(report["usable_images"], 10);

    let report = inspect_for(&app, &format!("{base}/portraits.zip"), "character").await;
    assert_eq!(report["usable"], true, "{report}");
    assert_eq!(report["usable_images"], 10);
    assert_eq!(report["images"][0]["faces"]["count"], 1);

    let (status, body) = problem(
        app.request(Method::POST, "/training-archives/inspect")
            .json(&json!({"images_data_url": format!("{base}/portraits.zip"), "kind": "robot"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
}

/// A training refused for its archive carries the archive's inspection in the shape
/// `POST /training-archives/inspect` answers with, so a caller reads one schema for both.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_training_refused_for_its_archive_carries_the_inspection_as_inspect_shows_it(
    pool: PgPool,
) {
    let names: Vec<String> = (0..10).map(|i| format!("img{i}.jpg")).collect();
    let faceless_zip = zip_of(
        names
            .iter()
            .zip(700..)
            .map(|(name, seed)| (name.as_str(), images::jpeg(seed)))
            .collect(),
    );
    let addr = serve_files(vec![("/faceless.zip", faceless_zip)]).await;
    let app = TestApp::spawn_with_fal_and(pool, FalOptions::default(), |settings| {
        settings.fetch.allow_http = true;
        settings.fetch.allowed_private = vec![addr];
    })
    .await;
    let url = format!("http://{addr}/faceless.zip");
    let inspected = inspect_for(&app, &url, "character").await;
    assert_eq!(inspected["usable"], false, "{inspected}");

    let avatar = app
        .create_avatar(json!({"name": "Ann", "kind": "character"}))
        .await;
    let path = format!("/avatars/{}/train", avatar["id"].as_str().unwrap());
    let (status, body) = problem(
        app.request(Method::POST, &path)
            .json(&json!({"images_data_url": url}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (422, "archive_unusable"),
        "{body}"
    );
    assert_eq!(body["inspection"], inspected);
    assert_eq!(
        body["inspection"]["images"][0]["faces"]["findings"],
        json!(["no_face"])
    );
    assert!(
        app.sim.as_ref().unwrap().requests().is_empty(),
        "nothing reached fal"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_callers_archive_is_checked_before_any_training(pool: PgPool) {
    let good: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("img{i}.jpg"), images::jpeg(500 + i)))
        .collect();
    let good_zip = zip_of(
        good.iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .chain([("img0.txt", b"ohwx".to_vec())])
            .collect(),
    );
    let traversal_zip = zip_of(
        good.iter()
            .map(|(n, b)| (n.as_str(), b.clone()))
            .chain([
                ("../escape.jpg", images::jpeg(900)),
                ("inner.zip", zip_of(vec![("x.jpg", images::jpeg(901))])),
            ])
            .collect(),
    );
    let few_zip = zip_of(vec![
        ("a.jpg", images::jpeg(1)),
        ("b.jpg", images::jpeg(1)),
        ("c.gif", images::gif()),
    ]);
    let bomb_zip = {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer
            .start_file(
                "zeros.jpg",
                SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
        let block = vec![0u8; 1024 * 1024];
        for _ in 0..64 {
            writer.write_all(&block).unwrap();
        }
        writer.finish().unwrap().into_inner()
    };
    let (app, base) = app_with_origin(
        pool,
        vec![
            ("/good.zip", good_zip),
            ("/traversal.zip", traversal_zip),
            ("/few.zip", few_zip),
            ("/bomb.zip", bomb_zip),
            ("/photo.jpg", images::jpeg(3)),
        ],
    )
    .await;

    let report: Value = inspect(&app, &format!("{base}/good.zip"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["usable"], true, "{report}");
    assert_eq!(report["images"].as_array().unwrap().len(), 10);
    assert_eq!(report["captions"], 1);

    let report: Value = inspect(&app, &format!("{base}/traversal.zip"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["usable"], false);
    let rejected: Vec<(String, String)> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["entry_name"].as_str().unwrap().into(),
                r["code"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        rejected.contains(&("../escape.jpg".into(), "unsafe_path".into())),
        "{rejected:?}"
    );
    assert!(
        rejected.contains(&("inner.zip".into(), "nested_archive".into())),
        "{rejected:?}"
    );

    let report: Value = inspect(&app, &format!("{base}/few.zip"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["usable"], false);
    let codes: Vec<&str> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["unsupported_format", "duplicate_photo"], "{report}");
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("needs 10 to 20")),
        "{report}"
    );

    let (status, body) = problem(inspect(&app, &format!("{base}/bomb.zip")).await).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (422, "archive_rejected")
    );
    assert_eq!(body["reason"], "compression_ratio_exceeded");

    let (status, body) = problem(inspect(&app, &format!("{base}/photo.jpg")).await).await;
    assert_eq!(
        (status, body["reason"].as_str().unwrap()),
        (422, "not_a_zip")
    );

    for (url, code) in [
        ("http://10.0.0.1/a.zip", "forbidden_address"),
        ("http://localhost/a.zip", "forbidden_address"),
        ("https://u@evil@example.com/a.zip", "userinfo_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
    ] {
        let (status, body) = problem(inspect(&app, url).await).await;
        assert_eq!(status, 422, "{url}");
        assert_eq!(body["errors"][0]["field"], "images_data_url");
        assert_eq!(body["errors"][0]["code"], code, "{url}: {body}");
    }
}
