//! Where a delivery stands: one type for the rows, the history views, the CLI's `--status`
//! and the API's `?status=`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or its next retry.
    Pending,
    /// Claimed by an instance and being sent.
    Sending,
    /// Delivered; final.
    Delivered,
    /// Out of attempts or failed permanently: a dead letter until retried or discarded.
    Dead,
    /// A dead letter dropped for good; final.
    Discarded,
    /// Not sent because its destination is not configured; final.
    Skipped,
    /// Not sent because the rule's memory held it back (`once`, …: the delivery's `reason`
    /// says which); final.
    Suppressed,
}

impl DeliveryStatus {
    /// Every status, in the order a delivery may go through them.
    pub const ALL: [DeliveryStatus; 7] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Sending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
        DeliveryStatus::Discarded,
        DeliveryStatus::Skipped,
        DeliveryStatus::Suppressed,
    ];

    /// The status as stored and shown (`pending`, `dead`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Discarded => "discarded",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Suppressed => "suppressed",
        }
    }

    /// Every status's name, for help texts and errors.
    pub fn names() -> [&'static str; 7] {
        DeliveryStatus::ALL.map(DeliveryStatus::as_str)
    }
}

/// A status name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown delivery status {0:?}; known: pending, sending, delivered, dead, discarded, skipped"
)]
pub struct UnknownStatus(pub String);

impl FromStr for DeliveryStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that table columns (`{:<10}`) line up.
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_as_written_and_serialises_the_same() {
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::Value::String(status.as_str().into())
            );
        }
        let e = "deleted".parse::<DeliveryStatus>().unwrap_err();
        assert!(e.to_string().contains("\"deleted\""), "{e}");
        assert_eq!(format!("{:<9}|", DeliveryStatus::Dead), "dead     |");
    }
}
