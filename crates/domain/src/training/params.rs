//! The effective training parameters, typed per trainer. They are exactly the fields sent to
//! fal besides the data URL and the trigger word, and are stored as JSON with fal's names.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::trainer::Trainer;

/// `fal-ai/flux-lora-portrait-trainer` input.
#[derive(Debug, Clone, PartialEq)]
pub struct PortraitParams {
    pub steps: u32,
    pub learning_rate: f64,
    pub subject_crop: bool,
    pub create_masks: bool,
    pub multiresolution_training: bool,
}

/// `fal-ai/flux-pro-trainer` input.
#[derive(Debug, Clone, PartialEq)]
pub struct ProParams {
    pub iterations: u32,
    pub learning_rate: f64,
    pub priority: ProPriority,
    /// 16 or 32.
    pub lora_rank: u32,
    pub finetune_type: FinetuneType,
    pub captioning: bool,
}

/// `fal-ai/flux-lora-fast-training` input.
#[derive(Debug, Clone, PartialEq)]
pub struct FastLoraParams {
    pub steps: u32,
    pub create_masks: bool,
    /// Disables segmentation and captioning: right for styles, wrong for people.
    pub is_style: bool,
}

named_enum! {
    /// The pro trainer's `priority` (a training setting, not the fal queue priority).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ProPriority {
        Speed => "speed",
        Quality => "quality",
        HighResOnly => "high_res_only",
    }
}

named_enum! {
    /// The pro trainer's `finetune_type`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum FinetuneType {
        Full => "full",
        Lora => "lora",
    }
}

/// The parameters of one training, tagged by trainer.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingParams {
    Portrait(PortraitParams),
    Pro(ProParams),
    FastLora(FastLoraParams),
}

impl TrainingParams {
    pub fn trainer(&self) -> Trainer {
        match self {
            Self::Portrait(_) => Trainer::Portrait,
            Self::Pro(_) => Trainer::Pro,
            Self::FastLora(_) => Trainer::FastLora,
        }
    }

    /// The fields with fal's names, ready to merge into a submit body.
    pub fn to_json(&self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            Self::Portrait(p) => {
                map.insert("steps".into(), p.steps.into());
                map.insert("learning_rate".into(), p.learning_rate.into());
                map.insert("subject_crop".into(), p.subject_crop.into());
                map.insert("create_masks".into(), p.create_masks.into());
                map.insert(
                    "multiresolution_training".into(),
                    p.multiresolution_training.into(),
                );
            }
            Self::Pro(p) => {
                map.insert("iterations".into(), p.iterations.into());
                map.insert("learning_rate".into(), p.learning_rate.into());
                map.insert("priority".into(), p.priority.as_str().into());
                map.insert("lora_rank".into(), p.lora_rank.into());
                map.insert("finetune_type".into(), p.finetune_type.as_str().into());
                map.insert("captioning".into(), p.captioning.into());
            }
            Self::FastLora(p) => {
                map.insert("steps".into(), p.steps.into());
                map.insert("create_masks".into(), p.create_masks.into());
                map.insert("is_style".into(), p.is_style.into());
            }
        }
        map
    }

    /// Reads back what `to_json` wrote (from the database). `None` when a field is missing or
    /// has the wrong type; values are not range-checked, since stored params were valid once.
    pub fn from_json(trainer: Trainer, map: &Map<String, Value>) -> Option<TrainingParams> {
        let uint = |key: &str| map.get(key)?.as_u64().and_then(|v| u32::try_from(v).ok());
        let float = |key: &str| map.get(key)?.as_f64();
        let boolean = |key: &str| map.get(key)?.as_bool();
        let text = |key: &str| map.get(key)?.as_str();
        Some(match trainer {
            Trainer::Portrait => Self::Portrait(PortraitParams {
                steps: uint("steps")?,
                learning_rate: float("learning_rate")?,
                subject_crop: boolean("subject_crop")?,
                create_masks: boolean("create_masks")?,
                multiresolution_training: boolean("multiresolution_training")?,
            }),
            Trainer::Pro => Self::Pro(ProParams {
                iterations: uint("iterations")?,
                learning_rate: float("learning_rate")?,
                priority: ProPriority::parse(text("priority")?)?,
                lora_rank: uint("lora_rank")?,
                finetune_type: FinetuneType::parse(text("finetune_type")?)?,
                captioning: boolean("captioning")?,
            }),
            Trainer::FastLora => Self::FastLora(FastLoraParams {
                steps: uint("steps")?,
                create_masks: boolean("create_masks")?,
                is_style: boolean("is_style")?,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn samples() -> Vec<TrainingParams> {
        vec![
            TrainingParams::Portrait(PortraitParams {
                steps: 1000,
                learning_rate: 0.0002,
                subject_crop: true,
                create_masks: false,
                multiresolution_training: true,
            }),
            TrainingParams::Pro(ProParams {
                iterations: 500,
                learning_rate: 1e-4,
                priority: ProPriority::HighResOnly,
                lora_rank: 16,
                finetune_type: FinetuneType::Lora,
                captioning: false,
            }),
            TrainingParams::FastLora(FastLoraParams {
                steps: 2000,
                create_masks: true,
                is_style: true,
            }),
        ]
    }

    #[test]
    fn to_json_uses_fal_field_names() {
        let [portrait, pro, fast]: [TrainingParams; 3] = samples().try_into().unwrap();
        assert_eq!(
            Value::Object(portrait.to_json()),
            json!({"steps": 1000, "learning_rate": 0.0002, "subject_crop": true,
                   "create_masks": false, "multiresolution_training": true})
        );
        assert_eq!(
            Value::Object(pro.to_json()),
            json!({"iterations": 500, "learning_rate": 0.0001, "priority": "high_res_only",
                   "lora_rank": 16, "finetune_type": "lora", "captioning": false})
        );
        assert_eq!(
            Value::Object(fast.to_json()),
            json!({"steps": 2000, "create_masks": true, "is_style": true})
        );
    }

    #[test]
    fn json_round_trips_for_every_trainer() {
        for params in samples() {
            let map = params.to_json();
            assert_eq!(
                TrainingParams::from_json(params.trainer(), &map),
                Some(params.clone())
            );
            // Through text too, as the database stores it.
            let text = serde_json::to_string(&map).unwrap();
            let reread: Map<String, Value> = serde_json::from_str(&text).unwrap();
            assert_eq!(
                TrainingParams::from_json(params.trainer(), &reread),
                Some(params)
            );
        }
    }

    #[test]
    fn from_json_rejects_missing_or_mistyped_fields() {
        let mut map = samples()[0].to_json();
        map.remove("steps");
        assert_eq!(TrainingParams::from_json(Trainer::Portrait, &map), None);
        let mut map = samples()[1].to_json();
        map.insert("priority".into(), json!("fastest"));
        assert_eq!(TrainingParams::from_json(Trainer::Pro, &map), None);
        // Another trainer's fields do not parse.
        assert_eq!(
            TrainingParams::from_json(Trainer::Pro, &samples()[0].to_json()),
            None
        );
    }

    #[test]
    fn enums_round_trip_through_their_names() {
        crate::names::assert_names_round_trip::<ProPriority>();
        crate::names::assert_names_round_trip::<FinetuneType>();
    }
}
