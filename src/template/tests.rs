//! Rendering and escaping per destination, and strict mode.

use super::*;
use serde_json::json;

fn render(source: &str, escape: Escape, data: &Value) -> Result<String, RenderError> {
    let mut t = Templates::default();
    let tpl = t.inline("test", source, escape).expect("compiles");
    t.render(&tpl, &Data::new(data))
}

fn hostile() -> Value {
    json!({"lead": {"name": "<!channel> & \"Bob\"\nsecond <https://evil.example|click>"}, "n": null})
}

#[test]
fn slack_mode_escapes_control_characters() {
    let out = render("Reply from {{lead.name}}", Escape::Slack, &hostile()).unwrap();
    assert!(out.contains("&lt;!channel&gt; &amp;"), "{out}");
    assert!(!out.contains('<'), "{out}");
}

#[test]
fn slack_json_mode_produces_valid_json() {
    let out = render(
        r#"{"text": "{{lead.name}}"}"#,
        Escape::SlackJson,
        &hostile(),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["text"],
        "&lt;!channel&gt; &amp; \"Bob\"\nsecond &lt;https://evil.example|click&gt;"
    );
}

#[test]
fn json_mode_escapes_strings_and_json_helper_inserts_values() {
    let out = render(
        r#"{"name": "{{lead.name}}", "lead": {{json lead}}, "n": {{json n}}}"#,
        Escape::Json,
        &hostile(),
    )
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["name"], hostile()["lead"]["name"]);
    assert_eq!(v["lead"], hostile()["lead"]);
    assert_eq!(v["n"], Value::Null);
}

#[test]
fn html_mode_escapes_markup_and_triple_stash_is_raw() {
    let out = render(
        "<p>{{lead.name}}</p>{{{lead.name}}}",
        Escape::Html,
        &hostile(),
    )
    .unwrap();
    assert!(
        out.starts_with("<p>&lt;!channel&gt; &amp; &quot;Bob&quot;"),
        "{out}"
    );
    assert!(out.contains("<!channel>"), "{out}");
}

#[test]
fn strict_mode_names_the_missing_variable() {
    let err = render("Hi {{lead.frist_name}}", Escape::Plain, &hostile()).unwrap_err();
    assert_eq!(err.missing.as_deref(), Some("lead.frist_name"));
    assert!(render("{{#if lead.nope}}x{{/if}}ok", Escape::Plain, &hostile()).is_ok());
    assert_eq!(render("[{{n}}]", Escape::Plain, &hostile()).unwrap(), "[]");
}

#[test]
fn helpers() {
    let data = json!({"s": "Hello World", "e": "", "t": "2025-03-28T09:35:01Z", "x": "<b>"});
    let r = |src| render(src, Escape::Slack, &data).unwrap();
    assert_eq!(r("{{truncate s 5}}"), "Hell…");
    assert_eq!(r("{{default e \"there\"}}"), "there");
    assert_eq!(r("{{upper s}} {{lower s}}"), "HELLO WORLD hello world");
    assert_eq!(r("{{date t}}"), "2025-03-28 09:35 UTC");
    assert_eq!(r("{{date t \"%d %b\"}}"), "28 Mar");
    assert_eq!(r("{{upper x}}"), "&lt;B&gt;");
    assert_eq!(r("{{json x}}"), "\"&lt;b&gt;\"");
}

#[test]
fn url_mode_percent_encodes_values() {
    let out = render(
        "https://crm.example/leads?email={{e}}",
        Escape::Url,
        &json!({"e": "a+b@x.example&admin=1"}),
    )
    .unwrap();
    assert_eq!(
        out,
        "https://crm.example/leads?email=a%2Bb%40x.example%26admin%3D1"
    );
}

#[test]
fn broken_template_reports_its_position() {
    let mut t = Templates::default();
    let err = t
        .inline("test", "line one\n{{#if x}}unclosed", Escape::Plain)
        .unwrap_err();
    assert!(err.line.is_some(), "{err:?}");
}

