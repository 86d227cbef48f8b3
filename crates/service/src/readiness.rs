//! Whether this process can do its work: its database is reachable and migrated, its blob
//! store answers with the bucket present and the credentials accepted, and fal has not refused
//! its key.

use std::time::Duration;

use crate::context::Service;

/// How long the blob store may take to answer the readiness check.
const BLOB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the service is not ready, in words an operator can act on; empty when ready.
pub async fn not_ready_reasons(service: &Service) -> Vec<String> {
    let mut reasons = match service.store.readiness().await {
        Ok(store::Readiness::Ready) => Vec::new(),
        Ok(store::Readiness::MigrationsPending(versions)) => vec![format!(
            "database migrations not applied: {}; run `avatars migrate`",
            versions
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )],
        Err(error) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            vec!["database unreachable".to_string()]
        }
    };
    match tokio::time::timeout(BLOB_CHECK_TIMEOUT, service.blobs.health()).await {
        Ok(store::BlobHealth::Ready) => {}
        Ok(
            store::BlobHealth::Missing(reason)
            | store::BlobHealth::CredentialsRefused(reason)
            | store::BlobHealth::Unavailable(reason),
        ) => reasons.push(format!(
            "blob storage: {reason}; check STORAGE_URL and the S3 settings"
        )),
        Err(_) => reasons.push(format!(
            "blob storage: no answer within {} s",
            BLOB_CHECK_TIMEOUT.as_secs()
        )),
    }
    if service
        .fal
        .as_ref()
        .is_some_and(|fal| fal.health.key_rejected())
    {
        reasons.push("fal rejected the API key (fal_unauthorized); check FAL_KEY".to_string());
    }
    if service.is_stopping() {
        reasons.push("shutting down".to_string());
    }
    reasons
}
