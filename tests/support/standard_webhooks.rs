//! Standard Webhooks verification, written from the specification and kept apart from the
//! service's signer, so a misunderstanding in one cannot hide behind the other.
//!
//! Signed content: `{webhook-id}.{webhook-timestamp}.{raw body}`. Signature: HMAC-SHA256 keyed
//! with the base64-decoded secret (without its `whsec_` prefix), base64-encoded, written as
//! `v1,<signature>`. The `webhook-signature` header holds one or more such entries separated by
//! spaces; any one that matches makes the message valid. Timestamps more than five minutes
//! away from now, in either direction, are refused.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a message's timestamp may be from now.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

const SECRET_PREFIX: &str = "whsec_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The secret is not base64 (after its prefix).
    BadSecret,
    /// `webhook-timestamp` is not an integer.
    BadTimestamp,
    /// The timestamp is more than [`TOLERANCE_SECONDS`] away from now.
    OutsideTolerance { timestamp: i64, now: i64 },
    /// No `v1` entry of the header matches.
    NoMatchingSignature,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// The key bytes of a `whsec_...` secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).map_err(|_| VerifyError::BadSecret)
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `v1,<base64>` signature entry of a message (used to check this module against the
/// specification's vector and to build tampered messages).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = secret_key(secret).expect("secret is base64");
    let tag = mac(&key, id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Verifies a message against the current time.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
) -> Result<(), VerifyError> {
    verify_at(secret, id, timestamp, signature_header, body, now())
}

/// Verifies a message as if it were `now` (unix seconds).
pub fn verify_at(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let key = secret_key(secret)?;
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - seconds).abs() > TOLERANCE_SECONDS {
        return Err(VerifyError::OutsideTolerance {
            timestamp: seconds,
            now,
        });
    }
    let matched = signature_header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        // `verify_slice` compares in constant time.
        .any(|tag| mac(&key, id, timestamp, body).verify_slice(&tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector of the Standard Webhooks reference libraries (svix / standard-webhooks
    // `test_sign`): this secret, id, timestamp and body sign to this value.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn check(id: &str, timestamp: &str, header: &str, body: &[u8]) -> Result<(), VerifyError> {
        verify_at(SECRET, id, timestamp, header, body, TIMESTAMP)
    }

    #[test]
    fn signs_the_reference_vector() {
        assert_eq!(sign(SECRET, ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn verifies_the_reference_vector() {
        assert_eq!(check(ID, "1614265330", SIGNATURE, BODY), Ok(()));
        // The secret's prefix is optional.
        assert_eq!(
            verify_at(
                &SECRET["whsec_".len()..],
                ID,
                "1614265330",
                SIGNATURE,
                BODY,
                TIMESTAMP
            ),
            Ok(())
        );
    }

    #[test]
    fn refuses_tampered_messages() {
        let no = Err(VerifyError::NoMatchingSignature);
        assert_eq!(
            check(ID, "1614265330", SIGNATURE, br#"{"test": 2432232315}"#),
            no
        );
        assert_eq!(check("msg_other", "1614265330", SIGNATURE, BODY), no);
        assert_eq!(check(ID, "1614265331", SIGNATURE, BODY), no);
        assert_eq!(
            check(
                ID,
                "1614265330",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=",
                BODY
            ),
            no
        );
        // Only `v1` entries count.
        assert_eq!(
            check(
                ID,
                "1614265330",
                "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                BODY
            ),
            no
        );
        assert_eq!(check(ID, "1614265330", "", BODY), no);
        // Another secret does not verify.
        let other = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        assert_eq!(
            verify_at(&other, ID, "1614265330", SIGNATURE, BODY, TIMESTAMP),
            no
        );
    }

    #[test]
    fn any_one_of_several_entries_may_match() {
        let other = format!("whsec_{}", STANDARD.encode([9u8; 32]));
        let theirs = sign(&other, ID, TIMESTAMP, BODY);
        for header in [
            format!("{theirs} {SIGNATURE}"),
            format!("{SIGNATURE} {theirs}"),
            format!("v1,bm90IGEgc2lnbmF0dXJl {SIGNATURE}"),
            format!("v1,not-base64! {SIGNATURE}"),
        ] {
            assert_eq!(check(ID, "1614265330", &header, BODY), Ok(()), "{header}");
        }
        assert_eq!(
            verify_at(&other, ID, "1614265330", &theirs, BODY, TIMESTAMP),
            Ok(())
        );
    }

    #[test]
    fn timestamps_must_be_within_five_minutes_either_way() {
        let at = |now: i64| verify_at(SECRET, ID, "1614265330", SIGNATURE, BODY, now);
        assert_eq!(at(TIMESTAMP + TOLERANCE_SECONDS), Ok(()));
        assert_eq!(at(TIMESTAMP - TOLERANCE_SECONDS), Ok(()));
        assert!(matches!(
            at(TIMESTAMP + TOLERANCE_SECONDS + 1),
            Err(VerifyError::OutsideTolerance { .. })
        ));
        assert!(matches!(
            at(TIMESTAMP - TOLERANCE_SECONDS - 1),
            Err(VerifyError::OutsideTolerance { .. })
        ));
        assert_eq!(
            check(ID, "yesterday", SIGNATURE, BODY),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn a_fresh_message_round_trips() {
        let secret = format!("whsec_{}", STANDARD.encode([42u8; 32]));
        let ts = now();
        let header = sign(&secret, "evt", ts, b"{}");
        assert_eq!(
            verify(&secret, "evt", &ts.to_string(), &header, b"{}"),
            Ok(())
        );
        assert_eq!(
            verify(&secret, "evt", &ts.to_string(), &header, b"{ }"),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify("whsec_***", "evt", &ts.to_string(), &header, b"{}"),
            Err(VerifyError::BadSecret)
        );
    }
}
