//! A generation request: what a caller may ask for, checked against the avatar's model.

use crate::generation::{
    aspect_ratio_entry, aspect_ratio_for_size, estimate_finetune_generation_cost,
    estimate_lora_generation_cost, generation_preset, GenerationPreset, GenerationPresetName,
    GenerationPrices, LoraImageSize, ASPECT_RATIOS,
};
use crate::training::cost::round_usd;
use crate::training::request::choice;
use crate::training::ModelType;
use crate::validation::{FieldViolation, Violations};

/// The longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Images per prompt.
pub const NUM_IMAGES_RANGE: std::ops::RangeInclusive<u32> = 1..=4;
/// Exact widths and heights, in pixels.
pub const EXACT_SIZE_RANGE: std::ops::RangeInclusive<u32> = 256..=2048;
pub const OUTPUT_FORMATS: [&str; 2] = ["jpeg", "png"];
pub const SAFETY_TOLERANCES: [&str; 6] = ["1", "2", "3", "4", "5", "6"];

/// A generation request as the caller sent it, before any check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationInput {
    pub prompt: Option<String>,
    pub prompts: Option<Vec<String>>,
    pub preset: Option<String>,
    pub num_images: Option<u32>,
    pub aspect_ratio: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seed: Option<u64>,
    pub output_format: Option<String>,
    pub lora_scale: Option<f64>,
    pub finetune_strength: Option<f64>,
    pub enable_safety_checker: Option<bool>,
    pub safety_tolerance: Option<String>,
}

/// The image size asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedSize {
    /// The preset's size.
    Preset,
    /// One of [`ASPECT_RATIOS`], with its flux-lora size.
    AspectRatio {
        ratio: &'static str,
        lora_size: LoraImageSize,
    },
    /// Exact pixels (LoRA models only).
    Exact { width: u32, height: u32 },
}

/// A checked generation request: every value a generation needs, typed, overrides applied.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// One or more prompts, trimmed, as given (without the trigger phrase).
    pub prompts: Vec<String>,
    pub preset: GenerationPreset,
    pub num_images: u32,
    pub size: RequestedSize,
    pub seed: Option<u64>,
    /// `jpeg` or `png`; fal's default when absent.
    pub output_format: Option<String>,
    /// The LoRA's scale: the caller's, else the preset's.
    pub lora_scale: f64,
    /// `finetune_strength`: the caller's, else the preset's.
    pub finetune_strength: f64,
    pub enable_safety_checker: Option<bool>,
    /// `"1"` to `"6"` (finetuned models only).
    pub safety_tolerance: Option<String>,
}

fn violation(field: &str, code: &'static str, message: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, code, message)
}

impl GenerationRequest {
    /// Checks every field against the avatar's model (`None`: not trained yet, so only the
    /// fields themselves are checked), reporting all that are wrong at once.
    pub fn parse(
        input: &GenerationInput,
        model_type: Option<ModelType>,
        max_prompts: usize,
    ) -> Result<GenerationRequest, Violations> {
        let mut violations = Violations::default();
        let prompts = parse_prompts(input, max_prompts, &mut violations);
        let preset = match input.preset.as_deref() {
            None => Some(GenerationPresetName::default()),
            Some(name) => violations.check(choice(
                "preset",
                GenerationPresetName::parse(name),
                "fast, balanced, quality, ultra or portrait",
            )),
        };
        let num_images = input.num_images.unwrap_or(1);
        if !NUM_IMAGES_RANGE.contains(&num_images) {
            violations.push(violation(
                "num_images",
                "out_of_range",
                "must be from 1 to 4",
            ));
        }
        let size = parse_size(input, model_type, &mut violations);
        if let Some(format) = &input.output_format {
            if !OUTPUT_FORMATS.contains(&format.as_str()) {
                violations.push(violation(
                    "output_format",
                    "invalid_value",
                    "must be jpeg or png",
                ));
            }
        }
        if let Some(seed) = input.seed {
            // fal validates seeds as signed 64-bit integers.
            if seed > i64::MAX as u64 {
                violations.push(violation(
                    "seed",
                    "out_of_range",
                    format!("must be at most {}", i64::MAX),
                ));
            }
        }
        check_strength(
            "lora_scale",
            input.lora_scale,
            4.0,
            ModelType::Finetune,
            model_type,
            &mut violations,
        );
        check_strength(
            "finetune_strength",
            input.finetune_strength,
            2.0,
            ModelType::Lora,
            model_type,
            &mut violations,
        );
        check_safety_tolerance(input, model_type, &mut violations);
        match preset.map(generation_preset) {
            Some(preset) if violations.is_empty() => Ok(GenerationRequest {
                prompts,
                num_images,
                size,
                seed: input.seed,
                output_format: input.output_format.clone(),
                lora_scale: input.lora_scale.unwrap_or(preset.lora_scale),
                finetune_strength: input.finetune_strength.unwrap_or(preset.finetune_strength),
                enable_safety_checker: input.enable_safety_checker,
                safety_tolerance: input.safety_tolerance.clone(),
                preset,
            }),
            // No preset only when `preset` was at fault, so `violations` names it.
            _ => Err(violations),
        }
    }

