//! The fal trainers the service can use and what kind of model each produces.

use serde::{Deserialize, Serialize};

named_enum! {
    /// A fal training endpoint.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Trainer {
        /// `fal-ai/flux-lora-portrait-trainer`: a LoRA tuned for faces; the default for people.
        Portrait => "portrait",
        /// `fal-ai/flux-pro-trainer`: a FLUX.1 [pro] finetune, generated through ultra-finetuned.
        Pro => "pro",
        /// `fal-ai/flux-lora-fast-training`: a general LoRA, flat price.
        FastLora => "fast_lora",
    }
}

impl Trainer {
    /// The fal endpoint id a training is submitted to.
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Portrait => "fal-ai/flux-lora-portrait-trainer",
            Self::Pro => "fal-ai/flux-pro-trainer",
            Self::FastLora => "fal-ai/flux-lora-fast-training",
        }
    }

    /// What the trainer produces, which decides the generation endpoint.
    pub fn model_type(self) -> ModelType {
        match self {
            Self::Portrait | Self::FastLora => ModelType::Lora,
            Self::Pro => ModelType::Finetune,
        }
    }

    /// A warning to surface to callers who pick a trainer fal may withdraw. The pro trainer is
    /// missing from fal's published endpoint types since the 2025-12 snapshot.
    pub fn deprecation(self) -> Option<&'static str> {
        match self {
            Self::Pro => Some(
                "fal has marked fal-ai/flux-pro-trainer deprecated (absent from fal's published \
                 endpoint types since 2025-12); it may stop accepting trainings",
            ),
            Self::Portrait | Self::FastLora => None,
        }
    }
}

named_enum! {
    /// The artifact a training yields.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ModelType {
        /// LoRA weights (a safetensors file), used with `fal-ai/flux-lora`.
        Lora => "lora",
        /// A BFL finetune id, used with `fal-ai/flux-pro/v1.1-ultra-finetuned`.
        Finetune => "finetune",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainers_round_trip_through_their_names() {
        crate::names::assert_names_round_trip::<Trainer>();
        crate::names::assert_serialized_as_names::<Trainer>();
        assert_eq!(Trainer::parse("Portrait"), None);
        crate::names::assert_names_round_trip::<ModelType>();
    }

    #[test]
    fn trainers_map_to_fal_endpoints_and_model_types() {
        assert_eq!(
            Trainer::Portrait.endpoint(),
            "fal-ai/flux-lora-portrait-trainer"
        );
        assert_eq!(Trainer::Pro.endpoint(), "fal-ai/flux-pro-trainer");
        assert_eq!(
            Trainer::FastLora.endpoint(),
            "fal-ai/flux-lora-fast-training"
        );
        assert_eq!(Trainer::Portrait.model_type(), ModelType::Lora);
        assert_eq!(Trainer::FastLora.model_type(), ModelType::Lora);
        assert_eq!(Trainer::Pro.model_type(), ModelType::Finetune);
    }

    #[test]
    fn only_the_pro_trainer_is_deprecated() {
        assert!(Trainer::Pro
            .deprecation()
            .unwrap()
            .starts_with("fal has marked fal-ai/flux-pro-trainer deprecated"));
        assert_eq!(Trainer::Portrait.deprecation(), None);
        assert_eq!(Trainer::FastLora.deprecation(), None);
    }
}
