//! Generation presets, endpoints and cost estimates.
//!
//! The five presets are the ones documented for the seed's generation service: LoRA models use
//! steps, guidance, image size and LoRA scale; finetunes use `finetune_strength`.

use serde::{Deserialize, Serialize};

use crate::training::cost::round_usd;
use crate::training::JobStatus;
use crate::EventType;

pub mod request;
pub use request::{GenerationInput, GenerationRequest, RequestedSize, MAX_PROMPT_CHARS};

/// Generation with LoRA weights (portrait and fast trainers).
pub const LORA_GENERATION_ENDPOINT: &str = "fal-ai/flux-lora";
/// Generation with a FLUX.1 [pro] finetune id.
pub const FINETUNE_GENERATION_ENDPOINT: &str = "fal-ai/flux-pro/v1.1-ultra-finetuned";

named_enum! {
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum GenerationPresetName {
        Fast => "fast",
        #[default]
        Balanced => "balanced",
        Quality => "quality",
        Ultra => "ultra",
        Portrait => "portrait",
    }
}

named_enum! {
    /// fal's named image sizes for `fal-ai/flux-lora`; their names are fal's enum values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum ImageSizePreset {
        Square => "square",
        SquareHd => "square_hd",
        // Explicit names: snake_case would spell these "portrait4x3"; fal uses "portrait_4_3".
        #[serde(rename = "portrait_4_3")]
        Portrait4x3 => "portrait_4_3",
        #[serde(rename = "portrait_16_9")]
        Portrait16x9 => "portrait_16_9",
        #[serde(rename = "landscape_4_3")]
        Landscape4x3 => "landscape_4_3",
        #[serde(rename = "landscape_16_9")]
        Landscape16x9 => "landscape_16_9",
    }
}

impl ImageSizePreset {
    /// (width, height) in pixels, as fal renders the named size.
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::Square => (512, 512),
            Self::SquareHd => (1024, 1024),
            Self::Portrait4x3 => (768, 1024),
            Self::Portrait16x9 => (576, 1024),
            Self::Landscape4x3 => (1024, 768),
            Self::Landscape16x9 => (1024, 576),
        }
    }

    pub fn width(self) -> u32 {
        self.dimensions().0
    }

    pub fn height(self) -> u32 {
        self.dimensions().1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GenerationPreset {
    pub name: GenerationPresetName,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub image_size: ImageSizePreset,
    /// The `scale` of the LoRA in `loras` (LoRA models only).
    pub lora_scale: f64,
    /// `finetune_strength` (finetuned models only).
    pub finetune_strength: f64,
}

pub fn generation_presets() -> Vec<GenerationPreset> {
    GenerationPresetName::ALL
        .into_iter()
        .map(generation_preset)
        .collect()
}

pub fn generation_preset(name: GenerationPresetName) -> GenerationPreset {
    use GenerationPresetName as N;
    use ImageSizePreset as Size;
    let (num_inference_steps, guidance_scale, image_size, lora_scale, finetune_strength) =
        match name {
            N::Fast => (20, 3.0, Size::Square, 0.8, 0.8),
            N::Balanced => (28, 3.5, Size::SquareHd, 1.0, 1.0),
            N::Quality => (50, 4.0, Size::SquareHd, 1.2, 1.2),
            N::Ultra => (35, 3.5, Size::SquareHd, 1.1, 1.1),
            N::Portrait => (35, 3.5, Size::Portrait4x3, 1.1, 1.0),
        };
    GenerationPreset {
        name,
        num_inference_steps,
        guidance_scale,
        image_size,
        lora_scale,
        finetune_strength,
    }
}

/// Prices are configuration; the defaults are fal-protocol §6.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationPrices {
    /// `fal-ai/flux-lora`, per megapixel, rounded up to whole megapixels per image.
    pub per_megapixel_usd: f64,
    /// `fal-ai/flux-pro/v1.1-ultra-finetuned`, per image.
    pub finetuned_per_image_usd: f64,
}

impl Default for GenerationPrices {
    fn default() -> Self {
        Self {
            per_megapixel_usd: 0.035,
            finetuned_per_image_usd: 0.07,
        }
    }
}

/// fal counts a megapixel as 1024 x 1024 pixels, so `square_hd` bills as exactly one.
pub const PIXELS_PER_MEGAPIXEL: u64 = 1024 * 1024;

/// Billed megapixels of one image: rounded up, and at least one.
pub fn billed_megapixels(width: u32, height: u32) -> u64 {
    (u64::from(width) * u64::from(height))
        .div_ceil(PIXELS_PER_MEGAPIXEL)
        .max(1)
}

