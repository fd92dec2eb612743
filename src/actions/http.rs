//! Any HTTP endpoint (a CRM, a suppression list, n8n): method, templated URL, headers and body,
//! a timeout, and the response status read into a retry decision. The status rules here are
//! shared with Slack.

use super::context::Ctx;
use super::{Channel, Clients, Common, FailureKind, RenderFailure, SendError, forgery, redact_url};
use crate::syntax::{Spanned, pos};
use crate::template::escape::{header_value, truncate};
use crate::template::{Data, Escape, Template, Templates};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Headers whose values are always treated as secrets in output.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
];

/// `http:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A destination to take unset settings from.
    pub destination: Option<Spanned<String>>,
    /// A time window (`time_windows:`) outside which the action is not sent right away.
    pub active: Option<Spanned<String>>,
    /// Outside `active`: `hold` (until the window opens; the default) or `drop`.
    pub outside: Option<Spanned<String>>,
    /// The URL; a template (values percent-encoded) after `${VAR}` expansion.
    pub url: Option<Spanned<String>>,
    /// GET, POST (default), PUT, PATCH or DELETE.
    pub method: Option<Spanned<String>>,
    /// Extra headers; values may use `${VAR}` and templates.
    pub headers: Option<BTreeMap<String, Spanned<String>>>,
    /// Inline body template.
    pub body: Option<Spanned<String>>,
    /// Body template file.
    pub template: Option<Spanned<String>>,
    /// How long to wait for the answer (`10s`, `500ms`); default 10s.
    pub timeout: Option<Spanned<String>>,
    /// Let a URL built from event data reach loopback, private and link-local addresses.
    pub allow_private: Option<bool>,
}

/// A compiled HTTP action.
#[derive(Debug)]
pub struct Http {
    url: Result<Template, String>,
    url_secret: bool,
    method: reqwest::Method,
    headers: Vec<(String, Template, bool)>,
    body: Option<Template>,
    timeout: Duration,
    screen_target: bool,
}

/// A rendered HTTP request.
#[derive(Clone, Serialize)]
pub struct HttpMessage {
    /// The method.
    pub method: String,
    /// The URL.
    #[serde(skip)]
    pub url: String,
    /// Whether the URL carries a secret (came from the environment).
    #[serde(skip)]
    pub url_secret: bool,
    /// Headers as (name, value, secret).
    #[serde(skip)]
    pub headers: Vec<(String, String, bool)>,
    /// The body, if any.
    pub body: Option<String>,
    /// The timeout.
    #[serde(skip)]
    pub timeout: Duration,
    /// Whether the URL comes from event data and must not reach an internal address.
    #[serde(skip)]
    pub screen_target: bool,
}

