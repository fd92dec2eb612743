//! What the console's pages and the API's JSON both show, built once: the overview (readiness,
//! backlog, throughput, destinations, refused requests), per-destination health, the rules with
//! their activity, and the playground's dry run. The console renders these as HTML, `/api`
//! serialises them, so the two never disagree.

use super::State;
use crate::diagnostic::Diagnostics;
use crate::explain::Report;
use crate::store::console::RefusedRequest;
use crate::store::{Millis, StoreError, now_ms, rfc3339};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One destination's recent health.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationHealth {
    /// Its name (`rule#n` for an inline action).
    pub name: String,
    /// The last delivered attempt, RFC 3339.
    pub last_success: Option<String>,
    /// The last failed attempt, RFC 3339.
    pub last_error_at: Option<String>,
    /// Its error.
    pub last_error: Option<String>,
    /// Failed attempts since the last success.
    pub failures_in_a_row: u32,
}

/// Attempts of the last day that health is read from (the newest this many).
const HEALTH_ATTEMPTS: u32 = 5_000;

/// Every configured destination's health over the last day (those with no attempt too).
pub async fn destinations(state: &State) -> Result<Vec<DestinationHealth>, StoreError> {
    let config = state.app.current();
    let mut health: BTreeMap<String, DestinationHealth> = BTreeMap::new();
    let blank = |name: &str| DestinationHealth {
        name: name.to_string(),
        last_success: None,
        last_error_at: None,
        last_error: None,
        failures_in_a_row: 0,
    };
    for rule in config.rules.rules() {
        for a in &rule.actions {
            health
                .entry(a.destination.clone())
                .or_insert_with(|| blank(&a.destination));
        }
    }
    let since = now_ms() - 86_400_000;
    // Newest first: a destination's run of failures ends at its newest success.
    let mut succeeded = std::collections::HashSet::new();
    for a in state.store.recent_attempts(since, HEALTH_ATTEMPTS).await? {
        let h = health
            .entry(a.destination.clone())
            .or_insert_with(|| blank(&a.destination));
        match a.outcome.as_str() {
            "delivered" => {
                if h.last_success.is_none() {
                    h.last_success = Some(rfc3339(a.at));
                }
                succeeded.insert(a.destination);
            }
            "retry" | "dead" => {
                if h.last_error_at.is_none() {
                    h.last_error_at = Some(rfc3339(a.at));
                    h.last_error = a.error;
                }
                if !succeeded.contains(&a.destination) {
                    h.failures_in_a_row += 1;
                }
            }
            _ => {}
        }
    }
    // A quiet destination's last success may be older than the newest attempts read above.
    for (destination, at) in state.store.last_successes(since).await? {
        if let Some(h) = health.get_mut(&destination)
            && h.last_success.is_none()
        {
            h.last_success = Some(rfc3339(at));
        }
    }
    Ok(health.into_values().collect())
}

/// The console's first page: is the router well, and what is it doing.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    /// Why not, when not.
    pub not_ready_reason: Option<String>,
    /// Deliveries waiting (retries and held ones included).
    pub pending: u64,
    /// Age of the oldest pending delivery, seconds (held ones aside).
    pub oldest_pending_secs: Option<u64>,
    /// Dead letters.
    pub dead_letters: u64,
    /// Rules loaded.
    pub rules_loaded: usize,
    /// The configuration's hash.
    pub config_hash: String,
    /// When it was loaded, RFC 3339.
    pub loaded_at: String,
    /// The last reload.
    pub last_reload: ReloadView,
    /// Events received over the last minute.
    pub events_last_minute: u64,
    /// Events received over the last 5 minutes.
    pub events_last_5_minutes: u64,
    /// Each destination's health.
    pub destinations: Vec<DestinationHealth>,
    /// The latest refused webhook requests.
    pub refused: Vec<RefusedRequest>,
}

/// A reload's result.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadView {
    /// Whether it succeeded.
    pub ok: bool,
    /// When, RFC 3339.
    pub at: String,
    /// What started it.
    pub trigger: String,
    /// Every error, as `file:line:col: message`.
    pub errors: Vec<String>,
}

/// The last reload as shown.
pub fn last_reload(state: &State) -> ReloadView {
    let s = state.app.reload_status();
    ReloadView {
        ok: s.ok,
        at: s.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        trigger: s.trigger,
        errors: s.errors.iter().map(ToString::to_string).collect(),
    }
}

