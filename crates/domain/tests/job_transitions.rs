//! The job state machine seen from outside: every pair of status and event, the table a reader
//! checks the rules against, and the paths a job walks.

use domain::training::job::{
    allowed_from, target, transition, JobEvent, JobStatus, Transition, REASON_TERMINAL,
};
use JobEvent as E;
use JobStatus as S;

#[test]
fn terminal_and_active_partition_the_statuses() {
    let terminal: Vec<_> = JobStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .collect();
    assert_eq!(
        terminal,
        [S::Succeeded, S::Failed, S::Cancelled, S::TimedOut]
    );
    for status in JobStatus::ALL {
        assert_eq!(status.is_active(), !status.is_terminal());
    }
}

#[test]
fn transition_agrees_with_allowed_from_and_target_for_every_pair() {
    for event in JobEvent::ALL {
        let allowed = allowed_from(event);
        for from in JobStatus::ALL {
            let expected_apply = allowed.contains(&from);
            match transition(from, event) {
                Transition::Apply { to } => {
                    assert!(expected_apply, "{from:?} + {event:?} applied");
                    assert_eq!(to, target(event), "{from:?} + {event:?}");
                }
                Transition::Ignore { reason } => {
                    assert!(!expected_apply, "{from:?} + {event:?} ignored: {reason}");
                    assert!(!reason.is_empty());
                }
            }
        }
    }
}

#[test]
fn terminal_states_never_change() {
    for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        for event in JobEvent::ALL {
            assert_eq!(
                transition(from, event),
                Transition::Ignore {
                    reason: REASON_TERMINAL
                }
            );
            assert!(!allowed_from(event).contains(&from));
        }
    }
}

#[test]
fn the_full_transition_table() {
    // One row per event: the outcome from pending, uploading, submitted, in_progress,
    // submit_unknown, finishing ('A' applies; otherwise the ignore reason's first letter:
    // 'd'uplicate, 's'tale, 'p'remature).
    let table: [(JobEvent, &str); 13] = [
        (E::UploadStarted, "Adssss"),
        (E::UploadReclaimed, "pAssss"),
        (E::Submitted, "pAdsAs"),
        (E::SubmitOutcomeUnknown, "pAssds"),
        (E::SubmitRejected, "pAssss"),
        (E::Queued, "ppAsAs"),
        (E::Started, "ppAAAs"),
        (E::FalSucceeded, "ppAAAd"),
        (E::Completed, "ppAAAA"),
        (E::FalFailed, "ppAAAs"),
        (E::Cancelled, "AAAAAA"),
        (E::TimedOut, "pAAAAs"),
        (E::ArtifactUnavailable, "pppppA"),
    ];
    let active = [
        S::Pending,
        S::Uploading,
        S::Submitted,
        S::InProgress,
        S::SubmitUnknown,
        S::Finishing,
    ];
    for (event, row) in table {
        for (from, cell) in active.into_iter().zip(row.chars()) {
            let got = match transition(from, event) {
                Transition::Apply { .. } => 'A',
                Transition::Ignore { reason } => reason.chars().next().unwrap(),
            };
            assert_eq!(got, cell, "{from:?} + {event:?}");
        }
    }
}

#[test]
fn applied_transitions_reach_their_targets() {
    for (from, event, to) in [
        // Progress and position updates are self-loops.
        (S::InProgress, E::Started, S::InProgress),
        (S::Submitted, E::Queued, S::Submitted),
        (S::Uploading, E::UploadReclaimed, S::Uploading),
        // Only a success awaiting custody can lose its artifacts.
        (S::Finishing, E::ArtifactUnavailable, S::Failed),
        // A lost submit resolves either way.
        (S::SubmitUnknown, E::Submitted, S::Submitted),
        (S::SubmitUnknown, E::Completed, S::Succeeded),
        (S::SubmitUnknown, E::TimedOut, S::TimedOut),
    ] {
        assert_eq!(
            transition(from, event),
            Transition::Apply { to },
            "{from:?} + {event:?}"
        );
    }
}

#[test]
fn a_success_awaiting_custody_shows_as_in_progress() {
    assert_eq!(S::Finishing.as_seen(), S::InProgress);
    for status in JobStatus::ALL.into_iter().filter(|s| *s != S::Finishing) {
        assert_eq!(status.as_seen(), status);
    }
}

#[test]
fn an_ended_job_cannot_lose_its_artifacts() {
    for from in [S::Succeeded, S::Failed, S::Cancelled, S::TimedOut] {
        assert_eq!(
            transition(from, E::ArtifactUnavailable),
            Transition::Ignore {
                reason: REASON_TERMINAL
            }
        );
    }
}

#[test]
fn a_happy_path_walks_to_success() {
    let mut status = S::Pending;
    for event in [
        E::UploadStarted,
        E::Submitted,
        E::Queued,
        E::Started,
        E::Started,
        E::FalSucceeded,
        E::Completed,
    ] {
        match transition(status, event) {
            Transition::Apply { to } => status = to,
            Transition::Ignore { reason } => panic!("{event:?} ignored: {reason}"),
        }
    }
    assert_eq!(status, S::Succeeded);
}
