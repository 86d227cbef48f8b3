//! Usage reports for billing: which days a report covers, and how a tenant's trainings and
//! generations add up per day.
//!
//! A job counts into the UTC day of its creation (`created_at`), whatever became of it later
//! and whether or not its avatar still exists. Both ends of a range are inclusive dates.

use chrono::{DateTime, NaiveDate, Utc};

use crate::generation::{
    generation_status, GenerationPrices, GenerationStatus, ItemsSummary,
    FINETUNE_GENERATION_ENDPOINT, LORA_GENERATION_ENDPOINT,
};
use crate::training::cost::round_usd;
use crate::training::{JobStatus, Trainer, TrainingPrices};
use crate::validation::{FieldViolation, Violations};
use crate::Named;

/// Days a report covers when the caller names no start.
pub const DEFAULT_USAGE_DAYS: u32 = 30;

/// The days a report covers: `first` to `last`, both included (UTC dates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRange {
    pub first: NaiveDate,
    pub last: NaiveDate,
}

/// A date exactly as `YYYY-MM-DD` (chrono alone would take `2026-1-5` or a five-digit year).
fn parse_date(field: &str, text: &str) -> Result<NaiveDate, FieldViolation> {
    let invalid = || {
        FieldViolation::new(
            field,
            "invalid_date",
            "must be a calendar date as YYYY-MM-DD (UTC)",
        )
    };
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err(invalid());
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| invalid())?;
    // Year 0 is a valid proleptic date but no billing period; keep to the common era.
    if date < NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date") {
        return Err(invalid());
    }
    Ok(date)
}

impl UsageRange {
    /// The range a caller asked for. `to` defaults to `today`; `from` to the day that makes the
    /// range [`DEFAULT_USAGE_DAYS`] long (or `max_days`, when that is shorter). A range may span
    /// at most `max_days` days.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        today: NaiveDate,
        max_days: u32,
    ) -> Result<UsageRange, Violations> {
        let mut violations = Violations::default();
        let last = match to {
            Some(text) => violations.check(parse_date("to", text)),
            None => Some(today),
        };
        let first = match from {
            Some(text) => violations.check(parse_date("from", text)),
            None => last.and_then(|last| {
                last.checked_sub_days(chrono::Days::new(
                    u64::from(DEFAULT_USAGE_DAYS.min(max_days).max(1)) - 1,
                ))
            }),
        };
        violations.into_result()?;
        let (Some(first), Some(last)) = (first, last) else {
            // `to` parsed yet no default start exists before it: only year 1 gets here.
            return Err(FieldViolation::new("to", "invalid_date", "is too early").into());
        };
        if first > last {
            return Err(FieldViolation::new("from", "after_to", "must not be after `to`").into());
        }
        let range = UsageRange { first, last };
        if range.days() > u64::from(max_days) {
            // The end the caller chose is at fault; `to` when both were given.
            let field = if to.is_some() { "to" } else { "from" };
            return Err(FieldViolation::new(
                field,
                "range_too_long",
                format!("the range may span at most {max_days} days (both ends included)"),
            )
            .into());
        }
        Ok(range)
    }

    /// How many days the range spans.
    pub fn days(&self) -> u64 {
        (self.last - self.first).num_days().unsigned_abs() + 1
    }

    /// Every day of the range, in order.
    pub fn dates(&self) -> impl Iterator<Item = NaiveDate> {
        self.first.iter_days().take(self.days() as usize)
    }

    /// The first instant of the range.
    pub fn start(&self) -> DateTime<Utc> {
        self.first.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The first instant after the range.
    pub fn end(&self) -> DateTime<Utc> {
        (self.last + chrono::Days::new(1))
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
    }
}