#[test]
fn helpers_are_strict_too_except_under_raw() {
    let data = json!({"lead": {"name": "A"}, "raw": {}});
    let err = render("{{truncate lead.nmae 5}}", Escape::Plain, &data).unwrap_err();
    assert_eq!(err.missing.as_deref(), Some("lead.nmae"));
    let err = render("{{json lead.nmae}}", Escape::Json, &data).unwrap_err();
    assert_eq!(err.missing.as_deref(), Some("lead.nmae"));
    assert_eq!(
        render("{{default raw.custom 'x'}}", Escape::Plain, &data).unwrap(),
        "x"
    );
}

#[test]
fn url_helper_passes_only_http_links_escaped_for_json_not_for_slack() {
    let data = json!({"a": "https://app.example/inbox?lead=1&b=\"2\"", "b": "javascript:alert(1)"});
    let out = render(
        r#"{"url": "{{url a}}", "bad": "{{url b}}"}"#,
        Escape::SlackJson,
        &data,
    )
    .unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["url"], "https://app.example/inbox?lead=1&b=\"2\"");
    assert_eq!(v["bad"], "");
}

#[test]
fn an_event_is_stored_and_rendered_alike_whether_its_json_form_was_built_or_not() {
    use crate::event::{EventView, SmartLead, Source};
    let payload: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/smartlead/real_13_email_reply.json"
    ))
    .unwrap();
    let mut event = SmartLead.normalise(payload.as_object().unwrap().clone());
    event.event_id = "e-1".into();
    let expected = serde_json::to_string(&event.clone().into_value()).unwrap();

    let untouched = Data::from(event.clone());
    assert_eq!(untouched.kinds(), ("EMAIL_REPLIED", "EMAIL_REPLY"));
    assert_eq!(untouched.campaign_id(), event.campaign.id);
    assert_eq!(
        untouched.to_json(0),
        expected,
        "written from the typed event"
    );

    let read = Data::from(event);
    let mut t = Templates::default();
    let tpl = t
        .inline(
            "t",
            "{{event}} {{lead.email}} {{raw.event_type}}",
            Escape::Plain,
        )
        .unwrap();
    let rendered = t.render(&tpl, &read).unwrap();
    assert!(rendered.starts_with("EMAIL_REPLIED "), "{rendered}");
    assert!(rendered.ends_with(" EMAIL_REPLY"), "{rendered}");
    assert_eq!(
        read.to_json(0),
        expected,
        "written from the JSON form once built"
    );
    assert_eq!(read.value()["event_id"], "e-1");
}

#[test]
fn an_inline_text_is_compiled_once_and_renders_with_each_uses_escaping() {
    // Two configurations (a reload) and two escapings share one compiled text; each renders
    // with its own escaping and names its own rule in errors.
    let text = "{{upper event}} from {{lead.name}} (shared)";
    let (mut old, mut new) = (Templates::default(), Templates::default());
    let a = old
        .inline("rule \"a\" action 1 text", text, Escape::Slack)
        .unwrap();
    let b = new
        .inline("rule \"b\" action 1 body", text, Escape::Json)
        .unwrap();
    let (Some(ca), Some(cb)) = (&a.inline, &b.inline) else {
        panic!("inline templates keep their compiled form");
    };
    assert!(Arc::ptr_eq(ca, cb));
    let data = Data::new(&json!({"event": "reply", "lead": {"name": "<A & \"B\">"}}));
    assert_eq!(
        old.render(&a, &data).unwrap(),
        "REPLY from &lt;A &amp; \"B\"&gt; (shared)"
    );
    assert_eq!(
        new.render(&b, &data).unwrap(),
        "REPLY from <A & \\\"B\\\"> (shared)"
    );
    let missing = Data::new(&json!({"event": "reply"}));
    let err = new.render(&b, &missing).unwrap_err();
    assert!(
        err.template.starts_with("rule \"b\" action 1 body"),
        "{err}"
    );
    assert_eq!(err.missing.as_deref(), Some("lead.name"), "{err}");
}

