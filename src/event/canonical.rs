//! The canonical event: the one schema that rules match on and templates render, whatever the
//! source. Each [`super::Source`] fills an [`Event`]; its JSON form ([`Event::into_value`]) is
//! what rules and templates read, built once when one first does (`template::Data`), and the
//! store keeps the same JSON as text. A field the source does not know is `null`, never
//! missing, so a template can name any field here.

use serde::Serialize;
use serde_json::Value;

/// One event, as rules and templates see it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Event {
    /// The canonical type (`EMAIL_REPLIED`, …), or `UNKNOWN`.
    pub event: String,
    /// The source's name (`smartlead`).
    pub source: String,
    /// The type as the source sent it.
    pub source_event: String,
    /// When it happened, RFC 3339 in UTC when the source's time could be read.
    pub timestamp: String,
    /// The campaign it belongs to.
    pub campaign: Campaign,
    /// The lead it concerns.
    pub lead: Lead,
    /// The step of the sequence that was sent.
    pub sequence_number: Option<i64>,
    /// The sending mailbox's id.
    pub email_account_id: Option<i64>,
    /// The reply, for replies.
    pub reply: Reply,
    /// The link, for clicks.
    pub link: Link,
    /// The bounce, for bounces.
    pub bounce: Bounce,
    /// Opens of this email.
    pub open: Open,
    /// A link to the conversation in the source's inbox.
    pub inbox_url: Option<String>,
    /// What a rule's memory adds for its message (null otherwise).
    pub noise: Noise,
    /// What a rule's `window` counted (filled for its messages).
    pub window: Window,
    /// A digest's counts (filled for a digest's messages; see `rules::digest`).
    pub digest: Value,
    /// A digest's first events, in arrival order (filled for a digest's messages).
    pub events: Value,
    /// The payload as sent, secrets removed.
    pub raw: Value,
    /// The router's id for the event, assigned at intake.
    pub event_id: String,
}

/// `campaign`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Campaign {
    /// The campaign's id.
    pub id: Option<i64>,
    /// The campaign's name.
    pub name: Option<String>,
}

/// `lead`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lead {
    /// The lead's id: a number when it looks like one, else the text as sent.
    pub id: Option<Id>,
    /// The lead's email address.
    pub email: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Full name.
    pub name: Option<String>,
    /// The lead's company.
    pub company_name: Option<String>,
}

/// An id that is a number or text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Id {
    /// A numeric id.
    Number(i64),
    /// Any other id, as sent.
    Text(String),
}

/// `reply`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reply {
    /// The reply's subject.
    pub subject: Option<String>,
    /// Plain text (from the HTML when only HTML came).
    pub text: Option<String>,
    /// HTML, as sent.
    pub html: Option<String>,
    /// Who replied.
    pub from: Option<String>,
    /// When it arrived, RFC 3339.
    pub received_at: Option<String>,
    /// The reply's Message-ID.
    pub message_id: Option<String>,
}

/// `link`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Link {
    /// The URL clicked.
    pub url: Option<String>,
    /// When, RFC 3339.
    pub clicked_at: Option<String>,
}

/// `bounce`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bounce {
    /// `hard`, `soft` or `unknown`.
    #[serde(rename = "type")]
    pub kind: Option<&'static str>,
    /// The bounce message's text.
    pub reason: Option<String>,
}

/// `noise`: filled for the message of a throttled rule.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Noise {
    /// The firings of the rule held back for this key since the last one sent.
    pub suppressed: Option<i64>,
}

/// `window`: filled for the message of a rule with a `window` condition.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// The events counted in the window (a `count` window).
    pub count: Option<u64>,
    /// `of` over `per` (a `rate` window).
    pub rate: Option<f64>,
    /// The `of` events counted (a `rate` window).
    pub of: Option<u64>,
    /// The `per` events counted (a `rate` window).
    pub per: Option<u64>,
}

/// `open`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Open {
    /// How many times the email was opened.
    pub count: Option<i64>,
    /// The first open, RFC 3339.
    pub first_at: Option<String>,
    /// The last open, RFC 3339.
    pub last_at: Option<String>,
}

impl Event {
    /// The event as JSON, the form rules and templates read and the store keeps. `raw` is
    /// moved in, not copied: it is most of the event.
    pub fn into_value(mut self) -> Value {
        let raw = std::mem::take(&mut self.raw);
        let mut value = serde_json::to_value(&self).expect("the canonical event serialises");
        value["raw"] = raw;
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_present_and_null_when_unknown() {
        let v = Event::default().into_value();
        for path in [
            "/event",
            "/source",
            "/timestamp",
            "/campaign/id",
            "/lead/id",
            "/lead/email",
            "/reply/text",
            "/link/url",
            "/bounce/type",
            "/open/count",
            "/inbox_url",
            "/raw",
            "/event_id",
        ] {
            assert!(v.pointer(path).is_some(), "{path} is missing from {v}");
        }
        assert_eq!(v["lead"]["email"], Value::Null);
    }

    #[test]
    fn raw_keeps_its_place_and_ids_keep_their_kind() {
        let event = Event {
            raw: serde_json::json!({"a": 1}),
            lead: Lead {
                id: Some(Id::Text("abc".into())),
                ..Lead::default()
            },
            campaign: Campaign {
                id: Some(42),
                name: None,
            },
            ..Event::default()
        };
        let v = event.into_value();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys[keys.len() - 2..], ["raw", "event_id"]);
        assert_eq!(v["raw"]["a"], 1);
        assert_eq!(v["lead"]["id"], "abc");
        assert_eq!(v["campaign"]["id"], 42);
    }
}
