//! Training presets: the seed's fast / balanced / quality per trainer.
//!
//! Sources: the seed's `FAL_PRESET_*` tables for portrait and pro, its `FAL_PORTRAIT_*` settings
//! for portrait/balanced, and fal's documented defaults for every field the seed leaves unset.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::params::{
    FastLoraParams, FinetuneType, PortraitParams, ProParams, ProPriority, TrainingParams,
};
use super::trainer::Trainer;

named_enum! {
    /// A quality level.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum PresetName {
        Fast => "fast",
        #[default]
        Balanced => "balanced",
        Quality => "quality",
    }
}

/// The seed's env settings (`FAL_PORTRAIT_STEPS`, `_LEARNING_RATE`, `_SUBJECT_CROP`,
/// `_CREATE_MASKS`, `_MULTIRESOLUTION`). In the seed they configure the default portrait
/// training, so here they override the portrait *balanced* preset only; the other presets keep
/// their fixed values so "fast" and "quality" stay what their names promise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortraitDefaults {
    pub steps: Option<u32>,
    pub learning_rate: Option<f64>,
    pub subject_crop: Option<bool>,
    pub create_masks: Option<bool>,
    pub multiresolution: Option<bool>,
}

/// One preset of one trainer, as listed by `GET /presets`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingPreset {
    pub trainer: Trainer,
    pub name: PresetName,
    pub params: TrainingParams,
    /// How long fal is expected to run it ([`training_duration`]); a job's first status check
    /// and its deadline are derived from it.
    pub typical_duration: Duration,
    pub description: &'static str,
}

/// Every preset, with the env defaults applied to portrait/balanced.
/// Order: portrait (fast, balanced, quality), pro (...), fast_lora (...).
pub fn training_presets(defaults: &PortraitDefaults) -> Vec<TrainingPreset> {
    Trainer::ALL
        .into_iter()
        .flat_map(|trainer| {
            PresetName::ALL
                .into_iter()
                .map(move |name| training_preset(trainer, name, defaults))
        })
        .collect()
}

pub fn training_preset(
    trainer: Trainer,
    name: PresetName,
    defaults: &PortraitDefaults,
) -> TrainingPreset {
    let params = match trainer {
        Trainer::Portrait => TrainingParams::Portrait(portrait_params(name, defaults)),
        Trainer::Pro => TrainingParams::Pro(pro_params(name)),
        Trainer::FastLora => TrainingParams::FastLora(fast_lora_params(name)),
    };
    TrainingPreset {
        trainer,
        name,
        typical_duration: training_duration(&params),
        description: description(trainer, name),
        params,
    }
}

/// Seed: fast = 500 steps / lr 0.0003; balanced = 1000 / 0.0002 / create_masks; quality =
/// 2500 / 0.0001 / multiresolution_training. Unset by the seed's presets:
/// - `subject_crop`: true everywhere (fal's default, and the seed's `FAL_PORTRAIT_SUBJECT_CROP`).
/// - `multiresolution_training`: true everywhere (fal's default, and the seed's
///   `FAL_PORTRAIT_MULTIRESOLUTION`).
/// - `create_masks`: false for fast (fal's default; mask creation only adds time), true for
///   quality (the seed's `FAL_PORTRAIT_CREATE_MASKS`; quality should not do less than balanced).
fn portrait_params(name: PresetName, defaults: &PortraitDefaults) -> PortraitParams {
    match name {
        PresetName::Fast => PortraitParams {
            steps: 500,
            learning_rate: 0.0003,
            subject_crop: true,
            create_masks: false,
            multiresolution_training: true,
        },
        PresetName::Balanced => PortraitParams {
            steps: defaults.steps.unwrap_or(1000),
            learning_rate: defaults.learning_rate.unwrap_or(0.0002),
            subject_crop: defaults.subject_crop.unwrap_or(true),
            create_masks: defaults.create_masks.unwrap_or(true),
            multiresolution_training: defaults.multiresolution.unwrap_or(true),
        },
        PresetName::Quality => PortraitParams {
            steps: 2500,
            learning_rate: 0.0001,
            subject_crop: true,
            create_masks: true,
            multiresolution_training: true,
        },
    }
}

/// Seed: fast = 200 iterations / priority speed; balanced = 500 / lr 1e-4 / lora_rank 32;
/// quality = 1000 / lr 5e-5 / priority quality. Unset by the seed:
/// - `finetune_type`: full (fal's default, and what the seed actually sent).
/// - `learning_rate` of fast: 1e-5, fal's default for a full finetune.
/// - `priority` of balanced: quality (fal's default).
/// - `lora_rank`: 32 (fal's default; only used by LoRA finetunes).
/// - `captioning`: true (fal's default; captions help the finetune separate subject and scene).
fn pro_params(name: PresetName) -> ProParams {
    let (iterations, learning_rate, priority) = match name {
        PresetName::Fast => (200, 1e-5, ProPriority::Speed),
        PresetName::Balanced => (500, 1e-4, ProPriority::Quality),
        PresetName::Quality => (1000, 5e-5, ProPriority::Quality),
    };
    ProParams {
        iterations,
        learning_rate,
        priority,
        lora_rank: 32,
        finetune_type: FinetuneType::Full,
        captioning: true,
    }
}

