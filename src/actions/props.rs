//! Property tests over open-ended input: whatever a lead writes, Slack payloads are valid JSON
//! with no live `<`, `>` or `&`, email subjects carry no CR or LF, and JSON bodies parse.

use super::{Action, Ctx, RawAction, Unconfigured};
use crate::diagnostic::Diagnostics;
use crate::event::{SmartLead, Source};
use crate::syntax::{Spanned, pos};
use crate::template::Templates;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;

/// Two Slack actions (text and Block Kit), an email and an HTTP action, all rendering what the
/// lead wrote.
const ACTIONS: &str = r#"
- slack: { webhook_url: "https://hooks.slack.example/services/T/B/X", text: "Reply from {{lead.name}}: {{reply.text}}" }
- slack:
    webhook_url: "https://hooks.slack.example/services/T/B/X"
    blocks: '[{"type": "section", "text": {"type": "mrkdwn", "text": "*{{lead.name}}*: {{reply.text}}"}}, {"type": "context", "elements": [{"type": "mrkdwn", "text": {{json raw}}}]}]'
- email: { smtp_url: "smtp://127.0.0.1:25?tls=none", from: a@example.com, to: b@example.com, subject: "Re: {{reply.subject}} from {{lead.name}}", text: "{{reply.text}}" }
- http: { url: "https://crm.example/hook", body: '{"text": "{{reply.text}}", "name": "{{lead.name}}", "lead": {{json lead}}, "raw": {{json raw}}}' }
"#;

/// The actions, compiled as a rule's would be, and their templates.
fn config() -> (Vec<Action>, Templates) {
    let raw: Vec<Spanned<RawAction>> = serde_saphyr::from_str(ACTIONS).expect("valid actions");
    let (mut templates, _) = Templates::load_dir(Path::new("/nonexistent"));
    let (mut errors, mut unconfigured) = (Diagnostics::default(), Unconfigured::new());
    let mut actions = Vec::new();
    for action in raw {
        let mut cx = Ctx::new(
            Path::new("props.yaml"),
            pos(&action),
            &mut templates,
            &mut errors,
            &mut unconfigured,
            "props".into(),
            "props".into(),
        );
        actions.extend(action.value.compile(None, &mut cx));
    }
    assert!(errors.is_empty(), "{errors}");
    (actions, templates)
}

/// Any JSON, with SmartLead's own keys likely so that normalisation goes deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        Just("event_type".to_string()),
        Just("event".to_string()),
        Just("lead".to_string()),
        Just("reply_message".to_string()),
        Just("leadCorrespondence".to_string()),
        Just("campaign_id".to_string()),
        Just("bounce_message".to_string()),
        Just("link_details".to_string()),
        Just("event_timestamp".to_string()),
        "[a-z_]{1,10}",
    ];
    leaf.prop_recursive(4, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An event whose lead-written fields are arbitrary text.
fn hostile_event(name: String, text: String, subject: String, extra: Value) -> Value {
    let payload = json!({
        "event_type": "EMAIL_REPLY",
        "to_name": name,
        "sl_lead_email": "lead@example.com",
        "to_email": "lead@example.com",
        "subject": subject,
        "reply_message": {"text": text},
        "extra": extra,
    });
    let mut e = SmartLead.normalise(payload.as_object().expect("object").clone());
    e.event_id = "prop".into();
    e.into_value()
}

fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => m.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

/// Every `&` starts one of Slack's three entities, and no `<` or `>` is left.
fn slack_safe(s: &str) -> bool {
    !s.contains('<')
        && !s.contains('>')
        && s.match_indices('&').all(|(i, _)| {
            ["&amp;", "&lt;", "&gt;"]
                .iter()
                .any(|e| s[i..].starts_with(e))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn normalisation_never_panics(payload in any_json()) {
        let object = match payload {
            Value::Object(m) => m,
            other => [("event".to_string(), other)].into_iter().collect(),
        };
        let _ = SmartLead.dedup_key(&object, b"{}", SmartLead.sent_at(&object));
        let e = SmartLead.normalise(object).into_value();
        prop_assert!(e["event"].is_string());
        prop_assert!(e["raw"].is_object());
    }

    #[test]
    fn slack_payloads_are_valid_json_with_nothing_live(name in ".{0,60}", text in ".{0,300}", extra in any_json()) {
        let (actions, templates) = config();
        let event = hostile_event(name, text, String::new(), extra);
        for action in &actions[..2] {
            let message = action.render(&event, &templates).expect("renders");
            let super::Message::Slack(m) = message else { panic!("slack") };
            let text = serde_json::to_string(&m.payload).expect("serialises");
            let reparsed: Value = serde_json::from_str(&text).expect("valid JSON");
            let mut all = Vec::new();
            strings(&reparsed, &mut all);
            for s in all {
                prop_assert!(slack_safe(&s), "unescaped text in the Slack payload: {s:?}");
            }
        }
    }

    #[test]
    fn email_subjects_never_carry_cr_or_lf(name in ".{0,60}", subject in "(.|\r|\n){0,80}") {
        let (actions, templates) = config();
        let event = hostile_event(name, "hi".into(), subject, Value::Null);
        let message = actions[2].render(&event, &templates).expect("renders");
        let super::Message::Email(m) = message else { panic!("email") };
        prop_assert!(!m.subject.contains('\r') && !m.subject.contains('\n'), "{:?}", m.subject);
    }

    #[test]
    fn json_bodies_always_parse(name in ".{0,60}", text in "(.|\r|\n|\t){0,300}", extra in any_json()) {
        let (actions, templates) = config();
        let event = hostile_event(name.clone(), text.clone(), String::new(), extra);
        let message = actions[3].render(&event, &templates).expect("renders");
        let super::Message::Http(m) = message else { panic!("http") };
        let body: Value = serde_json::from_str(m.body.as_deref().unwrap_or("")).expect("the body is JSON");
        prop_assert_eq!(&body["lead"], &event["lead"]);
        prop_assert_eq!(&body["raw"], &event["raw"]);
    }
}
