//! The one error type of the application layer, and the one way a job fails.
//!
//! A [`ServiceError`] says what went wrong in the caller's terms (a kind, a stable code, words
//! and the fields at fault); the HTTP layer maps its kind to a status once. A worker that gives
//! up on a job records a [`JobFailure`].

use std::time::Duration;

use serde_json::{Map, Value};

/// What kind of failure, independent of any transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is wrong; `violations` name the fields.
    Invalid,
    /// The input is well-formed but not acceptable as a whole (bad request).
    BadRequest,
    /// The caller's credentials (a signature, say) are missing or do not verify.
    Unauthenticated,
    /// The caller is known, but this is not theirs to do.
    Forbidden,
    NotFound,
    /// The resource's state does not allow it now.
    Conflict,
    /// The input is larger than allowed.
    TooLarge,
    /// The caller reached one of its limits (a rate or a quota); `retry_after` says when a
    /// retry can succeed, if the limit is a rate.
    LimitReached,
    /// A dependency is down; retry later.
    Unavailable,
    /// A bug or an unexpected failure; logged, never explained to the caller.
    Internal,
}

/// Where a rejected field was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputLocation {
    Body,
    Query,
    Path,
    Header,
}

/// One rejected input field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub location: InputLocation,
    pub code: String,
    pub message: String,
}

/// What a refusal carries beyond words, for the transport to render the way it renders the
/// same thing elsewhere, so that a caller meets one shape for one concept.
#[derive(Debug)]
pub enum Attachment {
    /// The inspection of the archive a training was refused for: what
    /// [`crate::training_data::inspect_archive_url`] answers for the same archive.
    ArchiveInspection(Box<crate::training_data::ArchiveInspection>),
    /// The photo set a training was refused for: the report `GET /avatars/{id}/photo-set`
    /// answers with, and in it the photos that do not count.
    PhotoSet(Box<crate::photo_set::PhotoSetReport>),
    /// The files of an upload none of which was accepted, each with why: as the `rejected`
    /// of an upload that accepted some.
    RejectedFiles(Vec<crate::photos::RejectedFile>),
}

/// The error of every use case (boxed: it travels in every `Result`).
#[derive(Debug)]
pub struct ServiceError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    code: &'static str,
    detail: String,
    violations: Vec<Violation>,
    extensions: Map<String, Value>,
    attachment: Option<Attachment>,
    retry_after: Option<Duration>,
    source: Option<anyhow::Error>,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            code,
            detail: detail.into(),
            violations: Vec::new(),
            extensions: Map::new(),
            attachment: None,
            retry_after: None,
            source: None,
        }))
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, detail)
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, detail)
    }

    pub fn too_large(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, code, detail)
    }

    pub fn limit_reached(code: &'static str, detail: impl Into<String>, limit: u32) -> Self {
        Self::new(ErrorKind::LimitReached, code, detail).with_extension("limit", limit)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, detail)
    }

    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self::new(
            ErrorKind::Internal,
            "internal_error",
            "the service failed to handle this request; it has been logged",
        )
        .with_source(source)
    }

    /// A 'validation failed' error naming every field at fault.
    pub fn invalid(violations: Vec<Violation>) -> Self {
        let detail = match violations.as_slice() {
            [one] => format!("`{}` {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        let mut error = Self::new(ErrorKind::Invalid, "validation_failed", detail);
        error.0.violations = violations;
        error
    }

    /// Invalid input in one field, refused with its own stable `code` (rather than
    /// `validation_failed`): the request is well-formed but cannot be carried out.
    pub fn refused_field(
        code: &'static str,
        location: InputLocation,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let violation = Violation {
            field: field.into(),
            location,
            code: code.to_string(),
            message: message.into(),
        };
        let mut error = Self::new(
            ErrorKind::Invalid,
            code,
            format!("`{}` {}", violation.field, violation.message),
        );
        error.0.violations = vec![violation];
        error
    }

    /// Invalid input in one field.
    pub fn invalid_field(
        location: InputLocation,
        field: impl Into<String>,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::invalid(vec![Violation {
            field: field.into(),
            location,
            code: code.into(),
            message: message.into(),
        }])
    }

    pub fn with_extension(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extensions.insert(key.to_string(), value.into());
        self
    }

    pub fn with_attachment(mut self, attachment: Attachment) -> Self {
        self.0.attachment = Some(attachment);
        self
    }

    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.0.retry_after = Some(after);
        self
    }

    pub fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    pub fn code(&self) -> &'static str {
        self.0.code
    }

    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    pub fn violations(&self) -> &[Violation] {
        &self.0.violations
    }

    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    pub fn source(&self) -> Option<&anyhow::Error> {
        self.0.source.as_ref()
    }

    /// Takes the parts a transport renders.
    pub fn into_parts(self) -> ErrorParts {
        let inner = *self.0;
        ErrorParts {
            kind: inner.kind,
            code: inner.code,
            detail: inner.detail,
            violations: inner.violations,
            extensions: inner.extensions,
            attachment: inner.attachment,
            retry_after: inner.retry_after,
            source: inner.source,
        }
    }
}

