//! The group commit's script: batches cut by payload size, statements and their values.

use super::*;
use crate::store::{Attempt, NewDelivery, Next};

fn event(bytes: usize) -> NewEvent {
    NewEvent {
        id: String::new(),
        source: String::new(),
        event_type: String::new(),
        lead_email: None,
        config_hash: String::new(),
        payload: "x".repeat(bytes),
        dedup_key: String::new(),
        deliveries: vec![],
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

#[test]
fn every_statement_binds_as_many_values_as_it_has_parameters() {
    let mut e = event(10);
    e.deliveries.push(NewDelivery {
        rule: "r".into(),
        action_index: 0,
        action_kind: "log".into(),
        destination: "r#1".into(),
        once: None,
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
    let script = script(&[e], &[done], &[claim.clone(), claim], 0);
    assert_eq!(
        script.len(),
        11,
        "begin, 5 intake (keys, holders, events, once keys, deliveries), 2 records, 2 claims, commit"
    );
    for s in &script {
        assert_eq!(s.sql.matches('?').count(), s.values.len(), "{}", s.sql);
    }
    // The script's text depends only on the number of claims (SQLite prepares it once).
    let again = super::script(&[], &[], &[script_claim(), script_claim()], 5);
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
