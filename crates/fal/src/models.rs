//! Typed inputs and outputs of the fal endpoints the service uses.
//!
//! Inputs serialise only the fields that are set, so fal's defaults apply to the rest. Outputs
//! deserialise leniently: unknown fields are ignored, optional fields may be missing, seeds are
//! `u64` (fal's seeds exceed `i64::MAX`), and numbers that fal documents as integers are also
//! accepted as floats where drift has been seen.

use serde::{Deserialize, Serialize};

/// `fal-ai/flux-lora-portrait-trainer`.
pub const PORTRAIT_TRAINER: &str = "fal-ai/flux-lora-portrait-trainer";
/// `fal-ai/flux-lora-fast-training`.
pub const FAST_TRAINER: &str = "fal-ai/flux-lora-fast-training";
/// `fal-ai/flux-pro-trainer` (absent from fal-js snapshots since 2025-12: may be delisted).
pub const PRO_TRAINER: &str = "fal-ai/flux-pro-trainer";
/// `fal-ai/flux-lora`.
pub const FLUX_LORA: &str = "fal-ai/flux-lora";
/// `fal-ai/flux-pro/v1.1-ultra-finetuned`.
pub const ULTRA_FINETUNED: &str = "fal-ai/flux-pro/v1.1-ultra-finetuned";

/// A file on fal's CDN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct File {
    pub url: String,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub file_size: Option<u64>,
}

/// A generated image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub url: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub content_type: Option<String>,
    pub file_name: Option<String>,
    pub file_size: Option<u64>,
}

/// Input of `fal-ai/flux-lora-portrait-trainer`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PortraitTrainerInput {
    /// URL of a ZIP of images (optionally with same-named `.txt` captions).
    pub images_data_url: String,
    pub trigger_phrase: Option<String>,
    pub learning_rate: Option<f64>,
    pub steps: Option<u32>,
    pub multiresolution_training: Option<bool>,
    pub subject_crop: Option<bool>,
    pub data_archive_format: Option<String>,
    pub resume_from_checkpoint: Option<String>,
    pub create_masks: Option<bool>,
}

/// Input of `fal-ai/flux-lora-fast-training`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FastTrainerInput {
    pub images_data_url: String,
    pub trigger_word: Option<String>,
    pub create_masks: Option<bool>,
    pub steps: Option<u32>,
    pub is_style: Option<bool>,
    pub is_input_format_already_preprocessed: Option<bool>,
    pub data_archive_format: Option<String>,
}

/// Output of both LoRA trainers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraTrainingOutput {
    pub diffusers_lora_file: File,
    pub config_file: Option<File>,
    pub debug_preprocessed_output: Option<File>,
}

/// `mode` of the Pro trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProTrainerMode {
    Character,
    Product,
    Style,
    General,
}

/// Input of `fal-ai/flux-pro-trainer`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProTrainerInput {
    pub data_url: String,
    /// Required by fal: a note identifying the finetune.
    pub finetune_comment: String,
    pub mode: Option<ProTrainerMode>,
    pub iterations: Option<u32>,
    pub learning_rate: Option<f64>,
    /// `speed`, `quality` or `high_res_only`: a training field, not the queue priority.
    pub priority: Option<String>,
    pub captioning: Option<bool>,
    pub trigger_word: Option<String>,
    pub lora_rank: Option<u32>,
    /// `full` or `lora`.
    pub finetune_type: Option<String>,
}

/// Output of `fal-ai/flux-pro-trainer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProTrainerOutput {
    pub finetune_id: String,
}

/// `image_size` of `fal-ai/flux-lora`: a preset name or explicit dimensions.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    /// `square_hd`, `square`, `portrait_4_3`, `portrait_16_9`, `landscape_4_3`,
    /// `landscape_16_9`.
    Preset(String),
    Custom {
        width: Option<u32>,
        height: Option<u32>,
    },
}

/// One LoRA applied by `fal-ai/flux-lora`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraWeight {
    /// URL (e.g. a trainer's `diffusers_lora_file.url`) or a Hugging Face id.
    pub path: String,
    pub scale: Option<f64>,
}

/// Input of `fal-ai/flux-lora`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FluxLoraInput {
    pub prompt: String,
    pub image_size: Option<ImageSize>,
    pub num_inference_steps: Option<u32>,
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraWeight>,
    pub guidance_scale: Option<f64>,
    pub sync_mode: Option<bool>,
    pub num_images: Option<u32>,
    pub enable_safety_checker: Option<bool>,
    /// `jpeg` or `png`.
    pub output_format: Option<String>,
}

/// Input of `fal-ai/flux-pro/v1.1-ultra-finetuned`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UltraFinetunedInput {
    pub prompt: String,
    pub finetune_id: String,
    /// Required by fal (no default); 0 to 2.
    pub finetune_strength: f64,
    /// `21:9`, `16:9`, `4:3`, `3:2`, `1:1`, `2:3`, `3:4`, `9:16`, `9:21`.
    pub aspect_ratio: Option<String>,
    pub raw: Option<bool>,
    pub num_images: Option<u32>,
    pub seed: Option<u64>,
    /// `"1"` to `"6"`, a string.
    pub safety_tolerance: Option<String>,
    pub output_format: Option<String>,
    pub enable_safety_checker: Option<bool>,
    pub sync_mode: Option<bool>,
    pub enhance_prompt: Option<bool>,
    pub image_url: Option<String>,
    pub image_prompt_strength: Option<f64>,
}

/// Output of `fal-ai/flux-lora` and `fal-ai/flux-pro/v1.1-ultra-finetuned`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesOutput {
    pub images: Vec<Image>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub has_nsfw_concepts: Vec<bool>,
    pub prompt: Option<String>,
    pub timings: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_tolerate_drift_and_large_seeds() {
        let out: ImagesOutput = serde_json::from_str(
            r#"{"images":[{"url":"https://v3.fal.media/files/rabbit/a.jpg","width":1024,"height":768,"new_field":1}],
                "seed":15860307465884635512,"timings":{"inference":2.5},"has_nsfw_concepts":[false],"prompt":"p","extra":{}}"#,
        )
        .unwrap();
        assert_eq!(out.seed, Some(15_860_307_465_884_635_512));
        assert_eq!(out.images[0].width, Some(1024));
        let minimal: ImagesOutput = serde_json::from_str(r#"{"images":[{"url":"u"}]}"#).unwrap();
        assert_eq!(minimal.images[0].content_type, None);
        let lora: LoraTrainingOutput = serde_json::from_str(
            r#"{"diffusers_lora_file":{"url":"u","content_type":"application/octet-stream","file_name":"pytorch_lora_weights.safetensors","file_size":89745224},"config_file":{"url":"c"}}"#,
        )
        .unwrap();
        assert_eq!(lora.diffusers_lora_file.file_size, Some(89_745_224));
    }

    #[test]
    fn inputs_omit_unset_fields() {
        let input = PortraitTrainerInput {
            images_data_url: "https://x/a.zip".into(),
            steps: Some(1000),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&input).unwrap(),
            serde_json::json!({"images_data_url":"https://x/a.zip","steps":1000})
        );
        let size = ImageSize::Custom {
            width: Some(64),
            height: Some(48),
        };
        assert_eq!(
            serde_json::to_value(size).unwrap(),
            serde_json::json!({"width":64,"height":48})
        );
        let width_only = ImageSize::Custom {
            width: Some(64),
            height: None,
        };
        assert_eq!(
            serde_json::to_value(width_only).unwrap(),
            serde_json::json!({"width":64})
        );
    }
}
