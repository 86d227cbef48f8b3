//! The avatar a route's `{id}` names, for the calling tenant: the extractor every operation on
//! one avatar starts with, and the parameter and refusals it documents for them.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use domain::{AvatarId, TenantId};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{RefOr, Response};
use utoipa::{IntoParams, IntoResponses};

use crate::auth::Caller;
use crate::extract::PathId;
use crate::problem::ApiError;
use crate::responses::{AvatarNotFound, AvatarPath, Unauthorized};
use crate::state::AppState;

/// The calling tenant and the avatar id of the path, checked in the order separate extractors
/// would: the key (401), then the id (404). Whether the tenant has that avatar is the use
/// case's to say (404 `avatar_not_found`).
#[derive(Debug, Clone, Copy)]
pub struct AvatarInPath {
    pub tenant: TenantId,
    pub avatar: AvatarId,
}

impl FromRequestParts<AppState> for AvatarInPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let PathId(avatar) = PathId::from_request_parts(parts, state).await?;
        Ok(Self {
            tenant: caller.tenant_id,
            avatar: AvatarId(avatar),
        })
    }
}

/// The avatar id, for `params(...)`.
impl IntoParams for AvatarInPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        AvatarPath::into_params(|| Some(ParameterIn::Path))
    }
}

/// No valid key, or no such avatar, for `responses(...)`.
impl IntoResponses for AvatarInPath {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut responses = Unauthorized::responses();
        responses.append(&mut AvatarNotFound::responses());
        responses
    }
}
