//! Face checks: findings per photo on real faces, the training gate by avatar kind, and the
//! photo set report.

use blackbox::{images, problem, FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

async fn avatar(app: &TestApp, kind: &str) -> String {
    let avatar = app
        .create_avatar(json!({"name": format!("a {kind}"), "kind": kind}))
        .await;
    avatar["id"].as_str().unwrap().to_string()
}

async fn upload_ok(app: &TestApp, avatar: &str, files: Vec<(String, Vec<u8>)>) -> Value {
    let response = app.upload(avatar, files).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

fn sharp_faceless_set() -> Vec<(String, Vec<u8>)> {
    (0..10)
        .map(|i| (format!("landscape{i}.jpg"), images::jpeg(300 + i)))
        .collect()
}

async fn train(app: &TestApp, avatar: &str) -> reqwest::Response {
    app.request(Method::POST, &format!("/avatars/{avatar}/train"))
        .json(&json!({"preset": "fast"}))
        .send()
        .await
        .unwrap()
}

async fn photo_set(app: &TestApp, avatar: &str) -> Value {
    let response = app
        .request(Method::GET, &format!("/avatars/{avatar}/photo-set"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn sharp_photos_without_faces_train_a_style_but_not_a_character(pool: PgPool) {
    let app = TestApp::spawn_with_fal(pool, FalOptions::default()).await;
    let character = avatar(&app, "character").await;
    let report = upload_ok(&app, &character, sharp_faceless_set()).await;
    assert_eq!(report["accepted"].as_array().unwrap().len(), 10);
    assert_eq!(
        report["accepted"][0]["faces"]["findings"],
        json!(["no_face"])
    );

    let (status, body) = problem(train(&app, &character).await).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "photo_set_not_trainable"),
        "{body}"
    );
    assert_eq!(body["photo_count"], 10);
    assert_eq!(body["usable_photos"], 0);
    let at_fault = body["photos"].as_array().unwrap();
    let mut names: Vec<&str> = at_fault
        .iter()
        .map(|p| p["file_name"].as_str().unwrap())
        .collect();
    names.sort();
    let mut expected: Vec<String> = sharp_faceless_set().into_iter().map(|f| f.0).collect();
    expected.sort();
    assert_eq!(names, expected);
    for photo in at_fault {
        assert_eq!(photo["findings"], json!(["no_face"]), "{photo}");
        assert!(photo["photo_id"].is_string());
    }
    // The refusal carries the same summary as the report.
    assert_eq!(body["photo_set"], photo_set(&app, &character).await);
    assert_eq!(body["photo_set"]["findings"], json!({"no_face": 10}));

    let style = avatar(&app, "style").await;
    upload_ok(&app, &style, sharp_faceless_set()).await;
    assert_eq!(train(&app, &style).await.status(), 202);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn each_photo_reports_its_faces_with_the_largest_ones_box(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = avatar(&app, "character").await;
    let report = upload_ok(
        &app,
        &id,
        vec![
            ("portrait.jpg".into(), images::portrait(0)),
            ("group.jpg".into(), images::group_photo()),
            ("tiny.jpg".into(), images::tiny_face()),
            ("edge.jpg".into(), images::edge_face()),
        ],
    )
    .await;
    let listed: Value = app.get_json(&format!("/avatars/{id}/photos")).await;
    for photos in [&report["accepted"], &listed["items"]] {
        let by_name = |name: &str| -> Value {
            photos
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["file_name"] == name)
                .unwrap_or_else(|| panic!("{name} in {photos}"))["faces"]
                .clone()
        };
        let portrait = by_name("portrait.jpg");
        assert_eq!(portrait["count"], 1, "{portrait}");
        assert_eq!(portrait["findings"], json!([]), "{portrait}");
        let face = &portrait["largest"];
        let (x, y, w, h) = (
            face["box"]["x"].as_f64().unwrap(),
            face["box"]["y"].as_f64().unwrap(),
            face["box"]["width"].as_f64().unwrap(),
            face["box"]["height"].as_f64().unwrap(),
        );
        assert!(x > 0.0 && y > 0.0 && x + w < 1.0 && y + h < 1.0, "{face}");
        assert!((face["share"].as_f64().unwrap() - w * h).abs() < 1e-6);
        assert!(face["score"].as_f64().unwrap() >= 2.0);

        let group = by_name("group.jpg");
        assert!(group["count"].as_u64().unwrap() >= 2, "{group}");
        assert!(
            group["findings"]
                .as_array()
                .unwrap()
                .contains(&json!("several_faces")),
            "{group}"
        );
        let tiny = by_name("tiny.jpg");
        assert_eq!(tiny["count"], 1, "{tiny}");
        assert_eq!(tiny["findings"], json!(["face_too_small"]), "{tiny}");
        let edge = by_name("edge.jpg");
        assert_eq!(edge["count"], 1, "{edge}");
        assert_eq!(edge["findings"], json!(["face_cut_off"]), "{edge}");
        assert!(
            edge["largest"]["box"]["x"].as_f64().unwrap() < 0.02,
            "{edge}"
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_photo_set_report_says_what_a_training_would_get(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = avatar(&app, "character").await;
    let mut files = images::portrait_set(9);
    files.push(("landscape.jpg".into(), images::jpeg(5)));
    files.push(("landscape-again.jpg".into(), images::near_copy_jpeg(5)));
    let report = upload_ok(&app, &id, files).await;
    let landscape_ids: Vec<Value> = report["accepted"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["file_name"].as_str().unwrap().starts_with("landscape"))
        .map(|p| p["id"].clone())
        .collect();

    // One short of the minimum: nine photos count, two show no face.
    let set = photo_set(&app, &id).await;
    assert_eq!(set["photo_count"], 11, "{set}");
    assert_eq!(set["usable_photos"], 9);
    assert_eq!(set["min_photos"], 10);
    assert_eq!(set["face_policy"], "require");
    assert_eq!(set["trainable"], false);
    assert_eq!(set["trainer"], "portrait");
    assert_eq!(set["findings"], json!({"no_face": 2}));
    assert_eq!(set["near_duplicate_groups"], json!([landscape_ids]));
    let spread = &set["face_share"];
    let (min, median, max) = (
        spread["min"].as_f64().unwrap(),
        spread["median"].as_f64().unwrap(),
        spread["max"].as_f64().unwrap(),
    );
    assert!(
        0.02 <= min && min <= median && median <= max && max < 1.0,
        "{spread}"
    );
    let faulty: Vec<&Value> = set["photos_with_findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["photo_id"])
        .collect();
    assert_eq!(faulty, landscape_ids.iter().collect::<Vec<_>>());

    // The tenth usable portrait makes it trainable.
    upload_ok(&app, &id, vec![("p9.jpg".into(), images::portrait(9))]).await;
    let set = photo_set(&app, &id).await;
    assert_eq!(
        (set["usable_photos"].as_u64(), set["trainable"].as_bool()),
        (Some(10), Some(true))
    );

    let (status, body) = problem(
        app.request(
            Method::GET,
            &format!("/avatars/{}/photo-set", uuid::Uuid::now_v7()),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "avatar_not_found")
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_face_policy_is_set_per_kind(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.photos.face_policy = domain::FacePolicies::default()
            .with_override(domain::AvatarKind::Character, domain::FacePolicy::Warn)
            .with_override(domain::AvatarKind::Product, domain::FacePolicy::Require);
    })
    .await;
    let character = avatar(&app, "character").await;
    upload_ok(&app, &character, sharp_faceless_set()).await;
    let set = photo_set(&app, &character).await;
    assert_eq!(
        (
            &set["face_policy"],
            &set["usable_photos"],
            &set["trainable"]
        ),
        (&json!("warn"), &json!(10), &json!(true)),
        "{set}"
    );
    // Warned about, still listed.
    assert_eq!(set["findings"], json!({"no_face": 10}));

    let product = avatar(&app, "product").await;
    upload_ok(&app, &product, sharp_faceless_set()).await;
    let set = photo_set(&app, &product).await;
    assert_eq!(
        (
            &set["face_policy"],
            &set["usable_photos"],
            &set["trainable"]
        ),
        (&json!("require"), &json!(0), &json!(false)),
        "{set}"
    );
}