/// The overview, read from the store and the running configuration.
pub async fn overview(state: &State) -> Result<Overview, StoreError> {
    let config = state.app.current();
    let counts = state.store.counts().await;
    let (ready, reason, counts) = match counts {
        Ok(c) if c.pending > state.ready_max_pending => (
            false,
            Some(format!(
                "{} deliveries are pending, more than --ready-max-pending {}",
                c.pending, state.ready_max_pending
            )),
            c,
        ),
        Ok(c) => (true, None, c),
        Err(e) => return Err(e),
    };
    let now = now_ms();
    let [minute, five] = state
        .store
        .received_since([now - 60_000, now - 300_000])
        .await?;
    Ok(Overview {
        ready,
        not_ready_reason: reason,
        pending: counts.pending,
        oldest_pending_secs: counts
            .oldest_pending_ms
            .map(|t| ((now - t).max(0) / 1000) as u64),
        dead_letters: counts.dead,
        rules_loaded: config.rules.rules().len(),
        config_hash: config.hash.clone(),
        loaded_at: config
            .loaded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        last_reload: last_reload(state),
        events_last_minute: minute,
        events_last_5_minutes: five,
        destinations: destinations(state).await?,
        refused: state.store.refused(10).await?,
    })
}

/// One rule as the rules page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RuleView {
    /// Name.
    pub name: String,
    /// Switched on.
    pub enabled: bool,
    /// `file:line`.
    pub at: String,
    /// Each action as `kind → destination`.
    pub actions: Vec<String>,
    /// Events matched over 24 h.
    pub matched_24h: u64,
    /// Deliveries dead over 24 h.
    pub failed_24h: u64,
}

/// The rules page: every rule, the warnings, the last reload.
#[derive(Debug, Clone, Serialize)]
pub struct RulesView {
    /// The configuration's hash.
    pub config_hash: String,
    /// Every rule in evaluation order.
    pub rules: Vec<RuleView>,
    /// Warnings of the loaded configuration.
    pub warnings: Vec<String>,
    /// The last reload.
    pub last_reload: ReloadView,
}

/// The rules with their activity over the last day.
pub async fn rules(state: &State) -> Result<RulesView, StoreError> {
    let config = state.app.current();
    let activity = state.store.rule_activity(now_ms() - 86_400_000).await?;
    Ok(RulesView {
        config_hash: config.hash.clone(),
        rules: config
            .rules
            .rules()
            .iter()
            .map(|r| {
                let a = activity.get(&r.name).cloned().unwrap_or_default();
                RuleView {
                    name: r.name.clone(),
                    enabled: r.enabled,
                    at: format!("{}:{}", r.origin.0.display(), r.origin.1),
                    actions: r
                        .actions
                        .iter()
                        .map(|a| format!("{} → {}", a.action.kind(), a.destination))
                        .collect(),
                    matched_24h: a.matched,
                    failed_24h: a.failed,
                }
            })
            .collect(),
        warnings: config.warnings.iter().map(ToString::to_string).collect(),
        last_reload: last_reload(state),
    })
}

/// What the playground is given.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct PlaygroundInput {
    /// The payload as the source posts it.
    pub event: Value,
    /// Rules YAML to try instead of the loaded rules (empty: the loaded rules).
    #[serde(default)]
    pub rules: Option<String>,
    /// The source the payload comes from (default: the first mounted).
    #[serde(default)]
    pub source: Option<String>,
}

/// Why the playground could not run.
#[derive(Debug, Clone, Serialize)]
pub struct PlaygroundError {
    /// What is wrong.
    pub error: String,
    /// Every problem of the rules given, `file:line:col: message`.
    pub problems: Vec<String>,
}

/// The playground: `test --explain` over HTTP. Nothing is sent or stored; rule memory and
/// silences are read from the store as they stand.
pub async fn playground(state: &State, input: PlaygroundInput) -> Result<Report, PlaygroundError> {
    let fail = |error: String| PlaygroundError {
        error,
        problems: Vec::new(),
    };
    let Value::Object(payload) = input.event else {
        return Err(fail("the event must be a JSON object".into()));
    };
    let sources = &state.app.sources;
    let source = match &input.source {
        Some(name) if !name.is_empty() => sources.get(name),
        _ => sources.iter().next(),
    };
    let Some(source) = source else {
        return Err(fail(format!(
            "unknown source; this router receives: {}",
            sources.names().join(", ")
        )));
    };
    let config = match input.rules.as_deref().map(str::trim) {
        None | Some("") => state.app.current(),
        Some(text) => {
            let text = text.to_string();
            let templates = state.app.paths.templates.clone();
            let sources = sources.clone();
            // Pasted rules never read the router's environment: a variable reads as unset.
            let compiled = tokio::task::spawn_blocking(move || {
                crate::env::without_environment(|| {
                    crate::config::load_text(
                        std::path::Path::new("playground.yaml"),
                        &text,
                        &templates,
                        &sources,
                    )
                })
            })
            .await
            .map_err(|e| fail(format!("the rules could not be compiled: {e}")))?;
            match compiled {
                Ok(c) => Arc::new(c),
                Err(problems) => return Err(problems_error(problems)),
            }
        }
    };
    let mut event = source.normalise(payload);
    event.event_id = "playground".into();
    crate::explain::run(&config, event.into_value(), Some(&state.store))
        .await
        .map_err(fail)
}

