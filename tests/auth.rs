use blackbox::{problem, TestApp};
use reqwest::Method;
use sqlx::PgPool;

/// Every way of failing authentication gets the same answer.
#[sqlx::test(migrator = "store::MIGRATOR")]
async fn missing_malformed_unknown_and_revoked_keys_get_the_same_401(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let revoked = app.new_key("tenant-a").await;
    let keys = app.store.list_api_keys(Some("tenant-a")).await.unwrap();
    let revoked_id = keys
        .iter()
        .find(|k| {
            revoked.starts_with(&k.prefix)
                && k.revoked_at.is_none()
                && !app.key.starts_with(&k.prefix)
        })
        .expect("the second key is listed")
        .id;
    app.store.revoke_api_key(revoked_id).await.unwrap();

    let attempts: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("basic scheme", Some(format!("Basic {}", app.key))),
        ("empty bearer", Some("Bearer ".into())),
        ("unknown key", Some("Bearer avk_doesnotexist".into())),
        ("revoked key", Some(format!("Bearer {revoked}"))),
    ];
    let mut bodies = Vec::new();
    for (what, header) in attempts {
        let mut request = app.client.get(app.url("/avatars"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer"),
            "{what}"
        );
        let (status, mut body) = problem(response).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["code"], "unauthorized", "{what}");
        body.as_object_mut().unwrap().remove("request_id");
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "identical bodies: {bodies:#?}"
    );

    // The live key still works; the revoked one stays refused.
    let ok = app.request(Method::GET, "/avatars").send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_key_works_until_it_is_revoked(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let key = app.new_key("tenant-b").await;
    let before = app
        .request_as(&key, Method::GET, "/avatars")
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);

    let listed = app.store.list_api_keys(Some("tenant-b")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(key.starts_with(&listed[0].prefix));
    app.store.revoke_api_key(listed[0].id).await.unwrap();

    let after = app
        .request_as(&key, Method::GET, "/avatars")
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn keys_are_stored_only_as_hashes(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT key_hash, prefix FROM api_keys")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let (hash, prefix) = &rows[0];
    assert_eq!(hash.len(), 32);
    assert!(
        app.key.len() > prefix.len() + 20,
        "only a short prefix is kept in clear"
    );
    let dump: Vec<(String,)> = sqlx::query_as("SELECT row_to_json(k)::text FROM api_keys k")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!dump[0].0.contains(&app.key));
}
