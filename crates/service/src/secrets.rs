//! Secrets at rest: the key ring from `SECRETS_KEYS`.
//!
//! The ring is a list of named 32-byte keys, the first one primary. From every key two subkeys
//! are derived with HKDF-SHA256, each for one purpose:
//!
//! - webhook signing secrets are sealed with XChaCha20-Poly1305 under the primary key's sealing
//!   subkey; a sealed row keeps the key's id and `nonce || ciphertext`, with the row's identity
//!   (endpoint id and secret id) as associated data, so a sealed value copied onto another row
//!   does not open. Any key of the ring opens what it sealed, so a new key can be put first
//!   while rows sealed under the old one are rewritten (`avatars secrets reencrypt`).
//! - the token in the callback URL given to fal for a job is HMAC-SHA256 of the job id under the
//!   primary key's token subkey: nothing is stored, and a callback is checked against the token
//!   of every key in the ring, so jobs submitted before a rotation still correlate.
//!
//! Keys, subkeys and opened secrets never print: `Debug` shows key ids only.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::SecretString;
use sha2::Sha256;
use store::webhooks::{NewSecret, SecretRow, StoredSecret};
use uuid::Uuid;
use zeroize::Zeroizing;

/// Bytes of a ring key.
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;
const MAX_KEY_ID_CHARS: usize = 32;
const SEAL_INFO: &[u8] = b"avatars/webhook-signing-secret/v1";
const TOKEN_INFO: &[u8] = b"avatars/fal-webhook-token/v1";
const SIGNING_SECRET_AAD: &[u8] = b"avatars/webhook-endpoint-secret/v1";

/// Why `SECRETS_KEYS` was refused. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyRingError(String);

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed under key {0:?}, which is not in SECRETS_KEYS")]
    UnknownKey(String),
    #[error(
        "the sealed value does not open under key {0:?}: corrupted, or moved from another row"
    )]
    Corrupt(String),
}

/// A value sealed under one key of the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    /// `nonce (24 bytes) || ciphertext || tag (16 bytes)`.
    pub bytes: Vec<u8>,
}

struct RingKey {
    id: String,
    sealer: XChaCha20Poly1305,
    token_key: Zeroizing<[u8; KEY_BYTES]>,
}

/// The named keys, primary first. Cheap to share behind an `Arc`.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids())
            .finish()
    }
}

