//! Normalisation of both SmartLead shapes, checked against the sample payloads.

use super::*;
use crate::event::Source;
use serde_json::json;

fn normalise(text: &str) -> Value {
    let payload: Value = serde_json::from_str(text).unwrap();
    SmartLead
        .normalise(payload.as_object().unwrap().clone())
        .into_value()
}

macro_rules! fixture {
    ($name:literal) => {
        normalise(include_str!(concat!(
            "../../../tests/fixtures/smartlead/",
            $name,
            ".json"
        )))
    };
}

#[test]
fn docs_reply_keeps_lead_and_reply() {
    let e = fixture!("docs_04_email_replied");
    assert_eq!(e["event"], "EMAIL_REPLIED");
    assert_eq!(e["source_event"], "EMAIL_REPLIED");
    assert_eq!(e["campaign"]["id"], 123);
    assert_eq!(e["campaign"]["name"], "Q1 Outreach");
    assert_eq!(e["lead"]["email"], "jane.doe@example.com");
    assert_eq!(e["lead"]["name"], "Jane Doe");
    assert_eq!(e["lead"]["id"], 789);
    assert_eq!(
        e["reply"]["text"],
        "Thanks for reaching out. Can we talk Thursday at 3pm?"
    );
    assert_eq!(e["reply"]["subject"], "Re: Quick question");
    assert_eq!(e["timestamp"], "2024-11-25T11:00:00Z");
}

#[test]
fn real_reply_targets_the_lead_and_gives_plain_text() {
    let e = fixture!("real_13_email_reply");
    assert_eq!(e["event"], "EMAIL_REPLIED");
    assert_eq!(e["source_event"], "EMAIL_REPLY");
    assert_eq!(e["lead"]["email"], "james.parker@prospect.example");
    assert_eq!(e["lead"]["first_name"], "James");
    assert_eq!(e["lead"]["id"], 1482956);
    assert_eq!(e["campaign"]["id"], 9181);
    assert!(
        e["reply"]["text"]
            .as_str()
            .unwrap()
            .starts_with("Sounds good, send me some times.")
    );
    assert_eq!(
        e["reply"]["message_id"],
        "<CAB=reply-7781@mail.prospect.example>"
    );
    assert_eq!(
        e["inbox_url"],
        "https://app.smartlead.ai/app/master-inbox?leadMap=1438627"
    );
    assert!(e["raw"].get("secret_key").is_none());
    assert!(!e.to_string().contains("fakesecret"));
}

#[test]
fn reply_never_takes_the_sending_mailbox_as_lead() {
    let e = normalise(
        r#"{"event_type":"EMAIL_REPLY","from_email":"lead@x.example","to_email":"sdr@us.example",
            "leadCorrespondence":{"targetLeadEmail":"lead@x.example"}}"#,
    );
    assert_eq!(e["lead"]["email"], "lead@x.example");
    let e = normalise(r#"{"event_type":"EMAIL_REPLY","to_email":"sdr@us.example"}"#);
    assert_eq!(e["lead"]["email"], Value::Null);
}

#[test]
fn reply_text_comes_from_html_when_only_html_arrives() {
    let e = normalise(
        r#"{"event_type":"EMAIL_REPLY","reply_message":{"html":"<p>Yes &amp; <b>soon</b></p><p>Bye</p>"}}"#,
    );
    let text = e["reply"]["text"].as_str().unwrap();
    assert!(text.contains("Yes & soon"), "{text}");
    assert!(!text.contains('<'), "{text}");
}

#[test]
fn real_bounce_type_is_read_from_the_bounce_text() {
    let e = fixture!("real_15_email_bounce");
    assert_eq!(e["event"], "EMAIL_BOUNCED");
    assert_eq!(e["bounce"]["type"], "hard");
    assert!(
        e["bounce"]["reason"]
            .as_str()
            .unwrap()
            .contains("User unknown")
    );
    assert_eq!(e["lead"]["email"], "nobody@invalid.example");
}

