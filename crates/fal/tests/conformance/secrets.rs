//! The fal key never appears in logs (captured at TRACE, every target) or in error text.

use std::io::Write;
use std::sync::{Arc, Mutex};

use fal::models;
use fal::{FalConfig, SubmitOptions, Verifier, VerifierConfig};
use fal_sim::{KeyKind, SubmitFault};
use secrecy::SecretString;
use tracing_subscriber::util::SubscriberInitExt;

use crate::common::{self, client_for, Receiver, DEADLINE};

const SECRET: &str = "s3cr3t-value-that-must-never-leak";
const OTHER_SECRET: &str = "unregistered-secret-also-private";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn fal_key_never_appears_in_logs_or_errors() {
    let capture = Capture::default();
    // A process-wide subscriber (the only one in this test binary): thread-local subscribers
    // race with other tests over tracing's per-callsite interest cache. It also receives the
    // `log` records of the HTTP stacks. Other tests' logs land here too, which only widens the
    // search.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .finish()
        .try_init()
        .expect("no other test installs a global subscriber");

    let env = common::start().await;
    let key = format!("key-id:{SECRET}");
    env.sim.register_key(&key, KeyKind::Valid);
    let client = client_for(&env.sim, &key, |_| {});
    let mut texts = vec![
        format!("{client:?}"),
        format!("{:?}", FalConfig::new(SecretString::from(key.clone()))),
    ];

    // Success paths, including an upload and a webhook.
    let receiver = Receiver::start(vec![]).await;
    let options = SubmitOptions {
        webhook_url: Some(receiver.url.clone()),
        ..Default::default()
    };
    let input = serde_json::json!({"prompt": "x", "image_size": {"width": 16, "height": 16}});
    let s = client
        .submit(models::FLUX_LORA, &input, &options)
        .await
        .unwrap();
    env.sim
        .wait_for_webhook(&s.request_id, DEADLINE)
        .await
        .unwrap();
    client.status(&s.request_ref(), true).await.unwrap();
    client.result(&s.request_ref()).await.unwrap();
    let file = common::TempFile::with_bytes("a.zip", &common::training_zip(1));
    client
        .upload_file(&file.0, "application/zip", None)
        .await
        .unwrap();
    let delivery = &receiver.deliveries()[0];
    Verifier::new(VerifierConfig::with_jwks_url(env.sim.jwks_url()))
        .verify(&delivery.headers, &delivery.body)
        .await
        .unwrap();

    // Every failure path: its Display, its Debug, and its source chain.
    let mut record = |e: &dyn std::error::Error| {
        let mut text = format!("{e} | {e:?}");
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(" | {s} | {s:?}"));
            source = s.source();
        }
        texts.push(text);
    };
    let stranger = client_for(&env.sim, &format!("nobody:{OTHER_SECRET}"), |_| {});
    record(
        &stranger
            .submit(models::FLUX_LORA, &input, &options)
            .await
            .unwrap_err(),
    );
    record(&stranger.status(&s.request_ref(), false).await.unwrap_err());
    env.sim.register_key(&key, KeyKind::BillingLocked);
    record(
        &client
            .submit(models::FLUX_LORA, &input, &options)
            .await
            .unwrap_err(),
    );
    env.sim.register_key(&key, KeyKind::Valid);
    env.sim
        .fail_next_submits(1, SubmitFault::CloseConnection { enqueue: false });
    record(
        &client
            .submit(models::FLUX_LORA, &input, &options)
            .await
            .unwrap_err(),
    );
    env.sim.fail_next_submits(
        4,
        SubmitFault::Respond {
            status: 503,
            body: None,
            error_type: None,
            retry_after_secs: None,
            with_request_id: false,
            user_timeout: false,
        },
    );
    record(
        &client
            .submit(models::FLUX_LORA, &input, &options)
            .await
            .unwrap_err(),
    );
    let unreachable = client_for(&env.sim, &key, |c| {
        c.queue_url = url::Url::parse("http://127.0.0.1:1/queue").unwrap()
    });
    record(
        &unreachable
            .submit(models::FLUX_LORA, &input, &options)
            .await
            .unwrap_err(),
    );
    env.sim.shutdown().await;

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("fal accepted the submit"),
        "the capture works"
    );
    assert!(
        logs.lines().any(|l| l.contains("TRACE")),
        "TRACE level is captured"
    );
    for secret in [SECRET, OTHER_SECRET] {
        assert!(!logs.contains(secret), "secret found in logs");
        for text in &texts {
            assert!(!text.contains(secret), "secret found in: {text}");
        }
    }
}
