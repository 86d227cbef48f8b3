//! Cursor pagination, the same on every list: `limit` 1-100 (default 20) and an opaque
//! `cursor` carrying the last id of the previous page (ids are time-ordered UUIDv7).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use serde::Deserialize;
use service::{AvatarListing, PageRequest};
use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{RefOr, Response};
use utoipa::{IntoParams, IntoResponses};
use uuid::Uuid;

use crate::avatar_in_path::AvatarInPath;
use crate::extract::AppQuery;
use crate::problem::{ApiError, FieldLocation};
use crate::responses::InvalidQuery;
use crate::state::AppState;

pub const DEFAULT_PAGE_SIZE: u32 = 20;
pub const MAX_PAGE_SIZE: u32 = 100;

/// The query parameters of a list without filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1-100 (default 20).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A list's `limit` and `cursor` ([`PageQuery`]), checked: the extractor of every list without
/// filters.
#[derive(Debug, Clone, Copy)]
pub struct Paged(pub PageRequest);

impl<S: Send + Sync> FromRequestParts<S> for Paged {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let AppQuery(query) = AppQuery::<PageQuery>::from_request_parts(parts, state).await?;
        page(query.limit, query.cursor.as_deref()).map(Paged)
    }
}

/// A page of one avatar's trainings or generations for the calling tenant, checked in the
/// order of separate extractors: the key (401), the avatar id in the path (404), then `limit`
/// and `cursor` (422).
#[derive(Debug, Clone, Copy)]
pub struct Listing(pub AvatarListing);

impl FromRequestParts<AppState> for Listing {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AvatarInPath { tenant, avatar } =
            AvatarInPath::from_request_parts(parts, state).await?;
        let Paged(page) = Paged::from_request_parts(parts, state).await?;
        Ok(Listing(AvatarListing {
            tenant,
            avatar,
            page,
        }))
    }
}

/// The parameters a listing reads, for `params(...)`: the avatar id, then the page's.
impl IntoParams for Listing {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut params = AvatarInPath::into_params(|| Some(ParameterIn::Path));
        params.extend(PageQuery::into_params(|| Some(ParameterIn::Query)));
        params
    }
}

/// The refusals of a listing, for `responses(...)`.
impl IntoResponses for Listing {
    fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
        let mut responses = AvatarInPath::responses();
        responses.append(&mut InvalidQuery::responses());
        responses
    }
}

fn query_error(field: &str, code: &str, message: &str) -> ApiError {
    ApiError::invalid_field(FieldLocation::Query, field, code, message)
}

/// Checks the `limit` and `cursor` query parameters.
pub fn page(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(query_error(
            "limit",
            "out_of_range",
            &format!("must be from 1 to {MAX_PAGE_SIZE}"),
        ));
    }
    let after = match cursor {
        None => None,
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            query_error(
                "cursor",
                "invalid_cursor",
                "is not a cursor this service issued",
            )
        })?),
    };
    Ok(PageRequest { limit, after })
}

/// A page as callers see it: each item through `view`, and the cursor of the next page when
/// more follow.
pub fn render<T, V>(
    (items, more): (Vec<T>, bool),
    id: impl Fn(&T) -> Uuid,
    view: impl FnMut(T) -> V,
) -> (Vec<V>, Option<String>) {
    let cursor = next_cursor(more, items.last().map(id));
    (items.into_iter().map(view).collect(), cursor)
}

/// The cursor of the page after the one ending with `last`, when more follow.
pub fn next_cursor(more: bool, last: Option<Uuid>) -> Option<String> {
    more.then_some(last).flatten().map(encode_cursor)
}

fn encode_cursor(last: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("v1:{last}"))
}

fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    Uuid::parse_str(String::from_utf8(bytes).ok()?.strip_prefix("v1:")?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_forgeries() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(
            decode_cursor(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v2:x")),
            None
        );
        assert_eq!(next_cursor(false, Some(id)), None);
        assert_eq!(next_cursor(true, None), None);
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(page(None, None).unwrap().limit, 20);
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(101), None).is_err());
        assert!(page(Some(100), Some("garbage")).is_err());
    }
}
