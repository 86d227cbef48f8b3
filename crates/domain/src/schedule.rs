//! When a job sent to fal is looked up and when it is given up: webhooks do the work, status
//! lookups are the safety net, and each job's deadline fits its own expected duration.

use std::time::Duration;

use crate::generation::billed_megapixels;
use crate::training::ModelType;

/// The rules that place a submitted job's status checks and deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckSchedule {
    /// Added to a job's expected duration before its webhook counts as overdue, and to its
    /// deadline (`FAL_WEBHOOK_GRACE`).
    pub grace: Duration,
    /// The first gap between two safety-net lookups, doubled after each (`FAL_STATUS_CHECK_INTERVAL`).
    pub interval: Duration,
    /// The longest gap between two safety-net lookups (`FAL_STATUS_CHECK_MAX_INTERVAL`).
    pub max_interval: Duration,
    /// A deadline is this many times the expected duration, plus the grace (`FAL_DEADLINE_FACTOR`).
    pub deadline_factor: u32,
}

impl CheckSchedule {
    /// From submission to the first status lookup: the job's expected duration plus the grace.
    /// A webhook that arrives before then means fal is never asked.
    pub fn first_check_after(&self, expected: Duration) -> Duration {
        expected.saturating_add(self.grace)
    }

    /// The gap after the `done`-th safety-net lookup (the first is `done == 1`): the interval,
    /// doubled each time, at most `max_interval`.
    pub fn next_check_after(&self, done: u32) -> Duration {
        let doublings = done.saturating_sub(1).min(30);
        self.interval
            .saturating_mul(1u32 << doublings)
            .min(self.max_interval.max(self.interval))
    }

    /// From submission to the deadline: `deadline_factor` x the expected duration plus the
    /// grace, at most `cap` (`FAL_TRAINING_TIMEOUT` or `GENERATION_TIMEOUT`).
    pub fn deadline_after(&self, expected: Duration, cap: Duration) -> Duration {
        expected
            .saturating_mul(self.deadline_factor)
            .saturating_add(self.grace)
            .min(cap)
    }
}

/// Whether a training expected to run `expected` may be accepted under `cap`: one whose own
/// estimate does not fit would be cancelled as timed out after it was paid.
pub fn fits_deadline(expected: Duration, cap: Duration) -> bool {
    expected <= cap
}

/// How long fal is expected to take for one generation item (one prompt, `num_images` images).
///
/// fal publishes no durations for these endpoints. LoRA images (`fal-ai/flux-lora`): 5 s of
/// start-up plus 0.25 s per inference step per billed megapixel per image (one `square_hd`
/// image at 28 steps: 12 s). Finetuned images (`flux-pro/v1.1-ultra-finetuned`, whose size is
/// fixed): 5 s plus 10 s per image.
pub fn generation_duration(
    model_type: ModelType,
    num_images: u32,
    num_inference_steps: u32,
    (width, height): (u32, u32),
) -> Duration {
    let images = u64::from(num_images.max(1));
    let millis = match model_type {
        ModelType::Lora => {
            let megapixels = billed_megapixels(width, height);
            5_000 + 250 * u64::from(num_inference_steps) * megapixels * images
        }
        ModelType::Finetune => 5_000 + 10_000 * images,
    };
    Duration::from_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> CheckSchedule {
        CheckSchedule {
            grace: Duration::from_secs(60),
            interval: Duration::from_secs(30),
            max_interval: Duration::from_secs(300),
            deadline_factor: 2,
        }
    }

    #[test]
    fn the_first_check_waits_for_the_expected_duration_and_the_grace() {
        assert_eq!(
            schedule().first_check_after(Duration::from_secs(360)),
            Duration::from_secs(420)
        );
    }

    #[test]
    fn later_checks_back_off_up_to_the_maximum() {
        let gaps: Vec<u64> = (1..=7)
            .map(|n| schedule().next_check_after(n).as_secs())
            .collect();
        assert_eq!(gaps, [30, 60, 120, 240, 300, 300, 300]);
        assert_eq!(schedule().next_check_after(u32::MAX).as_secs(), 300);
        // A maximum below the interval never shortens it.
        let odd = CheckSchedule {
            max_interval: Duration::from_secs(5),
            ..schedule()
        };
        assert_eq!(odd.next_check_after(3).as_secs(), 30);
    }

    #[test]
    fn deadlines_fit_the_work_up_to_the_cap() {
        let cap = Duration::from_secs(1800);
        let s = schedule();
        assert_eq!(
            s.deadline_after(Duration::from_secs(180), cap).as_secs(),
            420
        );
        assert_eq!(
            s.deadline_after(Duration::from_secs(900), cap).as_secs(),
            1800
        );
        assert_eq!(
            s.deadline_after(Duration::from_secs(1800), cap).as_secs(),
            1800
        );
        assert!(fits_deadline(Duration::from_secs(1800), cap));
        assert!(!fits_deadline(Duration::from_secs(1801), cap));
    }

    #[test]
    fn generation_durations_grow_with_the_work() {
        let lora = |images, steps, size| {
            generation_duration(ModelType::Lora, images, steps, size).as_millis()
        };
        let hd = (1024, 1024);
        assert_eq!(lora(1, 28, hd), 12_000);
        assert_eq!(lora(4, 28, hd), 5_000 + 4 * 7_000);
        assert_eq!(lora(1, 50, hd), 17_500);
        assert_eq!(lora(1, 28, (2048, 1024)), 19_000);
        assert_eq!(
            generation_duration(ModelType::Finetune, 2, 28, hd).as_secs(),
            25
        );
    }
}
