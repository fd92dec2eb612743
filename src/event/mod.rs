//! Events: the canonical [`Event`] that rules and templates see, and the [`Source`] interface
//! that turns a webhook payload of one outreach tool into it.
//!
//! A source is one file behind [`Source`] plus one line in [`Sources::default`]; the server
//! mounts each at `/webhooks/{name}`. What the router must know of a tool (its body secret,
//! its signature header, its event types) is asked of its source, not written elsewhere.

mod canonical;
mod smartlead;

use serde_json::{Map, Value};
use std::sync::Arc;

pub use canonical::{Bounce, Campaign, Event, Id, Lead, Link, Noise, Open, Reply, Window};
pub use smartlead::SmartLead;

/// One webhook source: a named normaliser from the tool's payload to the canonical event, and
/// what the router must know of the tool's requests.
pub trait Source: Send + Sync {
    /// The path segment under `/webhooks/` and the value of the canonical `source` field.
    fn name(&self) -> &'static str;

    /// The canonical event types this source produces: metrics count these by name and any
    /// other type as `other`, so that label values stay bounded.
    fn event_types(&self) -> &'static [&'static str];

    /// Builds the canonical event from a payload that is a JSON object. Never fails: unknown
    /// types and missing fields give nulls, not errors. The payload is moved in: it becomes the
    /// event's `raw` without a copy, with the source's secrets removed.
    fn normalise(&self, payload: Map<String, Value>) -> Event;

    /// The secret the tool writes into the body (checked against `secret_key` in the source's
    /// settings), if it writes one.
    fn body_secret<'a>(&self, _payload: &'a Map<String, Value>) -> Option<&'a str> {
        None
    }

    /// The header that carries the body's HMAC when `hmac_secret` is set and
    /// `signature_header` is not.
    fn signature_header(&self) -> &'static str {
        "X-Signature"
    }

    /// When the tool says the event happened, if it says so (for the replay window).
    fn sent_at(&self, _payload: &Map<String, Value>) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }

    /// What identifies this webhook delivery, so that the tool sending it again (a retry, a
    /// re-trigger days later) is recognised; `sent_at` is what [`Source::sent_at`] said of
    /// the payload. By default, a hash of the body.
    fn dedup_key(
        &self,
        _payload: &Map<String, Value>,
        body: &[u8],
        _sent_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> String {
        format!("{}:body:{}", self.name(), sha256_hex(body))
    }

    /// The canonical event the source makes of an empty payload: every template is rendered
    /// against it at load, so that a field that does not exist is caught then.
    fn sample(&self) -> Event {
        let mut event = self.normalise(Map::new());
        event.event_id = "probe".into();
        event
    }
}

/// The webhook sources a router mounts, in the order they are listed.
#[derive(Clone)]
pub struct Sources(Arc<[Arc<dyn Source>]>);

impl Default for Sources {
    /// Every source this build knows. Adding a source is one line here.
    fn default() -> Self {
        Sources::new(vec![Arc::new(SmartLead)])
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Sources {
    /// These sources, in this order.
    pub fn new(sources: Vec<Arc<dyn Source>>) -> Self {
        Sources(sources.into())
    }

    /// These sources and one more.
    pub fn with(&self, source: Arc<dyn Source>) -> Self {
        let mut all = self.0.to_vec();
        all.push(source);
        Sources::new(all)
    }

    /// The source mounted at `/webhooks/{name}`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Source>> {
        self.0.iter().find(|s| s.name() == name)
    }

    /// Every source, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Source>> {
        self.0.iter()
    }

    /// Every source's name, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|s| s.name()).collect()
    }
}

/// The path of an open's count, which the router fills in when SmartLead sends none.
pub const OPEN_COUNT: &str = "open.count";

/// The metric label for an event type of `source`: the type itself when the source lists it,
/// `UNKNOWN` for an event of no known type, `unknown` when no body was read, else `other`.
pub fn type_label(source: Option<&dyn Source>, event_type: &str) -> &'static str {
    match event_type {
        "unknown" => return "unknown",
        "UNKNOWN" => return "UNKNOWN",
        _ => {}
    }
    source
        .and_then(|s| s.event_types().iter().find(|t| **t == event_type).copied())
        .unwrap_or("other")
}

/// SHA-256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Removes every `key` (at any depth) from a payload, before anything else sees it (a secret
/// the source writes into its bodies).
pub fn strip_key(value: &mut Value, key: &str) {
    match value {
        Value::Object(map) => {
            // `shift_remove`: the keys after it keep their order (`remove` would move the
            // last key into its place, and `raw` is shown to users as the source sent it).
            map.shift_remove(key);
            map.values_mut().for_each(|v| strip_key(v, key));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip_key(v, key)),
        _ => {}
    }
}

/// Looks up a dotted path (`lead.email`, `raw.link_details.0`) in a JSON value.
/// Array elements are reached by their index.
pub fn lookup<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(value, |current, segment| match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// What intake reads of an event before it knows whether any rule wants the rest: its types and
/// campaign, without the JSON form (which an event no rule takes a closer look at never needs),
/// and the JSON form itself when a rule does.
pub trait EventView {
    /// The canonical event type and the one the source sent (see [`event_type`]).
    fn kinds(&self) -> (&str, &str);
    /// The campaign's id, when it has one.
    fn campaign_id(&self) -> Option<i64>;
    /// The event as JSON.
    fn value(&self) -> &Value;
}

impl EventView for Value {
    fn kinds(&self) -> (&str, &str) {
        event_type(self)
    }

    fn campaign_id(&self) -> Option<i64> {
        campaign_id(self)
    }

    fn value(&self) -> &Value {
        self
    }
}

/// The canonical event type of the router and, when it differs, the one the source sent.
pub fn event_type(event: &Value) -> (&str, &str) {
    let canonical = event.get("event").and_then(Value::as_str).unwrap_or("");
    let sent = event
        .get("source_event")
        .and_then(Value::as_str)
        .unwrap_or(canonical);
    (canonical, sent)
}

/// The campaign id of a canonical event, when it has one.
pub fn campaign_id(event: &Value) -> Option<i64> {
    event.get("campaign")?.get("id")?.as_i64()
}

/// Lays `over` over `base` (what rule memory adds for a delivery over its event): objects
/// merge key by key, anything else replaces.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_hex_is_the_standard_digest_in_lowercase_hex() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(super::sha256_hex(b"").len(), 64);
    }

    #[test]
    fn secrets_are_removed_at_any_depth_and_the_other_keys_keep_their_order() {
        let mut payload = serde_json::json!({
            "event_type": "EMAIL_REPLY",
            "secret_key": "s1",
            "campaign_id": 7,
            "nested": {"a": 1, "secret_key": "s2", "b": 2, "c": 3},
            "list": [{"secret_key": "s3", "x": 1}],
            "last": true,
        });
        super::strip_key(&mut payload, "secret_key");
        assert!(!payload.to_string().contains("secret_key"));
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            keys(&payload),
            ["event_type", "campaign_id", "nested", "list", "last"]
        );
        assert_eq!(keys(&payload["nested"]), ["a", "b", "c"]);
        assert_eq!(keys(&payload["list"][0]), ["x"]);
    }

    #[test]
    fn a_context_is_laid_over_the_event_key_by_key() {
        let mut event =
            serde_json::json!({"noise": {"suppressed": null, "other": 1}, "lead": {"email": "a"}});
        super::merge(&mut event, serde_json::json!({"noise": {"suppressed": 3}}));
        assert_eq!(
            event,
            serde_json::json!({"noise": {"suppressed": 3, "other": 1}, "lead": {"email": "a"}})
        );
    }
}
