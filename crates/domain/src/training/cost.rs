//! Training cost estimates, shown before a caller spends money. Prices are configuration:
//! fal changes them, and the pro trainer publishes none.

use super::params::TrainingParams;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPrices {
    pub portrait_per_step_usd: f64,
    /// fal bills a portrait training as at least this many steps.
    pub portrait_min_billed_steps: u32,
    pub fast_lora_per_run_usd: f64,
    /// `None`: unknown, so no estimate is shown.
    pub pro_per_run_usd: Option<f64>,
}

impl Default for TrainingPrices {
    /// fal-protocol §6: $0.0024 per step with 1000 steps minimum; $2 per fast run; pro unknown.
    fn default() -> Self {
        Self {
            portrait_per_step_usd: 0.0024,
            portrait_min_billed_steps: 1000,
            fast_lora_per_run_usd: 2.0,
            pro_per_run_usd: None,
        }
    }
}

/// USD rounded to 4 decimals, or `None` when the price is unknown.
pub fn estimate_training_cost(params: &TrainingParams, prices: &TrainingPrices) -> Option<f64> {
    let usd = match params {
        TrainingParams::Portrait(p) => {
            f64::from(p.steps.max(prices.portrait_min_billed_steps)) * prices.portrait_per_step_usd
        }
        TrainingParams::FastLora(_) => prices.fast_lora_per_run_usd,
        TrainingParams::Pro(_) => prices.pro_per_run_usd?,
    };
    Some(round_usd(usd))
}

/// Four decimals hide float noise (2500 * 0.0024 = 6.000000000000001) without losing cents.
pub(crate) fn round_usd(usd: f64) -> f64 {
    (usd * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::presets::{training_preset, PortraitDefaults, PresetName};
    use crate::training::trainer::Trainer;

    fn portrait(steps: u32) -> TrainingParams {
        let defaults = PortraitDefaults {
            steps: Some(steps),
            ..PortraitDefaults::default()
        };
        training_preset(Trainer::Portrait, PresetName::Balanced, &defaults).params
    }

    #[test]
    fn portrait_is_billed_per_step_with_a_minimum() {
        let prices = TrainingPrices::default();
        assert_eq!(estimate_training_cost(&portrait(500), &prices), Some(2.4));
        assert_eq!(estimate_training_cost(&portrait(1000), &prices), Some(2.4));
        assert_eq!(estimate_training_cost(&portrait(1500), &prices), Some(3.6));
        assert_eq!(estimate_training_cost(&portrait(2500), &prices), Some(6.0));
        assert_eq!(estimate_training_cost(&portrait(1), &prices), Some(2.4));
    }

    #[test]
    fn fast_lora_is_flat_and_pro_is_unknown_unless_configured() {
        let defaults = PortraitDefaults::default();
        let prices = TrainingPrices::default();
        for name in PresetName::ALL {
            let fast = training_preset(Trainer::FastLora, name, &defaults).params;
            assert_eq!(estimate_training_cost(&fast, &prices), Some(2.0));
            let pro = training_preset(Trainer::Pro, name, &defaults).params;
            assert_eq!(estimate_training_cost(&pro, &prices), None);
            let configured = TrainingPrices {
                pro_per_run_usd: Some(4.5),
                ..TrainingPrices::default()
            };
            assert_eq!(estimate_training_cost(&pro, &configured), Some(4.5));
        }
    }

    #[test]
    fn estimates_are_rounded_to_four_decimals() {
        let prices = TrainingPrices {
            portrait_per_step_usd: 0.000_012_345,
            portrait_min_billed_steps: 1,
            ..TrainingPrices::default()
        };
        assert_eq!(
            estimate_training_cost(&portrait(1000), &prices),
            Some(0.0123)
        );
    }
}