/// The seed has no fast-training presets. Steps 500 / 1000 / 2000 mirror the portrait ladder
/// (fal lists no default). `create_masks` is true (fal's default: masks focus a person's
/// LoRA on the subject); `is_style` is false here and set per avatar kind by `adapt_to_kind`.
fn fast_lora_params(name: PresetName) -> FastLoraParams {
    let steps = match name {
        PresetName::Fast => 500,
        PresetName::Balanced => 1000,
        PresetName::Quality => 2000,
    };
    FastLoraParams {
        steps,
        create_masks: true,
        is_style: false,
    }
}

/// How long a training with these parameters is expected to run at fal. This is what
/// `GET /presets` shows, what a job's first status check and deadline are derived from, and
/// what `POST /train` compares with `FAL_TRAINING_TIMEOUT`.
///
/// From the seed's durations, linear in the amount of work:
/// - portrait: "3-15 minutes" for the seed's 500 to 2500 steps, so 0.36 s per step
///   (fast 3 min, balanced 6 min, quality 15 min);
/// - pro: "5-30 minutes" for 200 to 1000 iterations, taken as 1.8 s per iteration
///   (fast 6 min, balanced 15 min, quality 30 min), so the longest preset meets the upper bound;
/// - fast LoRA (not in the seed; fal-protocol §6 says 15-30 min): 0.9 s per step
///   (fast 7.5 min, balanced 15 min, quality 30 min).
pub fn training_duration(params: &TrainingParams) -> Duration {
    let millis = match params {
        TrainingParams::Portrait(p) => u64::from(p.steps) * 360,
        TrainingParams::FastLora(p) => u64::from(p.steps) * 900,
        TrainingParams::Pro(p) => u64::from(p.iterations) * 1_800,
    };
    Duration::from_millis(millis)
}

