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

type Key = (Option<String>, Option<i64>);

/// Rule positions filed by (event type, campaign id); `None` means "any".
#[derive(Debug, Default)]
pub(super) struct Index {
    buckets: HashMap<Key, Bucket>,
}

/// The rules of one (event type, campaign id) key.
#[derive(Debug, Default)]
struct Bucket {
    /// Rules evaluated for every event of the key.
    always: Vec<usize>,
    /// Rules that require a campaign-name glob, until the set is built from them.
    globs: Vec<(Glob, usize)>,
    /// The set of those globs, and the rule of each.
    glob_set: Option<(GlobSet, Vec<usize>)>,
    /// Rules that require a field to equal a string: path → value → rules.
    values: HashMap<Vec<String>, HashMap<String, Vec<usize>>>,
    /// Rules that require an email field to end with `@domain`: path → `@domain` → rules.
    domains: HashMap<Vec<String>, HashMap<String, Vec<usize>>>,
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
        let mut buckets: HashMap<Key, Bucket> = HashMap::new();
        for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            let events: Vec<Option<String>> = requirement(&rule.when, &|c| match c {
                Condition::Event(names) => Some(names.clone()),
                _ => None,
            })
            .map_or(vec![None], |v| v.into_iter().map(Some).collect());
            let campaigns: Vec<Option<i64>> = requirement(&rule.when, &|c| match c {
                Condition::CampaignId(ids) => Some(ids.clone()),
                _ => None,
            })
            .map_or(vec![None], |v| v.into_iter().map(Some).collect());
            let narrow = narrow(&rule.when);
            for e in &events {
                for c in &campaigns {
                    let bucket = buckets.entry((e.clone(), *c)).or_default();
                    match &narrow {
                        Narrow::Globs(globs) => {
                            bucket.globs.extend(globs.iter().map(|g| (g.clone(), i)))
                        }
                        Narrow::Value(path, v) => bucket
                            .values
                            .entry(path.clone())
                            .or_default()
                            .entry(v.clone())
                            .or_default()
                            .push(i),
                        Narrow::Domain(path, d) => bucket
                            .domains
                            .entry(path.clone())
                            .or_default()
                            .entry(d.clone())
                            .or_default()
                            .push(i),
                        Narrow::Nothing => bucket.always.push(i),
                    }
                }
            }
        }
        for bucket in buckets.values_mut() {
            bucket.seal();
        }
        Index { buckets }
    }

    /// Positions of the rules that may match `event`, ascending, without repeats.
    pub(super) fn candidates(&self, event: &(impl EventView + ?Sized)) -> Vec<usize> {
        let (canonical, sent) = event.kinds();
        let campaign = event.campaign_id();
        let mut found = Vec::new();
        let mut visit = |t: Option<&str>| {
            let t = t.map(str::to_string);
            if campaign.is_some()
                && let Some(b) = self.buckets.get(&(t.clone(), campaign))
            {
                b.candidates(event, &mut found);
            }
            if let Some(b) = self.buckets.get(&(t, None)) {
                b.candidates(event, &mut found);
            }
        };
        visit(Some(canonical));
        visit(None);
        if sent != canonical {
            visit(Some(sent));
        }
        found.sort_unstable();
        found.dedup();
        found
    }
}

impl Bucket {
    fn seal(&mut self) {
        if self.globs.is_empty() {
            return;
        }
        // The globs are compiled into the set and not kept: they are a tenth of a large index.
        let globs = std::mem::take(&mut self.globs);
        let mut builder = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(globs.len());
        for (glob, i) in globs {
            builder.add(glob);
            rules.push(i);
        }
        if let Ok(set) = builder.build() {
            self.glob_set = Some((set, rules));
        } else {
            // Cannot happen (every glob compiled on its own); evaluate them all rather than none.
            self.always.extend(rules);
        }
    }

    fn candidates(&self, event: &(impl EventView + ?Sized), out: &mut Vec<usize>) {
        out.extend_from_slice(&self.always);
        if self.glob_set.is_none() && self.values.is_empty() && self.domains.is_empty() {
            return;
        }
        let event = event.value();
        if let Some((set, rules)) = &self.glob_set
            && let Some(name) = event
                .get("campaign")
                .and_then(|c| c.get("name"))
                .and_then(Value::as_str)
        {
            out.extend(set.matches(name).into_iter().map(|g| rules[g]));
        }
        for (path, by_value) in &self.values {
            if let Some(v) = event::lookup(event, path).and_then(Value::as_str)
                && let Some(rules) = by_value.get(v)
            {
                out.extend_from_slice(rules);
            }
        }
        for (path, by_domain) in &self.domains {
            if let Some(v) = event::lookup(event, path).and_then(Value::as_str)
                && let Some(at) = v.rfind('@')
                && let Some(rules) = by_domain.get(&v[at..])
            {
                out.extend_from_slice(rules);
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
                    origin: Default::default(),
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
            set.index
                .candidates(&e)
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
        }
    }
}
