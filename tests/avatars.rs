use std::collections::HashSet;

use blackbox::{problem, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::PgPool;

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn create_then_read_an_avatar(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let response = app
        .request(Method::POST, "/avatars")
        .json(&json!({"name": "  Anna ", "kind": "character", "owner_ref": "user-1", "trigger_phrase": "ohwx_anna"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/avatars/{}", created["id"].as_str().unwrap())
    );
    assert_eq!(created["name"], "Anna", "names are trimmed");
    assert_eq!(created["kind"], "character");
    assert_eq!(created["owner_ref"], "user-1");
    assert_eq!(created["trigger_phrase"], "ohwx_anna");
    assert_eq!(created["status"], "draft");
    assert_eq!(created["photo_count"], 0);
    assert_eq!(created["trained_model"], Value::Null);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));

    let fetched: Value = app
        .request(Method::GET, &location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_trigger_phrase_is_generated_unique_when_absent(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut phrases = HashSet::new();
    for i in 0..5 {
        let avatar = app
            .create_avatar(json!({"name": format!("a{i}"), "kind": "style"}))
            .await;
        let phrase = avatar["trigger_phrase"].as_str().unwrap().to_string();
        assert!(phrase.starts_with("avtr_"), "{phrase}");
        assert!(phrases.insert(phrase));
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_trigger_phrase_is_unique_within_a_tenant_whatever_its_case(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    app.create_avatar(json!({"name": "a", "kind": "character", "trigger_phrase": "ohwx_man"}))
        .await;
    let response = app
        .request(Method::POST, "/avatars")
        .json(&json!({"name": "b", "kind": "character", "trigger_phrase": "OHWX_MAN"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "trigger_phrase_taken");
    assert_eq!(body["field"], "trigger_phrase");

    // Another tenant may use the same phrase.
    let other = app.new_key("tenant-b").await;
    let response = app
        .request_as(&other, Method::POST, "/avatars")
        .json(&json!({"name": "c", "kind": "character", "trigger_phrase": "ohwx_man"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

async fn create_errors(app: &TestApp, body: Value) -> Vec<(String, String)> {
    let response = app
        .request(Method::POST, "/avatars")
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, problem) = problem(response).await;
    assert_eq!(status, 422, "{body} -> {problem}");
    assert_eq!(problem["code"], "validation_failed");
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["location"], "body");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
            (
                e["field"].as_str().unwrap().to_string(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(f, c)| (f.to_string(), c.to_string()))
        .collect()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn every_invalid_create_field_is_named(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let cases = [
        (json!({"kind": "character"}), &[("name", "required")][..]),
        (json!({"name": "a"}), &[("kind", "required")]),
        (
            json!({"name": "   ", "kind": "character"}),
            &[("name", "blank")],
        ),
        (
            json!({"name": "x".repeat(101), "kind": "character"}),
            &[("name", "too_long")],
        ),
        (
            json!({"name": "a\u{0000}b", "kind": "character"}),
            &[("name", "invalid_characters")],
        ),
        (
            json!({"name": 5, "kind": "character"}),
            &[("name", "invalid_type")],
        ),
        (
            json!({"name": "a", "kind": "robot"}),
            &[("kind", "invalid_value")],
        ),
        (
            json!({"name": "a", "kind": "character", "colour": "red"}),
            &[("colour", "unknown_field")],
        ),
        (
            json!({"name": "a", "kind": "character", "owner_ref": ""}),
            &[("owner_ref", "blank")],
        ),
        (
            json!({"name": "a", "kind": "character", "owner_ref": "x".repeat(201)}),
            &[("owner_ref", "too_long")],
        ),
        (
            json!({"name": "a", "kind": "character", "owner_ref": " padded "}),
            &[("owner_ref", "invalid_characters")],
        ),
        (
            json!({"name": "a", "kind": "character", "trigger_phrase": "ab"}),
            &[("trigger_phrase", "invalid_length")],
        ),
        (
            json!({"name": "a", "kind": "character", "trigger_phrase": "two words"}),
            &[("trigger_phrase", "invalid_format")],
        ),
        (
            json!({"name": "a", "kind": "character", "trigger_phrase": "9lives"}),
            &[("trigger_phrase", "invalid_format")],
        ),
        (
            json!({"name": "", "kind": "general", "owner_ref": "", "trigger_phrase": "x"}),
            &[
                ("name", "blank"),
                ("owner_ref", "blank"),
                ("trigger_phrase", "invalid_length"),
            ],
        ),
    ];
    for (body, expected) in cases {
        assert_eq!(
            create_errors(&app, body.clone()).await,
            pairs(expected),
            "{body}"
        );
    }
    let listed: Value = app.get_json("/avatars").await;
    assert_eq!(
        listed["items"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn patch_renames_and_changes_the_phrase_only_while_untrained(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let avatar = app
        .create_avatar(json!({"name": "a", "kind": "character", "trigger_phrase": "first_one"}))
        .await;
    let path = format!("/avatars/{}", avatar["id"].as_str().unwrap());

    let patched: Value = app
        .request(Method::PATCH, &path)
        .json(&json!({"name": "renamed", "trigger_phrase": "second_one"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["trigger_phrase"], "second_one");
    assert!(patched["updated_at"].as_str().unwrap() >= avatar["updated_at"].as_str().unwrap());

    // Once trained, the phrase is part of the model.
    sqlx::query("UPDATE avatars SET status = 'trained' WHERE id = $1::uuid")
        .bind(avatar["id"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    let response = app
        .request(Method::PATCH, &path)
        .json(&json!({"trigger_phrase": "third_one"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (409, "trigger_phrase_locked")
    );
    // Renaming still works.
    let renamed = app
        .request(Method::PATCH, &path)
        .json(&json!({"name": "again"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    let current: Value = app
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (current["name"].as_str(), current["trigger_phrase"].as_str()),
        (Some("again"), Some("second_one"))
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn every_invalid_patch_field_is_named(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let taken = app
        .create_avatar(json!({"name": "a", "kind": "character", "trigger_phrase": "taken_one"}))
        .await;
    let avatar = app
        .create_avatar(json!({"name": "b", "kind": "character"}))
        .await;
    let path = format!("/avatars/{}", avatar["id"].as_str().unwrap());
    let cases = [
        (json!({"name": ""}), vec![("name", "blank")]),
        (json!({"name": "x".repeat(101)}), vec![("name", "too_long")]),
        (
            json!({"trigger_phrase": "-"}),
            vec![("trigger_phrase", "invalid_length")],
        ),
        (json!({"kind": "style"}), vec![("kind", "unknown_field")]),
        (json!({"name": ["a"]}), vec![("name", "invalid_type")]),
        (
            json!({"name": " ", "trigger_phrase": "no spaces"}),
            vec![("name", "blank"), ("trigger_phrase", "invalid_format")],
        ),
    ];
    for (body, expected) in cases {
        let response = app
            .request(Method::PATCH, &path)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, problem) = problem(response).await;
        assert_eq!(status, 422, "{body}");
        let got: Vec<(String, String)> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["field"].as_str().unwrap().into(),
                    e["code"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(got, pairs(&expected), "{body}");
    }
    let response = app
        .request(Method::PATCH, &path)
        .json(&json!({"trigger_phrase": taken["trigger_phrase"]}))
        .send()
        .await
        .unwrap();
    let (status, problem) = problem(response).await;
    assert_eq!(
        (status, problem["code"].as_str().unwrap()),
        (409, "trigger_phrase_taken")
    );

    let unchanged: Value = app
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged, avatar, "refused patches change nothing");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn delete_removes_the_avatar(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let avatar = app
        .create_avatar(json!({"name": "a", "kind": "product"}))
        .await;
    let path = format!("/avatars/{}", avatar["id"].as_str().unwrap());
    let deleted = app.request(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    for method in [Method::GET, Method::DELETE] {
        let (status, body) = problem(app.request(method, &path).send().await.unwrap()).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (404, "avatar_not_found")
        );
    }
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn another_tenants_avatar_is_not_found(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mine = app
        .create_avatar(json!({"name": "mine", "kind": "character"}))
        .await;
    let path = format!("/avatars/{}", mine["id"].as_str().unwrap());
    let other = app.new_key("tenant-b").await;

    let unknown_path = format!("/avatars/{}", uuid::Uuid::now_v7());
    for (method, body) in [
        (Method::GET, None),
        (Method::PATCH, Some(json!({"name": "stolen"}))),
        (Method::DELETE, None),
    ] {
        let mut request = app.request_as(&other, method.clone(), &path);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let (status, mut theirs) = problem(request.send().await.unwrap()).await;
        assert_eq!(
            (status, theirs["code"].as_str().unwrap()),
            (404, "avatar_not_found"),
            "{method}"
        );
        // Indistinguishable from an id that exists nowhere.
        let mut request = app.request_as(&other, method.clone(), &unknown_path);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let (_, mut nowhere) = problem(request.send().await.unwrap()).await;
        for body in [&mut theirs, &mut nowhere] {
            let object = body.as_object_mut().unwrap();
            object.remove("request_id");
            object.remove("instance");
            object.remove("detail");
        }
        assert_eq!(theirs, nowhere);
    }
    let listed: Value = app
        .request_as(&other, Method::GET, "/avatars")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));
    let still: Value = app
        .request(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still["name"], "mine", "the other tenant changed nothing");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn listing_pages_through_every_avatar_newest_first(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut created = Vec::new();
    for i in 0..7 {
        let owner = if i % 2 == 0 { "even" } else { "odd" };
        let avatar = app
            .create_avatar(json!({"name": format!("a{i}"), "kind": "general", "owner_ref": owner}))
            .await;
        created.push(avatar["id"].as_str().unwrap().to_string());
    }
    created.reverse();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/avatars?limit=3".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .request(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 3);
        seen.extend(items.iter().map(|a| a["id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created, "every avatar once, newest first");

    let odd: Value = app.get_json("/avatars?owner_ref=odd&limit=100").await;
    assert_eq!(odd["items"].as_array().unwrap().len(), 3);
    assert!(odd["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["owner_ref"] == "odd"));
    assert_eq!(odd["next_cursor"], Value::Null);

    let drafts: Value = app.get_json("/avatars?status=draft").await;
    assert_eq!(drafts["items"].as_array().unwrap().len(), 7);
    let trained: Value = app.get_json("/avatars?status=trained").await;
    assert_eq!(trained["items"], json!([]));
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn invalid_listing_parameters_are_named(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (query, field, code) in [
        ("limit=0", "limit", "out_of_range"),
        ("limit=101", "limit", "out_of_range"),
        ("limit=ten", "limit", "invalid_value"),
        ("cursor=garbage", "cursor", "invalid_cursor"),
        ("status=sleeping", "status", "invalid_value"),
        ("sort=name", "sort", "unknown_field"),
    ] {
        let response = app
            .request(Method::GET, &format!("/avatars?{query}"))
            .send()
            .await
            .unwrap();
        let (status, body) = problem(response).await;
        assert_eq!(status, 422, "{query}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{query}: {body}");
        assert_eq!(body["errors"][0]["location"], "query", "{query}");
    }
}
