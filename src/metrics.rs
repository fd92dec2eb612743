//! Metrics for `/metrics` (OpenMetrics text, which Prometheus scrapes): events received by
//! source, type and outcome, rule matches, deliveries by action, destination, outcome and reason,
//! latency histograms, queue depth, dead letters, reload state, config hash and build info.
//!
//! Label values stay bounded: event types outside their source's known set are counted as `other`,
//! rule and destination names come from the configuration, reasons from a fixed list; no lead
//! data ever becomes a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// Labels of `switchboard_events_received_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The source's name, or `unknown` for an unknown source.
    pub source: &'static str,
    /// The canonical event type, `other`, or `unknown` when the body was not read.
    pub event_type: &'static str,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
    /// Why it was rejected (`unauthorized`, `bad_request`, `too_large`, `rate_limited`,
    /// `unknown_source`, `store_unavailable`), or `none`.
    pub reason: &'static str,
}

/// Labels of `switchboard_rule_matches_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    /// The rule's name.
    pub rule: String,
}

/// Labels of `switchboard_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `slack`, `email`, `http`, `log`.
    pub action: &'static str,
    /// The destination name (or `rule#n`).
    pub destination: String,
    /// `delivered`, `retried`, `dead`, `skipped`, `suppressed` or `held`.
    pub outcome: &'static str,
    /// Why it failed (see [`crate::actions::SendError::reason`]), or `none`.
    pub reason: &'static str,
}

/// Labels of the delivery latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `slack`, `email`, `http`, `log`.
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HashLabels {
    hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of the router.
pub struct Metrics {
    registry: Registry,
    /// Webhook requests by source, event type and outcome.
    pub events: Family<EventLabels, Counter>,
    /// Events matched by each rule.
    pub rule_matches: Family<RuleLabels, Counter>,
    /// Delivery attempts' outcomes.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Seconds from acceptance to delivery.
    pub delivery_latency: Histograms<ActionLabels>,
    /// Seconds from a webhook request's arrival to its answer, for accepted events.
    pub ack_latency: Histogram,
    /// Events let through undecided because a rule's key rendered empty, by rule.
    pub noise_key_missing: Family<RuleLabels, Counter>,
    pending: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    dead_letters: Gauge,
    reload_ok: Gauge,
    reload_success_time: Gauge,
    config_info: Family<HashLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchboard");
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events_received",
            "Webhook requests by source, event type and outcome",
            events.clone(),
        );
        let rule_matches = Family::<RuleLabels, Counter>::default();
        registry.register(
            "rule_matches",
            "Events matched, by rule",
            rule_matches.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by action, destination, outcome and reason",
            deliveries.clone(),
        );
        let delivery_latency: Histograms<ActionLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "delivery_latency",
            "Time from an event's acceptance to its delivery",
            Unit::Seconds,
            delivery_latency.clone(),
        );
        let ack_latency = latency_histogram();
        registry.register_with_unit(
            "ack_latency",
            "Time to acknowledge an accepted webhook (stored)",
            Unit::Seconds,
            ack_latency.clone(),
        );
        let noise_key_missing = Family::<RuleLabels, Counter>::default();
        registry.register(
            "noise_key_missing",
            "Events let through undecided because a rule's key rendered empty, by rule",
            noise_key_missing.clone(),
        );
        let pending = Gauge::default();
        registry.register(
            "deliveries_pending",
            "Deliveries waiting to be sent, retries included",
            pending.clone(),
        );
        let oldest_pending_age = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "oldest_pending_age",
            "Age of the oldest pending delivery",
            Unit::Seconds,
            oldest_pending_age.clone(),
        );
        let dead_letters = Gauge::default();
        registry.register(
            "dead_letters",
            "Dead letters in the store",
            dead_letters.clone(),
        );
        let reload_ok = Gauge::default();
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration reload succeeded",
            reload_ok.clone(),
        );
        let reload_success_time = Gauge::default();
        registry.register_with_unit(
            "config_last_reload_success_timestamp",
            "Unix time of the last successful reload",
            Unit::Seconds,
            reload_success_time.clone(),
        );
        let config_info = Family::<HashLabels, Gauge>::default();
        registry.register(
            "config_info",
            "The serving configuration's hash",
            config_info.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running build", build_info);
        Metrics {
            registry,
            events,
            rule_matches,
            deliveries,
            delivery_latency,
            ack_latency,
            noise_key_missing,
            pending,
            oldest_pending_age,
            dead_letters,
            reload_ok,
            reload_success_time,
            config_info,
        }
    }
}

/// The state sampled at scrape time.
pub struct Sample<'a> {
    /// Deliveries pending.
    pub pending: u64,
    /// Seconds the oldest pending delivery has waited.
    pub oldest_pending_age: f64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Whether the last reload succeeded.
    pub reload_ok: bool,
    /// Unix time of the last successful reload.
    pub reload_success_time: i64,
    /// The serving configuration's hash.
    pub config_hash: &'a str,
}

impl Metrics {
    /// Counts one webhook request; `event_type` is already bounded (see
    /// [`crate::event::type_label`]).
    pub fn event(
        &self,
        source: &'static str,
        event_type: &'static str,
        outcome: &'static str,
        reason: &'static str,
    ) {
        let labels = EventLabels {
            source,
            event_type,
            outcome,
            reason,
        };
        self.events.get_or_create(&labels).inc();
    }

    /// Counts one delivery attempt's outcome.
    pub fn delivery(
        &self,
        action: &'static str,
        destination: &str,
        outcome: &'static str,
        reason: &'static str,
    ) {
        let labels = DeliveryLabels {
            action,
            destination: destination.to_string(),
            outcome,
            reason,
        };
        self.deliveries.get_or_create(&labels).inc();
    }

    /// The text exposition, with the sampled gauges set first.
    pub fn render(&self, s: &Sample<'_>) -> String {
        self.pending.set(s.pending as i64);
        self.oldest_pending_age.set(s.oldest_pending_age);
        self.dead_letters.set(s.dead_letters as i64);
        self.reload_ok.set(i64::from(s.reload_ok));
        self.reload_success_time.set(s.reload_success_time);
        self.config_info.clear();
        self.config_info
            .get_or_create(&HashLabels {
                hash: s.config_hash.chars().take(12).collect(),
            })
            .set(1);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
