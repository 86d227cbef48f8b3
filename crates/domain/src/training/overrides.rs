//! Per-request overrides of a preset, checked against the trainer's fal schema so a bad value
//! is a 422 from us rather than a paid training that fails at fal.

use serde_json::{Map, Value};

use super::params::{FinetuneType, ProPriority, TrainingParams};
use super::presets::{training_preset, PortraitDefaults, PresetName};
use super::selection::adapt_to_kind;
use super::trainer::Trainer;
use crate::avatar::AvatarKind;
use crate::validation::{FieldViolation, Violations};

/// Steps of the portrait and fast trainers. fal publishes no maximum; 10000 is four times the
/// portrait default (2500), well past where more steps help, and caps the cost at $24.
pub const STEPS_RANGE: (u32, u32) = (1, 10_000);
/// Pro iterations: BFL's minimum is 100; 1000 is the seed's maximum preset.
pub const ITERATIONS_RANGE: (u32, u32) = (100, 1_000);
/// Learning rates must be positive; above 0.01 (50x the largest preset) a LoRA diverges.
pub const MAX_LEARNING_RATE: f64 = 0.01;
/// The pro trainer accepts only these LoRA ranks.
pub const LORA_RANKS: [u32; 2] = [16, 32];

/// The keys each trainer accepts as overrides: exactly the fields of its params.
pub fn override_keys(trainer: Trainer) -> &'static [&'static str] {
    match trainer {
        Trainer::Portrait => &[
            "steps",
            "learning_rate",
            "subject_crop",
            "create_masks",
            "multiresolution_training",
        ],
        Trainer::Pro => &[
            "iterations",
            "learning_rate",
            "priority",
            "lora_rank",
            "finetune_type",
            "captioning",
        ],
        Trainer::FastLora => &["steps", "create_masks", "is_style"],
    }
}

/// Preset + per-request overrides validated against the trainer's schema (ranges, enums,
/// types); unknown keys are rejected. Every violation's field is `overrides.<key>`.
pub fn resolve_params(
    trainer: Trainer,
    preset: PresetName,
    overrides: Option<&Map<String, Value>>,
    defaults: &PortraitDefaults,
) -> Result<TrainingParams, Violations> {
    let params = training_preset(trainer, preset, defaults).params;
    apply_overrides(params, overrides)
}

/// Like `resolve_params`, but adapts the preset to the avatar kind *before* the overrides, so
/// an explicit override (e.g. `is_style: false` for a style avatar) wins over the adaptation.
pub fn resolve_params_for_kind(
    trainer: Trainer,
    preset: PresetName,
    kind: AvatarKind,
    overrides: Option<&Map<String, Value>>,
    defaults: &PortraitDefaults,
) -> Result<TrainingParams, Violations> {
    let params = adapt_to_kind(training_preset(trainer, preset, defaults).params, kind);
    apply_overrides(params, overrides)
}

fn apply_overrides(
    mut params: TrainingParams,
    overrides: Option<&Map<String, Value>>,
) -> Result<TrainingParams, Violations> {
    let Some(overrides) = overrides else {
        return Ok(params);
    };
    let trainer = params.trainer();
    let mut violations = Violations::default();
    for (key, value) in overrides {
        let field = Field { key, value };
        let applied = match &mut params {
            TrainingParams::Portrait(p) => match key.as_str() {
                "steps" => field.uint_in(STEPS_RANGE).map(|v| p.steps = v),
                "learning_rate" => field.learning_rate().map(|v| p.learning_rate = v),
                "subject_crop" => field.boolean().map(|v| p.subject_crop = v),
                "create_masks" => field.boolean().map(|v| p.create_masks = v),
                "multiresolution_training" => {
                    field.boolean().map(|v| p.multiresolution_training = v)
                }
                _ => Err(field.unknown(trainer)),
            },
            TrainingParams::Pro(p) => match key.as_str() {
                "iterations" => field.uint_in(ITERATIONS_RANGE).map(|v| p.iterations = v),
                "learning_rate" => field.learning_rate().map(|v| p.learning_rate = v),
                "priority" => field.priority().map(|v| p.priority = v),
                "lora_rank" => field.lora_rank().map(|v| p.lora_rank = v),
                "finetune_type" => field.finetune_type().map(|v| p.finetune_type = v),
                "captioning" => field.boolean().map(|v| p.captioning = v),
                _ => Err(field.unknown(trainer)),
            },
            TrainingParams::FastLora(p) => match key.as_str() {
                "steps" => field.uint_in(STEPS_RANGE).map(|v| p.steps = v),
                "create_masks" => field.boolean().map(|v| p.create_masks = v),
                "is_style" => field.boolean().map(|v| p.is_style = v),
                _ => Err(field.unknown(trainer)),
            },
        };
        violations.check(applied);
    }
    violations.into_result()?;
    Ok(params)
}

