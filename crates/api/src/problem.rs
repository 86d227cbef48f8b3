//! RFC 9457 problem details: the one error type of the HTTP layer, and the middleware that
//! makes every error response one, framework rejections included.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Where a rejected field was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldLocation {
    Body,
    Query,
    Path,
    Header,
}

/// One rejected field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// JSON path of the field within its location, e.g. `name` or `overrides.steps`.
    #[schema(example = "name")]
    pub field: String,
    pub location: FieldLocation,
    /// Stable machine code, e.g. `required`, `too_long`, `unknown_field`.
    #[schema(example = "too_long")]
    pub code: String,
    pub message: String,
}

/// An RFC 9457 problem document. Every error response of the service has this shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// URI naming the problem type; `urn:avatars:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:avatars:problem:validation_failed")]
    pub problem_type: String,
    #[schema(example = "Validation failed")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code; callers branch on this, never on `detail`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// The request path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// The request id (also in the `x-request-id` response header), for support and logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Each rejected field, for 422 responses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Problem-specific members, such as `reasons` on a 503 from `/readyz`.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub extensions: Map<String, Value>,
}

/// The error type of every handler and extractor (boxed: it travels in every `Result`).
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorInner>);

#[derive(Debug)]
struct ApiErrorInner {
    status: StatusCode,
    code: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    extensions: Map<String, Value>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    /// The cause of a 5xx, logged once and never sent.
    source: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(ApiErrorInner {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
            extensions: Map::new(),
            headers: Vec::new(),
            source: None,
        }))
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required: send `Authorization: Bearer <key>`",
        )
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("`{}` {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        let mut error = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            detail,
        );
        error.0.errors = errors;
        error
    }

    /// A 422 about one field.
    pub fn invalid_field(
        location: FieldLocation,
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::validation(vec![FieldError {
            field: field.into(),
            location,
            code: code.into(),
            message: message.into(),
        }])
    }

    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the service failed to handle this request; it has been logged",
        );
        error.0.source = Some(source.into());
        error
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
    }

    pub fn with_extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    pub fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub(crate) fn into_problem(self) -> Problem {
        let this = *self.0;
        Problem {
            problem_type: format!("urn:avatars:problem:{}", this.code),
            title: title_for(this.status),
            status: this.status.as_u16(),
            detail: this.detail,
            code: this.code.to_string(),
            instance: None,
            request_id: None,
            errors: this.errors,
            extensions: this.extensions,
        }
    }
}

impl From<service::InputLocation> for FieldLocation {
    fn from(location: service::InputLocation) -> Self {
        match location {
            service::InputLocation::Body => FieldLocation::Body,
            service::InputLocation::Query => FieldLocation::Query,
            service::InputLocation::Path => FieldLocation::Path,
            service::InputLocation::Header => FieldLocation::Header,
        }
    }
}

/// The one mapping from the application's errors to HTTP.
impl From<service::ServiceError> for ApiError {
    fn from(error: service::ServiceError) -> Self {
        use service::ErrorKind;
        let parts = error.into_parts();
        let status = match parts.kind {
            ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::LimitReached => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut api = ApiError::new(status, parts.code, parts.detail);
        api.0.errors = parts
            .violations
            .into_iter()
            .map(|v| FieldError {
                field: v.field,
                location: v.location.into(),
                code: v.code,
                message: v.message,
            })
            .collect();
        api.0.extensions = parts.extensions;
        if let Some(attachment) = parts.attachment {
            for (name, value) in crate::views::attachment_members(attachment) {
                api.0.extensions.insert(name.to_string(), value);
            }
        }
        api.0.source = parts.source;
        if let Some(after) = parts.retry_after {
            api = api.with_header(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        api
    }
}

impl From<domain::Violations> for ApiError {
    fn from(violations: domain::Violations) -> Self {
        service::ServiceError::from(violations).into()
    }
}

impl From<store::StoreError> for ApiError {
    fn from(error: store::StoreError) -> Self {
        service::ServiceError::from(error).into()
    }
}

/// The rendered problem, kept on the response so the middleware can add request context.
#[derive(Clone)]
struct RenderedProblem(Problem);

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if let Some(source) = &self.0.source {
            if self.0.status.is_server_error() {
                tracing::error!(
                    code = self.0.code,
                    error = format!("{source:#}"),
                    "request failed"
                );
            } else {
                tracing::warn!(
                    code = self.0.code,
                    error = format!("{source:#}"),
                    "request refused"
                );
            }
        }
        let status = self.0.status;
        let headers = std::mem::take(&mut self.0.headers);
        let problem = self.into_problem();
        let mut response = problem_response(status, &problem);
        response.headers_mut().extend(headers);
        response.extensions_mut().insert(RenderedProblem(problem));
        response
    }
}

fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    response
}

fn title_for(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").to_string()
}

/// The problem for an error response produced outside our handlers (routing, limits, timeouts,
/// panics), chosen by its status.
fn problem_for_status(status: StatusCode, method: &str, path: &str) -> Problem {
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => ("route_not_found", format!("no route for {method} {path}")),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!("{method} is not allowed on {path}; see the Allow header"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the request body is larger than this endpoint accepts".to_string(),
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            "the request took longer than the service allows".to_string(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "this endpoint does not accept the request's content type".to_string(),
        ),
        status if status.is_server_error() => (
            "internal_error",
            "the service failed to handle this request; it has been logged".to_string(),
        ),
        _ => (
            "bad_request",
            "the request could not be handled".to_string(),
        ),
    };
    ApiError::new(status, code, detail).into_problem()
}

/// Makes every error response a problem document carrying the request path and id.
pub async fn render_problems(request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let already_problem = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_CONTENT_TYPE.as_bytes());
    let mut problem = match parts.extensions.remove::<RenderedProblem>() {
        Some(RenderedProblem(problem)) => problem,
        // A stored problem replayed (Idempotency-Key): keep it, refresh the request context.
        None if already_problem => {
            let bytes = axum::body::to_bytes(body, 1024 * 1024)
                .await
                .unwrap_or_default();
            let mut value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(object) = value.as_object_mut() {
                object.insert("instance".into(), Value::String(path));
                match request_id {
                    Some(id) => object.insert("request_id".into(), Value::String(id)),
                    None => object.remove("request_id"),
                };
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(
                parts,
                Body::from(serde_json::to_vec(&value).unwrap_or_default()),
            );
        }
        None => {
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), "request failed outside a handler");
            }
            problem_for_status(status, &method, &path)
        }
    };
    drop(body);
    problem.instance = Some(path);
    problem.request_id = request_id;
    let rendered = problem_response(status, &problem);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, rendered.into_body())
}
