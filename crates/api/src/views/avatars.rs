//! Avatars as callers see them.

use chrono::{DateTime, Utc};
use domain::{Avatar, AvatarKind, AvatarStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What an avatar depicts. `character` avatars (people) train with the portrait trainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Character,
    Style,
    Product,
    General,
}

impl From<Kind> for AvatarKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Character => AvatarKind::Character,
            Kind::Style => AvatarKind::Style,
            Kind::Product => AvatarKind::Product,
            Kind::General => AvatarKind::General,
        }
    }
}

impl From<AvatarKind> for Kind {
    fn from(kind: AvatarKind) -> Self {
        match kind {
            AvatarKind::Character => Kind::Character,
            AvatarKind::Style => Kind::Style,
            AvatarKind::Product => Kind::Product,
            AvatarKind::General => Kind::General,
        }
    }
}

/// Where the avatar is in its life: `draft` (collecting photos), `ready` (photo set valid),
/// `training`, `trained`, `failed`, `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Ready,
    Training,
    Trained,
    Failed,
    Cancelled,
}

impl From<Status> for AvatarStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Draft => AvatarStatus::Draft,
            Status::Ready => AvatarStatus::Ready,
            Status::Training => AvatarStatus::Training,
            Status::Trained => AvatarStatus::Trained,
            Status::Failed => AvatarStatus::Failed,
            Status::Cancelled => AvatarStatus::Cancelled,
        }
    }
}

impl From<AvatarStatus> for Status {
    fn from(status: AvatarStatus) -> Self {
        match status {
            AvatarStatus::Draft => Status::Draft,
            AvatarStatus::Ready => Status::Ready,
            AvatarStatus::Training => Status::Training,
            AvatarStatus::Trained => Status::Trained,
            AvatarStatus::Failed => Status::Failed,
            AvatarStatus::Cancelled => Status::Cancelled,
        }
    }
}

/// The model an avatar was trained into; null until a training succeeds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrainedModel {
    /// `lora` (a weights file we keep) or `finetune` (a fal finetune id).
    #[schema(value_type = crate::openapi::ModelType)]
    pub model_type: String,
    pub trigger_phrase: String,
    pub trained_at: DateTime<Utc>,
    /// The training that produced it.
    pub training_id: Uuid,
    /// SHA-256 of the LoRA weights the service keeps (LoRA models).
    pub artifact_sha256: Option<String>,
    /// fal's finetune id (finetune models).
    pub finetune_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AvatarResponse {
    pub id: Uuid,
    pub name: String,
    pub kind: Kind,
    pub owner_ref: Option<String>,
    pub trigger_phrase: String,
    pub status: Status,
    /// Accepted photos in the avatar's training set.
    pub photo_count: u32,
    pub trained_model: Option<TrainedModel>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Avatar> for AvatarResponse {
    fn from(avatar: Avatar) -> Self {
        Self {
            id: avatar.id.0,
            name: avatar.name,
            kind: avatar.kind.into(),
            owner_ref: avatar.owner_ref,
            trigger_phrase: avatar.trigger_phrase,
            status: avatar.status.into(),
            photo_count: avatar.photo_count,
            trained_model: avatar.model.map(|m| TrainedModel {
                model_type: m.model_type.as_str().to_string(),
                trigger_phrase: m.trigger_phrase,
                trained_at: m.trained_at,
                training_id: m.training_id,
                artifact_sha256: m.artifact_sha256,
                finetune_id: m.finetune_id,
            }),
            created_at: avatar.created_at,
            updated_at: avatar.updated_at,
        }
    }
}

/// One page of avatars, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AvatarPage {
    pub items: Vec<AvatarResponse>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}
