//! Compiling a `when` block as written into a [`Condition`], reporting every problem with its
//! position.

use super::{Cmp, Condition, FieldTest, OPERATORS, as_number};
use crate::rules::pattern::Pattern;
use crate::rules::{RawWhen, RawWindow};
use crate::syntax::{OneOrMany, Pos, Spanned, pos};
use serde_json::Value;

/// Compiles a rule's `when` block, reporting every problem (with its position) through
/// `error`: its `window`s are left for the rule to compile (each becomes
/// [`Condition::Window`] with its position in the list returned).
pub fn compile<'a>(
    when: &'a Spanned<RawWhen>,
    error: &mut dyn FnMut(Pos, String),
) -> (Condition, Vec<&'a Spanned<RawWindow>>) {
    let mut windows = Some(Vec::new());
    let condition = compile_part(when, error, &mut windows, true);
    (condition, windows.unwrap_or_default())
}

/// Compiles a `when` block inside another construct (a window's `of` and `per`), where neither
/// `unless_seen` nor `window` belongs.
pub fn compile_plain(when: &Spanned<RawWhen>, error: &mut dyn FnMut(Pos, String)) -> Condition {
    compile_part(when, error, &mut None, false)
}

/// Compiles a `when` block, `top` when it is the rule's own (where `unless_seen` belongs; the
/// rule compiles it); `windows` gathers its windows, `None` where they do not belong.
fn compile_part<'a>(
    when: &'a Spanned<RawWhen>,
    error: &mut dyn FnMut(Pos, String),
    windows: &mut Option<Vec<&'a Spanned<RawWindow>>>,
    top: bool,
) -> Condition {
    let w = &when.value;
    if !top && let Some(u) = &w.unless_seen {
        let message = "`unless_seen` belongs directly under the rule's `when`, not inside `any`, `all` or `not`";
        error(pos(u), message.into());
    }
    let mut parts = Vec::new();
    if let Some(events) = &w.event {
        let names = events.value.clone().into_vec();
        if names.is_empty() {
            error(pos(events), "`event` lists no event type".into());
        }
        parts.push(Condition::Event(names));
    }
    if let Some(campaign) = &w.campaign {
        let c = &campaign.value;
        if c.id.is_none() && c.name.is_none() {
            error(pos(campaign), "`campaign` needs `id` or `name`".into());
        }
        if let Some(ids) = &c.id {
            let mut parsed = Vec::new();
            let ids = match ids.clone() {
                OneOrMany::One(Value::Array(list)) => list,
                other => other.into_vec(),
            };
            for id in ids {
                match as_number(&id).filter(|n| n.fract() == 0.0) {
                    Some(n) => parsed.push(n as i64),
                    None => error(
                        pos(campaign),
                        format!("campaign id {id} is not a whole number"),
                    ),
                }
            }
            parts.push(Condition::CampaignId(parsed));
        }
        if let Some(names) = &c.name {
            let globs = names
                .clone()
                .into_vec()
                .into_iter()
                .filter_map(|g| match Pattern::glob(&g) {
                    Ok(glob) => Some(glob),
                    Err(e) => {
                        error(pos(campaign), format!("bad campaign name glob {g:?}: {e}"));
                        None
                    }
                })
                .collect();
            parts.push(Condition::CampaignName(globs));
        }
    }
    for (path, value) in &w.fields {
        let at = pos(value);
        if path.is_empty() || path.split('.').any(str::is_empty) {
            error(
                at,
                format!("field path {path:?} is not a dotted path like lead.email"),
            );
            continue;
        }
        let test = field_test(&value.value, &mut |m| {
            error(at, format!("field {path}: {m}"))
        });
        parts.push(Condition::Field {
            path: path.clone(),
            segments: path.split('.').map(str::to_string).collect(),
            test,
        });
    }
    if let Some(window) = &w.window {
        match windows {
            Some(list) => {
                parts.push(Condition::Window(list.len()));
                list.push(window);
            }
            None => error(
                pos(window),
                "`window` belongs in a rule's `when` (or its `any`, `all`, `not`), not in a window's `of` or `per`".into(),
            ),
        }
    }
    let mut nested = |list: &'a Option<Vec<Spanned<RawWhen>>>,
                      error: &mut dyn FnMut(Pos, String)| {
        list.as_ref().map(|l| {
            l.iter()
                .map(|w| compile_part(w, error, windows, false))
                .collect::<Vec<_>>()
        })
    };
    if let Some(any) = nested(&w.any, error) {
        if any.is_empty() {
            error(pos(when), "`any` is empty, so it can never hold".into());
        }
        parts.push(Condition::Any(any));
    }
    if let Some(all) = nested(&w.all, error) {
        parts.push(Condition::All(all));
    }
    if let Some(not) = &w.not {
        let inner = compile_part(not, error, windows, false);
        parts.push(Condition::Not(Box::new(inner)));
    }
    if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        // Kept as long as the configuration serves: no room for parts that never come.
        parts.shrink_to_fit();
        Condition::All(parts)
    }
}