/// USD for `num_images` LoRA images of `width` x `height`, rounded to 4 decimals.
pub fn estimate_lora_generation_cost(
    width: u32,
    height: u32,
    num_images: u32,
    prices: &GenerationPrices,
) -> f64 {
    let megapixels = billed_megapixels(width, height) * u64::from(num_images);
    round_usd(megapixels as f64 * prices.per_megapixel_usd)
}

/// USD for `num_images` finetuned images, rounded to 4 decimals.
pub fn estimate_finetune_generation_cost(num_images: u32, prices: &GenerationPrices) -> f64 {
    round_usd(f64::from(num_images) * prices.finetuned_per_image_usd)
}

/// `image_size` for `fal-ai/flux-lora`: one of fal's named sizes, or exact dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraImageSize {
    Named(ImageSizePreset),
    Exact { width: u32, height: u32 },
}

impl LoraImageSize {
    pub fn dimensions(self) -> (u32, u32) {
        match self {
            Self::Named(size) => size.dimensions(),
            Self::Exact { width, height } => (width, height),
        }
    }
}

/// The aspect ratios a generation may ask for (`fal-ai/flux-pro/v1.1-ultra-finetuned` takes
/// them as they are), each with its flux-lora size: fal's named size where one has that ratio,
/// else about one megapixel in exact dimensions (multiples of 16, as FLUX works in 16-pixel
/// patches). The one table both directions are read from.
const ASPECT_RATIO_SIZES: [(&str, LoraImageSize); 9] = {
    use ImageSizePreset as Size;
    use LoraImageSize::{Exact, Named};
    [
        ("1:1", Named(Size::SquareHd)),
        ("3:4", Named(Size::Portrait4x3)),
        ("4:3", Named(Size::Landscape4x3)),
        ("9:16", Named(Size::Portrait16x9)),
        ("16:9", Named(Size::Landscape16x9)),
        (
            "2:3",
            Exact {
                width: 832,
                height: 1248,
            },
        ),
        (
            "3:2",
            Exact {
                width: 1248,
                height: 832,
            },
        ),
        (
            "21:9",
            Exact {
                width: 1568,
                height: 672,
            },
        ),
        (
            "9:21",
            Exact {
                width: 672,
                height: 1568,
            },
        ),
    ]
};

/// The aspect ratios a generation may ask for, in the table's order.
pub const ASPECT_RATIOS: [&str; ASPECT_RATIO_SIZES.len()] = {
    let mut ratios = [""; ASPECT_RATIO_SIZES.len()];
    let mut i = 0;
    while i < ratios.len() {
        ratios[i] = ASPECT_RATIO_SIZES[i].0;
        i += 1;
    }
    ratios
};

/// The flux-lora size for an aspect ratio; `None` for a ratio not in [`ASPECT_RATIOS`].
pub fn lora_size_for_aspect_ratio(ratio: &str) -> Option<LoraImageSize> {
    aspect_ratio_entry(ratio).map(|(_, size)| size)
}

fn aspect_ratio_entry(ratio: &str) -> Option<(&'static str, LoraImageSize)> {
    ASPECT_RATIO_SIZES
        .into_iter()
        .find(|(known, _)| *known == ratio)
}

/// The aspect ratio of one of fal's named sizes, read backwards from the same table; `None`
/// for a named size no ratio maps to (`square`, which `1:1` does not use).
pub fn aspect_ratio_for_size(size: ImageSizePreset) -> Option<&'static str> {
    ASPECT_RATIO_SIZES
        .into_iter()
        .find(|(_, lora_size)| *lora_size == LoraImageSize::Named(size))
        .map(|(ratio, _)| ratio)
}

/// The prompt sent to fal: the trigger phrase first unless the prompt already holds it
/// (compared case-insensitively, as a caller may capitalise it).
pub fn prompt_with_trigger(prompt: &str, trigger: &str) -> String {
    let prompt = prompt.trim();
    if trigger.is_empty() || prompt.to_lowercase().contains(&trigger.to_lowercase()) {
        prompt.to_string()
    } else {
        format!("{trigger} {prompt}")
    }
}

/// Where one attempt of a generation item stands, as far as finishing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemState {
    pub status: JobStatus,
    /// Its images are still to be copied into our storage, or (failed) it awaits a resubmit.
    pub custody_needed: bool,
    /// Its result is still to be fetched from fal.
    pub result_fetch_needed: bool,
}

/// THE rule of a finished item: its job is terminal and nothing is left to do for it (its
/// images are in our storage, or it failed for good, not awaiting a resubmit).
pub fn item_finished(item: ItemState) -> bool {
    item.status.is_terminal() && !item.custody_needed && !item.result_fetch_needed
}

named_enum! {
    /// A generation's status, from the latest attempts of its items.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum GenerationStatus {
        Pending => "pending",
        InProgress => "in_progress",
        Succeeded => "succeeded",
        /// Finished and no item succeeded.
        Failed => "failed",
        /// Finished with some items succeeded and some not.
        PartiallySucceeded => "partially_succeeded",
    }
}