/// What fal's billed units (`X-Fal-Billable-Units`) of a request to `endpoint` cost at the
/// configured prices: portrait trainer steps, fast or pro training runs, flux-lora megapixels,
/// ultra-finetuned images. `None` for an endpoint without a known unit price.
pub fn billed_cost_usd(
    endpoint: &str,
    units: f64,
    training: &TrainingPrices,
    generation: &GenerationPrices,
) -> Option<f64> {
    let unit_price = match endpoint {
        e if e == Trainer::Portrait.endpoint() => training.portrait_per_step_usd,
        e if e == Trainer::FastLora.endpoint() => training.fast_lora_per_run_usd,
        e if e == Trainer::Pro.endpoint() => training.pro_per_run_usd?,
        LORA_GENERATION_ENDPOINT => generation.per_megapixel_usd,
        FINETUNE_GENERATION_ENDPOINT => generation.finetuned_per_image_usd,
        _ => return None,
    };
    Some(round_usd(units * unit_price))
}

/// Trainings of one day in one status, as the database sums them.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingTally {
    pub day: NaiveDate,
    pub status: JobStatus,
    pub count: u64,
    pub estimated_cost_usd: f64,
    /// `None` when fal reported the cost of none of them.
    pub actual_cost_usd: Option<f64>,
}

/// Generations of one day whose items sum up alike, as the database sums them.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationTally {
    pub day: NaiveDate,
    pub items: ItemsSummary,
    pub count: u64,
    /// Images made (and kept) for them.
    pub images: u64,
    pub estimated_cost_usd: f64,
    pub actual_cost_usd: Option<f64>,
}

/// How many jobs are in each status `S` (every status of `S` has a count, zero or more).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusCounts<S>(Vec<(S, u64)>);

impl<S: Named> Default for StatusCounts<S> {
    fn default() -> Self {
        Self(S::ALL.iter().map(|&status| (status, 0)).collect())
    }
}

impl<S: Named> StatusCounts<S> {
    pub fn count(&self, status: S) -> u64 {
        self.0
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |&(_, n)| n)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|&(_, n)| n).sum()
    }

    fn add(&mut self, status: S, n: u64) {
        if let Some((_, count)) = self.0.iter_mut().find(|(s, _)| *s == status) {
            *count += n;
        }
    }
}

/// Trainings counted by status, with their cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingUsage {
    pub by_status: StatusCounts<JobStatus>,
    pub estimated_cost_usd: f64,
    pub actual_cost_usd: Option<f64>,
}

/// Generations counted by status, the images made for them, and their cost.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationUsage {
    pub by_status: StatusCounts<GenerationStatus>,
    pub images: u64,
    pub estimated_cost_usd: f64,
    pub actual_cost_usd: Option<f64>,
}

/// What one day, or the whole range, adds up to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub trainings: TrainingUsage,
    pub generations: GenerationUsage,
}

impl Usage {
    /// Trainings' and generations' estimates together.
    pub fn estimated_cost_usd(&self) -> f64 {
        round_usd(self.trainings.estimated_cost_usd + self.generations.estimated_cost_usd)
    }

    /// What fal reported, where it did; `None` when it reported nothing for any job.
    pub fn actual_cost_usd(&self) -> Option<f64> {
        add_known(
            self.trainings.actual_cost_usd,
            self.generations.actual_cost_usd,
        )
    }

    fn add_training(&mut self, tally: &TrainingTally) {
        let t = &mut self.trainings;
        // Counted as callers see the training: one still finishing is in progress.
        let seen = tally.status.as_seen();
        t.by_status.add(seen, tally.count);
        t.estimated_cost_usd = round_usd(t.estimated_cost_usd + tally.estimated_cost_usd);
        t.actual_cost_usd = add_known(t.actual_cost_usd, tally.actual_cost_usd);
    }

    fn add_generations(&mut self, tally: &GenerationTally) {
        let g = &mut self.generations;
        let status = generation_status(tally.items);
        g.by_status.add(status, tally.count);
        g.images += tally.images;
        g.estimated_cost_usd = round_usd(g.estimated_cost_usd + tally.estimated_cost_usd);
        g.actual_cost_usd = add_known(g.actual_cost_usd, tally.actual_cost_usd);
    }
}

fn add_known(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(round_usd(a.unwrap_or(0.0) + b.unwrap_or(0.0))),
    }
}

/// A tenant's usage over a range: the totals, and every day of the range (days without
/// activity included, as zeros), oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    pub range: UsageRange,
    pub totals: Usage,
    pub days: Vec<(NaiveDate, Usage)>,
}