#[test]
fn an_inline_template_includes_a_file_as_the_files_do() {
    // A partial on its own line is not indented, in an inline template as in a file.
    let files = vec![
        ("part.hbs".to_string(), "a\nb\n".to_string()),
        (
            "whole.hbs".to_string(),
            "Hi\n  {{> part.hbs}}\nbye".to_string(),
        ),
    ];
    let (mut t, errors) = Templates::from_sources(files);
    assert!(errors.is_empty());
    let data = Data::new(&json!({}));
    let file = t.file("whole.hbs", Escape::Plain).unwrap();
    let inline = t
        .inline("test", "Hi\n  {{> part.hbs}}\nbye", Escape::Plain)
        .unwrap();
    let (from_file, from_inline) = (
        t.render(&file, &data).unwrap(),
        t.render(&inline, &data).unwrap(),
    );
    assert_eq!(from_file, "Hi\n  a\nb\nbye");
    assert_eq!(from_inline, from_file);
}

#[test]
fn an_inline_template_is_kept_compiled_only_once_it_renders() {
    let mut t = Templates::default();
    // A text no other test writes: the compiled form is shared by text.
    let source = "{{lead.email}} settles ({{event}})";
    let tpl = t.inline("rule", source, Escape::Plain).expect("compiles");
    let inline = tpl.inline.clone().expect("an inline template");
    assert!(inline.compiled.load().is_some(), "compiled to be checked");
    t.settle();
    assert!(inline.compiled.load().is_none(), "released once checked");
    let data = json!({"lead": {"email": "a@b.example"}, "event": "EMAIL_REPLIED"});
    let out = t.render(&tpl, &Data::new(&data)).unwrap();
    assert_eq!(out, "a@b.example settles (EMAIL_REPLIED)");
    assert!(inline.compiled.load().is_some(), "kept once it rendered");
    // Another rule writing the same text shares it, and is not released by its load.
    let again = t.inline("other", source, Escape::Plain).expect("compiles");
    t.settle();
    assert!(Arc::ptr_eq(&inline, again.inline.as_ref().unwrap()));
    assert!(inline.compiled.load().is_some());
}

#[test]
fn a_load_of_the_same_template_files_shares_their_compiled_form() {
    let files = || {
        vec![
            (
                "reply.hbs".to_string(),
                "Reply from {{lead.email}}".to_string(),
            ),
            ("broken.hbs".to_string(), "{{#if}}".to_string()),
        ]
    };
    let (first, errors) = Templates::from_sources(files());
    let said = |e: &[(String, TemplateError)]| format!("{e:?}");
    assert_eq!(errors.len(), 1, "{}", said(&errors));
    let (again, errors_again) = Templates::from_sources_beside(files(), Some(&first));
    assert!(Arc::ptr_eq(&first.files, &again.files));
    // The file that does not compile is reported again, as a load of its own reports it.
    assert_eq!(said(&errors_again), said(&errors));
    assert!(again.is_broken("broken.hbs"));
    assert_eq!(again.digest(), first.digest());
    let mut changed = files();
    changed[0].1 = "Answer from {{lead.email}}".to_string();
    let (other, _) = Templates::from_sources_beside(changed, Some(&first));
    assert!(!Arc::ptr_eq(&first.files, &other.files));
    assert_ne!(other.digest(), first.digest());
    let data = Data::new(&json!({"lead": {"email": "a@example.com"}}));
    let reply = |t: &Templates| {
        let file = t.file("reply.hbs", Escape::Plain).expect("loaded");
        t.render(&file, &data).unwrap()
    };
    assert_eq!(reply(&again), "Reply from a@example.com");
    assert_eq!(reply(&other), "Answer from a@example.com");
}
