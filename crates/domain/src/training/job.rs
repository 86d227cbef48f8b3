//! The job state machine shared by trainings and generations.
//!
//! `pending -> uploading -> submitted -> in_progress -> [finishing ->] succeeded | failed |
//! cancelled | timed_out`, plus `submit_unknown`: the submit's outcome is unknown, so the job is
//! never resubmitted on its own and is resolved by a webhook, a status lookup or the deadline.
//! `finishing`: fal succeeded, and the service is still fetching the result or copying its
//! artifacts into its own storage; it ends `succeeded` when they are held, or `failed` with
//! `artifact_unavailable` when they cannot be. Terminal states never change; a late or
//! duplicate event is ignored with a reason.

use serde::{Deserialize, Serialize};

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JobKind {
        Training => "training",
        Generation => "generation",
    }
}

named_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JobStatus {
        /// Accepted by the service, waiting for a worker.
        Pending => "pending",
        /// A worker is uploading inputs and submitting to fal.
        Uploading => "uploading",
        /// fal accepted the request (IN_QUEUE).
        Submitted => "submitted",
        /// fal is running it (IN_PROGRESS).
        InProgress => "in_progress",
        /// The submit may or may not have reached fal.
        SubmitUnknown => "submit_unknown",
        /// fal succeeded; the service is taking its result and artifacts into custody.
        Finishing => "finishing",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
        TimedOut => "timed_out",
    }
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut
        )
    }

    pub fn is_active(self) -> bool {
        !self.is_terminal()
    }

    /// The status callers see. fal's success is not the job's until the service holds its
    /// result and artifacts: while `finishing` it shows as still in progress, as its avatar
    /// (still `training`) or generation does.
    pub fn as_seen(self) -> JobStatus {
        match self {
            Self::Finishing => Self::InProgress,
            other => other,
        }
    }
}

named_enum! {
    /// Something that happened to a job.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum JobEvent {
        /// A worker claimed a pending job.
        UploadStarted => "upload_started",
        /// A worker claimed an upload whose worker died before sending the submit: the job stays
        /// uploading, under a new lease.
        UploadReclaimed => "upload_reclaimed",
        /// fal accepted the submit, or a status lookup found a request whose submit was unknown.
        Submitted => "submitted",
        /// The submit failed in a way that leaves its outcome unknown (timeout, dropped connection).
        SubmitOutcomeUnknown => "submit_outcome_unknown",
        /// fal refused the request before accepting it.
        SubmitRejected => "submit_rejected",
        /// fal reports IN_QUEUE (a position update).
        Queued => "queued",
        /// fal reports IN_PROGRESS (also progress updates).
        Started => "started",
        /// fal's result is a success, and its result or artifacts must still be taken into the
        /// service's custody.
        FalSucceeded => "fal_succeeded",
        /// The job's result and artifacts are held by the service (at once when there is nothing to
        /// keep, or when custody ends).
        Completed => "completed",
        /// fal's result is an error.
        FalFailed => "fal_failed",
        /// The caller cancelled.
        Cancelled => "cancelled",
        /// The deadline (`FAL_TRAINING_TIMEOUT`) passed.
        TimedOut => "timed_out",
        /// fal finished the job but its result or artifacts could not be fetched into the
        /// service's storage within the configured attempts (`CUSTODY_MAX_ATTEMPTS`).
        ArtifactUnavailable => "artifact_unavailable",
    }
}

/// What an event does to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move to `to` (which may equal the current status: a progress or position update).
    Apply { to: JobStatus },
    /// Record the event and change nothing.
    Ignore { reason: &'static str },
}

/// Reasons for ignored events, stable so they can be recorded and counted.
pub const REASON_TERMINAL: &str = "already terminal";
pub const REASON_STALE: &str = "stale: the job is already further along";
pub const REASON_DUPLICATE: &str = "duplicate";
pub const REASON_PREMATURE: &str = "premature: the job has not reached a state this event follows";

/// The status an event moves a job to.
pub fn target(event: JobEvent) -> JobStatus {
    use JobEvent as E;
    use JobStatus as S;
    match event {
        E::UploadStarted | E::UploadReclaimed => S::Uploading,
        E::Submitted | E::Queued => S::Submitted,
        E::SubmitOutcomeUnknown => S::SubmitUnknown,
        E::SubmitRejected | E::FalFailed | E::ArtifactUnavailable => S::Failed,
        E::Started => S::InProgress,
        E::FalSucceeded => S::Finishing,
        E::Completed => S::Succeeded,
        E::Cancelled => S::Cancelled,
        E::TimedOut => S::TimedOut,
    }
}