    /// flux-lora's `image_size`: the aspect ratio's, the exact one, or the preset's.
    pub fn lora_image_size(&self) -> LoraImageSize {
        match self.size {
            RequestedSize::AspectRatio { lora_size, .. } => lora_size,
            RequestedSize::Exact { width, height } => LoraImageSize::Exact { width, height },
            RequestedSize::Preset => LoraImageSize::Named(self.preset.image_size),
        }
    }

    /// The finetuned endpoint's `aspect_ratio`: the one asked for, else the preset's size as a
    /// ratio (portrait presets stay portrait).
    pub fn finetune_aspect_ratio(&self) -> &'static str {
        match self.size {
            RequestedSize::AspectRatio { ratio, .. } => ratio,
            _ => aspect_ratio_for_size(self.preset.image_size).unwrap_or("1:1"),
        }
    }

    /// USD for one prompt's images with a model of `model_type`.
    pub fn cost_per_prompt(&self, model_type: ModelType, prices: &GenerationPrices) -> f64 {
        match model_type {
            ModelType::Lora => {
                let (width, height) = self.lora_image_size().dimensions();
                estimate_lora_generation_cost(width, height, self.num_images, prices)
            }
            ModelType::Finetune => estimate_finetune_generation_cost(self.num_images, prices),
        }
    }

    /// USD for every prompt, rounded to 4 decimals.
    pub fn total_cost(&self, cost_per_prompt: f64) -> f64 {
        round_usd(cost_per_prompt * self.prompts.len() as f64)
    }
}

/// `prompt` or `prompts`: one of them, 1 to `max_prompts` prompts, none empty or too long.
fn parse_prompts(
    input: &GenerationInput,
    max_prompts: usize,
    violations: &mut Violations,
) -> Vec<String> {
    let named: Vec<(String, &String)> = match (&input.prompt, &input.prompts) {
        (Some(_), Some(_)) => {
            violations.push(violation(
                "prompts",
                "conflicting_fields",
                "give prompt or prompts, not both",
            ));
            Vec::new()
        }
        (None, None) => {
            violations.push(violation("prompt", "required", "give prompt or prompts"));
            Vec::new()
        }
        (Some(prompt), None) => vec![("prompt".to_string(), prompt)],
        (None, Some(prompts)) => {
            if prompts.is_empty() || prompts.len() > max_prompts {
                violations.push(violation(
                    "prompts",
                    "out_of_range",
                    format!("must hold 1 to {max_prompts} prompts"),
                ));
            }
            prompts
                .iter()
                .enumerate()
                .map(|(i, prompt)| (format!("prompts[{i}]"), prompt))
                .collect()
        }
    };
    for (name, prompt) in &named {
        let length = prompt.trim().chars().count();
        if length == 0 {
            violations.push(violation(name, "empty", "must not be empty"));
        } else if length > MAX_PROMPT_CHARS {
            violations.push(violation(
                name,
                "too_long",
                format!("must be at most {MAX_PROMPT_CHARS} characters"),
            ));
        }
    }
    named
        .into_iter()
        .map(|(_, prompt)| prompt.trim().to_string())
        .collect()
}

