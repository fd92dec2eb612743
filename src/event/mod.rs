//! Events: the canonical object that rules and templates see, and the [`Source`] interface
//! that turns a webhook payload of one outreach tool into it.
//!
//! A source is one file behind [`Source`] plus one line in [`sources`]; the server mounts each
//! at `/webhooks/{name}`.

mod smartlead;

use serde_json::{Map, Value};
use std::sync::Arc;

pub use smartlead::SmartLead;

/// One webhook source: a named normaliser from the tool's payload to the canonical event.
pub trait Source: Send + Sync {
    /// The path segment under `/webhooks/` and the value of the canonical `source` field.
    fn name(&self) -> &'static str;
    /// Builds the canonical event (SPEC section 4) from a payload that is a JSON object.
    /// Never fails: unknown types and missing fields give nulls, not errors.
    /// The payload is moved in: it becomes the event's `raw` without a copy.
    fn normalise(&self, payload: Map<String, Value>) -> Value;

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
}

/// SHA-256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Every webhook source the router mounts. Adding a source is one line here.
pub fn sources() -> Vec<Arc<dyn Source>> {
    vec![Arc::new(SmartLead)]
}

/// Removes every `secret_key` (at any depth) from a payload before anything else sees it.
pub fn strip_secrets(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // `shift_remove`: the keys after it keep their order (`remove` would move the
            // last key into its place, and `raw` is shown to users as SmartLead sent it).
            map.shift_remove("secret_key");
            map.values_mut().for_each(strip_secrets);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
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

/// The canonical event's id (assigned by the router at intake).
pub fn event_id(event: &Value) -> &str {
    event.get("event_id").and_then(Value::as_str).unwrap_or("")
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
        super::strip_secrets(&mut payload);
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
}
