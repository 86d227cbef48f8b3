//! Tenants' webhook endpoints: where the service sends their events, signed per Standard
//! Webhooks, the secrets that sign them, and the log of every delivery.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{FieldViolation, TenantId, Violations};
use secrecy::SecretString;
use store::webhooks::{
    AttemptRecord, DeliveryRecord, EndpointPatch, EndpointRecord, NewEndpoint, NewSecret,
    ReplayOutcome,
};
use store::StoreError;
use uuid::Uuid;

use crate::context::Service;
use crate::error::{InputLocation, ServiceError};
use crate::events::{signing, EVENT_TYPES};

const MAX_URL_CHARS: usize = 2000;
const MAX_DESCRIPTION_CHARS: usize = 500;
/// The default and the longest time an old secret keeps signing after a rotation.
const DEFAULT_OVERLAP_SECS: u64 = 24 * 3600;
const MAX_OVERLAP_SECS: u64 = 7 * 24 * 3600;
/// How long a host name may take to resolve when an endpoint is registered.
const REGISTRATION_DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// An endpoint to register.
#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub url: String,
    /// Every type when `None`.
    pub event_types: Option<Vec<String>>,
    pub description: Option<String>,
}

/// Changes to an endpoint; `None` leaves a field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    /// `Some(None)` subscribes to every type.
    pub event_types: Option<Option<Vec<String>>>,
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// A new signing secret, shown to the caller once.
#[derive(Debug, Clone)]
pub struct RotatedSecret {
    pub secret: SecretString,
    /// Until then the previous secrets sign too.
    pub previous_secrets_expire_at: DateTime<Utc>,
}

/// A delivery with its attempts, oldest first.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery: DeliveryRecord,
    pub attempts: Vec<AttemptRecord>,
}

fn endpoint_missing(id: Uuid) -> impl FnOnce(StoreError) -> ServiceError {
    ServiceError::missing_as(move || ServiceError::webhook_endpoint_not_found(id))
}

fn delivery_missing(id: Uuid) -> impl FnOnce(StoreError) -> ServiceError {
    ServiceError::missing_as(move || {
        ServiceError::not_found("delivery_not_found", format!("no delivery with id {id}"))
    })
}

/// Checks a URL as the relay will use it: scheme, userinfo, and every address it names or
/// resolves to. Delivery checks again on the address actually connected to, since DNS answers
/// change; this catches mistakes early.
async fn check_url(service: &Service, url: &str, errors: &mut Violations) -> Option<String> {
    if url.chars().count() > MAX_URL_CHARS {
        errors.push(FieldViolation::new(
            "url",
            "too_long",
            format!("must be at most {MAX_URL_CHARS} characters"),
        ));
        return None;
    }
    let parsed = match service.webhook_fetcher.check_url(url) {
        Ok(parsed) => parsed,
        Err(error) => {
            errors.push(FieldViolation::new("url", error.code(), error.to_string()));
            return None;
        }
    };
    if let (Some(url::Host::Domain(name)), Some(port)) =
        (parsed.host(), parsed.port_or_known_default())
    {
        let lookup = tokio::net::lookup_host((name.to_string(), port));
        // A name that does not resolve yet is accepted: the receiver may not be deployed.
        if let Ok(Ok(addresses)) = tokio::time::timeout(REGISTRATION_DNS_TIMEOUT, lookup).await {
            let policy = service.webhook_fetcher.policy();
            if let Some(address) = addresses
                .into_iter()
                .find(|a| safe_fetch::is_forbidden(a.ip()) && !policy.is_excepted(*a))
            {
                errors.push(FieldViolation::new(
                    "url",
                    "forbidden_address",
                    format!(
                        "{name} resolves to {}, which is not a public address",
                        address.ip()
                    ),
                ));
                return None;
            }
        }
    }
    Some(parsed.to_string())
}

fn check_event_types(types: &[String], errors: &mut Violations) {
    if types.is_empty() {
        errors.push(FieldViolation::new(
            "event_types",
            "empty",
            "must list at least one type, or be omitted for every type",
        ));
    }
    for (i, name) in types.iter().enumerate() {
        if !EVENT_TYPES.contains(&name.as_str()) {
            errors.push(FieldViolation::new(
                format!("event_types[{i}]"),
                "unknown_event_type",
                format!("{name:?} is not one of {}", EVENT_TYPES.join(", ")),
            ));
        }
    }
}

