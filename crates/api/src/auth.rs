//! API keys: how they are made, stored and checked.
//!
//! A key is `avk_` followed by 32 random bytes in base64url. Only its SHA-256 hash is stored;
//! the key is shown once, when created. Every failure to authenticate (no header, a malformed
//! one, an unknown key, a revoked key) gets the same 401, so a caller learns nothing about which
//! keys exist.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use domain::{ApiKeyId, TenantId};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;
use crate::state::AppState;

const KEY_PREFIX: &str = "avk_";
/// How much of a key is kept in clear to tell keys apart in listings.
const DISPLAY_PREFIX_CHARS: usize = 12;

/// A freshly generated key: the secret, shown once, and what is stored of it.
pub struct NewApiKey {
    pub secret: SecretString,
    pub display_prefix: String,
    pub hash: [u8; 32],
}

impl NewApiKey {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        Self {
            display_prefix: key[..DISPLAY_PREFIX_CHARS].to_string(),
            hash: hash_key(&key),
            secret: SecretString::from(key),
        }
    }
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Creates a key for the tenant called `tenant_name` (creating the tenant when new) and returns
/// it with its id. The only place a key's secret exists in clear.
pub async fn create_api_key(
    store: &store::Store,
    tenant_name: &str,
    label: &str,
) -> Result<(ApiKeyId, SecretString), store::StoreError> {
    let tenant = store.ensure_tenant(tenant_name).await?;
    let key = NewApiKey::generate();
    let id = store
        .insert_api_key(tenant.id, label, &key.display_prefix, &key.hash)
        .await?;
    Ok((id, key.secret))
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: TenantId,
    pub key_id: ApiKeyId,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(ApiError::unauthorized)?;
        let hash = hash_key(presented.expose_secret());
        match state.store.authenticate_key(&hash).await? {
            Some(key) => {
                tracing::Span::current()
                    .record("tenant_id", tracing::field::display(key.tenant_id));
                state.rate_limits.check(key.key_id)?;
                Ok(Caller {
                    tenant_id: key.tenant_id,
                    key_id: key.key_id,
                })
            }
            None => Err(ApiError::unauthorized()),
        }
    }
}

/// The token of a `Bearer` authorization value (scheme case-insensitive, per RFC 9110).
fn bearer_token(value: &str) -> Option<SecretString> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty())
        .then(|| SecretString::from(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hashed() {
        let a = NewApiKey::generate();
        let b = NewApiKey::generate();
        assert!(a.secret.expose_secret().starts_with("avk_"));
        assert_eq!(a.secret.expose_secret().len(), 4 + 43);
        assert_ne!(a.secret.expose_secret(), b.secret.expose_secret());
        assert_eq!(a.hash, hash_key(a.secret.expose_secret()));
        assert!(a.secret.expose_secret().starts_with(&a.display_prefix));
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc").unwrap().expose_secret(), "abc");
        assert_eq!(bearer_token("bearer  abc ").unwrap().expose_secret(), "abc");
        assert!(bearer_token("Basic abc").is_none());
        assert!(bearer_token("Bearer").is_none());
        assert!(bearer_token("Bearer ").is_none());
        assert!(bearer_token("abc").is_none());
    }
}
