//! Secrets at rest: a copy of every table holds no webhook signing secret and no fal callback
//! token, in any form that is trivially derived from one; and signing survives a rotation of
//! the key ring with the re-encryption in between.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blackbox::receiver::{fast_events, Receiver, Recorded};
use blackbox::{FalOptions, TestApp};
use reqwest::Method;
use serde_json::{json, Value};
use service::secrets::KeyRing;
use sqlx::PgPool;

const DEADLINE: Duration = Duration::from_secs(60);

/// Registers an endpoint at `receiver` for every event type; returns its id and secret.
async fn endpoint(app: &TestApp, receiver: &Receiver, path: &str) -> (String, String) {
    let response = app
        .request(Method::POST, "/webhook-endpoints")
        .json(&json!({"url": receiver.url(path)}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("json");
    (
        created["id"].as_str().expect("id").to_string(),
        created["secret"].as_str().expect("secret").to_string(),
    )
}

async fn rotate(app: &TestApp, endpoint: &str) -> String {
    let response = app
        .request(
            Method::POST,
            &format!("/webhook-endpoints/{endpoint}/rotate-secret"),
        )
        .json(&json!({"overlap_seconds": 3600}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.expect("json");
    rotated["secret"].as_str().expect("secret").to_string()
}

/// Creates and deletes an avatar: one `avatar.deleted` event to every endpoint.
async fn avatar_deleted_event(app: &TestApp) -> String {
    let avatar = app
        .create_avatar(json!({"name": "short-lived", "kind": "character"}))
        .await;
    let id = avatar["id"].as_str().expect("id").to_string();
    let response = app
        .request(Method::DELETE, &format!("/avatars/{id}"))
        .send()
        .await
        .expect("send");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 204, "deleting the avatar {id} just created: {body}");
    id
}

/// Waits for the `avatar.deleted` event of `avatar` at `path` and checks that it verifies with
/// `secret`.
async fn signed_delivery(receiver: &Receiver, path: &str, avatar: &str, secret: &str) {
    let is_it = |r: &Recorded| r.path == path && r.json()["data"]["id"] == avatar;
    let requests = receiver
        .wait_for(
            &format!("avatar.deleted of {avatar} at {path}"),
            DEADLINE,
            |requests| requests.iter().any(is_it),
        )
        .await;
    let request = requests.iter().find(|r| is_it(r)).expect("found");
    if let Err(error) = request.verify(secret) {
        panic!(
            "the delivery to {path} does not verify ({error}): {:?}",
            request.headers.get("webhook-signature")
        );
    }
}

/// Every row of every table of the database, as JSON text (bytea as `\x` hex).
async fn dump(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || quote_ident(table_name) FROM information_schema.tables
         WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(tables
        .iter()
        .any(|t| t == "public.webhook_endpoint_secrets"));
    assert!(tables.iter().any(|t| t == "public.jobs"));
    let mut text = String::new();
    for table in tables {
        let rows: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(row_to_json(t)::text, E'\\n') FROM {table} t"
        ))
        .fetch_one(pool)
        .await
        .expect("rows");
        text.push_str(&format!("-- {table}\n{}\n", rows.unwrap_or_default()));
    }
    text
}

/// The forms of a secret a dump could give it away in: as is, its base64 part and key bytes
/// in hex and base64 for `whsec_` secrets, its bytes in hex and base64 for hex tokens, and the
/// text's own bytes in hex (as a bytea column would show it).
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_string(), hex::encode(secret.as_bytes())];
    if let Some(encoded) = secret.strip_prefix("whsec_") {
        let key = STANDARD.decode(encoded).expect("base64 secret");
        forms.push(encoded.to_string());
        forms.push(hex::encode(&key));
        forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key));
    } else if let Ok(bytes) = hex::decode(secret) {
        forms.push(STANDARD.encode(&bytes));
        forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes));
    }
    forms
}