#[test]
fn bounce_text_classification() {
    assert_eq!(bounce_type_from_text("550 5.1.1 User unknown"), "hard");
    assert_eq!(bounce_type_from_text("452 4.2.2 Mailbox full"), "soft");
    assert_eq!(
        bounce_type_from_text("mailbox full, try again later"),
        "soft"
    );
    assert_eq!(bounce_type_from_text("Something odd happened"), "unknown");
    assert_eq!(bounce_type_from_text("Status: 5.7.1 blocked"), "hard");
}

#[test]
fn docs_bounce_keeps_declared_type() {
    let e = fixture!("docs_05_email_bounced_hard");
    assert_eq!(e["bounce"]["type"], "hard");
    assert_eq!(e["lead"]["company_name"], "Ghost LLC");
}

#[test]
fn clicks_opens_and_unsubscribes() {
    let e = fixture!("real_12_email_link_click");
    assert_eq!(e["event"], "EMAIL_CLICKED");
    assert_eq!(e["link"]["url"], "https://example.com/demo?a=1&b=2");
    let e = fixture!("docs_03_email_clicked");
    assert_eq!(
        e["link"]["url"].as_str().unwrap(),
        "https://example.com/demo?utm_source=smartlead&ref=a%20b&x=<y>"
    );
    let e = fixture!("docs_02_email_opened");
    assert_eq!(e["event"], "EMAIL_OPENED");
    assert_eq!(e["open"]["count"], 3);
    let e = fixture!("real_11_email_open");
    assert_eq!(e["source_event"], "EMAIL_OPEN");
    assert_eq!(e["open"]["last_at"], "2025-03-28T09:20:15.618881Z");
    let e = fixture!("real_16_lead_unsubscribed");
    assert_eq!(e["event"], "EMAIL_UNSUBSCRIBED");
    assert_eq!(e["lead"]["email"], "optout@example.org");
    assert_eq!(e["lead"]["first_name"], "Bob");
    let e = fixture!("real_17_lead_category_updated");
    assert_eq!(e["event"], "LEAD_CATEGORY_UPDATED");
    assert_eq!(e["lead"]["company_name"], "Prospect Inc.");
}