/// What a generation's status depends on, summed up over the latest attempts of its items
/// (a database can compute this per generation and group by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ItemsSummary {
    /// Some item is not finished ([`item_finished`]).
    pub any_unfinished: bool,
    /// Every item's job is `pending`.
    pub all_pending: bool,
    pub any_succeeded: bool,
    pub all_succeeded: bool,
}

impl ItemsSummary {
    pub fn of(items: impl IntoIterator<Item = ItemState>) -> Self {
        let mut summary = Self {
            any_unfinished: false,
            all_pending: true,
            any_succeeded: false,
            all_succeeded: true,
        };
        for item in items {
            summary.any_unfinished |= !item_finished(item);
            summary.all_pending &= item.status == JobStatus::Pending;
            summary.any_succeeded |= item.status == JobStatus::Succeeded;
            summary.all_succeeded &= item.status == JobStatus::Succeeded;
        }
        summary
    }
}

/// THE rule of a generation's status: `pending` while every item waits, `in_progress` while
/// any is unfinished, then `succeeded`, `failed` (no item succeeded) or `partially_succeeded`.
pub fn generation_status(items: ItemsSummary) -> GenerationStatus {
    if items.any_unfinished {
        if items.all_pending {
            GenerationStatus::Pending
        } else {
            GenerationStatus::InProgress
        }
    } else if items.all_succeeded {
        GenerationStatus::Succeeded
    } else if !items.any_succeeded {
        GenerationStatus::Failed
    } else {
        GenerationStatus::PartiallySucceeded
    }
}