/// The source states from which `event` applies: where to look for the jobs an event could
/// move (a worker's claim, say). Whether it applies to one job is [`transition`]'s to say.
pub fn allowed_from(event: JobEvent) -> Vec<JobStatus> {
    use JobEvent as E;
    use JobStatus as S;
    match event {
        E::UploadStarted => vec![S::Pending],
        E::UploadReclaimed => vec![S::Uploading],
        E::Submitted => vec![S::Uploading, S::SubmitUnknown],
        E::SubmitOutcomeUnknown | E::SubmitRejected => vec![S::Uploading],
        E::Queued => vec![S::Submitted, S::SubmitUnknown],
        E::Started => vec![S::Submitted, S::SubmitUnknown, S::InProgress],
        E::FalSucceeded | E::FalFailed => vec![S::Submitted, S::InProgress, S::SubmitUnknown],
        E::Completed => vec![S::Submitted, S::InProgress, S::SubmitUnknown, S::Finishing],
        E::Cancelled => JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect(),
        E::TimedOut => vec![S::Uploading, S::Submitted, S::InProgress, S::SubmitUnknown],
        E::ArtifactUnavailable => vec![S::Finishing],
    }
}

/// THE transition function: what `event` does to a job in `from`, written out as a table
/// (rather than derived from `allowed_from`) so the tests can check one against the other.
pub fn transition(from: JobStatus, event: JobEvent) -> Transition {
    use JobEvent as E;
    use JobStatus as S;
    if from.is_terminal() {
        return Transition::Ignore {
            reason: REASON_TERMINAL,
        };
    }
    let apply = Transition::Apply { to: target(event) };
    let ignore = |reason| Transition::Ignore { reason };
    match (event, from) {
        // Cancelling is possible at any active point; fal is told separately. A job cancelled
        // while finishing keeps nothing of fal's result.
        (E::Cancelled, _) => apply,

        // Once fal succeeded, only custody's outcome (or a cancel) moves the job.
        (
            E::UploadStarted
            | E::UploadReclaimed
            | E::Submitted
            | E::SubmitOutcomeUnknown
            | E::SubmitRejected
            | E::Queued
            | E::Started
            | E::FalFailed
            | E::TimedOut,
            S::Finishing,
        ) => ignore(REASON_STALE),
        (E::FalSucceeded, S::Finishing) => ignore(REASON_DUPLICATE),

        (E::UploadStarted, S::Pending) => apply,
        (E::UploadStarted, S::Uploading) => ignore(REASON_DUPLICATE),
        (E::UploadStarted, _) => ignore(REASON_STALE),

        // A new lease on an abandoned upload: a self-loop.
        (E::UploadReclaimed, S::Uploading) => apply,
        (E::UploadReclaimed, S::Pending) => ignore(REASON_PREMATURE),
        (E::UploadReclaimed, _) => ignore(REASON_STALE),

        (E::Submitted, S::Uploading | S::SubmitUnknown) => apply,
        (E::Submitted, S::Submitted) => ignore(REASON_DUPLICATE),
        (E::Submitted, S::InProgress) => ignore(REASON_STALE),
        (E::Submitted, _) => ignore(REASON_PREMATURE),

        (E::SubmitOutcomeUnknown | E::SubmitRejected, S::Uploading) => apply,
        (E::SubmitOutcomeUnknown, S::SubmitUnknown) => ignore(REASON_DUPLICATE),
        (E::SubmitOutcomeUnknown | E::SubmitRejected, S::Pending) => ignore(REASON_PREMATURE),
        (E::SubmitOutcomeUnknown | E::SubmitRejected, _) => ignore(REASON_STALE),

        // A queue position update keeps the job in `submitted`.
        (E::Queued, S::Submitted | S::SubmitUnknown) => apply,
        (E::Queued, S::InProgress) => ignore(REASON_STALE),
        (E::Queued, _) => ignore(REASON_PREMATURE),

        // IN_PROGRESS repeats with log updates: a self-loop that records progress.
        (E::Started, S::Submitted | S::SubmitUnknown | S::InProgress) => apply,
        (E::Started, _) => ignore(REASON_PREMATURE),

        (
            E::FalSucceeded | E::Completed | E::FalFailed,
            S::Submitted | S::InProgress | S::SubmitUnknown,
        ) => apply,
        (E::Completed, S::Finishing) => apply,
        (E::FalSucceeded | E::Completed | E::FalFailed, _) => ignore(REASON_PREMATURE),

        // A job that never reached fal can still run out of time while uploading.
        (E::TimedOut, S::Uploading | S::Submitted | S::InProgress | S::SubmitUnknown) => apply,
        (E::TimedOut, _) => ignore(REASON_PREMATURE),

        (E::ArtifactUnavailable, S::Finishing) => apply,
        (E::ArtifactUnavailable, _) => ignore(REASON_PREMATURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        crate::names::assert_names_round_trip::<JobStatus>();
        crate::names::assert_serialized_as_names::<JobStatus>();
        crate::names::assert_names_round_trip::<JobEvent>();
        crate::names::assert_names_round_trip::<JobKind>();
        assert_eq!(JobStatus::parse("in-progress"), None);
    }
}
