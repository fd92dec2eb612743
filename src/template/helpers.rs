//! Template helpers: `truncate`, `default`, `upper`, `lower`, `json`, `date`, `url` (Handlebars' own
//! `if`, `each`, `eq`, `and`, `or`, `not`, … remain). Helpers that return a value have it escaped
//! like any other value; `json` writes a JSON value escaped for the template's destination.

use super::escape::{self, Escape};
use chrono::{DateTime, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, Output, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value;

pub(super) fn register(hb: &mut Handlebars<'static>, mode: Escape) {
    hb.register_helper("truncate", Box::new(ValueHelper(truncate)));
    hb.register_helper("default", Box::new(ValueHelper(default)));
    hb.register_helper(
        "upper",
        Box::new(ValueHelper(|h| Ok(text(h, 0)?.to_uppercase().into()))),
    );
    hb.register_helper(
        "lower",
        Box::new(ValueHelper(|h| Ok(text(h, 0)?.to_lowercase().into()))),
    );
    hb.register_helper("date", Box::new(ValueHelper(date)));
    hb.register_helper("json", Box::new(Json(mode)));
    hb.register_helper("url", Box::new(Url(mode)));
}

type Compute = fn(&Helper<'_>) -> Result<Value, RenderError>;

/// A helper that computes a value; Handlebars escapes it like any `{{value}}`.
struct ValueHelper(Compute);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.0)(h).map(ScopedJson::Derived)
    }
}

/// A helper's parameter. Strict mode holds here too: a path that does not exist is an error
/// (Handlebars only checks bare `{{x}}`), except under `raw.`, whose fields vary by payload and
/// read as null.
fn param<'a>(h: &'a Helper<'_>, i: usize) -> Result<&'a Value, RenderError> {
    let p = h
        .param(i)
        .ok_or_else(|| RenderError::from(RenderErrorReason::ParamNotFoundForIndex("helper", i)))?;
    if p.is_value_missing() {
        let path = p.relative_path().cloned();
        let open = path
            .as_deref()
            .is_some_and(|p| p == "raw" || p.starts_with("raw."));
        if !open {
            return Err(RenderErrorReason::MissingVariable(path).into());
        }
    }
    Ok(p.value())
}

/// A parameter as text: strings as they are, null as empty, anything else as JSON.
fn text(h: &Helper<'_>, i: usize) -> Result<String, RenderError> {
    Ok(match param(h, i)? {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

/// `{{truncate reply.text 200}}`: at most N characters, with an ellipsis when cut.
fn truncate(h: &Helper<'_>) -> Result<Value, RenderError> {
    let max = param(h, 1)?.as_u64().ok_or_else(|| {
        RenderErrorReason::InvalidParamType("truncate takes a length, as in {{truncate x 200}}")
    })?;
    Ok(escape::truncate(&text(h, 0)?, max as usize).into())
}

/// `{{default lead.first_name "there"}}`: the fallback when the value is null or empty.
fn default(h: &Helper<'_>) -> Result<Value, RenderError> {
    let value = param(h, 0)?;
    let empty = match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    };
    Ok(if empty {
        param(h, 1)?.clone()
    } else {
        value.clone()
    })
}

/// `{{date timestamp "%d %b %Y %H:%M"}}`: an RFC 3339 time in strftime format (UTC);
/// the default format is `%Y-%m-%d %H:%M UTC`. A value that is not a time passes through.
fn date(h: &Helper<'_>) -> Result<Value, RenderError> {
    let raw = text(h, 0)?;
    let format = match h.param(1).map(|p| p.value()) {
        Some(Value::String(f)) => f.clone(),
        _ => "%Y-%m-%d %H:%M UTC".to_string(),
    };
    let Ok(time) = DateTime::parse_from_rfc3339(&raw) else {
        return Ok(raw.into());
    };
    let mut out = String::new();
    use std::fmt::Write;
    write!(out, "{}", time.with_timezone(&Utc).format(&format))
        .map_err(|_| RenderErrorReason::InvalidParamType("date format (strftime)"))?;
    Ok(out.into())
}

/// `{{json x}}`: `x` as a JSON value. In Slack templates its strings are Slack-escaped; in HTML
/// and URL templates the JSON text is escaped for the page or URL.
struct Json(Escape);

impl HelperDef for Json {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> Result<(), RenderError> {
        let value = param(h, 0)?;
        let text = if self.0.is_slack() {
            serde_json::to_string(&map_strings(value, &escape::slack))
        } else {
            serde_json::to_string(value)
        }
        .map_err(|e| RenderErrorReason::Other(e.to_string()))?;
        let text = match self.0 {
            Escape::Html | Escape::Url => (self.0.function())(&text),
            _ => text,
        };
        out.write(&text)?;
        Ok(())
    }
}

/// `{{url inbox_url}}`: a link for a field that holds a URL (a Block Kit button's `url`, an
/// `href`). Only http(s) URLs pass (anything else renders empty, so no `javascript:`); the URL
/// is escaped for the JSON string or HTML attribute it sits in, but not Slack-escaped, which
/// would break `&` in its query.
struct Url(Escape);

impl HelperDef for Url {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> Result<(), RenderError> {
        let url = text(h, 0)?;
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Ok(());
        }
        let escaped = match self.0 {
            Escape::SlackJson | Escape::Json => escape::json_string(&url),
            Escape::Html => handlebars::html_escape(&url),
            Escape::Slack => escape::slack(&url),
            Escape::Url => escape::url_component(&url),
            Escape::Plain => url,
        };
        out.write(&escaped)?;
        Ok(())
    }
}

fn map_strings(value: &Value, f: &dyn Fn(&str) -> String) -> Value {
    match value {
        Value::String(s) => Value::String(f(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| map_strings(v, f)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), map_strings(v, f)))
                .collect(),
        ),
        other => other.clone(),
    }
}
