//! Which trainer an avatar gets, and how its kind adjusts the parameters.

use super::params::TrainingParams;
use super::trainer::Trainer;
use crate::avatar::AvatarKind;
use crate::validation::FieldViolation;

/// The trainer chosen per avatar kind when a request names none (`FAL_AUTO_MODEL_SELECTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainerSelection {
    /// When false, every training request must name its trainer.
    pub auto: bool,
    pub by_kind: [(AvatarKind, Trainer); 4],
}

impl Default for TrainerSelection {
    /// The seed's choice: the portrait trainer for people, the pro finetune for everything else.
    fn default() -> Self {
        Self {
            auto: true,
            by_kind: [
                (AvatarKind::Character, Trainer::Portrait),
                (AvatarKind::Style, Trainer::Pro),
                (AvatarKind::Product, Trainer::Pro),
                (AvatarKind::General, Trainer::Pro),
            ],
        }
    }
}

impl TrainerSelection {
    pub fn trainer_for(&self, kind: AvatarKind) -> Trainer {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, trainer)| *trainer)
            // Every kind is in the table; a hand-built table missing one gets the seed's choice.
            .unwrap_or_else(|| Self::default().trainer_for(kind))
    }

    /// The same selection with `kind` mapped to `trainer` (from configuration).
    pub fn with_override(mut self, kind: AvatarKind, trainer: Trainer) -> Self {
        match self.by_kind.iter_mut().find(|(k, _)| *k == kind) {
            Some(entry) => entry.1 = trainer,
            None => {
                // Unreachable with a table built from `Default`; keep the override anyway.
                let slot = AvatarKind::ALL
                    .iter()
                    .position(|k| *k == kind)
                    .expect("every kind is listed");
                self.by_kind[slot] = (kind, trainer);
            }
        }
        self
    }
}

/// An explicit trainer wins; with auto selection off a trainer is required.
pub fn select_trainer(
    selection: &TrainerSelection,
    kind: AvatarKind,
    requested: Option<Trainer>,
) -> Result<Trainer, FieldViolation> {
    match requested {
        Some(trainer) => Ok(trainer),
        None if selection.auto => Ok(selection.trainer_for(kind)),
        None => Err(FieldViolation::new(
            "trainer",
            "required",
            format!(
                "automatic model selection is off; name a trainer: {}",
                Trainer::ALL.map(Trainer::as_str).join(", ")
            ),
        )),
    }
}

/// The fast trainer segments and captions people; for a style that is wrong, so style avatars
/// get `is_style = true`. Other trainers and kinds are unchanged. Apply before the caller's
/// overrides (see `resolve_params_for_kind`) so an explicit `is_style` wins.
pub fn adapt_to_kind(params: TrainingParams, kind: AvatarKind) -> TrainingParams {
    match params {
        TrainingParams::FastLora(mut p) if kind == AvatarKind::Style => {
            p.is_style = true;
            TrainingParams::FastLora(p)
        }
        other => other,
    }
}

/// The pro trainer's `mode` for an avatar kind: fal's enum uses the same four names.
pub fn pro_mode(kind: AvatarKind) -> &'static str {
    kind.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::presets::{training_preset, PortraitDefaults, PresetName};

    #[test]
    fn default_selection_is_the_seeds() {
        let selection = TrainerSelection::default();
        assert!(selection.auto);
        assert_eq!(
            selection.trainer_for(AvatarKind::Character),
            Trainer::Portrait
        );
        assert_eq!(selection.trainer_for(AvatarKind::Style), Trainer::Pro);
        assert_eq!(selection.trainer_for(AvatarKind::Product), Trainer::Pro);
        assert_eq!(selection.trainer_for(AvatarKind::General), Trainer::Pro);
    }

    #[test]
    fn auto_selection_picks_by_kind() {
        let selection = TrainerSelection::default();
        for kind in AvatarKind::ALL {
            assert_eq!(
                select_trainer(&selection, kind, None),
                Ok(selection.trainer_for(kind))
            );
        }
    }

    #[test]
    fn an_explicit_trainer_wins() {
        for auto in [true, false] {
            let selection = TrainerSelection {
                auto,
                ..TrainerSelection::default()
            };
            assert_eq!(
                select_trainer(&selection, AvatarKind::Character, Some(Trainer::FastLora)),
                Ok(Trainer::FastLora)
            );
        }
    }

    #[test]
    fn without_auto_selection_a_trainer_is_required() {
        let selection = TrainerSelection {
            auto: false,
            ..TrainerSelection::default()
        };
        let err = select_trainer(&selection, AvatarKind::Style, None).unwrap_err();
        assert_eq!((err.field.as_str(), err.code), ("trainer", "required"));
        assert!(err.message.contains("portrait, pro, fast_lora"));
    }

    #[test]
    fn configuration_overrides_one_kind() {
        let selection =
            TrainerSelection::default().with_override(AvatarKind::Style, Trainer::FastLora);
        assert_eq!(
            select_trainer(&selection, AvatarKind::Style, None),
            Ok(Trainer::FastLora)
        );
        assert_eq!(selection.trainer_for(AvatarKind::Product), Trainer::Pro);
        assert_eq!(
            selection.trainer_for(AvatarKind::Character),
            Trainer::Portrait
        );
    }

    #[test]
    fn fast_lora_learns_styles_as_styles() {
        let defaults = PortraitDefaults::default();
        let fast = training_preset(Trainer::FastLora, PresetName::Balanced, &defaults).params;
        let adapted = adapt_to_kind(fast.clone(), AvatarKind::Style);
        assert!(matches!(adapted, TrainingParams::FastLora(ref p) if p.is_style));
        for kind in [
            AvatarKind::Character,
            AvatarKind::Product,
            AvatarKind::General,
        ] {
            assert_eq!(adapt_to_kind(fast.clone(), kind), fast);
        }
        for trainer in [Trainer::Portrait, Trainer::Pro] {
            let params = training_preset(trainer, PresetName::Balanced, &defaults).params;
            assert_eq!(adapt_to_kind(params.clone(), AvatarKind::Style), params);
        }
    }

    #[test]
    fn pro_mode_names_the_kind() {
        assert_eq!(pro_mode(AvatarKind::Character), "character");
        assert_eq!(pro_mode(AvatarKind::Style), "style");
    }
}