/// `aspect_ratio`, or `width` with `height` (exact sizes are for LoRA models).
fn parse_size(
    input: &GenerationInput,
    model_type: Option<ModelType>,
    violations: &mut Violations,
) -> RequestedSize {
    let mut size = RequestedSize::Preset;
    if let Some(ratio) = &input.aspect_ratio {
        match aspect_ratio_entry(ratio) {
            Some((ratio, lora_size)) => size = RequestedSize::AspectRatio { ratio, lora_size },
            None => violations.push(violation(
                "aspect_ratio",
                "invalid_value",
                format!("must be one of {}", ASPECT_RATIOS.join(", ")),
            )),
        }
        if input.width.is_some() || input.height.is_some() {
            violations.push(violation(
                "width",
                "conflicting_fields",
                "give aspect_ratio or width and height, not both",
            ));
        }
    }
    match (input.width, input.height) {
        (None, None) => {}
        (Some(_), None) => violations.push(violation("height", "required", "give it with width")),
        (None, Some(_)) => violations.push(violation("width", "required", "give it with height")),
        (Some(width), Some(height)) => {
            for (name, value) in [("width", width), ("height", height)] {
                if !EXACT_SIZE_RANGE.contains(&value) {
                    violations.push(violation(name, "out_of_range", "must be from 256 to 2048"));
                }
            }
            if model_type == Some(ModelType::Finetune) {
                violations.push(violation(
                    "width",
                    "not_supported",
                    "finetuned avatars take aspect_ratio, not exact sizes",
                ));
            }
            if input.aspect_ratio.is_none() {
                size = RequestedSize::Exact { width, height };
            }
        }
    }
    size
}

/// A per-model strength field: from 0 to `max`, and refused for a `refused_for` model.
fn check_strength(
    field: &str,
    value: Option<f64>,
    max: f64,
    refused_for: ModelType,
    model_type: Option<ModelType>,
    violations: &mut Violations,
) {
    let Some(value) = value else { return };
    if !(0.0..=max).contains(&value) {
        violations.push(violation(
            field,
            "out_of_range",
            format!("must be from 0 to {max}"),
        ));
    }
    if model_type == Some(refused_for) {
        let takes = match refused_for {
            ModelType::Finetune => "finetuned avatars take finetune_strength",
            ModelType::Lora => "LoRA avatars take lora_scale",
        };
        violations.push(violation(field, "not_supported", takes));
    }
}

