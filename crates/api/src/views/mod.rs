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