fn subkey(key: &[u8; KEY_BYTES], info: &[u8]) -> Zeroizing<[u8; KEY_BYTES]> {
    let mut out = Zeroizing::new([0u8; KEY_BYTES]);
    hkdf::Hkdf::<Sha256>::new(None, key)
        .expand(info, &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl KeyRing {
    /// Parses `id:base64key,id:base64key,...` (first = primary). Each key is 32 bytes in
    /// standard base64; ids are 1 to 32 of `A-Z a-z 0-9 - _`, distinct.
    pub fn parse(text: &str) -> Result<Self, KeyRingError> {
        let mut keys: Vec<(String, Zeroizing<[u8; KEY_BYTES]>)> = Vec::new();
        for (index, entry) in text.split(',').enumerate() {
            let entry = entry.trim();
            let Some((id, encoded)) = entry.split_once(':') else {
                return Err(KeyRingError(format!(
                    "entry {} is not `id:base64key`",
                    index + 1
                )));
            };
            let id = id.trim();
            if !valid_key_id(id) {
                return Err(KeyRingError(format!(
                    "entry {}: a key id is 1 to {MAX_KEY_ID_CHARS} of A-Z a-z 0-9 - _",
                    index + 1
                )));
            }
            if keys.iter().any(|(known, _)| known == id) {
                return Err(KeyRingError(format!("key id {id:?} appears twice")));
            }
            let decoded = Zeroizing::new(
                STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| KeyRingError(format!("key {id:?} is not standard base64")))?,
            );
            let bytes: [u8; KEY_BYTES] = decoded.as_slice().try_into().map_err(|_| {
                KeyRingError(format!(
                    "key {id:?} is {} bytes; keys are {KEY_BYTES} random bytes (`openssl rand -base64 32`)",
                    decoded.len()
                ))
            })?;
            keys.push((id.to_string(), Zeroizing::new(bytes)));
        }
        Ok(Self::from_keys(keys))
    }

    fn from_keys(keys: Vec<(String, Zeroizing<[u8; KEY_BYTES]>)>) -> Self {
        Self {
            keys: keys
                .into_iter()
                .map(|(id, key)| {
                    let seal_key = subkey(&key, SEAL_INFO);
                    RingKey {
                        id,
                        sealer: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(
                            &seal_key[..],
                        )),
                        token_key: subkey(&key, TOKEN_INFO),
                    }
                })
                .collect(),
        }
    }

    /// A ring of one fresh random key named `id`, and its `SECRETS_KEYS` text (to be kept
    /// secret: `avatars dev` saves it in its private data directory).
    pub fn generate(id: &str) -> (Self, SecretString) {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        rand::rngs::OsRng.fill_bytes(&mut key[..]);
        let text = SecretString::from(format!("{id}:{}", STANDARD.encode(&key[..])));
        (Self::from_keys(vec![(id.to_string(), key)]), text)
    }

    /// The id new values are sealed under.
    pub fn primary_id(&self) -> &str {
        &self.keys[0].id
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    fn key(&self, id: &str) -> Option<&RingKey> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Seals `plaintext` under the primary key, bound to `context`.
    fn seal(&self, plaintext: &[u8], context: &[u8]) -> Sealed {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(&key.id, context);
        let ciphertext = key
            .sealer
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message this size");
        let mut bytes = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Sealed {
            key_id: key.id.clone(),
            bytes,
        }
    }

    fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        let key = self
            .key(&sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || OpenError::Corrupt(sealed.key_id.clone());
        if sealed.bytes.len() < NONCE_BYTES {
            return Err(corrupt());
        }
        let (nonce, ciphertext) = sealed.bytes.split_at(NONCE_BYTES);
        let aad = associated_data(&key.id, context);
        key.sealer
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| corrupt())
    }

    /// Seals an endpoint's signing secret for the row `secret_id` of endpoint `endpoint_id`.
    pub fn seal_signing_secret(
        &self,
        endpoint_id: Uuid,
        secret_id: Uuid,
        secret: &SecretString,
    ) -> Sealed {
        use secrecy::ExposeSecret;
        self.seal(
            secret.expose_secret().as_bytes(),
            &signing_secret_context(endpoint_id, secret_id),
        )
    }

    /// Opens what [`KeyRing::seal_signing_secret`] sealed for the same row.
    pub fn open_signing_secret(
        &self,
        endpoint_id: Uuid,
        secret_id: Uuid,
        sealed: &Sealed,
    ) -> Result<SecretString, OpenError> {
        let plain = self.open(sealed, &signing_secret_context(endpoint_id, secret_id))?;
        let text =
            std::str::from_utf8(&plain).map_err(|_| OpenError::Corrupt(sealed.key_id.clone()))?;
        Ok(SecretString::from(text.to_string()))
    }

    /// The token in the callback URL of job `job_id`, under the primary key.
    pub fn job_token(&self, job_id: Uuid) -> SecretString {
        SecretString::from(hex::encode(token_mac(&self.keys[0], job_id)))
    }

    /// Whether `presented` is job `job_id`'s token under any key of the ring, compared in
    /// constant time.
    pub fn job_token_matches(&self, job_id: Uuid, presented: &str) -> bool {
        let Ok(presented) = hex::decode(presented) else {
            return false;
        };
        let mut matched = false;
        for key in &self.keys {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.token_key[..])
                .expect("HMAC takes any key length");
            mac.update(&token_message(job_id));
            // `verify_slice` compares in constant time; every key is tried.
            matched |= mac.verify_slice(&presented).is_ok();
        }
        matched
    }
}

/// The live signing secrets of an endpoint, opened, in the order given. A secret that does not
/// open is logged (by key id, never its value) and left out; `Err` says why when none opens.
pub fn open_signing_secrets(
    ring: &KeyRing,
    rows: &[SecretRow],
) -> Result<Vec<SecretString>, String> {
    let mut opened = Vec::with_capacity(rows.len());
    let mut problems = Vec::new();
    for row in rows {
        match &row.stored {
            StoredSecret::Legacy(secret) => opened.push(secret.clone()),
            StoredSecret::Sealed { key_id, bytes } => {
                let sealed = Sealed {
                    key_id: key_id.clone(),
                    bytes: bytes.clone(),
                };
                match ring.open_signing_secret(row.endpoint_id, row.id, &sealed) {
                    Ok(secret) => opened.push(secret),
                    Err(error) => {
                        tracing::warn!(endpoint_id = %row.endpoint_id, secret_id = %row.id, %error, "a signing secret does not open");
                        problems.push(error.to_string());
                    }
                }
            }
        }
    }
    if opened.is_empty() {
        return Err(format!(
            "no signing secret of the endpoint opens: {}",
            if problems.is_empty() {
                "it has none".to_string()
            } else {
                problems.join("; ")
            }
        ));
    }
    Ok(opened)
}