fn problems_error(problems: Diagnostics) -> PlaygroundError {
    PlaygroundError {
        error: format!("the rules have {} problem(s)", problems.len()),
        problems: problems.iter().map(ToString::to_string).collect(),
    }
}

/// A time given as RFC 3339 or `YYYY-MM-DDTHH:MM` (a browser's local-time input, read as
/// UTC), or Unix ms.
pub fn parse_time(text: &str) -> Result<Millis, String> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(at.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(at) = chrono::NaiveDateTime::parse_from_str(t, format) {
            return Ok(at.and_utc().timestamp_millis());
        }
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(day
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis());
    }
    Err(format!(
        "{t:?} is not a time (write 2026-12-06T09:30, RFC 3339, or Unix milliseconds)"
    ))
}

/// The filters of an events list, as written in a URL (`/console/events?…`, `/api/events?…`).
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
pub struct EventQuery {
    /// Canonical type.
    #[serde(rename = "type", default)]
    pub event_type: String,
    /// The lead's email.
    #[serde(default)]
    pub lead: String,
    /// Campaign id.
    #[serde(default)]
    pub campaign: String,
    /// Rule name.
    #[serde(default)]
    pub rule: String,
    /// A delivery state, or `unmatched`.
    #[serde(default)]
    pub status: String,
    /// Received at or after.
    #[serde(default)]
    pub since: String,
    /// Received before.
    #[serde(default)]
    pub until: String,
    /// The page after this cursor.
    #[serde(default)]
    pub after: String,
    /// Page size.
    #[serde(default)]
    pub limit: String,
    /// Where a live view starts: the newest event the page shows (a cursor).
    #[serde(default)]
    pub from: String,
}

impl EventQuery {
    /// The store's filter, or what is wrong with a value.
    pub fn filter(&self) -> Result<crate::store::console::EventFilter, String> {
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let time = |s: &str| match s.trim() {
            "" => Ok(None),
            t => parse_time(t).map(Some),
        };
        Ok(crate::store::console::EventFilter {
            event_type: text(&self.event_type),
            lead: text(&self.lead),
            campaign: text(&self.campaign),
            rule: text(&self.rule),
            status: match self.status.trim() {
                "" => None,
                s => Some(s.parse().map_err(|e| format!("status: {e}"))?),
            },
            since: time(&self.since).map_err(|e| format!("since: {e}"))?,
            until: time(&self.until).map_err(|e| format!("until: {e}"))?,
            after: match self.after.trim() {
                "" => None,
                c => Some(c.parse()?),
            },
            limit: match self.limit.trim() {
                "" => None,
                n => Some(
                    n.parse()
                        .map_err(|_| format!("limit: {n:?} is not a number of events"))?,
                ),
            },
        })
    }

    /// This query as a URL query string (empty fields left out), with `after` replaced.
    pub fn to_query(&self, after: Option<&str>) -> String {
        let mut q = EventQuery {
            after: after.unwrap_or_default().to_string(),
            ..self.clone()
        };
        if after.is_none() {
            q.after.clear();
        }
        let pairs = [
            ("type", &q.event_type),
            ("lead", &q.lead),
            ("campaign", &q.campaign),
            ("rule", &q.rule),
            ("status", &q.status),
            ("since", &q.since),
            ("until", &q.until),
            ("after", &q.after),
            ("limit", &q.limit),
        ];
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        pairs
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| format!("{k}={}", enc(v.trim())))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Whether an event summary passes this query's filters (for the live view, which reads
    /// new events as they come rather than through the store's filter).
    pub fn admits(&self, e: &crate::store::console::EventSummary) -> bool {
        let Ok(f) = self.filter() else {
            return false;
        };
        use crate::store::console::EventStatus;
        f.event_type.as_ref().is_none_or(|t| *t == e.event_type)
            && f.lead.as_ref().is_none_or(|l| {
                e.lead_email
                    .as_ref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(l))
            })
            && f.campaign
                .as_ref()
                .is_none_or(|c| e.campaign_id.as_ref() == Some(c))
            && f.rule
                .as_ref()
                .is_none_or(|r| e.deliveries.iter().any(|d| d.rule == *r))
            && match f.status {
                None => true,
                Some(EventStatus::Unmatched) => e.deliveries.is_empty(),
                Some(EventStatus::Delivery(s)) => e.deliveries.iter().any(|d| d.status == s),
            }
            && f.since.is_none_or(|t| e.received_at >= t)
            && f.until.is_none_or(|t| e.received_at < t)
    }
}
