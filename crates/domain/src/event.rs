//! The types of the events callers receive (by webhook or stream): one name per thing that
//! happened to a training, a generation or an avatar.

use serde::{Deserialize, Serialize};

use crate::training::JobStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "training.queued")]
    TrainingQueued,
    #[serde(rename = "training.submitted")]
    TrainingSubmitted,
    #[serde(rename = "training.started")]
    TrainingStarted,
    #[serde(rename = "training.progress")]
    TrainingProgress,
    #[serde(rename = "training.succeeded")]
    TrainingSucceeded,
    #[serde(rename = "training.failed")]
    TrainingFailed,
    #[serde(rename = "training.cancelled")]
    TrainingCancelled,
    #[serde(rename = "training.timed_out")]
    TrainingTimedOut,
    #[serde(rename = "generation.queued")]
    GenerationQueued,
    #[serde(rename = "generation.succeeded")]
    GenerationSucceeded,
    #[serde(rename = "generation.failed")]
    GenerationFailed,
    #[serde(rename = "avatar.deleted")]
    AvatarDeleted,
    #[serde(rename = "webhook_endpoint.disabled")]
    WebhookEndpointDisabled,
}

impl EventType {
    /// Every event type the service emits, in documentation order.
    pub const ALL: [EventType; 13] = [
        Self::TrainingQueued,
        Self::TrainingSubmitted,
        Self::TrainingStarted,
        Self::TrainingProgress,
        Self::TrainingSucceeded,
        Self::TrainingFailed,
        Self::TrainingCancelled,
        Self::TrainingTimedOut,
        Self::GenerationQueued,
        Self::GenerationSucceeded,
        Self::GenerationFailed,
        Self::AvatarDeleted,
        Self::WebhookEndpointDisabled,
    ];

    /// The names of [`EventType::ALL`], in the same order.
    pub const NAMES: [&'static str; 13] = {
        let mut names = [""; 13];
        let mut i = 0;
        while i < names.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TrainingQueued => "training.queued",
            Self::TrainingSubmitted => "training.submitted",
            Self::TrainingStarted => "training.started",
            Self::TrainingProgress => "training.progress",
            Self::TrainingSucceeded => "training.succeeded",
            Self::TrainingFailed => "training.failed",
            Self::TrainingCancelled => "training.cancelled",
            Self::TrainingTimedOut => "training.timed_out",
            Self::GenerationQueued => "generation.queued",
            Self::GenerationSucceeded => "generation.succeeded",
            Self::GenerationFailed => "generation.failed",
            Self::AvatarDeleted => "avatar.deleted",
            Self::WebhookEndpointDisabled => "webhook_endpoint.disabled",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == s)
    }

    /// The event a training's move to `status` announces. Success is not among them: it is
    /// announced only once the model is in the service's custody, with the model.
    pub fn training_entered(status: JobStatus) -> Option<EventType> {
        match status {
            JobStatus::Submitted => Some(Self::TrainingSubmitted),
            JobStatus::InProgress => Some(Self::TrainingStarted),
            JobStatus::Failed => Some(Self::TrainingFailed),
            JobStatus::Cancelled => Some(Self::TrainingCancelled),
            JobStatus::TimedOut => Some(Self::TrainingTimedOut),
            JobStatus::Pending
            | JobStatus::Uploading
            | JobStatus::SubmitUnknown
            | JobStatus::Finishing
            | JobStatus::Succeeded => None,
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for (event_type, name) in EventType::ALL.into_iter().zip(EventType::NAMES) {
            assert_eq!(event_type.as_str(), name);
            assert_eq!(EventType::parse(name), Some(event_type));
            assert_eq!(
                serde_json::to_string(&event_type).unwrap(),
                format!("\"{name}\"")
            );
        }
        assert_eq!(EventType::parse("training.done"), None);
    }

    #[test]
    fn names_are_distinct() {
        let mut names = EventType::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EventType::ALL.len());
    }

    #[test]
    fn a_training_announces_every_move_but_success_and_the_quiet_ones() {
        use JobStatus as S;
        let announced: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter_map(EventType::training_entered)
            .collect();
        assert_eq!(
            announced,
            [
                EventType::TrainingSubmitted,
                EventType::TrainingStarted,
                EventType::TrainingFailed,
                EventType::TrainingCancelled,
                EventType::TrainingTimedOut,
            ]
        );
        assert_eq!(EventType::training_entered(S::Succeeded), None);
    }
}
