//! Outbound webhook deliveries: where a delivery stands and how each attempt ended.

use serde::{Deserialize, Serialize};

/// Where one event's delivery to one endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Due now or later (first try or a retry).
    Pending,
    Delivered,
    /// Retries exhausted, or the endpoint is gone.
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [Self::Pending, Self::Delivered, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// How one attempt of a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Started, not yet recorded as ended.
    InFlight,
    Succeeded,
    Failed,
    /// The relay that started it stopped before recording its end.
    Abandoned,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 4] = [
        Self::InFlight,
        Self::Succeeded,
        Self::Failed,
        Self::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        Self::ALL.into_iter().find(|outcome| outcome.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(DeliveryStatus::parse("retrying"), None);
    }
}