impl UsageReport {
    /// Sums the database's tallies into days and totals. Tallies outside the range are
    /// ignored.
    pub fn build(
        range: UsageRange,
        trainings: &[TrainingTally],
        generations: &[GenerationTally],
    ) -> UsageReport {
        let mut days: Vec<(NaiveDate, Usage)> =
            range.dates().map(|d| (d, Usage::default())).collect();
        let mut totals = Usage::default();
        let index = |day: NaiveDate| {
            (range.first <= day && day <= range.last).then(|| (day - range.first).num_days())
        };
        for tally in trainings {
            if let Some(i) = index(tally.day) {
                days[i as usize].1.add_training(tally);
                totals.add_training(tally);
            }
        }
        for tally in generations {
            if let Some(i) = index(tally.day) {
                days[i as usize].1.add_generations(tally);
                totals.add_generations(tally);
            }
        }
        UsageReport {
            range,
            totals,
            days,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn parse(from: Option<&str>, to: Option<&str>, max: u32) -> Result<UsageRange, Violations> {
        UsageRange::parse(from, to, date("2026-11-29"), max)
    }

    fn fault(result: Result<UsageRange, Violations>) -> (String, &'static str) {
        let violations = result.unwrap_err();
        assert_eq!(violations.0.len(), 1, "{violations:?}");
        (violations.0[0].field.clone(), violations.0[0].code)
    }

    #[test]
    fn the_default_range_is_the_last_thirty_days() {
        let range = parse(None, None, 366).unwrap();
        assert_eq!(
            (range.first, range.last),
            (date("2026-10-31"), date("2026-11-29"))
        );
        assert_eq!(range.days(), 30);
        assert_eq!(range.dates().count(), 30);
        // Shorter when the maximum is.
        assert_eq!(parse(None, None, 7).unwrap().days(), 7);
        let range = parse(None, Some("2026-01-31"), 366).unwrap();
        assert_eq!(range.first, date("2026-01-02"));
        let range = parse(Some("2026-11-01"), None, 366).unwrap();
        assert_eq!(
            (range.first, range.last),
            (date("2026-11-01"), date("2026-11-29"))
        );
    }

    #[test]
    fn the_range_is_bounded_at_its_edge() {
        // 366 days, both ends included: accepted; one more is refused, naming `to`.
        let range = parse(Some("2025-01-01"), Some("2026-01-01"), 366).unwrap();
        assert_eq!(range.days(), 366);
        assert_eq!(
            fault(parse(Some("2025-01-01"), Some("2026-01-02"), 366)),
            ("to".into(), "range_too_long")
        );
        // Without `to`, the given start is at fault.
        assert_eq!(
            fault(parse(Some("2025-01-01"), None, 366)),
            ("from".into(), "range_too_long")
        );
        let one_day = parse(Some("2026-11-29"), Some("2026-11-29"), 1).unwrap();
        assert_eq!(one_day.days(), 1);
        assert_eq!(one_day.end() - one_day.start(), chrono::Duration::days(1));
    }

    #[test]
    fn bad_dates_name_their_field() {
        for bad in [
            "",
            "2026-1-05",
            "2026-13-01",
            "2026-02-30",
            "20261-01-01",
            "2026/01/01",
            "0000-01-01",
            "2026-01-01T00:00:00Z",
            "+202-01-01",
        ] {
            assert_eq!(
                fault(parse(Some(bad), None, 366)),
                ("from".into(), "invalid_date"),
                "{bad}"
            );
            assert_eq!(
                fault(parse(None, Some(bad), 366)),
                ("to".into(), "invalid_date"),
                "{bad}"
            );
        }
        assert_eq!(parse(Some("x"), Some("y"), 366).unwrap_err().0.len(), 2);
        assert_eq!(
            fault(parse(Some("2026-11-02"), Some("2026-11-01"), 366)),
            ("from".into(), "after_to")
        );
    }

    #[test]
    fn billed_units_are_priced_by_endpoint() {
        let (training, generation) = (TrainingPrices::default(), GenerationPrices::default());
        let cost = |endpoint, units| billed_cost_usd(endpoint, units, &training, &generation);
        assert_eq!(cost("fal-ai/flux-lora-portrait-trainer", 2500.0), Some(6.0));
        assert_eq!(cost("fal-ai/flux-lora-fast-training", 1.0), Some(2.0));
        // The pro trainer has no published price.
        assert_eq!(cost("fal-ai/flux-pro-trainer", 1.0), None);
        assert_eq!(cost("fal-ai/flux-lora", 4.0), Some(0.14));
        assert_eq!(
            cost("fal-ai/flux-pro/v1.1-ultra-finetuned", 3.0),
            Some(0.21)
        );
        assert_eq!(cost("fal-ai/something-else", 3.0), None);
    }

    #[test]
    fn tallies_add_up_per_day_and_in_total() {
        let range = parse(Some("2026-11-01"), Some("2026-11-03"), 366).unwrap();
        let finished = |any_succeeded, all_succeeded| ItemsSummary {
            any_unfinished: false,
            all_pending: false,
            any_succeeded,
            all_succeeded,
        };
        let trainings = [
            TrainingTally {
                day: date("2026-11-01"),
                status: JobStatus::Succeeded,
                count: 2,
                estimated_cost_usd: 12.0,
                actual_cost_usd: Some(11.5),
            },
            TrainingTally {
                day: date("2026-11-03"),
                status: JobStatus::Failed,
                count: 1,
                estimated_cost_usd: 2.4,
                actual_cost_usd: None,
            },
            // Outside the range: ignored.
            TrainingTally {
                day: date("2026-11-04"),
                status: JobStatus::Failed,
                count: 7,
                estimated_cost_usd: 1.0,
                actual_cost_usd: None,
            },
        ];
        let generations = [
            GenerationTally {
                day: date("2026-11-01"),
                items: finished(true, true),
                count: 3,
                images: 6,
                estimated_cost_usd: 0.21,
                actual_cost_usd: None,
            },
            GenerationTally {
                day: date("2026-11-01"),
                items: finished(true, false),
                count: 1,
                images: 1,
                estimated_cost_usd: 0.07,
                actual_cost_usd: Some(0.035),
            },
        ];
        let report = UsageReport::build(range, &trainings, &generations);
        assert_eq!(report.days.len(), 3);
        let (day, first) = &report.days[0];
        assert_eq!(*day, date("2026-11-01"));
        assert_eq!(first.trainings.by_status.count(JobStatus::Succeeded), 2);
        assert_eq!(
            first
                .generations
                .by_status
                .count(GenerationStatus::Succeeded),
            3
        );
        assert_eq!(
            first
                .generations
                .by_status
                .count(GenerationStatus::PartiallySucceeded),
            1
        );
        assert_eq!(first.generations.by_status.total(), 4);
        assert_eq!(first.generations.images, 7);
        assert_eq!(first.estimated_cost_usd(), 12.28);
        assert_eq!(first.actual_cost_usd(), Some(11.535));
        let (_, quiet) = &report.days[1];
        assert_eq!(quiet, &Usage::default());
        assert_eq!(quiet.actual_cost_usd(), None);
        let (_, third) = &report.days[2];
        assert_eq!(third.trainings.by_status.total(), 1);
        assert_eq!(third.actual_cost_usd(), None);
        assert_eq!(report.totals.trainings.by_status.total(), 3);
        assert_eq!(report.totals.estimated_cost_usd(), 14.68);
        assert_eq!(report.totals.actual_cost_usd(), Some(11.535));
    }

    #[test]
    fn a_finishing_training_counts_as_in_progress() {
        let range = parse(Some("2026-11-01"), Some("2026-11-01"), 366).unwrap();
        let trainings = [TrainingTally {
            day: date("2026-11-01"),
            status: JobStatus::Finishing,
            count: 1,
            estimated_cost_usd: 1.0,
            actual_cost_usd: None,
        }];
        let report = UsageReport::build(range, &trainings, &[]);
        assert_eq!(
            report
                .totals
                .trainings
                .by_status
                .count(JobStatus::InProgress),
            1
        );
        assert_eq!(
            report
                .totals
                .trainings
                .by_status
                .count(JobStatus::Finishing),
            0
        );
        assert_eq!(report.totals.trainings.by_status.total(), 1);
    }
}
