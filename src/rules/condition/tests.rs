//! Conditions compiled from YAML and evaluated against canonical events.

use super::*;
use crate::rules::RawWhen;
use crate::syntax::Spanned;
use serde_json::json;

fn cond(yaml: &str) -> Condition {
    let when: Spanned<RawWhen> = serde_saphyr::from_str(yaml).expect("valid yaml");
    let mut errors = Vec::new();
    let (c, _) = compile(&when, &mut |p, m| {
        errors.push(format!("{}:{} {m}", p.line, p.column))
    });
    assert!(errors.is_empty(), "{errors:?}");
    c
}

fn errors(yaml: &str) -> Vec<String> {
    let when: Spanned<RawWhen> = serde_saphyr::from_str(yaml).expect("valid yaml");
    let mut errors = Vec::new();
    compile(&when, &mut |p, m| {
        errors.push(format!("{}:{} {m}", p.line, p.column))
    });
    errors
}

fn reply() -> Value {
    json!({
        "event": "EMAIL_REPLIED", "source_event": "EMAIL_REPLY",
        "campaign": {"id": 9181, "name": "Q2 SaaS Outreach"},
        "lead": {"email": "james@prospect.example", "id": "1482956"},
        "open": {"count": "4"},
        "reply": {"text": "Interested! What is the pricing?"},
        "raw": {"link_details": ["https://a.example/x"]}
    })
}

#[test]
fn event_matches_canonical_or_sent_type() {
    assert!(cond("event: EMAIL_REPLIED").holds(&reply()));
    assert!(cond("event: EMAIL_REPLY").holds(&reply()));
    assert!(cond("event: [EMAIL_OPENED, EMAIL_REPLIED]").holds(&reply()));
    assert!(!cond("event: EMAIL_BOUNCED").holds(&reply()));
}

#[test]
fn campaign_by_id_and_glob() {
    assert!(cond("campaign: {id: 9181}").holds(&reply()));
    assert!(cond("campaign: {id: [1, 9181]}").holds(&reply()));
    assert!(!cond("campaign: {id: 1}").holds(&reply()));
    assert!(cond("campaign: {name: 'Q2*'}").holds(&reply()));
    assert!(!cond("campaign: {name: 'Q1*'}").holds(&reply()));
}

#[test]
fn field_operators() {
    let e = reply();
    let yes = |y: &str| assert!(cond(y).holds(&e), "{y}");
    let no = |y: &str| assert!(!cond(y).holds(&e), "{y}");
    yes("fields: {lead.email: james@prospect.example}");
    yes("fields: {lead.id: 1482956}");
    yes("fields: {lead.email: {ends_with: '@prospect.example'}}");
    no("fields: {lead.email: {not: {ends_with: '@prospect.example'}}}");
    yes("fields: {reply.text: {matches: '(?i)pricing|demo'}}");
    no("fields: {reply.text: {matches: 'demo'}}");
    yes("fields: {open.count: {gte: 3, lt: 10}}");
    no("fields: {open.count: {gt: 4}}");
    yes("fields: {lead.email: {in: [a@b.example, james@prospect.example]}}");
    yes("fields: {lead.email: {not_in: [a@b.example]}}");
    yes("fields: {bounce.type: {not_in: [hard]}}");
    yes("fields: {reply.text: {contains: 'pricing'}}");
    yes("fields: {reply.text: {starts_with: 'Interested'}}");
    yes("fields: {raw.link_details.0: {starts_with: 'https://a.example'}}");
    yes("fields: {raw.link_details: {contains: 'https://a.example/x'}}");
    yes("fields: {reply.html: {exists: false}}");
    no("fields: {reply.text: {exists: false}}");
}

#[test]
fn any_all_not_nest_to_any_depth() {
    let e = reply();
    assert!(cond("any: [{event: EMAIL_BOUNCED}, {all: [{event: EMAIL_REPLIED}, {not: {campaign: {id: 1}}}]}]").holds(&e));
    assert!(!cond("not: {any: [{event: EMAIL_REPLIED}]}").holds(&e));
}

#[test]
fn every_bad_operator_is_reported_with_its_position() {
    let errs = errors(
        "fields:\n  reply.text: {matches: '(unclosed'}\n  lead.email: {startswith: x}\n  open.count: {gt: many}\n",
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.starts_with("4:") && e.contains("`gt` takes a number")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("3:") && e.contains("unknown operator `startswith`")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("2:") && e.contains("bad regular expression")),
        "{errs:?}"
    );
}

#[test]
fn explain_reports_each_condition() {
    let v = cond("event: EMAIL_REPLIED\nfields: {reply.text: {matches: demo}}").explain(&reply());
    assert!(!v.holds);
    assert_eq!(v.parts.len(), 2);
    assert!(v.parts[0].holds && v.parts[0].what.contains("EMAIL_REPLIED"));
    assert!(!v.parts[1].holds && v.parts[1].what.contains("matches /demo/"));
}

#[test]
fn a_count_or_window_not_known_yet_leaves_what_reads_it_unknown() {
    let open = json!({"event": "EMAIL_OPENED", "open": {"count": null}});
    let click = json!({"event": "EMAIL_CLICKED", "open": {"count": null}});
    let hot = cond(
        "any:\n  - event: EMAIL_CLICKED\n  - event: EMAIL_OPENED\n    fields: { open.count: { gte: 3 } }",
    );
    assert_eq!(hot.at_intake(&click, true, &|_| Maybe::Unknown), Maybe::Yes);
    assert_eq!(
        hot.at_intake(&open, true, &|_| Maybe::Unknown),
        Maybe::Unknown
    );
    assert_eq!(
        hot.at_intake(&open, false, &|_| Maybe::Unknown),
        Maybe::No,
        "a count sent is known"
    );
    let only_opens = cond("event: EMAIL_OPENED\nfields: { open.count: { gte: 3 } }");
    assert_eq!(
        only_opens.at_intake(&click, true, &|_| Maybe::Unknown),
        Maybe::No
    );
    let never = cond("not: { fields: { open.count: { exists: true } } }");
    assert_eq!(
        never.at_intake(&open, true, &|_| Maybe::Unknown),
        Maybe::Unknown
    );
    let other = cond("event: EMAIL_OPENED");
    assert_eq!(
        other.at_intake(&open, true, &|_| Maybe::Unknown),
        Maybe::Yes
    );
    let spike = cond(
        "event: EMAIL_OPENED\nwindow: { key: '{{campaign.id}}', over: 10m, count: { gt: 2 } }",
    );
    assert_eq!(
        spike.at_intake(&open, false, &|_| Maybe::Unknown),
        Maybe::Unknown
    );
    assert_eq!(
        spike.at_intake(&click, false, &|_| Maybe::Unknown),
        Maybe::No
    );
    assert!(
        !spike.holds(&open),
        "without the store a window does not hold"
    );
    let held = spike.eval(&open, &|c| {
        matches!(c, Condition::Window(0)).then_some(Maybe::Yes)
    });
    assert_eq!(held, Maybe::Yes);
}
