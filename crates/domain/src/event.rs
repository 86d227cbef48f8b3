//! The types of the events callers receive (by webhook or stream): one name per thing that
//! happened to a training, a generation or an avatar.

use serde::{Deserialize, Serialize};

use crate::training::JobStatus;

named_enum! {
    /// Every event type the service emits, declared in documentation order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum EventType {
        #[serde(rename = "training.queued")]
        TrainingQueued => "training.queued",
        #[serde(rename = "training.submitted")]
        TrainingSubmitted => "training.submitted",
        #[serde(rename = "training.started")]
        TrainingStarted => "training.started",
        #[serde(rename = "training.progress")]
        TrainingProgress => "training.progress",
        #[serde(rename = "training.succeeded")]
        TrainingSucceeded => "training.succeeded",
        #[serde(rename = "training.failed")]
        TrainingFailed => "training.failed",
        #[serde(rename = "training.cancelled")]
        TrainingCancelled => "training.cancelled",
        #[serde(rename = "training.timed_out")]
        TrainingTimedOut => "training.timed_out",
        #[serde(rename = "generation.queued")]
        GenerationQueued => "generation.queued",
        #[serde(rename = "generation.succeeded")]
        GenerationSucceeded => "generation.succeeded",
        #[serde(rename = "generation.failed")]
        GenerationFailed => "generation.failed",
        #[serde(rename = "avatar.deleted")]
        AvatarDeleted => "avatar.deleted",
        #[serde(rename = "webhook_endpoint.disabled")]
        WebhookEndpointDisabled => "webhook_endpoint.disabled",
    }
}

impl EventType {
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