/// What a re-encryption did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Rows now sealed under the primary key that were not before.
    pub resealed: u64,
    /// Rows that could not be opened (their key is not in the ring, or they are corrupt);
    /// left as they are.
    pub unreadable: u64,
}

/// Rewrites every webhook signing secret not sealed under the primary key (sealed under an
/// older key, or plaintext from before sealing) under the primary key, `batch` rows per
/// transaction. Idempotent: a second run finds nothing to do; rows changed concurrently by
/// another run are left to it.
pub async fn reencrypt(
    store: &store::Store,
    ring: &KeyRing,
    batch: u32,
) -> Result<ReencryptReport, store::StoreError> {
    let mut report = ReencryptReport::default();
    let mut after = None;
    loop {
        let rows = store
            .secrets_not_sealed_under(ring.primary_id(), after, i64::from(batch.max(1)))
            .await?;
        let Some(last) = rows.last() else {
            return Ok(report);
        };
        after = Some(last.id);
        let mut resealed = Vec::with_capacity(rows.len());
        for row in rows {
            let secret = match &row.stored {
                StoredSecret::Legacy(secret) => secret.clone(),
                StoredSecret::Sealed { key_id, bytes } => {
                    let sealed = Sealed {
                        key_id: key_id.clone(),
                        bytes: bytes.clone(),
                    };
                    match ring.open_signing_secret(row.endpoint_id, row.id, &sealed) {
                        Ok(secret) => secret,
                        Err(error) => {
                            tracing::warn!(secret_id = %row.id, %error, "a signing secret cannot be re-encrypted");
                            report.unreadable += 1;
                            continue;
                        }
                    }
                }
            };
            let sealed = ring.seal_signing_secret(row.endpoint_id, row.id, &secret);
            let new = NewSecret {
                id: row.id,
                key_id: sealed.key_id,
                sealed: sealed.bytes,
            };
            resealed.push((row, new));
        }
        report.resealed += store.reseal_secrets(&resealed).await?;
    }
}

fn token_message(job_id: Uuid) -> Vec<u8> {
    let mut message = b"job:".to_vec();
    message.extend_from_slice(job_id.as_bytes());
    message
}

fn token_mac(key: &RingKey, job_id: Uuid) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.token_key[..])
        .expect("HMAC takes any key length");
    mac.update(&token_message(job_id));
    mac.finalize().into_bytes().into()
}

fn signing_secret_context(endpoint_id: Uuid, secret_id: Uuid) -> Vec<u8> {
    let mut context = SIGNING_SECRET_AAD.to_vec();
    context.extend_from_slice(endpoint_id.as_bytes());
    context.extend_from_slice(secret_id.as_bytes());
    context
}

