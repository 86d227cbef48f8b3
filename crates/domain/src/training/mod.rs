//! Trainings: trainers, presets, per-request overrides, model selection, cost, the job state
//! machine and progress reading. Pure: the store, API and workers build on it.

pub mod cost;
pub mod job;
pub mod overrides;
pub mod params;
pub mod presets;
pub mod progress;
pub mod request;
pub mod selection;
pub mod trainer;

pub use cost::{estimate_training_cost, TrainingPrices};
pub use job::{allowed_from, target, transition, JobEvent, JobKind, JobStatus, Transition};
pub use overrides::{
    override_keys, resolve_params, resolve_params_for_kind, ITERATIONS_RANGE, LORA_RANKS,
    MAX_LEARNING_RATE, STEPS_RANGE,
};
pub use params::{
    FastLoraParams, FinetuneType, PortraitParams, ProParams, ProPriority, TrainingParams,
};
pub use presets::{
    training_duration, training_preset, training_presets, PortraitDefaults, PresetName,
    TrainingPreset,
};
pub use progress::{progress_from_logs, progress_step_crossed};
pub use request::{TrainingContext, TrainingInput, TrainingRequest};
pub use selection::{adapt_to_kind, pro_mode, select_trainer, TrainerSelection};
pub use trainer::{ModelType, Trainer};
