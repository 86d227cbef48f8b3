use std::sync::Arc;

use crate::config::HttpLimits;
use crate::metrics::HttpMetrics;

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub metrics: Arc<HttpMetrics>,
    pub limits: HttpLimits,
}

impl AppState {
    pub fn new(store: store::Store, limits: HttpLimits) -> Self {
        Self {
            store,
            metrics: Arc::new(HttpMetrics::new()),
            limits,
        }
    }
}