/// The errors every use case names the same way.
impl ServiceError {
    pub fn avatar_not_found(id: impl std::fmt::Display) -> Self {
        Self::not_found("avatar_not_found", format!("no avatar with id {id}"))
    }

    pub fn photo_not_found(id: impl std::fmt::Display) -> Self {
        Self::not_found("photo_not_found", format!("no photo with id {id}"))
    }

    pub fn training_not_found(id: impl std::fmt::Display) -> Self {
        Self::not_found("training_not_found", format!("no training with id {id}"))
    }

    pub fn generation_not_found(id: impl std::fmt::Display) -> Self {
        Self::not_found(
            "generation_not_found",
            format!("no generation with id {id}"),
        )
    }

    pub fn webhook_endpoint_not_found(id: impl std::fmt::Display) -> Self {
        Self::not_found(
            "webhook_endpoint_not_found",
            format!("no webhook endpoint with id {id}"),
        )
    }

    /// The avatar's photo set is frozen while it trains.
    pub fn avatar_training() -> Self {
        Self::conflict(
            "avatar_training",
            "the avatar is training; its photo set cannot change until the training ends",
        )
    }
}

/// A [`ServiceError`] taken apart.
#[derive(Debug)]
pub struct ErrorParts {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub detail: String,
    pub violations: Vec<Violation>,
    pub extensions: Map<String, Value>,
    pub attachment: Option<Attachment>,
    pub retry_after: Option<Duration>,
    pub source: Option<anyhow::Error>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.detail)
    }
}

impl From<domain::Violations> for ServiceError {
    fn from(violations: domain::Violations) -> Self {
        Self::invalid(
            violations
                .0
                .into_iter()
                .map(|v| Violation {
                    field: v.field,
                    location: InputLocation::Body,
                    code: v.code.to_string(),
                    message: v.message,
                })
                .collect(),
        )
    }
}

/// What a caller refused for want of a database connection is told to wait: long enough
/// for a busy pool to drain, short enough that a brief outage costs little.
const DATABASE_RETRY_AFTER: Duration = Duration::from_secs(2);

impl From<store::StoreError> for ServiceError {
    fn from(error: store::StoreError) -> Self {
        use store::StoreError;
        match error {
            StoreError::NotFound => Self::not_found("not_found", "no such resource"),
            // The request's Idempotency-Key claim ran out and another request holds it now.
            error if error.is_conflict_on(store::IDEMPOTENCY_CLAIM) => Self::conflict(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still being handled; retry shortly",
            ),
            error if error.is_unavailable() => Self::unavailable(
                "database_unavailable",
                "the database is unreachable or busy; retry later",
            )
            .with_retry_after(DATABASE_RETRY_AFTER)
            .with_source(error),
            other => Self::internal(other),
        }
    }
}

impl ServiceError {
    /// Maps a store error, naming a missing row with `not_found` (e.g.
    /// [`ServiceError::avatar_not_found`]).
    pub fn missing_as(
        not_found: impl FnOnce() -> ServiceError,
    ) -> impl FnOnce(store::StoreError) -> ServiceError {
        move |error| match error {
            store::StoreError::NotFound => not_found(),
            other => other.into(),
        }
    }

    /// [`ServiceError::missing_as`] for the avatar `id`.
    pub fn avatar_missing(id: domain::AvatarId) -> impl FnOnce(store::StoreError) -> ServiceError {
        Self::missing_as(move || Self::avatar_not_found(id))
    }
}

/// Why a worker gave up on a job: the stable code and words the job's caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    pub code: String,
    pub message: String,
}

impl JobFailure {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }

    /// The job changes that record this failure.
    pub fn changes(self) -> store::JobChanges {
        store::JobChanges {
            error_code: Some(self.code),
            error_message: Some(self.message),
            ..store::JobChanges::default()
        }
    }
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