/// One override entry, with the checks its key calls for.
struct Field<'a> {
    key: &'a str,
    value: &'a Value,
}

impl Field<'_> {
    fn path(&self) -> String {
        format!("overrides.{}", self.key)
    }

    fn violation(&self, code: &'static str, message: String) -> FieldViolation {
        FieldViolation::new(self.path(), code, message)
    }

    fn unknown(&self, trainer: Trainer) -> FieldViolation {
        self.violation(
            "unknown_field",
            format!(
                "is not a setting of the {} trainer; allowed: {}",
                trainer.as_str(),
                override_keys(trainer).join(", ")
            ),
        )
    }

    fn uint_in(&self, (min, max): (u32, u32)) -> Result<u32, FieldViolation> {
        let expected = || format!("must be an integer from {min} to {max}");
        // Integral JSON numbers only: 1.5 or "1000" is a type error, not something to round.
        let number = match self.value {
            Value::Number(n) if n.is_u64() || n.is_i64() => n,
            _ => return Err(self.violation("invalid_type", expected())),
        };
        match number.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(self.violation("out_of_range", expected())),
        }
    }

    fn learning_rate(&self) -> Result<f64, FieldViolation> {
        let expected = format!("must be a number greater than 0 and at most {MAX_LEARNING_RATE}");
        let Some(v) = self.value.as_f64() else {
            return Err(self.violation("invalid_type", expected));
        };
        if v > 0.0 && v <= MAX_LEARNING_RATE {
            Ok(v)
        } else {
            Err(self.violation("out_of_range", expected))
        }
    }

    fn boolean(&self) -> Result<bool, FieldViolation> {
        self.value
            .as_bool()
            .ok_or_else(|| self.violation("invalid_type", "must be true or false".into()))
    }

    fn choice<T>(
        &self,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T, FieldViolation> {
        let expected = format!("must be one of: {}", names.join(", "));
        let Some(text) = self.value.as_str() else {
            return Err(self.violation("invalid_type", expected));
        };
        parse(text).ok_or_else(|| self.violation("invalid_value", expected))
    }

    fn priority(&self) -> Result<ProPriority, FieldViolation> {
        let names = ProPriority::ALL.map(ProPriority::as_str);
        self.choice(&names, ProPriority::parse)
    }

    fn finetune_type(&self) -> Result<FinetuneType, FieldViolation> {
        let names = FinetuneType::ALL.map(FinetuneType::as_str);
        self.choice(&names, FinetuneType::parse)
    }

    fn lora_rank(&self) -> Result<u32, FieldViolation> {
        let expected = || format!("must be {} or {}", LORA_RANKS[0], LORA_RANKS[1]);
        match self.value {
            Value::Number(n) if n.is_u64() || n.is_i64() => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| LORA_RANKS.contains(v))
                .ok_or_else(|| self.violation("invalid_value", expected())),
            _ => Err(self.violation("invalid_type", expected())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::params::{FastLoraParams, PortraitParams, ProParams};
    use serde_json::json;

    fn overrides(value: Value) -> Map<String, Value> {
        value.as_object().expect("object").clone()
    }

    fn resolve(trainer: Trainer, value: Value) -> Result<TrainingParams, Violations> {
        resolve_params(
            trainer,
            PresetName::Balanced,
            Some(&overrides(value)),
            &PortraitDefaults::default(),
        )
    }

    /// The single violation of a rejected override, as (field, code).
    fn violation(trainer: Trainer, value: Value) -> (String, &'static str) {
        let err = resolve(trainer, value).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err:?}");
        (err.0[0].field.clone(), err.0[0].code)
    }

    /// The message of the first violation of a rejected override.
    fn message(trainer: Trainer, value: Value) -> String {
        resolve(trainer, value).unwrap_err().0[0].message.clone()
    }

    /// Asserts that each value of a row, given as the override `key` of the row's trainer, is
    /// refused with `code` at `overrides.<key>`, as the single violation.
    fn assert_refused<const N: usize>(code: &'static str, rows: [(Trainer, &str, Vec<Value>); N]) {
        for (trainer, key, values) in rows {
            for value in values {
                let overrides = json!({ key: value });
                assert_eq!(
                    violation(trainer, overrides.clone()),
                    (format!("overrides.{key}"), code),
                    "{overrides}"
                );
            }
        }
    }

    #[test]
    fn no_overrides_yield_the_preset() {
        for trainer in Trainer::ALL {
            for name in PresetName::ALL {
                let defaults = PortraitDefaults::default();
                assert_eq!(
                    resolve_params(trainer, name, None, &defaults).unwrap(),
                    training_preset(trainer, name, &defaults).params
                );
                assert_eq!(
                    resolve_params(trainer, name, Some(&Map::new()), &defaults).unwrap(),
                    training_preset(trainer, name, &defaults).params
                );
            }
        }
    }

    #[test]
    fn valid_overrides_replace_preset_values() {
        let params = resolve(
            Trainer::Portrait,
            json!({"steps": 1500, "learning_rate": 0.00015, "subject_crop": false,
                   "create_masks": false, "multiresolution_training": false}),
        )
        .unwrap();
        assert_eq!(
            params,
            TrainingParams::Portrait(PortraitParams {
                steps: 1500,
                learning_rate: 0.00015,
                subject_crop: false,
                create_masks: false,
                multiresolution_training: false,
            })
        );
        let params = resolve(
            Trainer::Pro,
            json!({"iterations": 100, "learning_rate": 0.01, "priority": "high_res_only",
                   "lora_rank": 16, "finetune_type": "lora", "captioning": false}),
        )
        .unwrap();
        assert_eq!(
            params,
            TrainingParams::Pro(ProParams {
                iterations: 100,
                learning_rate: 0.01,
                priority: ProPriority::HighResOnly,
                lora_rank: 16,
                finetune_type: FinetuneType::Lora,
                captioning: false,
            })
        );
        let params = resolve(
            Trainer::FastLora,
            json!({"steps": 10000, "create_masks": false, "is_style": true}),
        )
        .unwrap();
        assert_eq!(
            params,
            TrainingParams::FastLora(FastLoraParams {
                steps: 10000,
                create_masks: false,
                is_style: true,
            })
        );
        // An integral learning rate is still a number.
        assert!(resolve(Trainer::Portrait, json!({"learning_rate": 0})).is_err());
    }

    #[test]
    fn out_of_range_numbers_are_rejected_with_the_range() {
        assert_refused(
            "out_of_range",
            [
                (
                    Trainer::Portrait,
                    "steps",
                    vec![json!(0), json!(10001), json!(-5)],
                ),
                (Trainer::FastLora, "steps", vec![json!(20000)]),
                (Trainer::Pro, "iterations", vec![json!(99), json!(1001)]),
                (
                    Trainer::Portrait,
                    "learning_rate",
                    vec![json!(0.0), json!(-0.1)],
                ),
                (Trainer::Pro, "learning_rate", vec![json!(0.02)]),
            ],
        );
        assert!(message(Trainer::Portrait, json!({"steps": 0})).contains("1 to 10000"));
        assert!(message(Trainer::Pro, json!({"iterations": 5000})).contains("100 to 1000"));
        assert!(message(Trainer::Pro, json!({"learning_rate": 1.0})).contains("0.01"));
    }

    #[test]
    fn values_outside_an_enum_are_invalid_values() {
        assert_refused(
            "invalid_value",
            [
                (Trainer::Pro, "priority", vec![json!("balanced")]),
                (Trainer::Pro, "finetune_type", vec![json!("partial")]),
                (Trainer::Pro, "lora_rank", vec![json!(64)]),
            ],
        );
        assert!(message(Trainer::Pro, json!({"priority": "fastest"}))
            .contains("speed, quality, high_res_only"));
        assert!(message(Trainer::Pro, json!({"lora_rank": 8})).contains("16 or 32"));
    }

    #[test]
    fn wrong_json_types_are_invalid_types() {
        assert_refused(
            "invalid_type",
            [
                (
                    Trainer::Portrait,
                    "steps",
                    vec![json!("1000"), json!(1.5), json!(1000.0), json!(null)],
                ),
                (Trainer::Portrait, "learning_rate", vec![json!("0.0002")]),
                (Trainer::Portrait, "subject_crop", vec![json!("true")]),
                (Trainer::FastLora, "is_style", vec![json!(1)]),
                (Trainer::Pro, "iterations", vec![json!(1.5)]),
                (Trainer::Pro, "priority", vec![json!(1)]),
                (Trainer::Pro, "lora_rank", vec![json!("32"), json!(16.5)]),
                (Trainer::Pro, "captioning", vec![json!([])]),
            ],
        );
    }

    #[test]
    fn unknown_keys_are_rejected_per_trainer() {
        assert_refused(
            "unknown_field",
            [
                // Another trainer's setting is unknown too.
                (Trainer::Portrait, "iterations", vec![json!(500)]),
                (Trainer::FastLora, "learning_rate", vec![json!(0.0001)]),
                (Trainer::Pro, "steps", vec![json!(500)]),
                // Fields the service sets itself are not overridable.
                (
                    Trainer::Portrait,
                    "images_data_url",
                    vec![json!("https://x")],
                ),
            ],
        );
        assert!(
            message(Trainer::FastLora, json!({"foo": 1})).contains("steps, create_masks, is_style")
        );
    }

    #[test]
    fn every_violation_is_reported_at_once() {
        let err = resolve(
            Trainer::Portrait,
            json!({"steps": 0, "learning_rate": "x", "nope": true, "create_masks": true}),
        )
        .unwrap_err();
        let mut found: Vec<(String, &str)> =
            err.0.iter().map(|v| (v.field.clone(), v.code)).collect();
        found.sort();
        assert_eq!(
            found,
            [
                ("overrides.learning_rate".to_string(), "invalid_type"),
                ("overrides.nope".to_string(), "unknown_field"),
                ("overrides.steps".to_string(), "out_of_range"),
            ]
        );
    }

    #[test]
    fn overrides_win_over_kind_adaptation() {
        let defaults = PortraitDefaults::default();
        let adapted = resolve_params_for_kind(
            Trainer::FastLora,
            PresetName::Fast,
            AvatarKind::Style,
            None,
            &defaults,
        )
        .unwrap();
        assert!(matches!(adapted, TrainingParams::FastLora(p) if p.is_style));
        let overridden = resolve_params_for_kind(
            Trainer::FastLora,
            PresetName::Fast,
            AvatarKind::Style,
            Some(&overrides(json!({"is_style": false}))),
            &defaults,
        )
        .unwrap();
        assert!(matches!(overridden, TrainingParams::FastLora(p) if !p.is_style));
    }
}
