//! Rule matching and rendering cost per event as the rule count grows:
//! `cargo bench --bench match_render`.
//!
//! Builds rule sets of 10, 100, 1,000 and 10,000 rules from generated YAML text (the mix is
//! documented in `support/rulegen.rs`) through the same path as the router, `config::compile::compile`
//! with the repository's `templates/`, and times, per event:
//!
//! - `matching/N`: `RuleSet::matching` alone;
//! - `match_render/N`: matching, then `Action::render` for every action of every matching rule
//!   (what the router does for an event between intake and sending).
//!
//! Events are the SmartLead fixtures (`tests/fixtures/smartlead/*.json`, both payload shapes)
//! normalised as at intake, taken in turn, so each figure is the mean over the mix of event
//! types. Before timing, each rule set's average matches and actions per event are printed.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchboard::config::Config;
use switchboard::config::compile::compile;
use switchboard::event::{SmartLead, Source, Sources};

#[path = "support/rulegen.rs"]
mod rulegen;

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// The fixture payloads, normalised as the router does at intake (with an event id).
fn events() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smartlead");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the fixtures directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let text = std::fs::read_to_string(path).expect("fixture is readable");
            let payload: Value = serde_json::from_str(&text).expect("fixture is JSON");
            let map = payload.as_object().expect("fixture is a JSON object");
            let mut event = SmartLead.normalise(map.clone());
            event.event_id = format!("0190c4f5-0000-7000-8000-{i:012}");
            event.into_value()
        })
        .collect()
}

/// Compiles a generated rules file of `count` rules as the router would load it.
fn config(count: usize) -> Config {
    let text = rulegen::rules_yaml(count, "http://127.0.0.1:9");
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    compile(
        vec![(PathBuf::from("generated.yaml"), text)],
        &templates,
        &Sources::default(),
        None,
    )
    .unwrap_or_else(|e| panic!("generated rules do not compile:\n{e}"))
}

/// Matching, then rendering every action of every matching rule; the number of messages.
fn match_and_render(config: &Config, event: &Value) -> usize {
    let mut messages = 0;
    for i in config.rules.matching(event) {
        for step in &config.rules.get(i).actions {
            let message = step
                .action
                .render(event, &config.templates)
                .unwrap_or_else(|e| {
                    panic!("rule {} does not render: {e}", config.rules.get(i).name)
                });
            black_box(&message);
            messages += 1;
        }
    }
    messages
}

fn benches(c: &mut Criterion) {
    let events = events();
    let configs: Vec<(usize, Config)> = SIZES
        .iter()
        .map(|&n| {
            let started = Instant::now();
            let config = config(n);
            let took = started.elapsed();
            let matches: usize = events.iter().map(|e| config.rules.matching(e).len()).sum();
            let messages: usize = events.iter().map(|e| match_and_render(&config, e)).sum();
            eprintln!(
                "{n:>6} rules: parsed and compiled in {:.0} ms; per event {:.2} matching rules, {:.2} messages rendered ({} events)",
                took.as_secs_f64() * 1000.0,
                matches as f64 / events.len() as f64,
                messages as f64 / events.len() as f64,
                events.len()
            );
            (n, config)
        })
        .collect();

    per_event(c, "matching", &configs, &events, |config, event| {
        config.rules.matching(event).len()
    });
    per_event(c, "match_render", &configs, &events, match_and_render);
}

/// One criterion group: `work` on the events in turn, for each rule set.
fn per_event(
    c: &mut Criterion,
    name: &str,
    configs: &[(usize, Config)],
    events: &[Value],
    work: impl Fn(&Config, &Value) -> usize,
) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for (n, config) in configs {
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut k = 0usize;
            b.iter(|| {
                let event = &events[k % events.len()];
                k += 1;
                work(config, black_box(event))
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = match_render;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(match_render);
