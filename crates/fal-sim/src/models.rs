//! The endpoints the simulator serves: input validation (pydantic-style 422 `detail` entries,
//! as fal's errors page shows them) and how long each one works.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// Namespaces whose first segment is not the owner.
const NAMESPACES: [&str; 2] = ["workflows", "comfy"];

/// `{namespace/}owner/alias` of an endpoint id.
pub(crate) fn app_path(endpoint: &str) -> Option<String> {
    let parts: Vec<&str> = endpoint.split('/').collect();
    let skip = usize::from(NAMESPACES.contains(&parts[0]));
    (parts.len() >= skip + 2).then(|| parts[..skip + 2].join("/"))
}

/// What running a request of an endpoint means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Work {
    /// LoRA trainers: download the archive, train `steps`, write a `.safetensors` file.
    LoraTraining {
        archive_field: &'static str,
        steps_field: &'static str,
        default_steps: u64,
        /// Real seconds per step.
        secs_per_step: f64,
    },
    /// Pro trainer: download the archive, train `iterations`, return a `finetune_id`.
    ProTraining,
    /// flux-lora: images of the requested size.
    LoraGeneration,
    /// ultra-finetuned: images of the aspect ratio's size.
    UltraGeneration,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int { min: i64, max: i64 },
    Num { min: f64, max: f64 },
    Bool,
    Choice(&'static [&'static str]),
    Preset(&'static [Preset]),
    ImageSize,
    Loras,
}

struct Field {
    name: &'static str,
    kind: Kind,
    required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        required: false,
    }
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

const fn num(min: f64, max: f64) -> Kind {
    Kind::Num { min, max }
}

const SEED: Kind = int(0, i64::MAX);
const STEPS: Kind = int(1, 10_000);

pub(crate) struct EndpointSpec {
    pub id: &'static str,
    pub work: Work,
    fields: &'static [Field],
}

