//! How resources look to callers: the response bodies of the API, documented in OpenAPI.
//! Routes render them, and so does the event sequencer (an event's `data` is the resource as
//! `GET` shows it), so they live here, where non-route code may import them.

use serde_json::Value;

pub mod archives;
pub mod avatars;
pub mod generations;
pub mod photos;
pub mod trainings;
pub mod usage;
pub mod webhook_endpoints;

/// A refusal's attachment as members of its problem document, rendered by the views that
/// answer for the same things elsewhere: a refused training's `inspection` is the body
/// `POST /training-archives/inspect` answers with, its `photo_set` the body of
/// `GET /avatars/{id}/photo-set` (and `photos` the photos in it that do not count), and an
/// upload's `rejected` files look the same whether some files were accepted or none.
pub fn attachment_members(attachment: service::Attachment) -> Vec<(&'static str, Value)> {
    match attachment {
        service::Attachment::ArchiveInspection(inspection) => {
            let view = archives::ArchiveInspection::from(*inspection);
            vec![("inspection", to_json(&view))]
        }
        service::Attachment::PhotoSet(report) => {
            let at_fault: Vec<_> = report
                .photos_not_counting()
                .cloned()
                .map(photos::PhotoFindings::from)
                .collect();
            let report = photos::PhotoSetReport::from(*report);
            vec![
                ("photos", to_json(&at_fault)),
                ("photo_set", to_json(&report)),
            ]
        }
        service::Attachment::RejectedFiles(files) => {
            let views: Vec<_> = files
                .into_iter()
                .map(archives::RejectedFile::from)
                .collect();
            vec![("rejected", to_json(&views))]
        }
    }
}

/// A view as JSON (views are plain data: serializing one cannot fail).
fn to_json(view: &impl serde::Serialize) -> Value {
    serde_json::to_value(view).unwrap_or(Value::Null)
}
