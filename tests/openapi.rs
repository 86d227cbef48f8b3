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
            if operation["security"][0]["api_key"].is_array() {
                let limited = &operation["responses"]["429"];
                assert_eq!(
                    limited["content"]["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem",
                    "{method} {path} documents its 429"
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

/// The enum values a property may take: through a `$ref`, a nullable `oneOf`, or array items.
fn enum_values(spec: &Value, property: &Value) -> Option<Vec<String>> {
    let schema = resolve(spec, property);
    if let Some(values) = schema["enum"].as_array() {
        return Some(
            values
                .iter()
                .map(|v| v.as_str().expect("string values").to_string())
                .collect(),
        );
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        return variants
            .iter()
            .filter(|v| v["type"] != "null")
            .find_map(|v| enum_values(spec, v));
    }
    if schema["type"] == "array" || schema["type"] == serde_json::json!(["array", "null"]) {
        return enum_values(spec, &schema["items"]);
    }
    None
}

fn strings(values: impl IntoIterator<Item = &'static str>) -> Vec<String> {
    values.into_iter().map(str::to_string).collect()
}

/// Fields whose values are a closed set are documented as enums of exactly the strings the
/// service sends and accepts.
#[test]
fn closed_value_sets_are_documented_as_enums() {
    let spec: Value = serde_json::from_str(&api::openapi_json()).unwrap();
    let job_status = strings(domain::JobStatus::ALL.map(domain::JobStatus::as_str));
    let trainers = strings(domain::Trainer::ALL.map(domain::Trainer::as_str));
    let training_presets = strings(domain::PresetName::ALL.map(domain::PresetName::as_str));
    let generation_presets =
        strings(domain::GenerationPresetName::ALL.map(domain::GenerationPresetName::as_str));
    let model_types = strings(domain::ModelType::ALL.map(domain::ModelType::as_str));
    let image_sizes = strings(domain::ImageSizePreset::ALL.map(domain::ImageSizePreset::as_str));
    let photo_formats = strings(
        [
            domain::PhotoFormat::Jpeg,
            domain::PhotoFormat::Png,
            domain::PhotoFormat::Webp,
        ]
        .map(domain::PhotoFormat::as_str),
    );
    let event_types = strings(domain::EventType::NAMES.iter().copied());
    let expected: Vec<(&str, &str, Vec<String>)> = vec![
        ("TrainRequest", "preset", training_presets.clone()),
        ("TrainRequest", "trainer", trainers.clone()),
        ("TrainingResponse", "status", job_status.clone()),
        ("TrainingResponse", "trainer", trainers.clone()),
        ("TrainingResponse", "preset", training_presets.clone()),
        ("TrainingModel", "model_type", model_types.clone()),
        ("TrainedModel", "model_type", model_types.clone()),
        ("TrainingPresetResponse", "trainer", trainers),
        ("TrainingPresetResponse", "preset", training_presets),
        ("TrainingPresetResponse", "model_type", model_types.clone()),
        (
            "GenerationPresetResponse",
            "preset",
            generation_presets.clone(),
        ),
        ("GenerationPresetResponse", "image_size", image_sizes),
        ("GenerateRequest", "preset", generation_presets.clone()),
        (
            "GenerateRequest",
            "aspect_ratio",
            strings(domain::generation::ASPECT_RATIOS),
        ),
        ("GenerateRequest", "output_format", strings(["jpeg", "png"])),
        (
            "GenerateRequest",
            "safety_tolerance",
            strings(["1", "2", "3", "4", "5", "6"]),
        ),
        (
            "GenerationResponse",
            "status",
            strings([
                "pending",
                "in_progress",
                "succeeded",
                "failed",
                "partially_succeeded",
            ]),
        ),
        ("GenerationResponse", "model_type", model_types),
        ("GenerationResponse", "preset", generation_presets),
        ("GenerationItem", "status", job_status),
        ("PhotoResponse", "format", photo_formats.clone()),
        ("ArchiveImage", "format", photo_formats),
        ("CreateEndpointRequest", "event_types", event_types.clone()),
        ("UpdateEndpointRequest", "event_types", event_types.clone()),
        ("EndpointResponse", "event_types", event_types.clone()),
        (
            "EndpointResponse",
            "disabled_reason",
            strings(["gone", "failing", "disabled_by_caller"]),
        ),
        ("DeliveryResponse", "event_type", event_types),
        (
            "DeliveryResponse",
            "status",
            strings(["pending", "delivered", "failed"]),
        ),
        (
            "AttemptResponse",
            "outcome",
            strings(["in_flight", "succeeded", "failed", "abandoned"]),
        ),
        (
            "WebhookAck",
            "outcome",
            strings(["applied", "ignored", "duplicate", "unknown_request"]),
        ),
        ("HealthStatus", "status", strings(["ok", "ready"])),
    ];
    for (schema, property, values) in expected {
        let field = &spec["components"]["schemas"][schema]["properties"][property];
        assert!(field.is_object(), "{schema}.{property} documented");
        assert_eq!(
            enum_values(&spec, field),
            Some(values),
            "{schema}.{property}: {field}"
        );
    }
    let types = spec["paths"]["/events"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "types")
        .expect("the types parameter");
    assert_eq!(
        enum_values(&spec, &types["schema"]),
        Some(strings(domain::EventType::NAMES.iter().copied())),
        "{types}"
    );
    assert_eq!(types["explode"], false, "comma-separated: {types}");
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