fn check_description(description: &Option<String>, errors: &mut Violations) {
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS)
    {
        errors.push(FieldViolation::new(
            "description",
            "too_long",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
}

fn dedup(types: Option<Vec<String>>) -> Option<Vec<String>> {
    types.map(|mut t| {
        t.sort();
        t.dedup();
        t
    })
}

/// A new signing secret for `endpoint_id` and its row, sealed under the primary key.
fn new_sealed_secret(service: &Service, endpoint_id: Uuid) -> (SecretString, NewSecret) {
    let secret = signing::new_secret();
    let id = Uuid::now_v7();
    let sealed = service
        .settings
        .secrets
        .seal_signing_secret(endpoint_id, id, &secret);
    let row = NewSecret {
        id,
        key_id: sealed.key_id,
        sealed: sealed.bytes,
    };
    (secret, row)
}

/// Registers an endpoint; returns it with its signing secret (`whsec_...`), which is stored
/// only sealed.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn create_endpoint(
    service: &Service,
    tenant_id: TenantId,
    spec: EndpointSpec,
) -> Result<(EndpointRecord, SecretString), ServiceError> {
    let mut errors = Violations::default();
    let url = check_url(service, &spec.url, &mut errors).await;
    if let Some(types) = &spec.event_types {
        check_event_types(types, &mut errors);
    }
    check_description(&spec.description, &mut errors);
    let Some(url) = url.filter(|_| errors.is_empty()) else {
        return Err(errors.into());
    };
    let id = Uuid::now_v7();
    let (secret, sealed) = new_sealed_secret(service, id);
    let new = NewEndpoint {
        id,
        tenant_id,
        url,
        description: spec.description,
        event_types: dedup(spec.event_types),
        secret: sealed,
    };
    let limit = service.settings.tenants.max_webhook_endpoints;
    let endpoint = match service.store.create_webhook_endpoint(&new, limit).await {
        Err(store::StoreError::QuotaReached { limit }) => {
            return Err(ServiceError::limit_reached(
                "webhook_endpoint_quota_exceeded",
                format!("this tenant already has {limit} webhook endpoints; delete one first"),
                limit,
            ))
        }
        other => other?,
    };
    Ok((endpoint, secret))
}

/// One page of the tenant's endpoints, newest first, and whether more follow.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id))]
pub async fn list_endpoints(
    service: &Service,
    tenant_id: TenantId,
    page: crate::PageRequest,
) -> Result<(Vec<EndpointRecord>, bool), ServiceError> {
    let found = service
        .store
        .list_webhook_endpoints(tenant_id, page.after, page.limit);
    Ok(found.await?)
}

#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id))]
pub async fn get_endpoint(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
) -> Result<EndpointRecord, ServiceError> {
    service
        .store
        .get_webhook_endpoint(tenant_id, id)
        .await
        .map_err(endpoint_missing(id))
}

/// Changes an endpoint. Disabling it stops deliveries; enabling it resumes them.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id))]
pub async fn update_endpoint(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
    changes: EndpointChanges,
) -> Result<EndpointRecord, ServiceError> {
    let mut errors = Violations::default();
    let url = match &changes.url {
        Some(url) => check_url(service, url, &mut errors).await,
        None => None,
    };
    if let Some(Some(types)) = &changes.event_types {
        check_event_types(types, &mut errors);
    }
    if let Some(description) = &changes.description {
        check_description(description, &mut errors);
    }
    if !errors.is_empty() {
        return Err(errors.into());
    }
    let patch = EndpointPatch {
        url,
        description: changes.description,
        event_types: changes.event_types.map(dedup),
        enabled: changes.enabled,
        disabled_reason: (changes.enabled == Some(false)).then(|| "disabled_by_caller".to_string()),
    };
    let endpoint = service
        .store
        .update_webhook_endpoint(tenant_id, id, &patch)
        .await
        .map_err(endpoint_missing(id))?;
    if endpoint.enabled {
        // Deliveries that waited while it was disabled may be due.
        service.relay_wake.notify_one();
    }
    Ok(endpoint)
}

/// Deletes an endpoint with its secrets and delivery log.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id))]
pub async fn delete_endpoint(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
) -> Result<(), ServiceError> {
    service
        .store
        .delete_webhook_endpoint(tenant_id, id)
        .await
        .map_err(endpoint_missing(id))
}

/// Gives an endpoint a new secret; the previous ones keep signing for `overlap_seconds`
/// (default a day, at most a week).
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id))]
pub async fn rotate_secret(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
    overlap_seconds: Option<u64>,
) -> Result<RotatedSecret, ServiceError> {
    let overlap = overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECS);
    if overlap > MAX_OVERLAP_SECS {
        return Err(ServiceError::invalid_field(
            InputLocation::Body,
            "overlap_seconds",
            "out_of_range",
            format!("must be from 0 to {MAX_OVERLAP_SECS}"),
        ));
    }
    let (secret, sealed) = new_sealed_secret(service, id);
    let previous_secrets_expire_at = service
        .store
        .rotate_webhook_secret(tenant_id, id, &sealed, Duration::from_secs(overlap))
        .await
        .map_err(endpoint_missing(id))?;
    Ok(RotatedSecret {
        secret,
        previous_secrets_expire_at,
    })
}

