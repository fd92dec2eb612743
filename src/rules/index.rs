//! The rule index: rules filed under the event types and campaign ids their conditions require,
//! and, within those, under the campaign-name glob, field value or email domain they require,
//! so that matching evaluates only rules that could match an event. A rule set of thousands
//! then costs little more per event than a handful.

use super::condition::FieldTest;
use super::{Condition, Rule};
use crate::event::{self, EventView};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// An event type's number in [`Index::events`] ([`ANY`]: rules that name none), and a
/// campaign id (`None`: any).
type Key = (u32, Option<i64>);

/// The key's event number of rules that name no event type.
const ANY: u32 = u32::MAX;

/// Rule positions filed by (event type, campaign id). Kept small: a reload builds a new index
/// while the serving one (and the one before, for its pending deliveries) are in memory, and
/// 10,000 rules make thousands of keys.
#[derive(Debug, Default)]
pub(super) struct Index {
    /// The event types rules name, by their number in keys.
    events: Vec<String>,
    buckets: HashMap<Key, Bucket>,
}

/// The rules of one key, as positions (`u32`: half the size of `usize`, and a rule set has
/// far fewer rules).
#[derive(Debug, Default)]
struct Bucket {
    /// Rules evaluated for every event of the key.
    always: Vec<u32>,
    /// Rules narrowed further, in the few buckets that have any.
    narrowed: Option<Box<Narrowed>>,
}

/// Rules of a bucket that require more than its key.
#[derive(Debug, Default)]
struct Narrowed {
    /// Rules that require a campaign-name glob, until the set is built from them.
    globs: Vec<(Glob, u32)>,
    /// The set of those globs, and the rule of each.
    glob_set: Option<(GlobSet, Vec<u32>)>,
    /// Rules that require a field to equal a string: path → value → rules.
    values: HashMap<Vec<String>, HashMap<String, Vec<u32>>>,
    /// Rules that require an email field to end with `@domain`: path → `@domain` → rules.
    domains: HashMap<Vec<String>, HashMap<String, Vec<u32>>>,
}

/// What narrows a rule within its bucket.
enum Narrow {
    Globs(Vec<Glob>),
    Value(Vec<String>, String),
    Domain(Vec<String>, String),
    Nothing,
}