/// What a generation announces once the latest attempts of its items are `items`: nothing
/// while any is unfinished, then `generation.succeeded` when any image was made and
/// `generation.failed` otherwise.
pub fn settled_event(items: &[ItemState]) -> Option<EventType> {
    if !items.iter().copied().all(item_finished) {
        return None;
    }
    Some(
        if items.iter().any(|item| item.status == JobStatus::Succeeded) {
            EventType::GenerationSucceeded
        } else {
            EventType::GenerationFailed
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: JobStatus, custody_needed: bool, result_fetch_needed: bool) -> ItemState {
        ItemState {
            status,
            custody_needed,
            result_fetch_needed,
        }
    }

    #[test]
    fn an_item_is_finished_when_terminal_and_nothing_is_left_to_do() {
        for status in JobStatus::ALL {
            assert_eq!(
                item_finished(item(status, false, false)),
                status.is_terminal(),
                "{status:?}"
            );
            assert!(!item_finished(item(status, true, false)));
            assert!(!item_finished(item(status, false, true)));
        }
    }

    #[test]
    fn a_generation_settles_when_every_item_is_finished() {
        use JobStatus as S;
        assert_eq!(
            settled_event(&[
                item(S::Succeeded, false, false),
                item(S::InProgress, false, false)
            ]),
            None
        );
        assert_eq!(
            settled_event(&[
                item(S::Succeeded, true, false),
                item(S::Failed, false, false)
            ]),
            None
        );
        assert_eq!(
            settled_event(&[
                item(S::Succeeded, false, false),
                item(S::Failed, false, false)
            ]),
            Some(EventType::GenerationSucceeded)
        );
        assert_eq!(
            settled_event(&[
                item(S::Cancelled, false, false),
                item(S::TimedOut, false, false)
            ]),
            Some(EventType::GenerationFailed)
        );
    }

    #[test]
    fn aspect_ratios_map_to_flux_lora_sizes() {
        use ImageSizePreset as Size;
        use LoraImageSize::{Exact, Named};
        let named = [
            ("1:1", Size::SquareHd),
            ("3:4", Size::Portrait4x3),
            ("4:3", Size::Landscape4x3),
            ("9:16", Size::Portrait16x9),
            ("16:9", Size::Landscape16x9),
        ];
        for (ratio, size) in named {
            assert_eq!(lora_size_for_aspect_ratio(ratio), Some(Named(size)));
        }
        for ratio in ["2:3", "3:2", "21:9", "9:21"] {
            let Some(Exact { width, height }) = lora_size_for_aspect_ratio(ratio) else {
                panic!("{ratio} is exact");
            };
            let (w, h) = ratio.split_once(':').unwrap();
            let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
            assert_eq!(width * h, height * w, "{ratio}");
            assert_eq!((width % 16, height % 16), (0, 0));
        }
        assert_eq!(lora_size_for_aspect_ratio("5:4"), None);
        assert!(ASPECT_RATIOS
            .iter()
            .all(|r| lora_size_for_aspect_ratio(r).is_some()));
    }

    #[test]
    fn the_trigger_phrase_is_prepended_once() {
        assert_eq!(prompt_with_trigger(" a cat ", "avtr_x"), "avtr_x a cat");
        assert_eq!(
            prompt_with_trigger("photo of AVTR_X smiling", "avtr_x"),
            "photo of AVTR_X smiling"
        );
    }

    #[test]
    fn presets_match_the_documented_table() {
        use GenerationPresetName as N;
        use ImageSizePreset as Size;
        let table: Vec<_> = generation_presets()
            .into_iter()
            .map(|p| {
                (
                    p.name,
                    p.num_inference_steps,
                    p.guidance_scale,
                    p.image_size,
                    p.lora_scale,
                    p.finetune_strength,
                )
            })
            .collect();
        assert_eq!(
            table,
            [
                (N::Fast, 20, 3.0, Size::Square, 0.8, 0.8),
                (N::Balanced, 28, 3.5, Size::SquareHd, 1.0, 1.0),
                (N::Quality, 50, 4.0, Size::SquareHd, 1.2, 1.2),
                (N::Ultra, 35, 3.5, Size::SquareHd, 1.1, 1.1),
                (N::Portrait, 35, 3.5, Size::Portrait4x3, 1.1, 1.0),
            ]
        );
        assert_eq!(GenerationPresetName::default(), N::Balanced);
    }

    #[test]
    fn names_and_sizes_round_trip() {
        crate::names::assert_names_round_trip::<GenerationPresetName>();
        crate::names::assert_names_round_trip::<ImageSizePreset>();
        crate::names::assert_serialized_as_names::<ImageSizePreset>();
    }

    #[test]
    fn sizes_have_fals_dimensions() {
        use ImageSizePreset as Size;
        assert_eq!(Size::Square.dimensions(), (512, 512));
        assert_eq!(Size::SquareHd.dimensions(), (1024, 1024));
        assert_eq!(Size::Portrait4x3.dimensions(), (768, 1024));
        assert_eq!(Size::Portrait16x9.dimensions(), (576, 1024));
        assert_eq!(Size::Landscape4x3.dimensions(), (1024, 768));
        assert_eq!(Size::Landscape16x9.dimensions(), (1024, 576));
    }

    #[test]
    fn endpoints_are_fals() {
        assert_eq!(LORA_GENERATION_ENDPOINT, "fal-ai/flux-lora");
        assert_eq!(
            FINETUNE_GENERATION_ENDPOINT,
            "fal-ai/flux-pro/v1.1-ultra-finetuned"
        );
    }

    #[test]
    fn lora_cost_rounds_megapixels_up_per_image() {
        let prices = GenerationPrices::default();
        assert_eq!(estimate_lora_generation_cost(1024, 1024, 1, &prices), 0.035);
        assert_eq!(estimate_lora_generation_cost(512, 512, 1, &prices), 0.035);
        assert_eq!(estimate_lora_generation_cost(1025, 1024, 1, &prices), 0.07);
        assert_eq!(estimate_lora_generation_cost(2048, 2048, 1, &prices), 0.14);
        assert_eq!(estimate_lora_generation_cost(1024, 1024, 4, &prices), 0.14);
        // Rounded per image, not over the batch: 4 x 0.75 MP is 4 MP, not 3.
        assert_eq!(estimate_lora_generation_cost(1024, 768, 4, &prices), 0.14);
        assert_eq!(estimate_lora_generation_cost(1024, 1024, 0, &prices), 0.0);
    }

    #[test]
    fn a_generation_status_follows_its_items() {
        use GenerationStatus as G;
        use JobStatus as S;
        let status =
            |items: &[ItemState]| generation_status(ItemsSummary::of(items.iter().copied()));
        let done = |s| item(s, false, false);
        let cases: [(Vec<ItemState>, GenerationStatus); 6] = [
            (vec![done(S::Pending), done(S::Pending)], G::Pending),
            (vec![done(S::Pending), done(S::Submitted)], G::InProgress),
            // Succeeded but its images are still being copied: not finished.
            (vec![item(S::Succeeded, true, false)], G::InProgress),
            (vec![done(S::Succeeded), done(S::Succeeded)], G::Succeeded),
            (vec![done(S::Failed), done(S::TimedOut)], G::Failed),
            (
                vec![done(S::Succeeded), done(S::Cancelled)],
                G::PartiallySucceeded,
            ),
        ];
        for (items, expected) in cases {
            assert_eq!(status(&items), expected, "{items:?}");
        }
    }

    #[test]
    fn finetune_cost_is_per_image() {
        let prices = GenerationPrices::default();
        assert_eq!(estimate_finetune_generation_cost(1, &prices), 0.07);
        assert_eq!(estimate_finetune_generation_cost(3, &prices), 0.21);
    }
}
