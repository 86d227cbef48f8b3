//! Request extractors whose every rejection is a problem document naming the field at fault.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::problem::{ApiError, FieldLocation};

/// A JSON body: `application/json` required, syntax errors are 400, shape errors 422 per field.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        require_json(request.headers())?;
        parse_json(&read_body(request, state).await?).map(AppJson)
    }
}

/// The whole body, within the route's size limit.
pub async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is larger than this endpoint accepts",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    rejection.body_text(),
                )
            }
        })
}

/// Refuses a body that is not declared as JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ))
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a JSON document, reporting shape errors with the path of the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first, so a truncated document is reported as malformed even when its first
    // token already has the wrong type.
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|error| malformed(&error))?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                field_error(&path, &inner.to_string(), FieldLocation::Body)
            }
            _ => malformed(&inner),
        }
    })?;
    deserializer.end().map_err(|error| malformed(&error))?;
    // Valid JSON can only carry U+0000 as an escape; look closer only when one is there.
    if bytes.windows(6).any(|w| w.eq_ignore_ascii_case(b"\\u0000")) {
        let document: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| malformed(&error))?;
        if let Some(path) = nul_in(&document, String::new()) {
            return Err(unstorable_text(FieldLocation::Body, path));
        }
    }
    Ok(value)
}

/// The path of the first string (or key) holding U+0000, which no PostgreSQL text or jsonb
/// column can store.
fn nul_in(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::String(text) if text.contains('\0') => Some(path),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_in(item, format!("{path}[{i}]"))),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            let path = join_path(&path, name);
            if name.contains('\0') {
                Some(path)
            } else {
                nul_in(field, path)
            }
        }),
        _ => None,
    }
}

fn unstorable_text(location: FieldLocation, field: String) -> ApiError {
    // The field's own name may hold the NUL; named escaped, so the problem itself can be
    // stored (an Idempotency-Key keeps the answer).
    ApiError::invalid_field(
        location,
        field.replace('\0', "\\u0000"),
        "invalid_characters",
        "text may not contain the NUL character (U+0000)",
    )
}

fn malformed(error: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!("the body is not valid JSON: {error}"),
    )
}

/// Builds the 422 for a serde data error found at `path`.
fn field_error(path: &str, message: &str, location: FieldLocation) -> ApiError {
    // serde_json appends " at line L column C"; the field path says more to a caller.
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_string();
    let parent = if path == "." { "" } else { path };
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(|name| {
                // serde_path_to_error already ends the path with an unknown field's name, but
                // stops at the parent for a missing one.
                let last = parent.rsplit('.').next().unwrap_or("");
                if last == name {
                    parent.to_string()
                } else {
                    join_path(parent, name)
                }
            })
    };
    let (field, code) = if let Some(field) = named("missing field `") {
        (field, "required")
    } else if let Some(field) = named("unknown field `") {
        (field, "unknown_field")
    } else if let Some(field) = named("duplicate field `") {
        (field, "duplicate_field")
    } else if message.starts_with("invalid type") {
        (parent.to_string(), "invalid_type")
    } else {
        (parent.to_string(), "invalid_value")
    };
    let message = about_the_field(code, &message);
    ApiError::invalid_field(location, field, code, message)
}

/// serde's message, said of the field it names: the problem's `detail` puts the field first
/// ("`limit` must be a whole number"), so the field's own name is not repeated after it.
fn about_the_field(code: &str, message: &str) -> String {
    // What serde says after the field's name ("unknown field `x`, expected one of ...").
    let after_name = || message.split_once("`, ").map(|(_, rest)| rest);
    match code {
        "required" => "is required".to_string(),
        "duplicate_field" => "is given more than once".to_string(),
        "unknown_field" => match after_name() {
            Some("there are no fields") => "is not a field of this request (it takes none)".into(),
            Some(expected) => format!("is not a field of this request; {expected}"),
            None => "is not a field of this request".to_string(),
        },
        _ => match message {
            // Query values parsed with `str::parse`, whose errors name no field.
            "invalid digit found in string" | "cannot parse integer from empty string" => {
                "must be a whole number".to_string()
            }
            "number too large to fit in target type" => "is too large".to_string(),
            "number too small to fit in target type" => "is too small".to_string(),
            "invalid float literal" | "cannot parse float from empty string" => {
                "must be a number".to_string()
            }
            "provided string was not `true` or `false`" => "must be `true` or `false`".to_string(),
            _ if message.starts_with("unknown variant `") => match after_name() {
                Some(expected) => format!("is not an accepted value; {expected}"),
                None => "is not an accepted value".to_string(),
            },
            // "invalid type: string \"a\", expected u32", "invalid value: ...", "invalid length ...".
            _ if message.starts_with("invalid ") => format!("has an {message}"),
            _ => format!("is invalid: {message}"),
        },
    }
}

fn join_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// Query parameters, with unknown or malformed ones rejected by name.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        if let Some((name, _)) = form_urlencoded::parse(query.as_bytes())
            .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return Err(unstorable_text(FieldLocation::Query, name.into_owned()));
        }
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(AppQuery)
            .map_err(|error| {
                let path = error.path().to_string();
                field_error(&path, &error.into_inner().to_string(), FieldLocation::Query)
            })
    }
}

