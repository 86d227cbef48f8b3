//! Outbound webhook deliveries: where a delivery stands and how each attempt ended.

use serde::{Deserialize, Serialize};

named_enum! {
    /// Where one event's delivery to one endpoint stands.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum DeliveryStatus {
        /// Due now or later (first try or a retry).
        Pending => "pending",
        Delivered => "delivered",
        /// Retries exhausted, or the endpoint is gone.
        Failed => "failed",
    }
}

named_enum! {
    /// How one attempt of a delivery ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum AttemptOutcome {
        /// Started, not yet recorded as ended.
        InFlight => "in_flight",
        Succeeded => "succeeded",
        Failed => "failed",
        /// The relay that started it stopped before recording its end.
        Abandoned => "abandoned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        crate::names::assert_names_round_trip::<DeliveryStatus>();
        crate::names::assert_names_round_trip::<AttemptOutcome>();
        assert_eq!(DeliveryStatus::parse("retrying"), None);
    }
}
