//! The body callers receive for an event: `{type, timestamp, data}`, where `data` is the
//! resource exactly as the API shows it, rendered from the snapshot the event's transaction
//! took.

use chrono::SecondsFormat;
use serde_json::{json, Value};
use store::events::{EventSnapshot, UnsequencedEvent};

use crate::views::avatars::AvatarResponse;
use crate::views::generations::render_generation;
use crate::views::trainings::render_training;

pub use service::events::EVENT_TYPES;

/// Renders an outbox row. A snapshot this version cannot read (written by a newer one, say)
/// still yields a body, with the raw snapshot as `data`, so the event is never lost.
pub fn render(event: &UnsequencedEvent) -> Value {
    let data = serde_json::from_value::<EventSnapshot>(event.data.clone())
        .and_then(resource)
        .unwrap_or_else(|error| {
            tracing::error!(event = %event.id, %error, "unreadable event snapshot");
            event.data.clone()
        });
    json!({
        "type": event.event_type,
        "timestamp": event.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    })
}

fn resource(snapshot: EventSnapshot) -> Result<Value, serde_json::Error> {
    match snapshot {
        EventSnapshot::Training { job, model } => {
            serde_json::to_value(render_training(*job, model))
        }
        EventSnapshot::Generation {
            generation,
            jobs,
            images,
        } => serde_json::to_value(render_generation(generation, jobs, images)),
        EventSnapshot::Avatar { avatar } => serde_json::to_value(AvatarResponse::from(*avatar)),
        EventSnapshot::WebhookEndpoint { endpoint } => serde_json::to_value(
            crate::views::webhook_endpoints::EndpointResponse::from(*endpoint),
        ),
    }
}
