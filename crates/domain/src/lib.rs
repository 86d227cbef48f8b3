//! Pure domain logic of the avatars service: no I/O, no HTTP, no SQL.

#[macro_use]
pub mod names;
pub use names::Named;

pub mod avatar;
pub mod validation;

pub use avatar::{
    Avatar, AvatarChange, AvatarKind, AvatarName, AvatarStatus, NewAvatar, OwnerRef, TrainedModel,
    TriggerPhrase,
};
pub mod delivery;
pub mod event;
pub use event::EventType;
pub use validation::{FieldViolation, Violations};
pub mod ids;
pub use ids::{ApiKeyId, AvatarId, PhotoId, TenantId};
pub mod photos;
pub use photos::{
    FaceBox, FaceCheck, FaceFinding, FacePolicies, FacePolicy, LargestFace, PhotoFormat,
    PhotoSetRules, PhotoWarning,
};
pub mod generation;
pub mod schedule;
pub mod training;
pub mod usage;
pub use generation::{
    estimate_finetune_generation_cost, estimate_lora_generation_cost, generation_preset,
    generation_presets, generation_status, item_finished, settled_event, GenerationPreset,
    GenerationPresetName, GenerationPrices, GenerationStatus, ImageSizePreset, ItemState,
    ItemsSummary, FINETUNE_GENERATION_ENDPOINT, LORA_GENERATION_ENDPOINT,
};
pub use schedule::{fits_deadline, generation_duration, CheckSchedule};
pub use training::{
    adapt_to_kind, allowed_from, estimate_training_cost, progress_from_logs, progress_step_crossed,
    resolve_params, resolve_params_for_kind, select_trainer, target, training_duration,
    training_preset, training_presets, transition, FastLoraParams, FinetuneType, JobEvent, JobKind,
    JobStatus, ModelType, PortraitDefaults, PortraitParams, PresetName, ProParams, ProPriority,
    Trainer, TrainerSelection, TrainingParams, TrainingPreset, TrainingPrices, Transition,
};
