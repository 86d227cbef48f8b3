//! Avatars: what a caller may name them, the kinds they come in, and their life cycle.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::photos::PhotoSetRules;
use crate::validation::{FieldViolation, Violations};

named_enum! {
    /// What an avatar depicts; it decides which trainer suits it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum AvatarKind {
        Character => "character",
        Style => "style",
        Product => "product",
        General => "general",
    }
}

named_enum! {
    /// Where an avatar is in its life: collecting photos, ready to train, training, and after.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum AvatarStatus {
        /// Collecting photos; the set is not trainable yet.
        Draft => "draft",
        /// The photo set is valid and a training may start.
        Ready => "ready",
        Training => "training",
        Trained => "trained",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

impl AvatarStatus {
    /// The trigger phrase is baked into a model: it may change only before any training ran.
    pub fn allows_trigger_phrase_change(self) -> bool {
        matches!(self, Self::Draft | Self::Ready)
    }

    /// THE avatar's transition function: its status after `change`.
    pub fn after(self, change: AvatarChange) -> AvatarStatus {
        match change {
            // Only an untrained avatar moves between draft and ready with its photo count.
            AvatarChange::PhotosChanged { count, rules } => match self {
                Self::Draft | Self::Ready => rules.untrained_status(count),
                other => other,
            },
            AvatarChange::TrainingStarted => Self::Training,
            AvatarChange::TrainingSucceeded => Self::Trained,
            AvatarChange::TrainingEnded {
                cancelled,
                has_model,
            } => match self {
                // A failed retraining leaves a trained avatar trained: its old model works.
                Self::Training if has_model => Self::Trained,
                Self::Training if cancelled => Self::Cancelled,
                Self::Training => Self::Failed,
                other => other,
            },
        }
    }
}

/// Something that happened to an avatar that may move its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AvatarChange {
    /// Its set now holds `count` stored photos.
    PhotosChanged { count: u32, rules: PhotoSetRules },
    /// A training of it was created.
    TrainingStarted,
    /// A training's model is in custody and is now its current model.
    TrainingSucceeded,
    /// A training ended without a model: failed, timed out, or `cancelled`; `has_model`
    /// tells whether an earlier training's model is still its current one.
    TrainingEnded { cancelled: bool, has_model: bool },
}

