use blackbox::{problem, TestApp};
use reqwest::Method;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn malformed_json_is_a_400_problem(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for body in [
        "{",
        "",
        "{\"name\": \"a\", \"kind\": \"character\"} extra",
        "[1,2",
        "nul",
    ] {
        let response = app
            .request(Method::POST, "/avatars")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(response).await;
        assert_eq!(
            (status, problem["code"].as_str().unwrap()),
            (400, "malformed_json"),
            "{body:?}"
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_body_that_is_not_json_is_a_415_problem(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app
            .request(Method::POST, "/avatars")
            .body(r#"{"name":"a","kind":"character"}"#);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, problem) = problem(request.send().await.unwrap()).await;
        assert_eq!(
            (status, problem["code"].as_str().unwrap()),
            (415, "unsupported_media_type"),
            "{content_type:?}"
        );
    }
    // A charset parameter is fine.
    let response = app
        .request(Method::POST, "/avatars")
        .header("content-type", "application/json; charset=utf-8")
        .body(r#"{"name":"a","kind":"character"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn unknown_routes_and_methods_are_problems(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (status, body) = problem(app.request(Method::GET, "/nope").send().await.unwrap()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (404, "route_not_found")
    );
    assert_eq!(body["instance"], "/nope");

    let response = app.request(Method::PUT, "/avatars").send().await.unwrap();
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (405, "method_not_allowed")
    );
    let allow = allow.expect("Allow header");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");

    // A path id that is not a UUID names nothing.
    let (status, body) = problem(
        app.request(Method::GET, "/avatars/not-a-uuid")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str().unwrap()), (404, "not_found"));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_body_over_the_limit_is_a_413_problem(pool: PgPool) {
    let app = TestApp::spawn_with(store::Store::new(pool), |settings| {
        settings.http.max_body_bytes = 2048;
    })
    .await;
    app.key.is_empty().then(|| panic!("app has a key"));
    let response = app
        .request(Method::POST, "/avatars")
        .json(&json!({"name": "x".repeat(4096), "kind": "character"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (413, "payload_too_large")
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn request_ids_are_echoed_or_generated_and_named_in_problems(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .request(Method::GET, "/avatars")
        .header("x-request-id", "caller-chosen-id-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "caller-chosen-id-1");

    let response = app.request(Method::GET, "/avatars").send().await.unwrap();
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let response = app
        .client
        .get(app.url("/avatars"))
        .header("x-request-id", "trace-me")
        .send()
        .await
        .unwrap();
    let (_, body) = problem(response).await;
    assert_eq!(body["request_id"], "trace-me");
}

/// No text column can hold U+0000: wherever a caller may send text (JSON fields at any depth,
/// query parameters, uploaded file names), it is a 422 naming the field, never a failed insert.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn nul_characters_are_refused_naming_the_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let cases = [
        (
            "/avatars",
            json!({"name": "Anna", "kind": "character", "owner_ref": "user\u{0}1"}),
            "owner_ref",
        ),
        (
            "/avatars",
            json!({"name": "An\u{0}na", "kind": "character"}),
            "name",
        ),
        (
            "/webhook-endpoints",
            json!({"url": "https://hooks.example.com/in", "description": "ours\u{0}"}),
            "description",
        ),
        (
            "/webhook-endpoints",
            json!({"url": "https://hooks.example.com/in", "event_types": ["avatar.deleted", "\u{0}"]}),
            "event_types[1]",
        ),
    ];
    for (path, sent, field) in cases {
        let response = app
            .request(Method::POST, path)
            .json(&sent)
            .send()
            .await
            .unwrap();
        let (status, body) = problem(response).await;
        assert_eq!(status, 422, "{sent}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{sent}: {body}");
        assert_eq!(body["errors"][0]["code"], "invalid_characters", "{body}");
        assert_eq!(body["errors"][0]["location"], "body", "{body}");
    }

    let response = app
        .request(Method::GET, "/avatars?owner_ref=a%00b")
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "owner_ref", "{body}");
    assert_eq!(body["errors"][0]["location"], "query", "{body}");

    let avatar = app
        .create_avatar(json!({"name": "p", "kind": "character"}))
        .await;
    let avatar = avatar["id"].as_str().unwrap();
    // A NUL in a key is named escaped, so the refusal can be kept for its Idempotency-Key and
    // replayed.
    for _ in 0..2 {
        let response = app
            .request(Method::POST, &format!("/avatars/{avatar}/train"))
            .header("idempotency-key", "nul-in-a-key")
            .json(&json!({"overrides": {"st\u{0}eps": 5}}))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(response).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(
            body["errors"][0]["field"], "overrides.st\\u0000eps",
            "{body}"
        );
    }
    // In an uploaded file's name a NUL is a malformed part header.
    let mut upload =
        b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\0b.jpg\"\r\n\r\n"
            .to_vec();
    upload.extend_from_slice(&blackbox::images::jpeg(1));
    upload.extend_from_slice(b"\r\n--b--\r\n");
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar}/photos"))
        .header("content-type", "multipart/form-data; boundary=b")
        .body(upload)
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed_multipart")),
        "{body}"
    );
}
