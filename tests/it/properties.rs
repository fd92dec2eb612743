//! Property: for any sequence of events of a few keys, cut into group commits of any sizes,
//! what rule memory decides in the store (an open's count, `once`, `throttle`, a `window`)
//! equals a plain in-memory model that counts per key, on both backends.

use crate::postgres::fresh_store;
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use switchboard::config::{Config, ConfigPaths};
use switchboard::event::Sources;
use switchboard::memory::Plan;
use switchboard::silence::Silences;
use switchboard::store::memory::{Decider, Verdict};
use switchboard::store::{Intake, NewEvent, Store};
use switchboard::template::Data;

const RULES: &str = r#"rules:
  - name: third-open
    when: { event: EMAIL_OPENED, fields: { open.count: { equals: 3 } } }
    actions: [ { log: { message: "third" } } ]
  - name: first-click
    when: { event: EMAIL_CLICKED }
    once: { key: "{{lead.email}}", for: 1h }
    actions: [ { log: { message: "first" } } ]
  - name: two-clicks
    when: { event: EMAIL_CLICKED }
    throttle: { key: "{{lead.email}}", limit: 2, per: 1h }
    actions: [ { log: { message: "capped" } } ]
  - name: many-clicks
    when:
      event: EMAIL_CLICKED
      window: { key: "{{lead.email}}", over: 1h, count: { gte: 4 } }
    actions: [ { log: { message: "many" } } ]
"#;

fn config() -> Arc<Config> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), RULES).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    let paths = ConfigPaths {
        rules: dir.path().join("rules.yaml"),
        templates: dir.path().join("templates"),
    };
    Arc::new(switchboard::config::load(&paths, &Sources::default()).expect("valid rules"))
}

/// The canonical event: an open (without a count) or a click of lead `key` in one run.
fn event(run: &str, open: bool, key: u8) -> Value {
    let (kind, sent) = match open {
        true => ("EMAIL_OPENED", "EMAIL_OPEN"),
        false => ("EMAIL_CLICKED", "EMAIL_LINK_CLICK"),
    };
    json!({
        "event": kind,
        "source_event": sent,
        "source": "smartlead",
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "campaign": {"id": 7, "name": "c"},
        "lead": {"email": format!("{run}-{key}@lead.example")},
        "open": {"count": null},
        "noise": {"suppressed": null},
        "window": {"count": null},
    })
}

fn new_event(config: &Arc<Config>, value: Value) -> NewEvent {
    let data = Data::from(value);
    let plan = Plan::new(config, &data, chrono::Utc::now(), &Silences::default());
    let id = uuid::Uuid::now_v7().to_string();
    NewEvent {
        id: id.clone(),
        source: "smartlead".into(),
        event_type: data.value()["event"].as_str().unwrap().into(),
        lead_email: data.value()["lead"]["email"].as_str().map(str::to_string),
        campaign_id: None,
        config_hash: config.hash.clone(),
        payload: data.value().to_string(),
        dedup_key: id,
        deliveries: plan.deliveries,
        memory: plan.memory.map(|m| Arc::new(m) as Arc<dyn Decider>),
        claimed: false,
    }
}

/// What the model says each event fires, by rule name.
fn model(events: &[(bool, u8)]) -> Vec<Vec<&'static str>> {
    let (mut opens, mut clicks) = (HashMap::new(), HashMap::new());
    events
        .iter()
        .map(|&(open, key)| {
            if open {
                let n = opens.entry(key).and_modify(|n| *n += 1).or_insert(1);
                if *n == 3 { vec!["third-open"] } else { vec![] }
            } else {
                let n = clicks.entry(key).and_modify(|n| *n += 1).or_insert(1);
                let mut fired = vec![];
                if *n == 1 {
                    fired.push("first-click");
                }
                if *n <= 2 {
                    fired.push("two-clicks");
                }
                if *n >= 4 {
                    fired.push("many-clicks");
                }
                fired
            }
        })
        .collect()
}

/// Stores the events in group commits of the given sizes; what each fired, by rule name.
async fn store_all(
    store: &Store,
    config: &Arc<Config>,
    events: &[(bool, u8)],
    cuts: &[usize],
) -> Vec<Vec<String>> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let all: Vec<NewEvent> = events
        .iter()
        .map(|&(open, key)| new_event(config, event(&run, open, key)))
        .collect();
    let mut fired = Vec::new();
    let mut rest = &all[..];
    for &cut in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at(cut.clamp(1, rest.len()));
        rest = tail;
        let outcome = store
            .write(batch, &[], &[])
            .await
            .expect("the batch commits");
        for (e, intake) in batch.iter().zip(outcome.intakes) {
            let Intake::Accepted(created) = intake else {
                panic!("not accepted: {intake:?}");
            };
            let sent = e
                .deliveries
                .iter()
                .zip(created)
                .filter(|(_, c)| c.is_some_and(|c| c.verdict == Verdict::Send))
                .map(|(d, _)| d.rule.clone())
                .collect();
            fired.push(sent);
        }
    }
    fired
}

fn check(store: &Store, cases: u32) {
    let config = config();
    let runtime = tokio::runtime::Handle::current();
    let strategy = (
        prop::collection::vec((any::<bool>(), 0u8..3), 1..24),
        prop::collection::vec(1usize..6, 1..5),
    );
    TestRunner::new(Cases::with_cases(cases))
        .run(&strategy, |(events, cuts)| {
            let fired = tokio::task::block_in_place(|| {
                runtime.block_on(store_all(store, &config, &events, &cuts))
            });
            let expected = model(&events);
            prop_assert_eq!(fired, expected);
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_in_the_store_counts_like_a_plain_model_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("p.db").display());
    let store = Store::open(&url).await.unwrap();
    check(&store, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_in_the_store_counts_like_a_plain_model_with_postgres() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let store = Store::open(&url).await.unwrap();
    check(&store, 24);
}