// By hand, so that URLs and header values (secrets) never reach a log through `{:?}`.
impl std::fmt::Debug for HttpMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMessage")
            .field("method", &self.method)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Channel for Http {
    type Settings = Settings;
    type Message = HttpMessage;

    fn merge(a: Settings, d: &Settings) -> Settings {
        let headers = match (a.headers, &d.headers) {
            (Some(mine), Some(theirs)) => {
                let mut all = theirs.clone();
                all.extend(mine);
                Some(all)
            }
            (mine, theirs) => mine.or_else(|| theirs.clone()),
        };
        Settings {
            destination: a.destination,
            active: a.active,
            outside: a.outside,
            url: a.url.or_else(|| d.url.clone()),
            method: a.method.or_else(|| d.method.clone()),
            headers,
            body: a.body.or_else(|| d.body.clone()),
            template: a.template.or_else(|| d.template.clone()),
            timeout: a.timeout.or_else(|| d.timeout.clone()),
            allow_private: a.allow_private.or(d.allow_private),
        }
    }

    fn common(s: &Settings) -> Common<'_> {
        Common {
            destination: s.destination.as_ref(),
            active: s.active.as_ref(),
            outside: s.outside.as_ref(),
        }
    }

    fn compile(s: Settings, cx: &mut Ctx<'_>) -> Option<Self> {
        let Some(url) = &s.url else {
            let at = cx.at;
            cx.error(at, "http action needs `url` (here or in its destination)");
            return None;
        };
        let expanded = cx.expand_template(url)?;
        let url_template = if expanded.value.trim().is_empty() {
            Err(cx.unconfigured(pos(url), "url", &expanded))
        } else {
            let literal = expanded
                .value
                .split("{{")
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if !(literal.starts_with("http://") || literal.starts_with("https://")) {
                let shown = redact(&expanded.value, expanded.from_env());
                cx.error(
                    pos(url),
                    format!("`url` must start with http:// or https:// (got {shown:?})"),
                );
                return None;
            }
            let spanned = Spanned {
                value: expanded.value.clone(),
                referenced: url.referenced,
                defined: url.defined,
            };
            Ok(cx.template(Some(&spanned), None, Escape::Url, ("url", ""))??)
        };
        let method = match &s.method {
            None => reqwest::Method::POST,
            Some(m) => match m.value.to_ascii_uppercase().as_str() {
                "GET" => reqwest::Method::GET,
                "POST" => reqwest::Method::POST,
                "PUT" => reqwest::Method::PUT,
                "PATCH" => reqwest::Method::PATCH,
                "DELETE" => reqwest::Method::DELETE,
                other => {
                    cx.error(
                        pos(m),
                        format!("unknown method {other:?}; use GET, POST, PUT, PATCH or DELETE"),
                    );
                    return None;
                }
            },
        };
        let mut json_body = true;
        let mut headers = Vec::new();
        for (name, value) in s.headers.iter().flatten() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                cx.error(pos(value), format!("{name:?} is not a valid header name"));
                continue;
            }
            let e = cx.expand_template(value)?;
            if name.eq_ignore_ascii_case("content-type")
                && !e.value.to_ascii_lowercase().contains("json")
            {
                json_body = false;
            }
            let secret =
                e.from_env() || SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str());
            let spanned = Spanned {
                value: e.value,
                referenced: value.referenced,
                defined: value.defined,
            };
            let t = cx.template(Some(&spanned), None, Escape::Plain, ("headers", ""))??;
            headers.push((name.clone(), t, secret));
        }
        let escape = if json_body {
            Escape::Json
        } else {
            Escape::Plain
        };
        let body = cx.template(
            s.body.as_ref(),
            s.template.as_ref(),
            escape,
            ("body", "template"),
        )?;
        if json_body
            && body.is_some()
            && !headers
                .iter()
                .any(|(n, _, _)| n.eq_ignore_ascii_case("content-type"))
        {
            let t = cx
                .templates
                .inline("Content-Type", "application/json", Escape::Plain)
                .ok()?;
            headers.push(("Content-Type".into(), t, false));
        }
        let timeout = match &s.timeout {
            None => Duration::from_secs(10),
            Some(t) => {
                match humantime::parse_duration(&t.value) {
                    Ok(d) if !d.is_zero() && d <= Duration::from_secs(300) => d,
                    _ => {
                        cx.error(pos(t), format!("timeout {:?} is not a duration between 1ms and 5m (like 10s or 500ms)", t.value));
                        return None;
                    }
                }
            }
        };
        let templated = expanded.value.contains("{{");
        Some(Http {
            url: url_template,
            url_secret: expanded.from_env(),
            method,
            headers,
            body,
            timeout,
            screen_target: templated && !s.allow_private.unwrap_or(false),
        })
    }

    fn unconfigured(&self) -> Option<&str> {
        self.url.as_ref().err().map(String::as_str)
    }

    fn render(&self, event: &Data, t: &Templates) -> Result<HttpMessage, RenderFailure> {
        let url = match &self.url {
            Ok(tpl) => t.render(tpl, event)?,
            Err(_) => String::new(),
        };
        if self.url.is_ok()
            && !matches!(
                reqwest::Url::parse(&url)
                    .map(|u| u.scheme().to_string())
                    .as_deref(),
                Ok("http" | "https")
            )
        {
            return Err(RenderFailure::Invalid(format!(
                "the URL rendered to {:?}, which is not an http(s) URL",
                redact(&url, self.url_secret)
            )));
        }
        let headers = self
            .headers
            .iter()
            .map(|(n, tpl, secret)| Ok((n.clone(), header_value(&t.render(tpl, event)?), *secret)))
            .collect::<Result<Vec<_>, RenderFailure>>()?;
        let body = self.body.as_ref().map(|b| t.render(b, event)).transpose()?;
        Ok(HttpMessage {
            method: self.method.to_string(),
            url,
            url_secret: self.url_secret,
            headers,
            body,
            timeout: self.timeout,
            screen_target: self.screen_target,
        })
    }

    async fn send(m: &HttpMessage, clients: &Clients) -> Result<(), SendError> {
        let method = reqwest::Method::from_bytes(m.method.as_bytes())
            .map_err(|e| SendError::permanent(e.to_string()))?;
        let url = reqwest::Url::parse(&m.url)
            .map_err(|e| SendError::permanent(format!("bad URL: {e}")))?;
        // A URL built from event data goes through the client whose resolver refuses internal
        // addresses (see `forgery`); an address written in the URL is checked here, and so is a
        // name when a proxy resolves it instead of this process.
        let client = if m.screen_target {
            forgery::check_literal(&url).map_err(|e| refused(&e))?;
            if clients.proxied {
                forgery::check_resolved(&url).await.map_err(|e| match e {
                    forgery::Unchecked::Internal(e) => refused(&e),
                    forgery::Unchecked::Unresolved(message) => {
                        SendError::retryable(message).because(FailureKind::Dns)
                    }
                })?;
            }
            &clients.screened
        } else {
            &clients.http
        };
        let mut request = client.request(method, url).timeout(m.timeout);
        for (name, value, _) in &m.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &m.body {
            request = request.body(body.clone());
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry = retry_after(response.headers());
        let text = super::answer_prefix(response).await;
        let mut err = status_error(
            status,
            &format!(
                "{} answered {status}: {}",
                host(&m.url),
                truncate(text.trim(), 200)
            ),
        );
        if err.retryable {
            err.retry_after = retry;
        }
        Err(err)
    }

    fn describe(m: &HttpMessage) -> String {
        let mut out = format!("{} {}\n", m.method, redact(&m.url, m.url_secret));
        for (name, value, secret) in &m.headers {
            out.push_str(&format!(
                "{name}: {}\n",
                if *secret { "***" } else { value }
            ));
        }
        if let Some(body) = &m.body {
            out.push('\n');
            out.push_str(body);
        }
        out
    }
}

