//! What every handler can reach: the application layer and the HTTP metrics.

use std::sync::Arc;

use crate::metrics::HttpMetrics;
use crate::rate_limit::KeyRateLimits;

/// The router's state. Cheap to clone; derefs to the [`service::Service`] it wraps.
#[derive(Clone)]
pub struct AppState {
    pub service: service::Service,
    pub metrics: Arc<HttpMetrics>,
    pub rate_limits: Arc<KeyRateLimits>,
}

impl AppState {
    pub fn new(service: service::Service) -> Self {
        Self {
            metrics: Arc::new(HttpMetrics::new(&service.metrics)),
            rate_limits: Arc::new(KeyRateLimits::new(&service.settings.tenants)),
            service,
        }
    }
}

impl std::ops::Deref for AppState {
    type Target = service::Service;

    fn deref(&self) -> &Self::Target {
        &self.service
    }
}
