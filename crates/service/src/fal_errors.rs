//! How fal's errors become our stable codes: one place, for submits, results, webhooks and
//! cancels alike.

use serde_json::Value;

/// The stable code of a submit fal certainly did not accept.
pub fn rejection_code(error: &fal::FalError) -> &'static str {
    match error {
        fal::FalError::Unauthorized { .. } => "fal_unauthorized",
        fal::FalError::BillingLocked { .. } => "fal_billing_locked",
        fal::FalError::Validation { .. } => "fal_rejected_input",
        fal::FalError::RateLimited { .. }
        | fal::FalError::Server { .. }
        | fal::FalError::Transport { .. } => "fal_unavailable",
        _ => "fal_error",
    }
}

/// Why fal refused a job's submit, as the job's failure. A trainer endpoint fal no longer has
/// (fal withdraws trainers) names the setting that picks another.
pub fn submit_refusal(
    kind: domain::JobKind,
    endpoint: &str,
    error: &fal::FalError,
) -> crate::JobFailure {
    match error {
        fal::FalError::NotFound { .. } if kind == domain::JobKind::Training => {
            crate::JobFailure::new(
                "trainer_unavailable",
                format!(
                    "fal has no trainer at {endpoint} (it may have been withdrawn); choose \
                     another trainer for this avatar kind with FAL_TRAINER_BY_KIND, \
                     e.g. style=fast_lora"
                ),
            )
        }
        other => crate::JobFailure::new(rejection_code(other), other.to_string()),
    }
}

/// Maps a fal error text and payload to our stable error code.
pub fn failure_code(error: Option<&str>, payload: Option<&Value>) -> (String, String) {
    let message = error
        .unwrap_or("fal reported the request as failed")
        .to_string();
    let detail = payload.and_then(|p| p.get("detail"));
    // fal reports rejected input as a validation list (FastAPI's `detail` array); any other
    // failure is the model's or the runner's.
    let code = match detail.and_then(Value::as_array) {
        Some(issues) => issue_code(issues.iter().map(|issue| {
            (
                issue
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                issue.get("loc").cloned().unwrap_or(Value::Null),
            )
        })),
        None => "fal_failed",
    };
    let message = match detail {
        Some(Value::String(text)) if text != &message => format!("{message}: {text}"),
        Some(Value::String(_)) | None => message,
        Some(other) => format!("{message}: {other}"),
    };
    (code.to_string(), message)
}

/// The stable code of fal's validation issues (`(type, loc)` pairs): a content-policy block,
/// a LoRA fal could not fetch (its CDN copy expired), or any other rejected input.
pub fn issue_code<'a>(issues: impl IntoIterator<Item = (&'a str, Value)>) -> &'static str {
    let mut code = "fal_rejected_input";
    for (kind, loc) in issues {
        if kind == "content_policy_violation" {
            return "content_policy_violation";
        }
        let about_loras = loc
            .as_array()
            .is_some_and(|parts| parts.iter().any(|p| p == "loras"));
        if kind == "file_download_error" && about_loras {
            code = LORA_UNAVAILABLE;
        }
    }
    code
}

/// fal could not fetch a generation's LoRA: the request certainly failed, so it may be sent
/// again with our own copy of the LoRA.
pub const LORA_UNAVAILABLE: &str = "lora_unavailable";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fal_validation_issues_map_to_stable_codes() {
        let code = |body: Value| failure_code(Some("rejected"), Some(&body)).0;
        assert_eq!(
            code(
                json!({"detail": [{"loc": ["body", "prompt"], "type": "content_policy_violation"}]})
            ),
            "content_policy_violation"
        );
        assert_eq!(
            code(
                json!({"detail": [{"loc": ["body", "loras", 0, "path"], "type": "file_download_error"}]})
            ),
            LORA_UNAVAILABLE
        );
        // A training archive fal cannot fetch is not a LoRA problem.
        assert_eq!(
            code(
                json!({"detail": [{"loc": ["body", "images_data_url"], "type": "file_download_error"}]})
            ),
            "fal_rejected_input"
        );
        assert_eq!(
            code(json!({"detail": [{"loc": ["body", "seed"], "type": "value_error"}]})),
            "fal_rejected_input"
        );
        assert_eq!(
            code(json!({"detail": "Runner disconnected", "error_type": "runner_disconnected"})),
            "fal_failed"
        );
    }
}
