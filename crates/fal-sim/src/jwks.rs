//! Webhook signing keys and the JWKS that publishes them.

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::OsRng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub(crate) struct SigningKeys {
    /// Published keys, oldest first; the last one signs.
    published: Vec<(String, SigningKey)>,
    /// A key never published, for the wrong-key fault.
    unpublished: SigningKey,
    next_kid: u32,
}

impl SigningKeys {
    pub fn new(seed: Option<[u8; 32]>) -> Self {
        let first = match seed {
            Some(seed) => SigningKey::from_bytes(&seed),
            None => SigningKey::generate(&mut OsRng),
        };
        Self {
            published: vec![("sim-1".into(), first)],
            unpublished: SigningKey::generate(&mut OsRng),
            next_kid: 2,
        }
    }

    /// Publishes a new signing key; the old ones stay published when `keep_old`.
    pub fn rotate(&mut self, keep_old: bool) {
        let kid = format!("sim-{}", self.next_kid);
        self.next_kid += 1;
        if !keep_old {
            self.published.clear();
        }
        self.published.push((kid, SigningKey::generate(&mut OsRng)));
    }

    pub fn jwks(&self, padded: bool) -> Value {
        let keys: Vec<Value> = self
            .published
            .iter()
            .map(|(kid, key)| {
                let mut x = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(key.verifying_key().as_bytes());
                if padded {
                    while x.len() % 4 != 0 {
                        x.push('=');
                    }
                }
                json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA", "x": x})
            })
            .collect();
        json!({ "keys": keys })
    }

    /// Hex signature of fal's webhook message, with the active key or the unpublished one.
    pub fn sign(
        &self,
        wrong_key: bool,
        request_id: &str,
        user_id: &str,
        timestamp: &str,
        body: &[u8],
    ) -> String {
        let key = if wrong_key {
            &self.unpublished
        } else {
            &self
                .published
                .last()
                .expect("one key is always published")
                .1
        };
        hex::encode(
            key.sign(&message(request_id, user_id, timestamp, body))
                .to_bytes(),
        )
    }
}

/// `request_id \n user_id \n timestamp \n hex(sha256(body))`, as fal's webhook docs specify.
fn message(request_id: &str, user_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut text = String::with_capacity(request_id.len() + user_id.len() + timestamp.len() + 67);
    text.push_str(request_id);
    text.push('\n');
    text.push_str(user_id);
    text.push('\n');
    text.push_str(timestamp);
    text.push('\n');
    text.push_str(&hex::encode(Sha256::digest(body)));
    text.into_bytes()
}