#[test]
fn first_email_sent_is_email_sent_and_ids_may_be_strings() {
    let e = normalise(r#"{"event_type":"FIRST_EMAIL_SENT","campaign_id":"42","lead_id":"abc"}"#);
    assert_eq!(e["event"], "EMAIL_SENT");
    assert_eq!(e["source_event"], "FIRST_EMAIL_SENT");
    assert_eq!(e["campaign"]["id"], 42);
    assert_eq!(e["lead"]["id"], "abc");
}

#[test]
fn empty_and_null_payloads_still_normalise() {
    let e = normalise("{}");
    assert_eq!(e["event"], "UNKNOWN");
    assert_eq!(e["lead"]["email"], Value::Null);
    let e = normalise(r#"{"event":null,"lead":null,"campaign_id":null,"reply":null}"#);
    assert_eq!(e["event"], "UNKNOWN");
    assert_eq!(e["campaign"]["id"], Value::Null);
}

#[test]
fn reply_lead_name_never_comes_from_the_mailbox() {
    let e = normalise(
        r#"{"event_type":"EMAIL_REPLY","sl_lead_email":"lead@x.example","to_email":"sdr@us.example","to_name":"Sam Sender"}"#,
    );
    assert_eq!(e["lead"]["email"], "lead@x.example");
    assert_eq!(e["lead"]["name"], Value::Null);
}

#[test]
fn timestamps_of_every_usual_form_become_rfc3339_utc() {
    let t = |v: &str| {
        normalise(&format!(
            r#"{{"event_type":"EMAIL_OPEN","event_timestamp":{v}}}"#
        ))["timestamp"]
            .clone()
    };
    assert_eq!(t(r#""2025-03-28T09:35:01+02:00""#), "2025-03-28T07:35:01Z");
    assert_eq!(t(r#""2025-03-28 09:35:01""#), "2025-03-28T09:35:01Z");
    assert_eq!(t("1743154501"), "2025-03-28T09:35:01Z");
    assert_eq!(t("1743154501000"), "2025-03-28T09:35:01Z");
    assert_eq!(t(r#""yesterday""#), "yesterday");
}

fn key(payload: Value) -> String {
    let Value::Object(map) = payload else {
        panic!("an object")
    };
    let body = serde_json::to_vec(&map).expect("serialises");
    SmartLead.dedup_key(&map, &body, SmartLead.sent_at(&map))
}

#[test]
fn duplicate_keys_lead_with_the_event_time_and_identify_the_event() {
    let reply: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/smartlead/real_13_email_reply.json"
    ))
    .expect("fixture");
    let first = key(reply.clone());
    assert!(
        first.starts_with("smartlead:20250328T093501Z:"),
        "the key starts with the event's UTC time: {first}"
    );
    assert_eq!(key(reply.clone()), first, "the same webhook, the same key");
    let mut other = reply.clone();
    other["stats_id"] = json!("another-send");
    assert_ne!(key(other), first, "another event, another key");

    // Later events sort after earlier ones, whatever their ids (the index grows at its end).
    let mut later = reply.clone();
    later["event_timestamp"] = json!("2025-03-28T10:00:00+02:00");
    later["stats_id"] = json!("0000");
    let mut much_later = reply;
    much_later["event_timestamp"] = json!("2025-03-29T00:00:00Z");
    much_later["stats_id"] = json!("0000");
    let (later, much_later) = (key(later), key(much_later));
    assert!(later.starts_with("smartlead:20250328T080000Z:"), "{later}");
    assert!(
        first < much_later && later < first,
        "{later} < {first} < {much_later}"
    );

    // Without ids or times, the body identifies the event.
    let bare = key(json!({"event_type": "EMAIL_SENT"}));
    assert!(bare.starts_with("smartlead:body:"), "{bare}");
}

#[test]
fn the_url_token_smartlead_repeats_in_webhook_url_is_not_kept() {
    for (sent, kept) in [
        (
            "https://router.example/webhooks/smartlead/t0ken-s3cret",
            "https://router.example/webhooks/smartlead/***",
        ),
        (
            "https://router.example/webhooks/smartlead?token=t0ken-s3cret",
            "https://router.example/webhooks/smartlead?***",
        ),
        (
            "https://router.example/webhooks/smartlead",
            "https://router.example/webhooks/smartlead",
        ),
    ] {
        let mut payload: Map<String, Value> = serde_json::from_str(include_str!(
            "../../../tests/fixtures/smartlead/real_13_email_reply.json"
        ))
        .unwrap();
        payload.insert("webhook_url".into(), json!(sent));
        let event = SmartLead.normalise(payload);
        assert_eq!(event.raw["webhook_url"], kept);
        assert!(!event.raw.to_string().contains("s3cret"));
    }
}

#[test]
fn paths_reach_top_level_nested_and_listed_values_and_skip_nulls() {
    let mut big = Map::new();
    for i in 0..40 {
        big.insert(format!("k{i}"), json!(i));
    }
    let payload = json!({
        "zeta": 1,
        "lead": {"email": "a@b.example", "empty": null},
        "lead_email": "top@b.example",
        "link_details": ["https://x.example/1", "https://x.example/2"],
        "a.b": "a key with a dot is not a path",
        "big": big,
        "": "empty name",
    });
    let map = payload.as_object().unwrap();
    let p = Payload::new(map);
    assert_eq!(p.at(&Path::new("lead.email")), Some(&json!("a@b.example")));
    assert_eq!(
        p.at(&Path::new("lead_email")),
        Some(&json!("top@b.example"))
    );
    assert_eq!(
        p.at(&Path::new("link_details.1")),
        Some(&json!("https://x.example/2"))
    );
    assert_eq!(
        p.at(&Path::new("big.k39")),
        Some(&json!(39)),
        "a large object is hashed into"
    );
    assert_eq!(p.at(&Path::new("zeta")), Some(&json!(1)));
    assert_eq!(
        p.at(&Path::new("lead.empty")),
        None,
        "null counts as absent"
    );
    for absent in [
        "lead.name",
        "lea",
        "leads",
        "lead.email.x",
        "link_details.2",
        "a.b",
        "nope",
    ] {
        assert_eq!(p.at(&Path::new(absent)), None, "{absent}");
    }
    for (name, _) in map {
        if !name.contains('.') && !name.is_empty() {
            let path = Path::new(Box::leak(name.clone().into_boxed_str()));
            assert_eq!(p.at(&path), map.get(name), "{name}");
        }
    }
}