/// A named output size: `(name, (width, height))`.
type Preset = (&'static str, (u32, u32));

/// `image_size` presets of `fal-ai/flux-lora`.
const IMAGE_SIZES: &[Preset] = &[
    ("square_hd", (1024, 1024)),
    ("square", (512, 512)),
    ("portrait_4_3", (768, 1024)),
    ("portrait_16_9", (576, 1024)),
    ("landscape_4_3", (1024, 768)),
    ("landscape_16_9", (1024, 576)),
];
/// `aspect_ratio`s of the ultra endpoint, each about 4 MP.
const ASPECT_RATIOS: &[Preset] = &[
    ("21:9", (3136, 1344)),
    ("16:9", (2752, 1536)),
    ("4:3", (2368, 1792)),
    ("3:2", (2496, 1664)),
    ("1:1", (2048, 2048)),
    ("2:3", (1664, 2496)),
    ("3:4", (1792, 2368)),
    ("9:16", (1536, 2752)),
    ("9:21", (1344, 3136)),
];
const OUTPUT_FORMATS: &[&str] = &["jpeg", "png"];

static ENDPOINTS: &[EndpointSpec] = &[
    EndpointSpec {
        id: "fal-ai/flux-lora-portrait-trainer",
        work: Work::LoraTraining {
            archive_field: "images_data_url",
            steps_field: "steps",
            default_steps: 2500,
            secs_per_step: 0.6,
        },
        fields: &[
            req("images_data_url", Kind::Str),
            opt("trigger_phrase", Kind::Str),
            opt("learning_rate", num(0.0, 1.0)),
            opt("steps", STEPS),
            opt("multiresolution_training", Kind::Bool),
            opt("subject_crop", Kind::Bool),
            opt("data_archive_format", Kind::Str),
            opt("resume_from_checkpoint", Kind::Str),
            opt("create_masks", Kind::Bool),
        ],
    },
    EndpointSpec {
        id: "fal-ai/flux-lora-fast-training",
        work: Work::LoraTraining {
            archive_field: "images_data_url",
            steps_field: "steps",
            default_steps: 1000,
            secs_per_step: 1.2,
        },
        fields: &[
            req("images_data_url", Kind::Str),
            opt("trigger_word", Kind::Str),
            opt("create_masks", Kind::Bool),
            opt("steps", STEPS),
            opt("is_style", Kind::Bool),
            opt("is_input_format_already_preprocessed", Kind::Bool),
            opt("data_archive_format", Kind::Str),
        ],
    },
    EndpointSpec {
        id: "fal-ai/flux-pro-trainer",
        work: Work::ProTraining,
        fields: &[
            req("data_url", Kind::Str),
            req("finetune_comment", Kind::Str),
            opt(
                "mode",
                Kind::Choice(&["character", "product", "style", "general"]),
            ),
            opt("iterations", int(100, 10_000)),
            opt("learning_rate", num(0.0, 1.0)),
            opt(
                "priority",
                Kind::Choice(&["speed", "quality", "high_res_only"]),
            ),
            opt("captioning", Kind::Bool),
            opt("trigger_word", Kind::Str),
            opt("lora_rank", int(16, 32)),
            opt("finetune_type", Kind::Choice(&["full", "lora"])),
        ],
    },
    EndpointSpec {
        id: "fal-ai/flux-lora",
        work: Work::LoraGeneration,
        fields: &[
            req("prompt", Kind::Str),
            opt("image_size", Kind::ImageSize),
            opt("num_inference_steps", int(1, 50)),
            opt("seed", SEED),
            opt("loras", Kind::Loras),
            opt("guidance_scale", num(0.0, 35.0)),
            opt("sync_mode", Kind::Bool),
            opt("num_images", int(1, 4)),
            opt("enable_safety_checker", Kind::Bool),
            opt("output_format", Kind::Choice(OUTPUT_FORMATS)),
            opt("acceleration", Kind::Choice(&["none", "regular"])),
        ],
    },
    EndpointSpec {
        id: "fal-ai/flux-pro/v1.1-ultra-finetuned",
        work: Work::UltraGeneration,
        fields: &[
            req("prompt", Kind::Str),
            req("finetune_id", Kind::Str),
            req("finetune_strength", num(0.0, 2.0)),
            opt("aspect_ratio", Kind::Preset(ASPECT_RATIOS)),
            opt("raw", Kind::Bool),
            opt("num_images", int(1, 4)),
            opt("seed", SEED),
            opt(
                "safety_tolerance",
                Kind::Choice(&["1", "2", "3", "4", "5", "6"]),
            ),
            opt("output_format", Kind::Choice(OUTPUT_FORMATS)),
            opt("enable_safety_checker", Kind::Bool),
            opt("sync_mode", Kind::Bool),
            opt("enhance_prompt", Kind::Bool),
            opt("image_url", Kind::Str),
            opt("image_prompt_strength", num(0.0, 1.0)),
        ],
    },
];

/// Finds the endpoint a submit path names.
pub(crate) fn find(endpoint: &str) -> Option<&'static EndpointSpec> {
    ENDPOINTS.iter().find(|e| e.id == endpoint)
}

/// The `detail` entry for a body that is not a JSON object.
pub(crate) fn body_not_a_dict() -> Value {
    json!({"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"})
}

/// `{"loc":["body",field],"msg":...,"type":...}`.
pub(crate) fn issue(field: &str, msg: &str, kind: &str) -> Value {
    json!({"loc": ["body", field], "msg": msg, "type": kind})
}