fn description(trainer: Trainer, name: PresetName) -> &'static str {
    match (trainer, name) {
        (Trainer::Portrait, PresetName::Fast) => "Quick portrait LoRA for previews: 500 steps.",
        (Trainer::Portrait, PresetName::Balanced) => {
            "Recommended portrait LoRA: 1000 steps with subject masks."
        }
        (Trainer::Portrait, PresetName::Quality) => {
            "Highest-fidelity portrait LoRA: 2500 steps, multiresolution training."
        }
        (Trainer::Pro, PresetName::Fast) => "Quick FLUX.1 [pro] finetune: 200 iterations.",
        (Trainer::Pro, PresetName::Balanced) => {
            "Recommended FLUX.1 [pro] finetune: 500 iterations."
        }
        (Trainer::Pro, PresetName::Quality) => {
            "Highest-quality FLUX.1 [pro] finetune: 1000 iterations."
        }
        (Trainer::FastLora, PresetName::Fast) => "Quick general LoRA: 500 steps.",
        (Trainer::FastLora, PresetName::Balanced) => "Recommended general LoRA: 1000 steps.",
        (Trainer::FastLora, PresetName::Quality) => "Most thorough general LoRA: 2000 steps.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portrait(name: PresetName, defaults: &PortraitDefaults) -> PortraitParams {
        match training_preset(Trainer::Portrait, name, defaults).params {
            TrainingParams::Portrait(p) => p,
            other => panic!("not portrait: {other:?}"),
        }
    }

    fn pro(name: PresetName) -> ProParams {
        match training_preset(Trainer::Pro, name, &PortraitDefaults::default()).params {
            TrainingParams::Pro(p) => p,
            other => panic!("not pro: {other:?}"),
        }
    }

    fn fast_lora(name: PresetName) -> FastLoraParams {
        match training_preset(Trainer::FastLora, name, &PortraitDefaults::default()).params {
            TrainingParams::FastLora(p) => p,
            other => panic!("not fast_lora: {other:?}"),
        }
    }

    #[test]
    fn portrait_presets_match_the_seed() {
        let none = PortraitDefaults::default();
        let fast = portrait(PresetName::Fast, &none);
        assert_eq!((fast.steps, fast.learning_rate), (500, 0.0003));
        assert!(fast.subject_crop && fast.multiresolution_training && !fast.create_masks);
        let balanced = portrait(PresetName::Balanced, &none);
        assert_eq!((balanced.steps, balanced.learning_rate), (1000, 0.0002));
        assert!(balanced.create_masks && balanced.subject_crop);
        assert!(balanced.multiresolution_training);
        let quality = portrait(PresetName::Quality, &none);
        assert_eq!((quality.steps, quality.learning_rate), (2500, 0.0001));
        assert!(quality.multiresolution_training && quality.subject_crop && quality.create_masks);
    }

    #[test]
    fn pro_presets_match_the_seed() {
        let fast = pro(PresetName::Fast);
        assert_eq!((fast.iterations, fast.priority), (200, ProPriority::Speed));
        assert_eq!(fast.learning_rate, 1e-5);
        let balanced = pro(PresetName::Balanced);
        assert_eq!(
            (
                balanced.iterations,
                balanced.learning_rate,
                balanced.lora_rank
            ),
            (500, 1e-4, 32)
        );
        assert_eq!(balanced.priority, ProPriority::Quality);
        let quality = pro(PresetName::Quality);
        assert_eq!(
            (quality.iterations, quality.learning_rate, quality.priority),
            (1000, 5e-5, ProPriority::Quality)
        );
        for p in [fast, balanced, quality] {
            assert_eq!(p.finetune_type, FinetuneType::Full);
            assert!(p.captioning);
            assert_eq!(p.lora_rank, 32);
        }
    }

    #[test]
    fn fast_lora_presets_climb_in_steps() {
        let steps: Vec<u32> = PresetName::ALL
            .into_iter()
            .map(|name| fast_lora(name).steps)
            .collect();
        assert_eq!(steps, [500, 1000, 2000]);
        for name in PresetName::ALL {
            assert!(fast_lora(name).create_masks);
            assert!(!fast_lora(name).is_style);
        }
    }

    #[test]
    fn env_defaults_apply_only_to_portrait_balanced() {
        let defaults = PortraitDefaults {
            steps: Some(1500),
            learning_rate: Some(0.00015),
            subject_crop: Some(false),
            create_masks: Some(false),
            multiresolution: Some(false),
        };
        assert_eq!(
            portrait(PresetName::Balanced, &defaults),
            PortraitParams {
                steps: 1500,
                learning_rate: 0.00015,
                subject_crop: false,
                create_masks: false,
                multiresolution_training: false,
            }
        );
        let with = training_presets(&defaults);
        let without = training_presets(&PortraitDefaults::default());
        for (a, b) in with.iter().zip(&without) {
            if (a.trainer, a.name) != (Trainer::Portrait, PresetName::Balanced) {
                assert_eq!(a, b);
            }
        }
        // A partial override keeps the rest of the preset.
        let steps_only = PortraitDefaults {
            steps: Some(1200),
            ..PortraitDefaults::default()
        };
        let balanced = portrait(PresetName::Balanced, &steps_only);
        assert_eq!((balanced.steps, balanced.learning_rate), (1200, 0.0002));
    }

    #[test]
    fn presets_are_listed_in_trainer_then_quality_order() {
        let order: Vec<(Trainer, PresetName)> = training_presets(&PortraitDefaults::default())
            .iter()
            .map(|p| (p.trainer, p.name))
            .collect();
        let expected: Vec<(Trainer, PresetName)> = Trainer::ALL
            .into_iter()
            .flat_map(|t| PresetName::ALL.into_iter().map(move |n| (t, n)))
            .collect();
        assert_eq!(order, expected);
        for preset in training_presets(&PortraitDefaults::default()) {
            assert_eq!(preset.params.trainer(), preset.trainer);
            assert!(!preset.description.is_empty());
        }
    }

    #[test]
    fn typical_durations_follow_the_seed() {
        let none = PortraitDefaults::default();
        let minutes = |t, n| training_preset(t, n, &none).typical_duration.as_secs() / 60;
        // Portrait "3-15 minutes", pro "5-30 minutes"; fast LoRA 15-30 minutes from balanced up.
        assert_eq!(minutes(Trainer::Portrait, PresetName::Fast), 3);
        assert_eq!(minutes(Trainer::Portrait, PresetName::Balanced), 6);
        assert_eq!(minutes(Trainer::Portrait, PresetName::Quality), 15);
        assert_eq!(minutes(Trainer::Pro, PresetName::Fast), 6);
        assert_eq!(minutes(Trainer::Pro, PresetName::Balanced), 15);
        assert_eq!(minutes(Trainer::Pro, PresetName::Quality), 30);
        assert_eq!(minutes(Trainer::FastLora, PresetName::Fast), 7);
        assert_eq!(minutes(Trainer::FastLora, PresetName::Balanced), 15);
        assert_eq!(minutes(Trainer::FastLora, PresetName::Quality), 30);
        let longer = PortraitDefaults {
            steps: Some(2000),
            ..PortraitDefaults::default()
        };
        let balanced = training_preset(Trainer::Portrait, PresetName::Balanced, &longer);
        assert_eq!(balanced.typical_duration.as_secs(), 720);
        // Every preset fits the default FAL_TRAINING_TIMEOUT (1800 s).
        for preset in training_presets(&none) {
            assert!(preset.typical_duration.as_secs() <= 1800, "{preset:?}");
        }
    }

    #[test]
    fn preset_names_round_trip_and_default_to_balanced() {
        assert_eq!(PresetName::default(), PresetName::Balanced);
        crate::names::assert_names_round_trip::<PresetName>();
        assert_eq!(PresetName::parse("max"), None);
    }
}
