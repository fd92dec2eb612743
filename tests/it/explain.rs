//! `test --explain` prints the verdict of every stage of rule memory; with `--store` it reads
//! the state of that store (the router may be running) without changing it.

use crate::memory::shipped;
use crate::util::{Binary, fixture, unique};
use serde_json::Value;
use std::process::Command;

fn open(lead: &str) -> Value {
    let mut e = unique(fixture("real_11_email_open"));
    e["to_email"] = Value::String(lead.into());
    e["sl_lead_email"] = Value::String(lead.into());
    e
}

#[tokio::test]
async fn explain_reads_a_stores_memory_without_changing_it() {
    let dir = shipped();
    let router = Binary::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let post = async |event: Value| {
        let r = client
            .post(format!("{}/webhooks/smartlead", router.url))
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    post(open("ana@lead.example")).await;
    post(open("ana@lead.example")).await;
    let event = dir.path().join("open.json");
    std::fs::write(&event, open("ana@lead.example").to_string()).unwrap();
    let store = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let explain = |with_store: bool| {
        let mut args = vec!["test", "--explain", "--event", event.to_str().unwrap()];
        args.extend(["--rules", "rules.yaml", "--templates", "templates"]);
        if with_store {
            args.extend(["--store", &store]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("SWITCHBOARD_STORE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // Without a store every key starts empty: the first open.
    let dry = explain(false);
    assert!(
        dry.contains("open.count: open 1 of 9181:ana@lead.example"),
        "{dry}"
    );
    assert!(dry.contains("✗ hot-lead"), "{dry}");
    assert!(
        dry.contains("digest: opens a digest for 9181, which closes at"),
        "{dry}"
    );
    // With it, this would be ana's third open: hot-lead, once free, not seen replying.
    let third = explain(true);
    assert!(
        third.contains("open.count: open 3 of 9181:ana@lead.example"),
        "{third}"
    );
    assert!(third.contains("✓ hot-lead"), "{third}");
    assert!(
        third.contains("unless_seen: ana@lead.example was not seen in the last 30d, goes on"),
        "{third}"
    );
    assert!(
        third.contains("once: 9181:ana@lead.example is free, takes it for 14d"),
        "{third}"
    );
    assert!(third.contains("(slack): would be sent"), "{third}");
    // The shipped engagement digest holds the first two opens: this one would be its third.
    assert!(
        third.contains("digest: joins the digest of 9181 as event 3, which closes at"),
        "{third}"
    );
    assert!(
        third.contains("would join its digest, sent when the digest closes"),
        "{third}"
    );
    assert!(third.contains("1 events by 1 leads"), "{third}");
    assert_eq!(explain(true), third, "reading the store changed it");
    // The router takes the third open; a fourth would find the key taken.
    post(open("ana@lead.example")).await;
    let fourth = explain(true);
    assert!(fourth.contains("open.count: open 4 of"), "{fourth}");
    assert!(
        fourth.contains("once: 9181:ana@lead.example is taken until"),
        "{fourth}"
    );
    assert!(
        fourth.contains("would be kept suppressed (once)"),
        "{fourth}"
    );
}