/// Checks a one-line text, in order: `blank` when empty, `too_long` past `max` characters, and
/// `invalid_characters` with control characters or surrounding whitespace. The blank and invalid
/// messages are the field's own.
fn check_text(
    field: &str,
    value: &str,
    max: usize,
    blank_message: &'static str,
    invalid_message: &'static str,
) -> Result<(), FieldViolation> {
    if value.is_empty() {
        return Err(FieldViolation::new(field, "blank", blank_message));
    }
    if value.chars().count() > max {
        return Err(FieldViolation::new(
            field,
            "too_long",
            format!("must be at most {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) || value != value.trim() {
        return Err(FieldViolation::new(
            field,
            "invalid_characters",
            invalid_message,
        ));
    }
    Ok(())
}

/// A display name: 1 to 100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvatarName(String);

impl AvatarName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        let trimmed = value.trim();
        check_text(
            field,
            trimmed,
            Self::MAX_CHARS,
            "must not be blank",
            "must not contain control characters",
        )?;
        Ok(Self(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller's own id for the person the avatar belongs to (a user id in their system).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef(String);

impl OwnerRef {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        check_text(
            field,
            value,
            Self::MAX_CHARS,
            "must not be empty",
            "must not contain control characters or surrounding whitespace",
        )?;
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The token that names the subject in prompts: 3 to 40 ASCII letters, digits or underscores,
/// starting with a letter. Prompts are free text, so a phrase with spaces or punctuation would
/// be ambiguous to find and to prepend; a single rare token is what LoRA trainers expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerPhrase(String);

impl TriggerPhrase {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 40;

    pub fn parse(field: &str, value: &str) -> Result<Self, FieldViolation> {
        let len = value.chars().count();
        if !(Self::MIN_CHARS..=Self::MAX_CHARS).contains(&len) {
            return Err(FieldViolation::new(
                field,
                "invalid_length",
                format!(
                    "must be {} to {} characters",
                    Self::MIN_CHARS,
                    Self::MAX_CHARS
                ),
            ));
        }
        let mut chars = value.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        if !starts_with_letter || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(FieldViolation::new(
                field,
                "invalid_format",
                "must start with a letter and contain only ASCII letters, digits and underscores",
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// A fresh phrase unlikely to collide with words a prompt would use.
    pub fn generate() -> Self {
        const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
        let mut rng = rand::thread_rng();
        let suffix: String = (0..8)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        Self(format!("avtr_{suffix}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated request to create an avatar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAvatar {
    pub name: AvatarName,
    pub kind: AvatarKind,
    pub owner_ref: Option<OwnerRef>,
    /// `None` asks the service to generate a unique one.
    pub trigger_phrase: Option<TriggerPhrase>,
}

impl NewAvatar {
    /// Validates every field and reports all violations together.
    pub fn parse(
        name: &str,
        kind: AvatarKind,
        owner_ref: Option<&str>,
        trigger_phrase: Option<&str>,
    ) -> Result<Self, Violations> {
        let mut violations = Violations::default();
        let name = violations.check(AvatarName::parse("name", name));
        let owner_ref = owner_ref.and_then(|v| violations.check(OwnerRef::parse("owner_ref", v)));
        let trigger_phrase = trigger_phrase
            .and_then(|v| violations.check(TriggerPhrase::parse("trigger_phrase", v)));
        violations.into_result()?;
        Ok(Self {
            name: name.expect("checked above"),
            kind,
            owner_ref,
            trigger_phrase,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(AvatarName::parse("name", "  Ann ").unwrap().as_str(), "Ann");
        assert_eq!(AvatarName::parse("name", "   ").unwrap_err().code, "blank");
        assert_eq!(
            AvatarName::parse("name", &"é".repeat(100))
                .unwrap()
                .as_str()
                .chars()
                .count(),
            100
        );
        assert_eq!(
            AvatarName::parse("name", &"x".repeat(101))
                .unwrap_err()
                .code,
            "too_long"
        );
        assert_eq!(
            AvatarName::parse("name", "a\u{0007}b").unwrap_err().code,
            "invalid_characters"
        );
    }

    #[test]
    fn trigger_phrases_are_single_tokens() {
        assert!(TriggerPhrase::parse("t", "ohwx_man").is_ok());
        assert_eq!(
            TriggerPhrase::parse("t", "ab").unwrap_err().code,
            "invalid_length"
        );
        assert_eq!(
            TriggerPhrase::parse("t", "1abc").unwrap_err().code,
            "invalid_format"
        );
        assert_eq!(
            TriggerPhrase::parse("t", "two words").unwrap_err().code,
            "invalid_format"
        );
        assert_eq!(
            TriggerPhrase::parse("t", &"a".repeat(41)).unwrap_err().code,
            "invalid_length"
        );
    }

    #[test]
    fn generated_trigger_phrases_are_valid_and_differ() {
        let a = TriggerPhrase::generate();
        let b = TriggerPhrase::generate();
        assert!(TriggerPhrase::parse("t", a.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn new_avatar_reports_every_bad_field() {
        let err = NewAvatar::parse("", AvatarKind::Character, Some(""), Some("x")).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["name", "owner_ref", "trigger_phrase"]);
    }

    #[test]
    fn only_untrained_avatars_may_change_their_trigger_phrase() {
        assert!(AvatarStatus::Draft.allows_trigger_phrase_change());
        assert!(AvatarStatus::Ready.allows_trigger_phrase_change());
        for status in [
            AvatarStatus::Training,
            AvatarStatus::Trained,
            AvatarStatus::Failed,
            AvatarStatus::Cancelled,
        ] {
            assert!(!status.allows_trigger_phrase_change());
        }
    }

    fn rules() -> PhotoSetRules {
        PhotoSetRules::default()
    }

    #[test]
    fn photos_move_only_an_untrained_avatar_between_draft_and_ready() {
        use AvatarStatus as S;
        let rules = rules();
        let enough = rules.min_photos;
        let photos = |count| AvatarChange::PhotosChanged { count, rules };
        assert_eq!(S::Draft.after(photos(enough)), S::Ready);
        assert_eq!(S::Ready.after(photos(enough - 1)), S::Draft);
        assert_eq!(S::Draft.after(photos(0)), S::Draft);
        for status in [S::Training, S::Trained, S::Failed, S::Cancelled] {
            assert_eq!(status.after(photos(0)), status);
            assert_eq!(status.after(photos(enough)), status);
        }
    }

    #[test]
    fn a_training_start_and_success_decide_alone() {
        for status in AvatarStatus::ALL {
            assert_eq!(
                status.after(AvatarChange::TrainingStarted),
                AvatarStatus::Training
            );
            assert_eq!(
                status.after(AvatarChange::TrainingSucceeded),
                AvatarStatus::Trained
            );
        }
    }

    #[test]
    fn a_training_that_ends_without_a_model() {
        use AvatarStatus as S;
        let ended = |cancelled, has_model| AvatarChange::TrainingEnded {
            cancelled,
            has_model,
        };
        // Failed or timed out.
        assert_eq!(S::Training.after(ended(false, false)), S::Failed);
        assert_eq!(S::Training.after(ended(true, false)), S::Cancelled);
        // A retraining that fails or is cancelled keeps the working model.
        for cancelled in [false, true] {
            assert_eq!(S::Training.after(ended(cancelled, true)), S::Trained);
        }
        // An avatar no longer training is left as it is.
        for avatar in [S::Draft, S::Ready, S::Trained, S::Failed, S::Cancelled] {
            assert_eq!(avatar.after(ended(false, false)), avatar);
            assert_eq!(avatar.after(ended(true, true)), avatar);
        }
    }

    #[test]
    fn kinds_and_statuses_round_trip_through_their_names() {
        crate::names::assert_names_round_trip::<AvatarKind>();
        crate::names::assert_names_round_trip::<AvatarStatus>();
    }
}

/// An avatar as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Avatar {
    pub id: crate::AvatarId,
    pub tenant_id: crate::TenantId,
    pub name: String,
    pub kind: AvatarKind,
    pub owner_ref: Option<String>,
    pub trigger_phrase: String,
    pub status: AvatarStatus,
    pub photo_count: u32,
    /// The model generations use; kept through retraining until a new one succeeds.
    pub model: Option<TrainedModel>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A model an avatar was trained into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    pub id: uuid::Uuid,
    pub model_type: crate::ModelType,
    pub trigger_phrase: String,
    pub training_id: uuid::Uuid,
    /// SHA-256 of the LoRA weights we keep (LoRA models).
    pub artifact_sha256: Option<String>,
    pub artifact_bytes: Option<u64>,
    /// fal's id of a Pro finetune (finetune models).
    pub finetune_id: Option<String>,
    pub trained_at: chrono::DateTime<chrono::Utc>,
}