/// The `token` of the callback URL of every request the simulator received.
fn callback_tokens(app: &TestApp) -> Vec<(String, String)> {
    let sim = app.sim.as_ref().expect("fal-sim");
    sim.requests()
        .into_iter()
        .filter_map(|request| {
            let url = reqwest::Url::parse(request.webhook_url.as_deref()?).expect("webhook url");
            let pair = |name: &str| {
                url.query_pairs()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.to_string())
            };
            Some((pair("job")?, pair("token")?))
        })
        .collect()
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_database_dump_holds_no_usable_secret(pool: PgPool) {
    let receiver = Receiver::start().await;
    let addr = receiver.addr();
    let app = TestApp::spawn_with_fal_and(pool.clone(), FalOptions::default(), move |s| {
        fast_events(s, &[addr])
    })
    .await;
    let (first, first_secret) = endpoint(&app, &receiver, "/first").await;
    let (second, old_secret) = endpoint(&app, &receiver, "/second").await;
    let second_secret = rotate(&app, &second).await;

    // A training and a generation: each job's callback URL carries a token.
    let avatar = app
        .create_avatar(json!({"name": "dumped", "kind": "character"}))
        .await;
    let avatar_id = avatar["id"].as_str().expect("id");
    let files = blackbox::images::portrait_set(10);
    assert_eq!(app.upload(avatar_id, files).await.status(), 201);
    app.start_training(avatar_id, json!({"preset": "fast"}))
        .await;
    app.wait_for_json(&format!("/avatars/{avatar_id}"), "trained", |a| {
        a["status"] == "trained"
    })
    .await;
    let response = app
        .request(Method::POST, &format!("/avatars/{avatar_id}/generations"))
        .json(&json!({"prompts": ["on a beach", "in a forest"]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let generation: Value = response.json().await.expect("json");
    let generation_id = generation["id"].as_str().expect("id");
    app.wait_for_json(
        &format!("/generations/{generation_id}"),
        "generation done",
        |g| g["status"] == "succeeded",
    )
    .await;
    // The relay opened the sealed secrets: both endpoints got signed deliveries.
    let deleted = avatar_deleted_event(&app).await;
    signed_delivery(&receiver, "/first", &deleted, &first_secret).await;
    signed_delivery(&receiver, "/second", &deleted, &second_secret).await;
    signed_delivery(&receiver, "/second", &deleted, &old_secret).await;

    let tokens = callback_tokens(&app);
    assert_eq!(tokens.len(), 3, "one training and two generation items");
    let dump = dump(&pool).await;
    let lowered = dump.to_lowercase();
    // The dump is of this test's data: the endpoints and jobs are in it.
    for (job, _) in &tokens {
        assert!(dump.contains(job), "job {job} is in the dump");
    }
    assert!(dump.contains(&first) && dump.contains(&second));
    let secrets = [&first_secret, &old_secret, &second_secret]
        .into_iter()
        .cloned()
        .chain(tokens.iter().map(|(_, token)| token.clone()));
    for secret in secrets {
        for form in forms(&secret) {
            assert!(
                !dump.contains(&form) && !lowered.contains(&form.to_lowercase()),
                "the dump holds {form:?}, a form of a secret"
            );
        }
    }
    // Every signing secret is stored sealed, under the ring's primary key.
    let stored: Vec<(Option<String>, bool, bool)> = sqlx::query_as(
        "SELECT key_id, sealed IS NOT NULL, secret IS NOT NULL FROM webhook_endpoint_secrets",
    )
    .fetch_all(&pool)
    .await
    .expect("secrets");
    assert_eq!(stored.len(), 3);
    let primary = app.running().settings.secrets.primary_id().to_string();
    assert!(
        stored.iter().all(
            |(key, sealed, plain)| key.as_deref() == Some(primary.as_str()) && *sealed && !*plain
        ),
        "{stored:?}"
    );
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_sealed_secret_moved_to_another_row_does_not_sign(pool: PgPool) {
    let receiver = Receiver::start().await;
    let addr = receiver.addr();
    let app = TestApp::spawn_with(store::Store::new(pool.clone()), move |s| {
        fast_events(s, &[addr])
    })
    .await;
    let (first, first_secret) = endpoint(&app, &receiver, "/first").await;
    let (second, _) = endpoint(&app, &receiver, "/second").await;
    // Someone with write access to the database copies the first endpoint's sealed secret
    // over the second's, hoping the relay signs the second's deliveries with it.
    sqlx::query(
        "UPDATE webhook_endpoint_secrets s SET key_id = f.key_id, sealed = f.sealed
         FROM webhook_endpoint_secrets f WHERE s.endpoint_id = $2 AND f.endpoint_id = $1",
    )
    .bind(uuid::Uuid::parse_str(&first).unwrap())
    .bind(uuid::Uuid::parse_str(&second).unwrap())
    .execute(&pool)
    .await
    .expect("swap");
    let deleted = avatar_deleted_event(&app).await;
    signed_delivery(&receiver, "/first", &deleted, &first_secret).await;
    // The second endpoint's delivery is not sent, unsigned or otherwise; its attempt fails
    // saying why.
    let attempt = app
        .eventually("a failed attempt to the second endpoint", || async {
            let page = app
                .get_json(&format!("/webhook-endpoints/{second}/deliveries"))
                .await;
            let attempts = page["items"][0]["attempts"].clone();
            match attempts.as_array().and_then(|a| a.first()) {
                Some(attempt) if attempt["outcome"] == "failed" => Ok(attempt.clone()),
                _ => Err(format!("{page:#}")),
            }
        })
        .await;
    let error = attempt["error"].as_str().expect("error");
    assert!(error.contains("no signing secret"), "{error}");
    assert!(receiver.requests_to("/second").is_empty());
}

fn ring(text: &str) -> Arc<KeyRing> {
    Arc::new(KeyRing::parse(text).expect("key ring"))
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn signing_survives_a_key_rotation_and_reencryption(pool: PgPool) {
    let k1 = format!("k1:{}", STANDARD.encode([1u8; 32]));
    let k2 = format!("k2:{}", STANDARD.encode([2u8; 32]));
    let receiver = Receiver::start().await;
    let addr = receiver.addr();
    let only_k1 = ring(&k1);
    let app = TestApp::spawn_with(store::Store::new(pool.clone()), move |s| {
        fast_events(s, &[addr]);
        s.secrets = only_k1;
    })
    .await;
    let (old_endpoint, old_endpoint_secret) = endpoint(&app, &receiver, "/old").await;
    // A secret stored in plaintext before secrets were sealed: it still signs.
    let legacy_secret = format!("whsec_{}", STANDARD.encode([7u8; 32]));
    sqlx::query(
        "INSERT INTO webhook_endpoint_secrets (id, endpoint_id, secret) VALUES ($1, $2, $3)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(uuid::Uuid::parse_str(&old_endpoint).unwrap())
    .bind(&legacy_secret)
    .execute(&pool)
    .await
    .expect("legacy secret");
    let deleted = avatar_deleted_event(&app).await;
    signed_delivery(&receiver, "/old", &deleted, &old_endpoint_secret).await;
    signed_delivery(&receiver, "/old", &deleted, &legacy_secret).await;

    // A new primary key; the old one stays in the ring to open what it sealed.
    let both = ring(&format!("{k2},{k1}"));
    let app = app.restart_with(|s| s.secrets = both.clone()).await;
    let (_, new_endpoint_secret) = endpoint(&app, &receiver, "/new").await;
    let deleted = avatar_deleted_event(&app).await;
    signed_delivery(&receiver, "/old", &deleted, &old_endpoint_secret).await;
    signed_delivery(&receiver, "/new", &deleted, &new_endpoint_secret).await;
    let keys = || async {
        let keys: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT key_id, count(*) FROM webhook_endpoint_secrets GROUP BY key_id ORDER BY key_id",
        )
        .fetch_all(&pool)
        .await
        .expect("keys");
        keys
    };
    let key = |id: &str| Some(id.to_string());
    assert_eq!(
        keys().await,
        vec![(key("k1"), 1), (key("k2"), 1), (None, 1)]
    );

    // What `avatars secrets reencrypt` runs, one row per batch; a second run has nothing to do.
    let report = service::secrets::reencrypt(&app.store, &both, 1)
        .await
        .expect("reencrypt");
    assert_eq!((report.resealed, report.unreadable), (2, 0));
    assert_eq!(keys().await, vec![(key("k2"), 3)]);
    let plaintext: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_endpoint_secrets WHERE secret IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(plaintext, 0, "the legacy plaintext is gone");
    let again = service::secrets::reencrypt(&app.store, &both, 1)
        .await
        .expect("reencrypt");
    assert_eq!((again.resealed, again.unreadable), (0, 0));

    // The old key can go.
    let app = app.restart_with(|s| s.secrets = ring(&k2)).await;
    let deleted = avatar_deleted_event(&app).await;
    signed_delivery(&receiver, "/old", &deleted, &old_endpoint_secret).await;
    signed_delivery(&receiver, "/old", &deleted, &legacy_secret).await;
    signed_delivery(&receiver, "/new", &deleted, &new_endpoint_secret).await;
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn a_job_token_an_older_release_writes_is_not_kept(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    let avatar = app
        .create_avatar(json!({"name": "older", "kind": "character"}))
        .await;
    let job = uuid::Uuid::now_v7();
    // What a replica of the previous release does during a rolling update.
    sqlx::query(
        "INSERT INTO jobs (id, tenant_id, avatar_id, kind, status, trainer, endpoint, preset,
             params, trigger_phrase, webhook_token)
         SELECT $1, tenant_id, id, 'training', 'pending', 'portrait',
             'fal-ai/flux-lora-portrait-trainer', 'balanced', '{}', trigger_phrase, 'older-token'
         FROM avatars WHERE id = $2::uuid",
    )
    .bind(job)
    .bind(avatar["id"].as_str().expect("id"))
    .execute(&pool)
    .await
    .expect("insert");
    let stored = || async {
        let token: String = sqlx::query_scalar("SELECT webhook_token FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(&pool)
            .await
            .expect("job");
        token
    };
    assert_eq!(stored().await, "");
    sqlx::query("UPDATE jobs SET webhook_token = 'older-token' WHERE id = $1")
        .bind(job)
        .execute(&pool)
        .await
        .expect("update");
    assert_eq!(stored().await, "");
}