/// What a seal is bound to besides its key: the key id and the row's identity.
fn associated_data(key_id: &str, context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key_id.len() + 1 + context.len());
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn key_text(byte: u8) -> String {
        STANDARD.encode([byte; KEY_BYTES])
    }

    fn ring(spec: &[(&str, u8)]) -> KeyRing {
        let text = spec
            .iter()
            .map(|(id, byte)| format!("{id}:{}", key_text(*byte)))
            .collect::<Vec<_>>()
            .join(",");
        KeyRing::parse(&text).unwrap()
    }

    #[test]
    fn parses_ids_in_order_primary_first() {
        let ring = ring(&[("k2", 2), ("k1", 1)]);
        assert_eq!(ring.primary_id(), "k2");
        assert_eq!(ring.key_ids(), vec!["k2", "k1"]);
    }

    #[test]
    fn refuses_bad_rings_without_echoing_keys() {
        let short = STANDARD.encode([7u8; 16]);
        for (text, fragment) in [
            ("", "not `id:base64key`"),
            ("k1", "not `id:base64key`"),
            (&format!(":{}", key_text(1)) as &str, "key id"),
            (&format!("k 1:{}", key_text(1)), "key id"),
            (&format!("k1:{},k1:{}", key_text(1), key_text(2)), "twice"),
            ("k1:not*base64", "base64"),
            (&format!("k1:{short}"), "16 bytes"),
        ] {
            let error = KeyRing::parse(text).expect_err(text).to_string();
            assert!(error.contains(fragment), "{text:?}: {error}");
            assert!(!error.contains(&short) && !error.contains(&key_text(1)));
        }
    }

    #[test]
    fn debug_shows_ids_only() {
        let printed = format!("{:?}", ring(&[("k1", 9)]));
        assert!(printed.contains("k1"));
        assert!(!printed.contains(&key_text(9)));
    }

    #[test]
    fn a_sealed_secret_opens_for_its_row_only() {
        let ring = ring(&[("k1", 1)]);
        let (endpoint, row) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = SecretString::from("whsec_c2VjcmV0".to_string());
        let sealed = ring.seal_signing_secret(endpoint, row, &secret);
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed
            .bytes
            .windows(6)
            .any(|w| w == b"whsec_" || w == b"c2Vjcm"));
        let opened = ring.open_signing_secret(endpoint, row, &sealed).unwrap();
        assert_eq!(opened.expose_secret(), "whsec_c2VjcmV0");
        assert!(matches!(
            ring.open_signing_secret(endpoint, Uuid::now_v7(), &sealed),
            Err(OpenError::Corrupt(_))
        ));
        assert!(matches!(
            ring.open_signing_secret(Uuid::now_v7(), row, &sealed),
            Err(OpenError::Corrupt(_))
        ));
        let mut flipped = sealed.clone();
        *flipped.bytes.last_mut().unwrap() ^= 1;
        assert!(ring.open_signing_secret(endpoint, row, &flipped).is_err());
    }

    #[test]
    fn seals_are_fresh_each_time() {
        let ring = ring(&[("k1", 1)]);
        let (endpoint, row) = (Uuid::now_v7(), Uuid::now_v7());
        let secret = SecretString::from("whsec_x".to_string());
        assert_ne!(
            ring.seal_signing_secret(endpoint, row, &secret).bytes,
            ring.seal_signing_secret(endpoint, row, &secret).bytes
        );
    }

    #[test]
    fn rotation_keeps_old_seals_and_tokens_readable_while_the_old_key_is_in_the_ring() {
        let old = ring(&[("k1", 1)]);
        let rotated = ring(&[("k2", 2), ("k1", 1)]);
        let new_only = ring(&[("k2", 2)]);
        let (endpoint, row, job) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let secret = SecretString::from("whsec_abc".to_string());
        let sealed = old.seal_signing_secret(endpoint, row, &secret);
        assert!(rotated.open_signing_secret(endpoint, row, &sealed).is_ok());
        assert_eq!(
            new_only.open_signing_secret(endpoint, row, &sealed).err(),
            Some(OpenError::UnknownKey("k1".into()))
        );
        assert_eq!(
            rotated.seal_signing_secret(endpoint, row, &secret).key_id,
            "k2"
        );

        let old_token = old.job_token(job);
        assert!(rotated.job_token_matches(job, old_token.expose_secret()));
        assert!(!new_only.job_token_matches(job, old_token.expose_secret()));
        let new_token = rotated.job_token(job);
        assert!(new_only.job_token_matches(job, new_token.expose_secret()));
    }

    #[test]
    fn job_tokens_are_per_job_and_per_key() {
        let ring1 = ring(&[("k1", 1)]);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let token = ring1.job_token(a);
        assert_eq!(token.expose_secret().len(), 64);
        assert_eq!(token.expose_secret(), ring1.job_token(a).expose_secret());
        assert!(ring1.job_token_matches(a, token.expose_secret()));
        assert!(!ring1.job_token_matches(b, token.expose_secret()));
        assert!(!ring1.job_token_matches(a, "zz"));
        assert!(!ring1.job_token_matches(a, &token.expose_secret()[..62]));
        // The same key id with other key bytes is another key.
        assert!(!ring(&[("k1", 3)]).job_token_matches(a, token.expose_secret()));
    }
}
