//! Known-answer test of the webhook signature: a fixed ED25519 key, fixed headers and body give
//! a fixed signature. The expected values were computed with an independent ED25519
//! implementation and must never change.

use ed25519_dalek::{Signer, SigningKey};
use fal::{signed_message, Verifier, VerifierConfig, WebhookError};
use fal_sim::{FalSim, SimConfig};
use http::{HeaderMap, HeaderValue};

const SEED: [u8; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31,
];
const REQUEST_ID: &str = "d2b1f1e4-6a0b-4b7e-9a55-1c1f0c6f3c11";
const USER_ID: &str = "user-123";
const TIMESTAMP: &str = "1700000000";
const BODY: &str = r#"{"request_id":"d2b1f1e4-6a0b-4b7e-9a55-1c1f0c6f3c11","gateway_request_id":"d2b1f1e4-6a0b-4b7e-9a55-1c1f0c6f3c11","status":"OK","payload":{"images":[]}}"#;
const BODY_SHA256: &str = "7e943ccd837401df7d5672584f3f1e7bbc4cda58a1cdd986b9c3f7c08d45fce9";
const PUBLIC_X: &str = "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg";
const SIGNATURE: &str = "9e523dc04859cecbcbe9cfab2637972e78abf7ba0b55eccc016b023f10f3cea76ab43d26921f6e1e783aec5b41327b69560494444931f12affce45ad1615060b";

fn headers(signature: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-fal-webhook-request-id",
        HeaderValue::from_static(REQUEST_ID),
    );
    headers.insert("x-fal-webhook-user-id", HeaderValue::from_static(USER_ID));
    headers.insert(
        "x-fal-webhook-timestamp",
        HeaderValue::from_static(TIMESTAMP),
    );
    headers.insert(
        "x-fal-webhook-signature",
        HeaderValue::from_str(signature).unwrap(),
    );
    headers
}

#[test]
fn signed_message_and_signature_are_fixed() {
    let message = signed_message(REQUEST_ID, USER_ID, TIMESTAMP, BODY.as_bytes());
    let expected = format!("{REQUEST_ID}\n{USER_ID}\n{TIMESTAMP}\n{BODY_SHA256}");
    assert_eq!(
        message,
        expected.as_bytes(),
        "no trailing newline, lowercase hex digest"
    );
    let signature = SigningKey::from_bytes(&SEED).sign(&message);
    assert_eq!(hex::encode(signature.to_bytes()), SIGNATURE);
}

#[tokio::test]
async fn simulator_signs_and_client_verifies_the_known_answer() {
    let sim = FalSim::start(SimConfig {
        signing_key_seed: Some(SEED),
        ..SimConfig::fast()
    })
    .await
    .unwrap();
    let jwks: serde_json::Value = reqwest::get(sim.jwks_url())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["x"], PUBLIC_X);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");

    let signed = sim.webhook_headers(
        REQUEST_ID,
        USER_ID,
        TIMESTAMP.parse().unwrap(),
        BODY.as_bytes(),
    );
    let signature = &signed
        .iter()
        .find(|(k, _)| k == "x-fal-webhook-signature")
        .unwrap()
        .1;
    assert_eq!(
        signature, SIGNATURE,
        "the simulator's independent signer agrees"
    );

    let verifier = Verifier::new(VerifierConfig::with_jwks_url(sim.jwks_url()));
    let now: i64 = TIMESTAMP.parse().unwrap();
    let verified = verifier
        .verify_at(&headers(SIGNATURE), BODY.as_bytes(), now)
        .await
        .expect("verifies");
    assert_eq!(verified.body.request_id, REQUEST_ID);
    assert_eq!(verified.user_id, USER_ID);
    let mut tampered = BODY.as_bytes().to_vec();
    tampered[BODY.len() - 3] = b' ';
    let err = verifier
        .verify_at(&headers(SIGNATURE), &tampered, now)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::BadSignature), "{err:?}");
    sim.shutdown().await;
}
