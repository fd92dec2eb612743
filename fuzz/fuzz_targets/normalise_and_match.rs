//! Fuzzes what a webhook body goes through: JSON parsing, SmartLead normalisation, duplicate
//! keys, rule matching (every operator) and rendering for every channel. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use switchboard::config::{Config, compile, raw};
use switchboard::event::{SmartLead, Source, Sources};

const RULES: &str = r#"
rules:
  - name: everything
    when:
      any:
        - event: [EMAIL_REPLIED, EMAIL_BOUNCED]
        - campaign: { id: [1, 2], name: "Q*" }
        - fields:
            reply.text: { matches: "(?i)demo|pricing", not: { contains: "unsubscribe" } }
            open.count: { gte: 3, lt: 1000 }
            lead.email: { ends_with: "@example.com", not_in: [a@example.com] }
            raw.link_details.0: { starts_with: "https://" }
            bounce.type: { in: [hard, soft], exists: true }
    actions:
      - slack: { webhook_url: "https://hooks.slack.example/x", text: "{{lead.name}}: {{truncate reply.text 100}}" }
      - email: { smtp_url: "smtp://127.0.0.1:25?tls=none", from: a@example.com, to: b@example.com, subject: "{{reply.subject}}", html: "<p>{{reply.text}}</p>" }
      - http: { url: "https://crm.example/{{lead.email}}", body: '{"lead": {{json lead}}, "t": "{{reply.text}}"}' }
"#;

static CONFIG: LazyLock<Config> = LazyLock::new(|| {
    let file = raw::parse(RULES).expect("rules parse");
    compile::compile(
        vec![(PathBuf::from("fuzz.yaml"), RULES.into(), file)],
        Path::new("/nonexistent"),
        &Sources::default(),
    )
    .expect("rules compile")
});

fuzz_target!(|data: &[u8]| {
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(data) else { return };
    let sent_at = SmartLead.sent_at(&payload);
    let _ = SmartLead.dedup_key(&payload, data, sent_at);
    let event = SmartLead.normalise(payload).into_value();
    for i in CONFIG.rules.matching(&event) {
        for step in &CONFIG.rules.get(i).actions {
            let _ = step.action.render(&event, &CONFIG.templates);
        }
    }
});