/// A path parameter that must be a UUID; anything else names no resource, so it is a 404.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| no_such_resource())?;
        parse_id(&raw).map(PathId)
    }
}

fn no_such_resource() -> ApiError {
    ApiError::not_found("not_found", "no such resource")
}

fn parse_id(raw: &str) -> Result<uuid::Uuid, ApiError> {
    uuid::Uuid::parse_str(raw)
        .map_err(|_| ApiError::not_found("not_found", format!("{raw:?} is not a valid id")))
}

/// Two UUID path parameters (a resource and one of its children), by the same rule as
/// [`PathId`].
#[derive(Debug, Clone, Copy)]
pub struct PathIds(pub uuid::Uuid, pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path((first, second)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state)
                .await
                .map_err(|_| no_such_resource())?;
        Ok(PathIds(parse_id(&first)?, parse_id(&second)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        steps: u32,
    }

    fn first_field(error: ApiError) -> (String, String) {
        assert_eq!(error.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem = error.into_problem();
        (
            problem.errors[0].field.clone(),
            problem.errors[0].code.clone(),
        )
    }

    #[test]
    fn shape_errors_name_the_field() {
        let missing = parse_json::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(first_field(missing), ("name".into(), "required".into()));
        let unknown = parse_json::<Body>(br#"{"name":"a","nmae":"b"}"#).unwrap_err();
        assert_eq!(
            first_field(unknown),
            ("nmae".into(), "unknown_field".into())
        );
        let nested = parse_json::<Body>(br#"{"name":"a","inner":{"steps":"x"}}"#).unwrap_err();
        assert_eq!(
            first_field(nested),
            ("inner.steps".into(), "invalid_type".into())
        );
        let nested_missing = parse_json::<Body>(br#"{"name":"a","inner":{}}"#).unwrap_err();
        assert_eq!(
            first_field(nested_missing),
            ("inner.steps".into(), "required".into())
        );
    }

    fn first_message(error: ApiError) -> (String, String) {
        let problem = error.into_problem();
        (problem.detail.clone(), problem.errors[0].message.clone())
    }

    #[test]
    fn shape_errors_are_said_of_the_field() {
        let said = |body: &[u8]| first_message(parse_json::<Body>(body).unwrap_err());
        assert_eq!(said(br#"{}"#).0, "`name` is required");
        assert_eq!(
            said(br#"{"name":"a","nmae":"b"}"#).0,
            "`nmae` is not a field of this request; expected `name` or `inner`"
        );
        assert_eq!(
            said(br#"{"name":"a","name":"b"}"#).0,
            "`name` is given more than once"
        );
        assert_eq!(
            said(br#"{"name":"a","inner":{"steps":"x"}}"#),
            (
                "`inner.steps` has an invalid type: string \"x\", expected u32".to_string(),
                "has an invalid type: string \"x\", expected u32".to_string()
            )
        );
        assert_eq!(
            said(br#"{"name":"a","inner":{"steps":-1}}"#).0,
            "`inner.steps` has an invalid value: integer `-1`, expected u32"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Query {
        limit: Option<u32>,
        ready: Option<bool>,
        order: Option<Order>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Order {
        Newest,
        Oldest,
    }

    async fn query_error(query: &str) -> (String, String, String) {
        let request = axum::http::Request::builder()
            .uri(format!("/items?{query}"))
            .body(())
            .expect("request");
        let (mut parts, ()) = request.into_parts();
        let error = AppQuery::<Query>::from_request_parts(&mut parts, &())
            .await
            .expect_err("refused");
        let problem = error.into_problem();
        let field = &problem.errors[0];
        (
            problem.detail.clone(),
            field.field.clone(),
            field.code.clone(),
        )
    }

    #[tokio::test]
    async fn query_errors_are_said_of_the_parameter() {
        let detail = |query: &'static str| async move { query_error(query).await.0 };
        assert_eq!(detail("limit=abc").await, "`limit` must be a whole number");
        assert_eq!(detail("limit=").await, "`limit` must be a whole number");
        assert_eq!(detail("limit=99999999999").await, "`limit` is too large");
        assert_eq!(
            detail("ready=yes").await,
            "`ready` must be `true` or `false`"
        );
        assert_eq!(
            detail("order=random").await,
            "`order` is not an accepted value; expected `newest` or `oldest`"
        );
        assert_eq!(
            query_error("sort=name").await,
            (
                "`sort` is not a field of this request; expected one of `limit`, `ready`, `order`"
                    .to_string(),
                "sort".to_string(),
                "unknown_field".to_string()
            )
        );
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        for body in [
            &b"{"[..],
            b"",
            b"{\"name\":\"a\"} trailing",
            b"nope",
            b"[1,2",
        ] {
            let error = parse_json::<Body>(body).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert_eq!(error.code(), "malformed_json");
        }
    }
}