/// Compiles one field's condition: a bare value (equals) or a map of operators.
fn field_test(value: &Value, error: &mut dyn FnMut(String)) -> FieldTest {
    let Value::Object(ops) = value else {
        return FieldTest::Equals(value.clone());
    };
    if ops.is_empty() {
        error(format!(
            "empty condition; use one of: {}",
            OPERATORS.join(", ")
        ));
    }
    let mut tests: Vec<FieldTest> = ops
        .iter()
        .filter_map(|(op, arg)| operator(op, arg, error))
        .collect();
    if tests.len() == 1 {
        tests.pop().expect("one test")
    } else {
        FieldTest::All(tests)
    }
}

fn operator(op: &str, arg: &Value, error: &mut dyn FnMut(String)) -> Option<FieldTest> {
    let text = |error: &mut dyn FnMut(String)| match arg {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => {
            error(format!("`{op}` takes a string, not {arg}"));
            None
        }
    };
    let list = |error: &mut dyn FnMut(String)| match arg {
        Value::Array(items) => Some(items.clone()),
        _ => {
            error(format!("`{op}` takes a list, as in {op}: [a, b]"));
            None
        }
    };
    let number = |error: &mut dyn FnMut(String)| match as_number(arg) {
        Some(n) => Some(n),
        None => {
            error(format!("`{op}` takes a number, not {arg}"));
            None
        }
    };
    Some(match op {
        "equals" => FieldTest::Equals(arg.clone()),
        "in" => FieldTest::In(list(error)?),
        "not_in" => FieldTest::NotIn(list(error)?),
        "exists" => match arg {
            Value::Bool(b) => FieldTest::Exists(*b),
            _ => {
                error("`exists` takes true or false".into());
                return None;
            }
        },
        "contains" => FieldTest::Contains(text(error)?),
        "starts_with" => FieldTest::StartsWith(text(error)?),
        "ends_with" => FieldTest::EndsWith(text(error)?),
        "matches" => match Pattern::regex(&text(error)?) {
            Ok(re) => FieldTest::Matches(re),
            Err(e) => {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or("").trim();
                error(format!("bad regular expression: {last}"));
                return None;
            }
        },
        "gt" => FieldTest::Compare(Cmp::Gt, number(error)?),
        "gte" => FieldTest::Compare(Cmp::Gte, number(error)?),
        "lt" => FieldTest::Compare(Cmp::Lt, number(error)?),
        "lte" => FieldTest::Compare(Cmp::Lte, number(error)?),
        "not" => FieldTest::Not(Box::new(field_test(arg, error))),
        other => {
            error(format!(
                "unknown operator `{other}`; expected one of: {}",
                OPERATORS.join(", ")
            ));
            return None;
        }
    })
}