impl EndpointSpec {
    /// Pydantic-style validation: every problem becomes one `detail` entry. Unknown fields are
    /// ignored, as fal does.
    pub fn validate(&self, input: &Value) -> Result<(), Vec<Value>> {
        let Some(object) = input.as_object() else {
            return Err(vec![body_not_a_dict()]);
        };
        let issues: Vec<Value> = self
            .fields
            .iter()
            .filter_map(|field| check_field(field, object))
            .collect();
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// Units of work (training steps or images) and the real duration of one unit.
    pub fn work_units(&self, input: &Value) -> (u64, Duration) {
        let int = |name: &str| input.get(name).and_then(Value::as_u64);
        match self.work {
            Work::LoraTraining {
                steps_field,
                default_steps,
                secs_per_step,
                ..
            } => (
                int(steps_field).unwrap_or(default_steps),
                Duration::from_secs_f64(secs_per_step),
            ),
            // About 20 minutes for the default 300 iterations.
            Work::ProTraining => (int("iterations").unwrap_or(300), Duration::from_secs(4)),
            Work::LoraGeneration => (
                int("num_inference_steps").unwrap_or(28) * int("num_images").unwrap_or(1),
                Duration::from_millis(100),
            ),
            // About 10 s per image.
            Work::UltraGeneration => (
                int("num_images").unwrap_or(1) * 50,
                Duration::from_millis(200),
            ),
        }
    }
}

impl EndpointSpec {
    /// What fal bills a finished request as (`X-Fal-Billable-Units`), by fal-protocol §6:
    /// portrait trainer steps (at least 1000), one per fast or pro training run, megapixels
    /// (rounded up per image, 1024 x 1024 pixels each) for flux-lora, images for
    /// ultra-finetuned.
    pub fn billable_units(&self, input: &Value, output: &Value) -> u64 {
        let images = || {
            output
                .get("images")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        match self.work {
            Work::LoraTraining { .. } if self.id == "fal-ai/flux-lora-portrait-trainer" => {
                self.work_units(input).0.max(1000)
            }
            Work::LoraTraining { .. } | Work::ProTraining => 1,
            Work::LoraGeneration => images()
                .iter()
                .map(|image| {
                    let side = |name| image.get(name).and_then(Value::as_u64).unwrap_or(0);
                    (side("width") * side("height"))
                        .div_ceil(1024 * 1024)
                        .max(1)
                })
                .sum(),
            Work::UltraGeneration => images().len() as u64,
        }
    }
}

fn check_field(field: &Field, object: &Map<String, Value>) -> Option<Value> {
    let name = field.name;
    let value = match object.get(name) {
        None | Some(Value::Null) if field.required => {
            return Some(issue(name, "field required", "value_error.missing"))
        }
        None | Some(Value::Null) => return None,
        Some(v) => v,
    };
    match field.kind {
        Kind::Str => (!value.is_string()).then(|| issue(name, "str type expected", "type_error.str")),
        Kind::Bool => (!value.is_boolean()).then(|| issue(name, "value could not be parsed to a boolean", "type_error.bool")),
        Kind::Int { min, max } => match value.as_i64().or_else(|| value.as_u64().map(|_| i64::MAX)) {
            None => Some(issue(name, "value is not a valid integer", "type_error.integer")),
            Some(n) => range_issue(name, n as f64, min as f64, max as f64),
        },
        Kind::Num { min, max } => match value.as_f64() {
            None => Some(issue(name, "value is not a valid float", "type_error.float")),
            Some(n) => range_issue(name, n, min, max),
        },
        Kind::Choice(choices) => choice_issue(name, value.as_str(), choices),
        Kind::Preset(presets) => choice_issue(name, value.as_str(), &preset_names(presets)),
        Kind::ImageSize => match value {
            Value::String(s) => choice_issue(name, Some(s), &preset_names(IMAGE_SIZES)),
            Value::Object(size) => ["width", "height"].iter().find_map(|dim| match size.get(*dim) {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=14142).contains(&n) => None,
                    _ => Some(json!({"loc": ["body", name, dim], "msg": "ensure this value is between 1 and 14142", "type": "value_error.number.not_in_range", "ctx": {"min": 1, "max": 14142}})),
                },
            }),
            _ => Some(issue(name, "value is not a valid image size", "type_error")),
        },
        Kind::Loras => match value.as_array() {
            None => Some(issue(name, "value is not a valid list", "type_error.list")),
            Some(items) => items.iter().enumerate().find_map(|(i, item)| {
                (!item.get("path").is_some_and(Value::is_string)).then(|| {
                    json!({"loc": ["body", name, i, "path"], "msg": "field required", "type": "value_error.missing"})
                })
            }),
        },
    }
}

