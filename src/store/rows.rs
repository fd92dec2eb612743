//! Rows as both backends read them (same column names and types), and their conversion to the
//! views the store hands out. Keeps the backends to their SQL.

use super::{AttemptView, DeliveryStatus, DeliveryView, Due, InstanceView, StoreError, rfc3339};

/// The columns every backend selects for a claimed delivery.
pub(super) const DUE_COLUMNS: &str = "d.id, d.event_id, d.rule, d.action_index, d.destination, d.attempts, d.context, e.config_hash, e.payload, e.received_at";

/// The columns every backend selects for a delivery in history.
pub(super) const VIEW_COLUMNS: &str = "d.id, d.event_id, e.event_type, e.lead_email, d.rule, d.action_kind, d.destination, d.status, d.attempts, d.next_attempt_at, d.last_error, d.reason, d.created_at, d.updated_at, (SELECT g.items FROM digests g WHERE g.id = d.digest_id) AS digest_items";

#[derive(sqlx::FromRow)]
pub(super) struct DueRow {
    id: i64,
    event_id: String,
    rule: String,
    action_index: i64,
    destination: String,
    attempts: i64,
    context: Option<String>,
    config_hash: String,
    payload: String,
    received_at: i64,
}

impl From<DueRow> for Due {
    fn from(r: DueRow) -> Due {
        Due {
            id: r.id,
            event_id: r.event_id,
            rule: r.rule,
            action_index: r.action_index as u32,
            destination: r.destination,
            attempts: r.attempts as u32,
            context: r.context,
            config_hash: r.config_hash,
            payload: r.payload,
            received_at: r.received_at,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ViewRow {
    id: i64,
    event_id: String,
    event_type: String,
    lead_email: Option<String>,
    rule: String,
    action_kind: String,
    destination: String,
    status: String,
    attempts: i64,
    next_attempt_at: i64,
    last_error: Option<String>,
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    digest_items: Option<i64>,
}

impl TryFrom<ViewRow> for DeliveryView {
    type Error = StoreError;

    fn try_from(r: ViewRow) -> Result<DeliveryView, StoreError> {
        let status: DeliveryStatus = r
            .status
            .parse()
            .map_err(|e| StoreError::Mismatch(format!("delivery {}: {e}", r.id)))?;
        Ok(DeliveryView {
            id: r.id,
            event_id: r.event_id,
            event_type: r.event_type,
            lead_email: r.lead_email,
            rule: r.rule,
            action: r.action_kind,
            destination: r.destination,
            next_attempt_at: (status == DeliveryStatus::Pending)
                .then(|| rfc3339(r.next_attempt_at)),
            status,
            attempts: r.attempts as u32,
            last_error: r.last_error,
            reason: r.reason,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            digest_items: r.digest_items.map(|n| n as u64),
            history: vec![],
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct AttemptRow {
    started_at: i64,
    duration_ms: i64,
    outcome: String,
    status_code: Option<i64>,
    error: Option<String>,
}

impl From<AttemptRow> for AttemptView {
    fn from(r: AttemptRow) -> AttemptView {
        AttemptView {
            at: rfc3339(r.started_at),
            duration_ms: r.duration_ms,
            outcome: r.outcome,
            status_code: r.status_code.map(|c| c as u16),
            error: r.error,
        }
    }
}

/// What a finished attempt writes to its delivery.
pub(super) struct After {
    pub(super) status: DeliveryStatus,
    /// The attempt's outcome label.
    pub(super) outcome: &'static str,
    pub(super) next_at: i64,
    /// The delivery's reason (why it is suppressed or held).
    pub(super) reason: Option<&'static str>,
    /// 1 when something was sent (or tried), 0 when it was held or suppressed unsent: only
    /// the former count towards the attempts allowed.
    pub(super) tried: i64,
}

/// What a finished attempt writes.
pub(super) fn after(next: &super::Next, now: i64) -> After {
    use super::Next;
    let (status, outcome, next_at, reason, tried) = match next {
        Next::Delivered => (DeliveryStatus::Delivered, "delivered", now, None, 1),
        Next::Retry(at) => (DeliveryStatus::Pending, "retry", *at, None, 1),
        Next::Dead => (DeliveryStatus::Dead, "dead", now, None, 1),
        Next::Skipped => (DeliveryStatus::Skipped, "skipped", now, None, 1),
        Next::Hold(at) => (DeliveryStatus::Pending, "held", *at, Some("outside"), 0),
        Next::Suppressed(r) => (DeliveryStatus::Suppressed, "suppressed", now, Some(*r), 0),
    };
    After {
        status,
        outcome,
        next_at,
        reason,
        tried,
    }
}

/// The columns every backend selects for a live instance.
pub(super) const INSTANCE_COLUMNS: &str = "id, listen, config_hash, started_at, heartbeat_at";

#[derive(sqlx::FromRow)]
pub(super) struct InstanceRow {
    id: String,
    listen: String,
    config_hash: String,
    started_at: i64,
    heartbeat_at: i64,
}

impl InstanceRow {
    /// The view, marked `current` when it is the instance answering (`me`).
    pub(super) fn view(self, me: &str) -> InstanceView {
        InstanceView {
            current: self.id == me,
            id: self.id,
            listen: self.listen,
            config_hash: self.config_hash,
            started_at: rfc3339(self.started_at),
            heartbeat_at: rfc3339(self.heartbeat_at),
        }
    }
}
