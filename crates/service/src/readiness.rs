//! Whether this process can do its work: its database is reachable and migrated, and fal has
//! not refused its key.

use crate::context::Service;

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