fn range_issue(name: &str, n: f64, min: f64, max: f64) -> Option<Value> {
    if n < min {
        Some(
            json!({"loc": ["body", name], "msg": format!("ensure this value is greater than or equal to {min}"), "type": "value_error.number.not_ge", "ctx": {"limit_value": min}}),
        )
    } else if n > max {
        Some(
            json!({"loc": ["body", name], "msg": format!("ensure this value is less than or equal to {max}"), "type": "value_error.number.not_le", "ctx": {"limit_value": max}}),
        )
    } else {
        None
    }
}

/// `None` when `value` is one of `choices`, else the enumeration issue.
fn choice_issue(name: &str, value: Option<&str>, choices: &[&str]) -> Option<Value> {
    match value {
        Some(s) if choices.contains(&s) => None,
        _ => Some(enum_issue(name, choices)),
    }
}

fn enum_issue(name: &str, choices: &[&str]) -> Value {
    let permitted = choices
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(", ");
    json!({"loc": ["body", name], "msg": format!("value is not a valid enumeration member; permitted: {permitted}"), "type": "type_error.enum", "ctx": {"enum_values": choices}})
}

/// Output size of `fal-ai/flux-lora` for an `image_size` (default `landscape_4_3`; an object
/// defaults each missing side to 512).
pub(crate) fn lora_image_size(input: &Value) -> (u32, u32) {
    match input.get("image_size") {
        Some(Value::Object(size)) => {
            let side = |k: &str| {
                size.get(k)
                    .and_then(Value::as_u64)
                    .map_or(512, |v| v as u32)
            };
            (side("width"), side("height"))
        }
        preset => preset_size(IMAGE_SIZES, preset.and_then(Value::as_str), "landscape_4_3"),
    }
}

/// Output size of the ultra endpoint for an aspect ratio (about 4 MP; default `16:9`).
pub(crate) fn ultra_image_size(input: &Value) -> (u32, u32) {
    let ratio = input.get("aspect_ratio").and_then(Value::as_str);
    preset_size(ASPECT_RATIOS, ratio, "16:9")
}

fn preset_names(presets: &[Preset]) -> Vec<&'static str> {
    presets.iter().map(|&(name, _)| name).collect()
}

/// The size `name` stands for in `presets`, or that of `default` when it names none.
fn preset_size(presets: &[Preset], name: Option<&str>, default: &str) -> (u32, u32) {
    let find = |wanted: &str| {
        presets
            .iter()
            .find(|&&(name, _)| name == wanted)
            .map(|&(_, size)| size)
    };
    name.and_then(find)
        .or_else(|| find(default))
        .expect("the default is one of the presets")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_invalid_fields_become_detail_entries() {
        let spec = find("fal-ai/flux-pro/v1.1-ultra-finetuned").unwrap();
        let issues = spec
            .validate(
                &json!({"prompt": "p", "finetune_strength": 3, "aspect_ratio": "5:4", "extra": 1}),
            )
            .unwrap_err();
        let types: Vec<&str> = issues.iter().map(|i| i["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "value_error.missing",
                "value_error.number.not_le",
                "type_error.enum"
            ]
        );
        assert_eq!(issues[0]["loc"], json!(["body", "finetune_id"]));
        assert!(spec
            .validate(&json!({"prompt": "p", "finetune_id": "f", "finetune_strength": 1.2}))
            .is_ok());
    }
}
