//! Standard Webhooks signatures: `v1` (HMAC-SHA256) over `{id}.{timestamp}.{body}`, keyed
//! with the base64 part of a `whsec_` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const SECRET_PREFIX: &str = "whsec_";

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> SecretString {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut bytes[..]);
    SecretString::from(format!("{SECRET_PREFIX}{}", STANDARD.encode(&bytes[..])))
}

/// The `webhook-signature` header: one `v1,<signature>` per secret, space-separated, so a
/// receiver holding any of them (during a rotation) can verify.
pub fn signature_header(
    secrets: &[SecretString],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .filter_map(|secret| sign(secret.expose_secret(), msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `v1,<base64 HMAC>`; `None` for a secret that is not `whsec_` + base64 (never issued here).
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key = zeroize::Zeroizing::new(
        STANDARD
            .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
            .ok()?,
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vector of the Standard Webhooks reference libraries.
    #[test]
    fn signs_the_reference_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            signature.as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
    }

    #[test]
    fn signs_once_per_live_secret() {
        let secrets = vec![new_secret(), new_secret()];
        let header = signature_header(&secrets, "id", 1, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn new_secrets_are_prefixed_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        let (a, b) = (a.expose_secret(), b.expose_secret());
        assert!(a.starts_with("whsec_") && STANDARD.decode(&a[6..]).unwrap().len() == 32);
        assert_ne!(a, b);
    }
}