fn redact(url: &str, secret: bool) -> String {
    if url.is_empty() {
        "(url not configured)".into()
    } else if secret {
        redact_url(url)
    } else {
        url.to_string()
    }
}

fn host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "the endpoint".into())
}

/// A request the request-forgery check refused: permanent, since the same event resolves the same way.
fn refused(e: &forgery::InternalAddress) -> SendError {
    SendError::permanent(e.to_string()).because(FailureKind::InternalAddress)
}

/// A request that got no answer: timeouts and connection failures may pass, others will not.
/// The message never contains the URL: a Slack webhook URL or a tokenised endpoint is a secret.
pub(super) fn transport_error(e: reqwest::Error) -> SendError {
    if let Some(e) = forgery::refusal(&e) {
        return refused(e);
    }
    let host = e.url().and_then(|u| u.host_str().map(str::to_string));
    let e = e.without_url();
    let what = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg = format!("{msg}: {s}");
            source = s.source();
        }
        msg
    };
    let what = match host {
        Some(h) => format!("{h} {what}"),
        None => what,
    };
    let kind = if e.is_timeout() {
        FailureKind::Timeout
    } else if e.is_connect() {
        FailureKind::Connect
    } else {
        FailureKind::Network
    };
    if e.is_builder() || e.is_redirect() {
        SendError::permanent(what).because(kind)
    } else {
        SendError::retryable(what).because(kind)
    }
}

/// The retry decision for an HTTP status: 408, 429 and 5xx may pass; other 4xx will not.
pub(super) fn status_error(status: StatusCode, message: &str) -> SendError {
    let mut err = if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        SendError::retryable(message)
    } else {
        SendError::permanent(message)
    };
    err.status = Some(status.as_u16());
    err
}

/// `Retry-After` as seconds or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}
