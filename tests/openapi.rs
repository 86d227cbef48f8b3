use blackbox::TestApp;
use serde_json::Value;
use sqlx::PgPool;

const REGENERATE: &str = "cargo run -q -p api --bin avatars -- openapi > openapi/openapi.json";

#[test]
fn the_committed_spec_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = api::openapi_json();
    assert!(
        committed == generated,
        "openapi/openapi.json differs from the code; regenerate it with `{REGENERATE}` and commit it"
    );
}

#[test]
fn every_operation_is_documented_with_errors_and_security() {
    let spec: Value = serde_json::from_str(&api::openapi_json()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/avatars",
        "/avatars/{id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} documented");
    }
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["operationId"].is_string(),
                "{method} {path} has an operationId"
            );
            if path.starts_with("/avatars") {
                assert_eq!(
                    operation["security"][0]["api_key"],
                    serde_json::json!([]),
                    "{method} {path}"
                );
                let responses = operation["responses"].as_object().unwrap();
                let unauthorized =
                    &responses["401"]["content"]["application/problem+json"]["schema"]["$ref"];
                assert_eq!(
                    unauthorized, "#/components/schemas/Problem",
                    "{method} {path}"
                );
            }
        }
    }
    assert_eq!(
        spec["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
}

/// The schema a `$ref` names, or the schema itself.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .expect("a component reference");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Swagger UI offers a file picker for the photo upload, and the JSON alternative stays.
#[test]
fn the_photo_upload_is_documented_as_files() {
    let spec: Value = serde_json::from_str(&api::openapi_json()).unwrap();
    let content = &spec["paths"]["/avatars/{id}/photos"]["post"]["requestBody"]["content"];
    let form = resolve(&spec, &content["multipart/form-data"]["schema"]);
    assert_eq!(form["type"], "object", "{form}");
    let files = &form["properties"]["files"];
    assert_eq!(files["type"], "array", "{files}");
    assert_eq!(files["items"]["type"], "string", "{files}");
    assert_eq!(files["items"]["format"], "binary", "{files}");
    let urls = resolve(&spec, &content["application/json"]["schema"]);
    assert_eq!(urls["properties"]["urls"]["type"], "array", "{urls}");
    assert_eq!(urls["properties"]["urls"]["items"]["type"], "string");
}

#[sqlx::test(migrator = "store::MIGRATOR")]
async fn the_served_spec_is_the_generated_one(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let served: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated: Value = serde_json::from_str(&api::openapi_json()).unwrap();
    assert_eq!(served, generated);
}