impl Index {
    pub(super) fn build(rules: &[Arc<Rule>]) -> Self {
        let mut events: Vec<String> = Vec::new();
        let mut buckets: HashMap<Key, Bucket> = HashMap::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            // A rule set is far from 4 billion rules (each is hundreds of bytes).
            let i = i as u32;
            let named: Option<Vec<String>> = requirement(&rule.when, &|c| match c {
                Condition::Event(names) => Some(names.clone()),
                _ => None,
            });
            let keys: Vec<u32> = match named {
                None => vec![ANY],
                Some(names) => names
                    .into_iter()
                    .map(|name| match events.iter().position(|e| *e == name) {
                        Some(at) => at as u32,
                        None => {
                            events.push(name);
                            events.len() as u32 - 1
                        }
                    })
                    .collect(),
            };
            let campaigns: Vec<Option<i64>> = requirement(&rule.when, &|c| match c {
                Condition::CampaignId(ids) => Some(ids.clone()),
                _ => None,
            })
            .map_or(vec![None], |v| v.into_iter().map(Some).collect());
            let narrow = narrow(&rule.when);
            for &e in &keys {
                for c in &campaigns {
                    let bucket = buckets.entry((e, *c)).or_default();
                    if let Narrow::Nothing = narrow {
                        bucket.always.push(i);
                        continue;
                    }
                    let more = bucket.narrowed.get_or_insert_with(Box::default);
                    match &narrow {
                        Narrow::Globs(globs) => {
                            more.globs.extend(globs.iter().map(|g| (g.clone(), i)))
                        }
                        Narrow::Value(path, v) => more
                            .values
                            .entry(path.clone())
                            .or_default()
                            .entry(v.clone())
                            .or_default()
                            .push(i),
                        Narrow::Domain(path, d) => more
                            .domains
                            .entry(path.clone())
                            .or_default()
                            .entry(d.clone())
                            .or_default()
                            .push(i),
                        Narrow::Nothing => {}
                    }
                }
            }
        }
        for bucket in buckets.values_mut() {
            bucket.seal();
        }
        buckets.shrink_to_fit();
        Index { events, buckets }
    }

    /// Positions of the rules that may match `event`, ascending, without repeats.
    pub(super) fn candidates(&self, event: &(impl EventView + ?Sized)) -> Vec<usize> {
        let (canonical, sent) = event.kinds();
        let campaign = event.campaign_id();
        let mut found = Vec::new();
        let mut visit = |e: u32| {
            if campaign.is_some()
                && let Some(b) = self.buckets.get(&(e, campaign))
            {
                b.candidates(event, &mut found);
            }
            if let Some(b) = self.buckets.get(&(e, None)) {
                b.candidates(event, &mut found);
            }
        };
        // An event type no rule names has no bucket.
        let number = |t: &str| self.events.iter().position(|e| e == t).map(|at| at as u32);
        if let Some(e) = number(canonical) {
            visit(e);
        }
        visit(ANY);
        if sent != canonical
            && let Some(e) = number(sent)
        {
            visit(e);
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

impl Bucket {
    fn seal(&mut self) {
        self.always.shrink_to_fit();
        let Some(more) = &mut self.narrowed else {
            return;
        };
        if more.globs.is_empty() {
            return;
        }
        // The globs are compiled into the set and not kept: they are a tenth of a large index.
        let globs = std::mem::take(&mut more.globs);
        let mut builder = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(globs.len());
        for (glob, i) in globs {
            builder.add(glob);
            rules.push(i);
        }
        if let Ok(set) = builder.build() {
            more.glob_set = Some((set, rules));
        } else {
            // Cannot happen (every glob compiled on its own); evaluate them all rather than none.
            self.always.extend(rules);
        }
    }

    fn candidates(&self, event: &(impl EventView + ?Sized), out: &mut Vec<usize>) {
        let position = |&i: &u32| i as usize;
        out.extend(self.always.iter().map(position));
        let Some(more) = &self.narrowed else {
            return;
        };
        let event = event.value();
        if let Some((set, rules)) = &more.glob_set
            && let Some(name) = event
                .get("campaign")
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
        {
            out.extend(set.matches(name).into_iter().map(|g| rules[g] as usize));
        }
        for (path, by_value) in &more.values {
            if let Some(v) = event::lookup(event, path).and_then(Value::as_str)
                && let Some(rules) = by_value.get(v)
            {
                out.extend(rules.iter().map(position));
            }
        }
        for (path, by_domain) in &more.domains {
            if let Some(v) = event::lookup(event, path).and_then(Value::as_str)
                && let Some(at) = v.rfind('@')
                && let Some(rules) = by_domain.get(&v[at..])
            {
                out.extend(rules.iter().map(position));
            }
        }
    }
}

/// The values a condition requires (`None`: no requirement, any value may match). Through
/// `all`, the first part that requires some; through `any`, the union when every branch does.
fn requirement<T: Clone>(
    cond: &Condition,
    pick: &dyn Fn(&Condition) -> Option<Vec<T>>,
) -> Option<Vec<T>> {
    if let Some(values) = pick(cond) {
        return Some(values);
    }
    match cond {
        Condition::All(parts) => parts.iter().find_map(|p| requirement(p, pick)),
        Condition::Any(parts) if !parts.is_empty() => {
            let mut union = Vec::new();
            for p in parts {
                union.extend(requirement(p, pick)?);
            }
            Some(union)
        }
        _ => None,
    }
}

/// A further requirement within a bucket: a campaign-name glob, a field equal to a string, or
/// an email field in a domain (`ends_with: "@domain"`), found at the top level or through `all`.
fn narrow(cond: &Condition) -> Narrow {
    let parts: Vec<&Condition> = match cond {
        Condition::All(parts) => parts.iter().collect(),
        other => vec![other],
    };
    for part in &parts {
        if let Condition::CampaignName(globs) = part {
            let compiled: Option<Vec<Glob>> =
                globs.iter().map(|g| Glob::new(g.as_str()).ok()).collect();
            if let Some(compiled) = compiled {
                return Narrow::Globs(compiled);
            }
        }
    }
    for part in &parts {
        if let Condition::Field { segments, test, .. } = part {
            match test {
                // Only strings that equal nothing but themselves: numeric and boolean strings
                // also equal numbers and booleans, which a lookup by text would miss.
                FieldTest::Equals(Value::String(s))
                    if s.trim().parse::<f64>().is_err()
                        && !s.eq_ignore_ascii_case("true")
                        && !s.eq_ignore_ascii_case("false") =>
                {
                    return Narrow::Value(segments.clone(), s.clone());
                }
                FieldTest::EndsWith(s)
                    if s.starts_with('@') && s.len() > 1 && s[1..].find('@').is_none() =>
                {
                    return Narrow::Domain(segments.clone(), s.clone());
                }
                _ => {}
            }
        }
    }
    Narrow::Nothing
}

#[cfg(test)]
mod tests {
    use super::super::{RawWhen, Rule, RuleSet, condition};
    use super::*;
    use crate::syntax::Spanned;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// Rules with these names and `when` blocks, in order (actions play no part in matching).
    fn rules(yaml: &str) -> RuleSet {
        let whens: BTreeMap<String, Spanned<RawWhen>> =
            serde_saphyr::from_str(yaml).expect("valid rules");
        let mut rules: Vec<(usize, Rule)> = whens
            .into_iter()
            .map(|(key, when)| {
                let (order, name) = key.split_once(' ').expect("`N name` keys");
                let (when, _) = condition::compile(&when, &mut |at, m| panic!("{at:?}: {m}"));
                let rule = Rule {
                    name: name.to_string(),
                    enabled: true,
                    stop: false,
                    when,
                    actions: vec![],
                    origin: (Arc::from(std::path::Path::new("")), 0),
                    once: None,
                    unless_seen: None,
                    throttle: None,
                    windows: vec![],
                    fire: None,
                    digest: None,
                };
                (order.parse().expect("a number"), rule)
            })
            .collect();
        rules.sort_by_key(|(order, _)| *order);
        RuleSet::new(rules.into_iter().map(|(_, r)| Arc::new(r)).collect())
    }

    const RULES: &str = r#"
1 by-glob: { event: EMAIL_REPLIED, campaign: { name: "Q2 *" } }
2 by-domain: { fields: { lead.email: { ends_with: "@acme.example" } } }
3 by-value: { fields: { bounce.type: hard } }
4 by-any: { any: [{ event: EMAIL_CLICKED }, { event: EMAIL_OPENED, fields: { open.count: { gte: 3 } } }] }
5 always: { fields: { lead.email: { contains: "x" } } }
"#;

    #[test]
    fn only_rules_that_could_match_are_candidates() {
        let set = rules(RULES);
        let names = |e: Value| -> Vec<String> {
            set.candidates(&e)
                .into_iter()
                .map(|i| set.get(i).name.clone())
                .collect()
        };
        let reply = json!({"event": "EMAIL_REPLIED", "campaign": {"name": "Q2 Launch"}, "lead": {"email": "a@acme.example"}});
        assert_eq!(names(reply), ["by-glob", "by-domain", "always"]);
        let other = json!({"event": "EMAIL_REPLIED", "campaign": {"name": "Q1"}, "lead": {"email": "a@other.example"}, "bounce": {"type": "hard"}});
        assert_eq!(names(other), ["by-value", "always"]);
        let click = json!({"event": "EMAIL_CLICKED", "lead": {"email": null}});
        assert_eq!(names(click), ["by-any", "always"]);
    }

    #[test]
    fn the_index_never_changes_what_matches() {
        let set = rules(RULES);
        for e in [
            json!({"event": "EMAIL_REPLIED", "campaign": {"name": "Q2 Launch"}, "lead": {"email": "x@acme.example"}}),
            json!({"event": "EMAIL_OPENED", "open": {"count": 5}, "lead": {"email": "b@x.example"}}),
            json!({"event": "EMAIL_BOUNCED", "bounce": {"type": "hard"}, "lead": {"email": "c@acme.example"}}),
        ] {
            let indexed: Vec<usize> = set.matching(&e);
            let brute: Vec<usize> = (0..set.rules().len())
                .filter(|&i| set.get(i).when.holds(&e))
                .collect();
            assert_eq!(indexed, brute, "{e}");
            // A set whose index was let go (no longer serving) still matches the same.
            let without = RuleSet::new(set.rules().to_vec());
            without.retire_index();
            assert_eq!(without.candidates(&e).len(), set.rules().len());
            assert_eq!(without.matching(&e), brute, "{e}");
        }
    }
}
