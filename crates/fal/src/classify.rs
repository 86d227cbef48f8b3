//! Turning a non-success HTTP answer from fal into a [`FalError`] variant.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::error::{FalError, ValidationIssue};

/// Longest piece of a non-JSON body kept in an error message.
const MAX_TEXT_DETAIL: usize = 300;

/// Response header carrying fal's request id.
pub(crate) const REQUEST_ID_HEADER: &str = "x-fal-request-id";

pub(crate) fn request_id_header(headers: &HeaderMap) -> Option<String> {
    header_str(headers, REQUEST_ID_HEADER).map(str::to_owned)
}

/// `X-Fal-Request-Timeout-Type: user` marks a 504 caused by our own start deadline.
pub(crate) fn is_user_timeout(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::GATEWAY_TIMEOUT
        && header_str(headers, "x-fal-request-timeout-type")
            .is_some_and(|v| v.eq_ignore_ascii_case("user"))
}

/// `Retry-After` in seconds. (The HTTP-date form is not used by fal as far as is known and is
/// ignored.)
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = header_str(headers, "retry-after")?.trim();
    let secs: f64 = value.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

pub(crate) fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> FalError {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let detail = detail_text(json.as_ref(), body);
    let error_type = json
        .as_ref()
        .and_then(|j| j.get("error_type"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| header_str(headers, "x-fal-error-type").map(str::to_owned));
    let code = status.as_u16();
    match code {
        401 => FalError::Unauthorized { detail },
        403 if is_billing_lock(&detail) => FalError::BillingLocked { detail },
        403 => FalError::Forbidden { detail },
        404 => FalError::NotFound { detail },
        422 => FalError::Validation {
            issues: validation_issues(json.as_ref(), &detail),
            request_id: request_id_header(headers),
        },
        429 => FalError::RateLimited {
            retry_after: retry_after(headers),
            detail,
        },
        504 if is_user_timeout(status, headers) => FalError::UserTimeout { detail },
        500..=599 => FalError::Server {
            status: code,
            error_type,
            detail,
            request_id: request_id_header(headers),
            retryable: header_str(headers, "x-fal-retryable")
                .map(|v| v.eq_ignore_ascii_case("true")),
        },
        _ => FalError::Http {
            status: code,
            error_type,
            detail,
        },
    }
}

/// fal's billing lock reads "User is locked. Reason: Exhausted balance. ...".
fn is_billing_lock(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    lower.contains("user is locked") || lower.contains("exhausted balance")
}

fn detail_text(json: Option<&Value>, body: &[u8]) -> String {
    match json {
        Some(j) => match j.get("detail") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|i| i.get("msg").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("; "),
            Some(other) => other.to_string(),
            // Queue answers such as `{"status":"NOT_FOUND"}` carry their meaning in `status`.
            None => match j
                .get("message")
                .or_else(|| j.get("status"))
                .and_then(Value::as_str)
            {
                Some(m) => m.to_owned(),
                None => truncate(&j.to_string()),
            },
        },
        None => truncate(&String::from_utf8_lossy(body)),
    }
}

fn validation_issues(json: Option<&Value>, detail: &str) -> Vec<ValidationIssue> {
    match json.and_then(|j| j.get("detail")) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                serde_json::from_value(item.clone()).unwrap_or_else(|_| ValidationIssue {
                    loc: vec![Value::from("body")],
                    msg: item.to_string(),
                    kind: "value_error".into(),
                    ctx: None,
                    url: None,
                    input: None,
                })
            })
            .collect(),
        _ => vec![ValidationIssue {
            loc: vec![Value::from("body")],
            msg: detail.to_owned(),
            kind: "value_error".into(),
            ctx: None,
            url: None,
            input: None,
        }],
    }
}

fn truncate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_TEXT_DETAIL) {
        Some((idx, _)) => format!("{}...", &text[..idx]),
        None => text.to_owned(),
    }
}

/// `X-Fal-Billable-Units`: a non-negative number, or nothing usable.
pub(crate) fn billable_units(headers: &HeaderMap) -> Option<f64> {
    header_str(headers, "x-fal-billable-units")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|units| units.is_finite() && *units >= 0.0)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn billed_units_are_read_when_usable() {
        assert_eq!(
            billable_units(&headers(&[("x-fal-billable-units", "2500")])),
            Some(2500.0)
        );
        assert_eq!(
            billable_units(&headers(&[("x-fal-billable-units", " 1.5 ")])),
            Some(1.5)
        );
        assert_eq!(
            billable_units(&headers(&[("x-fal-billable-units", "-1")])),
            None
        );
        assert_eq!(
            billable_units(&headers(&[("x-fal-billable-units", "NaN")])),
            None
        );
        assert_eq!(
            billable_units(&headers(&[("x-fal-billable-units", "lots")])),
            None
        );
        assert_eq!(billable_units(&HeaderMap::new()), None);
    }

    #[test]
    fn string_detail_422_becomes_one_issue_at_body() {
        let err = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            &HeaderMap::new(),
            br#"{"detail":"bad archive"}"#,
        );
        let FalError::Validation { issues, .. } = err else {
            panic!("expected validation, got {err:?}")
        };
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].loc, vec![Value::from("body")]);
        assert_eq!(issues[0].msg, "bad archive");
        assert_eq!(issues[0].kind, "value_error");
    }

    #[test]
    fn error_type_falls_back_to_header() {
        let err = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("x-fal-error-type", "runner_disconnected")]),
            b"<html>nginx</html>",
        );
        let FalError::Server {
            error_type, detail, ..
        } = err
        else {
            panic!("expected server error, got {err:?}")
        };
        assert_eq!(error_type.as_deref(), Some("runner_disconnected"));
        assert!(detail.contains("nginx"));
    }

    #[test]
    fn retry_after_parses_seconds() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    }
}