/// `safety_tolerance`: `"1"` to `"6"`, for finetuned models.
fn check_safety_tolerance(
    input: &GenerationInput,
    model_type: Option<ModelType>,
    violations: &mut Violations,
) {
    let Some(tolerance) = &input.safety_tolerance else {
        return;
    };
    if !SAFETY_TOLERANCES.contains(&tolerance.as_str()) {
        violations.push(violation(
            "safety_tolerance",
            "invalid_value",
            "must be \"1\" to \"6\"",
        ));
    } else if model_type == Some(ModelType::Lora) {
        violations.push(violation(
            "safety_tolerance",
            "not_supported",
            "LoRA avatars take enable_safety_checker",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::ImageSizePreset;
    use crate::training::request::tests::codes;

    fn input(prompt: &str) -> GenerationInput {
        GenerationInput {
            prompt: Some(prompt.to_string()),
            ..GenerationInput::default()
        }
    }

    #[test]
    fn a_bare_prompt_takes_the_balanced_preset() {
        let request = GenerationRequest::parse(&input("  a cat "), None, 10).unwrap();
        assert_eq!(request.prompts, ["a cat"]);
        assert_eq!(request.preset.name, GenerationPresetName::Balanced);
        assert_eq!(request.num_images, 1);
        assert_eq!(request.size, RequestedSize::Preset);
        assert_eq!(
            request.lora_image_size(),
            LoraImageSize::Named(ImageSizePreset::SquareHd)
        );
        assert_eq!(request.finetune_aspect_ratio(), "1:1");
        assert_eq!(request.lora_scale, request.preset.lora_scale);
    }

    #[test]
    fn presets_sizes_read_back_as_ratios() {
        let portrait = GenerationInput {
            preset: Some("portrait".into()),
            ..input("x")
        };
        let request = GenerationRequest::parse(&portrait, None, 10).unwrap();
        assert_eq!(request.finetune_aspect_ratio(), "3:4");
        let fast = GenerationInput {
            preset: Some("fast".into()),
            ..input("x")
        };
        // `square` has no ratio of its own: it reads as 1:1.
        let request = GenerationRequest::parse(&fast, None, 10).unwrap();
        assert_eq!(request.finetune_aspect_ratio(), "1:1");
    }

    #[test]
    fn every_bad_field_is_reported_in_order() {
        let bad = GenerationInput {
            prompt: Some(" ".into()),
            preset: Some("turbo".into()),
            num_images: Some(5),
            width: Some(100),
            output_format: Some("gif".into()),
            lora_scale: Some(5.0),
            finetune_strength: Some(1.0),
            safety_tolerance: Some("3".into()),
            ..GenerationInput::default()
        };
        let error = GenerationRequest::parse(&bad, Some(ModelType::Lora), 10).unwrap_err();
        assert_eq!(
            codes(error),
            [
                ("prompt".to_string(), "empty"),
                ("preset".to_string(), "invalid_value"),
                ("num_images".to_string(), "out_of_range"),
                ("height".to_string(), "required"),
                ("output_format".to_string(), "invalid_value"),
                ("lora_scale".to_string(), "out_of_range"),
                ("finetune_strength".to_string(), "not_supported"),
                ("safety_tolerance".to_string(), "not_supported"),
            ]
        );
    }

    #[test]
    fn finetunes_refuse_exact_sizes_and_lora_scale() {
        let request = GenerationInput {
            width: Some(512),
            height: Some(512),
            lora_scale: Some(1.0),
            ..input("x")
        };
        let error = GenerationRequest::parse(&request, Some(ModelType::Finetune), 10).unwrap_err();
        assert_eq!(
            codes(error),
            [
                ("width".to_string(), "not_supported"),
                ("lora_scale".to_string(), "not_supported"),
            ]
        );
    }

    #[test]
    fn batches_are_bounded() {
        let batch = GenerationInput {
            prompts: Some(vec!["a".into(), "b".into(), "c".into()]),
            ..GenerationInput::default()
        };
        let error = GenerationRequest::parse(&batch, None, 2).unwrap_err();
        assert_eq!(codes(error), [("prompts".to_string(), "out_of_range")]);
        let request = GenerationRequest::parse(&batch, None, 3).unwrap();
        assert_eq!(request.total_cost(0.035), 0.105);
    }

    #[test]
    fn exact_sizes_and_ratios_resolve() {
        let exact = GenerationInput {
            width: Some(800),
            height: Some(600),
            ..input("x")
        };
        let request = GenerationRequest::parse(&exact, Some(ModelType::Lora), 10).unwrap();
        assert_eq!(
            request.lora_image_size(),
            LoraImageSize::Exact {
                width: 800,
                height: 600
            }
        );
        let ratio = GenerationInput {
            aspect_ratio: Some("21:9".into()),
            ..input("x")
        };
        let request = GenerationRequest::parse(&ratio, Some(ModelType::Finetune), 10).unwrap();
        assert_eq!(request.finetune_aspect_ratio(), "21:9");
    }
}
