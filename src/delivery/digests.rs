//! The closer: sends the digests that are due. Every quarter of a second it asks the store for
//! open digests whose time has come (a window's end, a schedule, `max_events` reached, a
//! throttle window reopened) and closes each in a transaction of its own (see
//! `store::digests`), which creates one pending delivery per action of its rule with the
//! digest's context: from then on it is delivered, retried and dead-lettered like any other.
//! When the serving configuration changes (at start and at each reload), open digests whose
//! rule is gone, or no longer collects, are closed at once (`rule_removed`), with the
//! configuration of their last item, which had the rule.

use crate::app::App;
use crate::config::Config;
use crate::store::digests::{DigestContents, DigestDelivery, OpenDigest};
use crate::store::{Store, now_ms, rfc3339};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often due digests are looked for.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Distinct lead emails a digest's context lists at most (`digest.lead_emails`, sorted).
const LEAD_EMAILS: usize = 500;

/// Digests closed per look at most (the next look takes the rest).
const PER_LOOK: u32 = 100;

/// How often open digests are checked against the serving rules besides at each change of
/// configuration: a digest opened by an event in flight during a reload, or by another
/// instance still on the earlier rules, is sent then.
const REMOVED_EVERY: Duration = Duration::from_secs(10);

/// How long a digest that could not be closed waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Closes due digests until the task is stopped.
pub(super) async fn close_forever(app: Arc<App>, store: Store) {
    let mut checked: Option<(String, Instant)> = None;
    // Digests that could not be closed, and when to try again (not at every look).
    let mut failed: HashMap<i64, Instant> = HashMap::new();
    loop {
        let current = app.current();
        let stale = checked
            .as_ref()
            .is_none_or(|(hash, at)| *hash != current.hash || at.elapsed() >= REMOVED_EVERY);
        if stale {
            match close_removed(&app, &store, &current, &mut failed).await {
                Ok(()) => checked = Some((current.hash.clone(), Instant::now())),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot look for the digests of removed rules.")
                }
            }
        }
        match store.due_digests(now_ms(), PER_LOOK).await {
            Ok(due) => {
                for digest in due {
                    if failed
                        .get(&digest.id)
                        .is_some_and(|at| at.elapsed() < RETRY_AFTER)
                    {
                        continue;
                    }
                    close(&app, &store, &digest, None, &mut failed).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot look for due digests."),
        }
        failed.retain(|_, at| at.elapsed() < RETRY_AFTER);
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Whether `config` still collects digests of this kind for the rule: `digest:` for a rule's
/// digest, `over_limit: digest` for a throttle's.
fn still_collects(config: &Config, rule: &str, scope: &str) -> bool {
    let Some(r) = config.rules.by_name(rule) else {
        return false;
    };
    if scope.starts_with("digest-throttled:") {
        return r.throttle.as_ref().is_some_and(|t| t.digest);
    }
    if let Some(n) = outside_action(scope) {
        return r
            .actions
            .get(n)
            .and_then(|a| a.active.as_ref())
            .is_some_and(|a| a.digest);
    }
    r.digest.is_some()
}

/// The action (from 0) whose `outside: digest` a digest of this scope collects for.
fn outside_action(scope: &str) -> Option<usize> {
    let (_, n) = scope.strip_prefix("digest-outside:")?.rsplit_once('#')?;
    n.parse::<usize>().ok()?.checked_sub(1)
}

/// Closes at once the open digests whose rule `config` no longer has (or no longer collects).
async fn close_removed(
    app: &App,
    store: &Store,
    config: &Config,
    failed: &mut HashMap<i64, Instant>,
) -> Result<(), crate::store::StoreError> {
    for digest in store.open_digests().await? {
        if failed
            .get(&digest.id)
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            continue;
        }
        if !still_collects(config, &digest.rule, &digest.scope) {
            close(app, store, &digest, Some("rule_removed"), failed).await;
        }
    }
    Ok(())
}

/// Closes one digest with the configuration of its last item (or, should the store no longer
/// keep that one, the serving configuration when it still has the rule), and wakes the
/// workers. A digest with nothing to send it with stays open, to be tried again.
async fn close(
    app: &App,
    store: &Store,
    digest: &OpenDigest,
    reason: Option<&'static str>,
    failed: &mut HashMap<i64, Instant>,
) {
    let config = match app.config_kept(&digest.config_hash).await {
        Some(config) => config,
        None => app.current(),
    };
    if config.rules.by_name(&digest.rule).is_none() {
        failed.insert(digest.id, Instant::now());
        tracing::error!(
            rule = digest.rule,
            digest = digest.id,
            config = digest.config_hash,
            "A digest is due but no configuration at hand has its rule (the store could not give the one that matched its last event); it stays open and is tried again."
        );
        return;
    }
    let closed = store
        .close_digest(digest.id, reason, |contents| deliveries(&config, contents))
        .await;
    match closed {
        Ok(Some(c)) => {
            failed.remove(&digest.id);
            tracing::info!(
                rule = digest.rule,
                digest = digest.id,
                items = c.items,
                reason = c.reason,
                deliveries = c.deliveries,
                "Digest closed."
            );
            app.wake.notify_one();
        }
        Ok(None) => {}
        Err(e) => {
            failed.insert(digest.id, Instant::now());
            tracing::warn!(rule = digest.rule, digest = digest.id, error = %e, "Cannot close a digest; it stays open and is tried again.");
        }
    }
}

/// One delivery per action of the digest's rule in `config`, each with the digest's context.
fn deliveries(config: &Config, contents: &DigestContents) -> Vec<DigestDelivery> {
    let Some(rule) = config.rules.by_name(&contents.rule) else {
        return Vec::new();
    };
    let context = context(contents).to_string();
    // An `outside: digest` digest is its one action's; the others are every action's.
    let only = outside_action(&contents.scope);
    rule.actions
        .iter()
        .enumerate()
        .filter(|(i, _)| only.is_none_or(|n| n == *i))
        .map(|(i, step)| DigestDelivery {
            action_index: i as u32,
            action_kind: step.action.kind().to_string(),
            destination: step.destination.clone(),
            context: context.clone(),
        })
        .collect()
}

/// What a digest's templates see over its last event: `events` (the first `list`, in arrival
/// order) and `digest` (its counts and times).
pub fn context(contents: &DigestContents) -> Value {
    let events: Vec<Value> = contents
        .items
        .iter()
        .filter(|i| i.seq <= contents.list)
        .filter_map(|i| i.payload.as_deref())
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .collect();
    let mut by_event: BTreeMap<&str, u64> = BTreeMap::new();
    let mut leads: BTreeSet<String> = BTreeSet::new();
    for i in &contents.items {
        *by_event.entry(i.event_type.as_str()).or_default() += 1;
        if let Some(lead) = &i.lead_email {
            leads.insert(lead.trim().to_ascii_lowercase());
        }
    }
    let count = contents.items.len();
    let mut counts: Map<String, Value> = crate::rules::digest::by_event_zeroed();
    for (kind, n) in by_event {
        counts.insert(kind.to_string(), Value::from(n));
    }
    let by_event = counts;
    json!({
        "digest": {
            "count": count,
            "listed": events.len(),
            "truncated": count.saturating_sub(events.len()),
            "by_event": by_event,
            "leads": leads.len(),
            "lead_emails": leads.iter().take(LEAD_EMAILS).collect::<Vec<_>>(),
            "key": contents.key,
            "rule": contents.rule,
            "opened_at": rfc3339(contents.opened_at),
            "closed_at": rfc3339(contents.closed_at),
            "reason": contents.reason,
        },
        "events": events,
    })
}