/// The deliveries with their attempts.
async fn with_attempts(
    service: &Service,
    deliveries: Vec<DeliveryRecord>,
) -> Result<Vec<Delivery>, ServiceError> {
    let ids: Vec<Uuid> = deliveries.iter().map(|d| d.id).collect();
    let mut attempts: HashMap<Uuid, Vec<AttemptRecord>> = HashMap::new();
    for attempt in service.store.delivery_attempts(&ids).await? {
        attempts
            .entry(attempt.delivery_id)
            .or_default()
            .push(attempt);
    }
    Ok(deliveries
        .into_iter()
        .map(|delivery| Delivery {
            attempts: attempts.remove(&delivery.id).unwrap_or_default(),
            delivery,
        })
        .collect())
}

async fn with_its_attempts(
    service: &Service,
    delivery: DeliveryRecord,
) -> Result<Delivery, ServiceError> {
    let mut one = with_attempts(service, vec![delivery]).await?;
    one.pop()
        .ok_or_else(|| ServiceError::internal(anyhow::anyhow!("a delivery lost in the lookup")))
}

/// One page of an endpoint's deliveries (in `status` when given), newest first, and whether
/// more follow.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id))]
pub async fn list_deliveries(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
    status: Option<&str>,
    page: crate::PageRequest,
) -> Result<(Vec<Delivery>, bool), ServiceError> {
    get_endpoint(service, tenant_id, id).await?;
    let (deliveries, more) = service
        .store
        .list_deliveries(tenant_id, id, status, page.after, page.limit)
        .await?;
    Ok((with_attempts(service, deliveries).await?, more))
}

#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id, delivery_id = %delivery_id))]
pub async fn get_delivery(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
    delivery_id: Uuid,
) -> Result<Delivery, ServiceError> {
    let delivery = service
        .store
        .get_delivery(tenant_id, id, delivery_id)
        .await
        .map_err(delivery_missing(delivery_id))?;
    with_its_attempts(service, delivery).await
}

/// Sends a delivery again now, with the same `webhook-id`, retried on the usual schedule.
#[tracing::instrument(skip_all, fields(tenant_id = %tenant_id, endpoint_id = %id, delivery_id = %delivery_id))]
pub async fn replay_delivery(
    service: &Service,
    tenant_id: TenantId,
    id: Uuid,
    delivery_id: Uuid,
) -> Result<Delivery, ServiceError> {
    let outcome = service
        .store
        .replay_delivery(tenant_id, id, delivery_id)
        .await
        .map_err(delivery_missing(delivery_id))?;
    match outcome {
        ReplayOutcome::EndpointDisabled => Err(ServiceError::conflict(
            "webhook_endpoint_disabled",
            "the endpoint is disabled; enable it before replaying its deliveries",
        )),
        ReplayOutcome::Replayed(delivery) => {
            service.relay_wake.notify_one();
            with_its_attempts(service, delivery).await
        }
    }
}
