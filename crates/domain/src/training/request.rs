//! A training request: what a caller may ask for, checked against the avatar it trains.

use serde_json::{Map, Value};

use crate::avatar::{AvatarKind, TriggerPhrase};
use crate::training::overrides::resolve_params_for_kind;
use crate::training::params::TrainingParams;
use crate::training::presets::{PortraitDefaults, PresetName};
use crate::training::selection::{select_trainer, TrainerSelection};
use crate::training::trainer::Trainer;
use crate::validation::{FieldViolation, Violations};

/// A training request as the caller sent it, before any check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingInput {
    pub preset: Option<String>,
    pub trainer: Option<String>,
    pub overrides: Option<Map<String, Value>>,
    pub trigger_phrase: Option<String>,
    pub images_data_url: Option<String>,
}

/// What the request is checked against besides itself.
#[derive(Debug, Clone, Copy)]
pub struct TrainingContext<'a> {
    /// The kind of the avatar to train; it picks the trainer and adapts the preset.
    pub kind: AvatarKind,
    pub selection: &'a TrainerSelection,
    pub portrait_defaults: &'a PortraitDefaults,
}

/// A checked training request: every value a training needs, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingRequest {
    pub trainer: Trainer,
    pub preset: PresetName,
    /// The preset's parameters, adapted to the avatar's kind, with the overrides applied.
    pub params: TrainingParams,
    /// `None`: the avatar's own trigger phrase.
    pub trigger_phrase: Option<TriggerPhrase>,
    /// The caller's own archive of photos, when not training on the uploaded ones.
    pub images_data_url: Option<String>,
}

/// A value named from a fixed list: the one named, or `invalid_value` listing the choices.
pub(crate) fn choice<T>(
    field: &str,
    parsed: Option<T>,
    choices: &str,
) -> Result<T, FieldViolation> {
    parsed.ok_or_else(|| FieldViolation::new(field, "invalid_value", format!("must be {choices}")))
}

impl TrainingRequest {
    /// Checks every field, reporting all that are wrong at once. `check_url` is the fetch
    /// policy for `images_data_url` (its rules are not the domain's).
    pub fn parse(
        input: &TrainingInput,
        context: TrainingContext<'_>,
        check_url: impl FnOnce(&str) -> Result<(), FieldViolation>,
    ) -> Result<TrainingRequest, Violations> {
        let mut violations = Violations::default();
        let preset = match input.preset.as_deref() {
            None => Some(PresetName::default()),
            Some(name) => violations.check(choice(
                "preset",
                PresetName::parse(name),
                "fast, balanced or quality",
            )),
        };
        let requested_trainer = input.trainer.as_deref().and_then(|name| {
            violations.check(choice(
                "trainer",
                Trainer::parse(name),
                "portrait, pro or fast_lora",
            ))
        });
        let trigger_phrase = match input.trigger_phrase.as_deref() {
            None => None,
            Some(phrase) => violations.check(TriggerPhrase::parse("trigger_phrase", phrase)),
        };
        let trainer = if input.trainer.is_some() && requested_trainer.is_none() {
            None
        } else {
            violations.check(select_trainer(
                context.selection,
                context.kind,
                requested_trainer,
            ))
        };
        let resolved = match (trainer, preset) {
            (Some(trainer), Some(preset)) => match resolve_params_for_kind(
                trainer,
                preset,
                context.kind,
                input.overrides.as_ref(),
                context.portrait_defaults,
            ) {
                Ok(params) => Some((trainer, preset, params)),
                Err(more) => {
                    violations.0.extend(more.0);
                    None
                }
            },
            _ => None,
        };
        if let Some(url) = &input.images_data_url {
            if let Err(violation) = check_url(url) {
                violations.push(violation);
            }
        }
        match resolved {
            Some((trainer, preset, params)) if violations.is_empty() => Ok(TrainingRequest {
                trainer,
                preset,
                params,
                trigger_phrase,
                images_data_url: input.images_data_url.clone(),
            }),
            // Nothing resolved only when a field was at fault, so `violations` names it.
            _ => Err(violations),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Each violation's field and code, in order.
    pub(crate) fn codes(violations: Violations) -> Vec<(String, &'static str)> {
        violations
            .0
            .into_iter()
            .map(|v| (v.field, v.code))
            .collect()
    }

    fn parse(
        input: TrainingInput,
        check_url: impl FnOnce(&str) -> Result<(), FieldViolation>,
    ) -> Result<TrainingRequest, Violations> {
        let selection = TrainerSelection::default();
        let defaults = PortraitDefaults::default();
        let context = TrainingContext {
            kind: AvatarKind::Character,
            selection: &selection,
            portrait_defaults: &defaults,
        };
        TrainingRequest::parse(&input, context, check_url)
    }

    #[test]
    fn an_empty_request_takes_the_defaults() {
        let request = parse(TrainingInput::default(), |_| Ok(())).unwrap();
        assert_eq!(request.preset, PresetName::default());
        assert_eq!(request.trigger_phrase, None);
        assert_eq!(request.params.trainer(), request.trainer);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let input = TrainingInput {
            preset: Some("turbo".into()),
            trainer: Some("dreambooth".into()),
            trigger_phrase: Some("ab".into()),
            images_data_url: Some("ftp://x".into()),
            ..TrainingInput::default()
        };
        let error = parse(input, |_| {
            Err(FieldViolation::new("images_data_url", "bad_url", "no"))
        })
        .unwrap_err();
        assert_eq!(
            codes(error),
            [
                ("preset".to_string(), "invalid_value"),
                ("trainer".to_string(), "invalid_value"),
                ("trigger_phrase".to_string(), "invalid_length"),
                ("images_data_url".to_string(), "bad_url"),
            ]
        );
    }
}
