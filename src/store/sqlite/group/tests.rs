//! The group commit's script: batches cut by payload size, statements and their values.

use super::*;
use crate::store::memory::{Cell, Changed, Mark, Needs, Verdict, Writes};
use crate::store::{Attempt, NewDelivery, Next};

fn event(bytes: usize) -> NewEvent {
    NewEvent {
        id: String::new(),
        source: String::new(),
        event_type: String::new(),
        lead_email: None,
        campaign_id: None,
        config_hash: String::new(),
        payload: "x".repeat(bytes),
        dedup_key: String::new(),
        deliveries: vec![],
        memory: None,
        claimed: false,
    }
}

#[test]
fn a_batch_is_cut_where_its_payloads_pass_the_limit() {
    let sizes = |events: &[NewEvent], limit| -> Vec<Vec<usize>> {
        parts(events, limit)
            .iter()
            .map(|p| p.iter().map(|e| e.payload.len()).collect())
            .collect()
    };
    let events: Vec<NewEvent> = [4, 4, 2, 9, 1, 1].into_iter().map(event).collect();
    assert_eq!(sizes(&events, 10), vec![vec![4, 4, 2], vec![9, 1], vec![1]]);
    // An event bigger than the limit goes alone; nothing is dropped.
    assert_eq!(
        sizes(&events, 3),
        vec![vec![4], vec![4], vec![2], vec![9], vec![1, 1]]
    );
    assert_eq!(sizes(&events, 100), vec![vec![4, 4, 2, 9, 1, 1]]);
    assert_eq!(sizes(&[], 10), vec![Vec::<usize>::new()]);
}

/// The one-round-trip script of a batch without rule memory.
fn plain(events: &[NewEvent], done: &[Finished], claims: &[Claim], now: Millis) -> Vec<Statement> {
    let verdicts: Vec<Vec<Verdict>> = events
        .iter()
        .map(|e| vec![Verdict::Send; e.deliveries.len()])
        .collect();
    let mut s = vec![script::begin()];
    s.extend(script::head(events, now));
    s.extend(script::body(
        events,
        &verdicts,
        &[],
        &Writes::default(),
        now,
    ));
    s.extend(script::tail(done, claims, now));
    s
}

#[test]
fn every_statement_binds_as_many_values_as_it_has_parameters() {
    let mut e = event(10);
    e.deliveries.push(NewDelivery {
        rule: "r".into(),
        action_index: 0,
        action_kind: "log".into(),
        destination: "r#1".into(),
        timing: Default::default(),
        silenced: false,
    });
    let done = Finished {
        id: 1,
        attempt: Attempt {
            started_at: 0,
            duration_ms: 1,
            status_code: None,
            error: None,
        },
        next: Next::Delivered,
    };
    let claim = Claim {
        limit: 8,
        per_destination: 2,
        in_use: vec![("slack".into(), 1)],
        in_flight: vec![3],
    };
    let events = [e];
    let script = plain(&events, &[done], &[claim.clone(), claim], 0);
    assert_eq!(
        script.len(),
        10,
        "begin, keys, holders, events, deliveries, 2 records, 2 claims, commit"
    );
    // With rule memory: the reads, then the writes of cells and marks.
    let slot = Slot {
        scope: "once:r".into(),
        key: "k".into(),
    };
    let needs = Needs {
        cells: vec![slot.clone()],
        spans: vec![Span {
            slot: slot.clone(),
            from: 0,
            to: 10,
        }],
    };
    let reads = script::reads(&needs);
    let mark = Mark {
        slot: slot.clone(),
        at: 5,
        expires: 10,
    };
    let writes = script::body(
        &events,
        &[vec![Verdict::Suppressed("once")]],
        &[Changed::default()],
        &Writes {
            cells: vec![(slot, Cell::default())],
            marks: vec![mark],
            digests: vec![],
        },
        0,
    );
    assert_eq!(writes.len(), 4, "events, cells, marks, deliveries");
    for s in script.iter().chain(&reads).chain(&writes) {
        assert_eq!(s.sql.matches('?').count(), s.values.len(), "{}", s.sql);
    }
    // The plain script's text depends only on the number of claims (SQLite prepares it once).
    let again = plain(&[], &[], &[script_claim(), script_claim()], 5);
    let text = |s: &[Statement]| s.iter().map(|s| s.sql.clone()).collect::<String>();
    assert_eq!(text(&script), text(&again));
}

fn script_claim() -> Claim {
    Claim {
        limit: 1,
        per_destination: 1,
        in_use: vec![],
        in_flight: vec![],
    }
}
