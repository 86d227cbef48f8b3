//! How resources look to callers: the response bodies of the API, documented in OpenAPI.
//! Routes render them, and so does the event sequencer (an event's `data` is the resource as
//! `GET` shows it), so they live here, where non-route code may import them.

pub mod archives;
pub mod avatars;
pub mod generations;
pub mod photos;
pub mod trainings;
pub mod usage;
pub mod webhook_endpoints;

/// A refusal's attachment as the problem document's member, rendered by the same view that
/// answers for the thing elsewhere (a refused training's `inspection` is the body
/// `POST /training-archives/inspect` answers with).
pub fn attachment_member(attachment: service::Attachment) -> (&'static str, serde_json::Value) {
    match attachment {
        service::Attachment::ArchiveInspection(inspection) => {
            let view = archives::ArchiveInspection::from(*inspection);
            let value = serde_json::to_value(view).unwrap_or(serde_json::Value::Null);
            ("inspection", value)
        }
    }
}
