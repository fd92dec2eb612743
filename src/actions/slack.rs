//! Slack incoming webhooks: mrkdwn text or Block Kit, values Slack-escaped, Slack's size limits
//! respected by truncation, and Slack's answers (`ok`, 429 with `Retry-After`, error strings)
//! read into a retry decision.

use super::context::Ctx;
use super::{Channel, Clients, Common, RenderFailure, SendError, redact_url};
use crate::syntax::{Spanned, pos};
use crate::template::escape::truncate;
use crate::template::{Data, Escape, Template, Templates};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Slack's limit on a message's `text`.
pub const MAX_TEXT: usize = 40_000;
/// Slack's limit on a section block's text.
pub const MAX_SECTION_TEXT: usize = 3_000;
/// Slack's limit on blocks per message.
pub const MAX_BLOCKS: usize = 50;

/// `slack:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A destination to take unset settings from.
    pub destination: Option<Spanned<String>>,
    /// A time window (`time_windows:`) outside which the action is not sent right away.
    pub active: Option<Spanned<String>>,
    /// Outside `active`: `hold` (until the window opens; the default) or `drop`.
    pub outside: Option<Spanned<String>>,
    /// The incoming-webhook URL (a secret: never printed).
    pub webhook_url: Option<Spanned<String>>,
    /// Inline mrkdwn template for the message text.
    pub text: Option<Spanned<String>>,
    /// Template file: message text, or the whole JSON payload when it ends in `.json.hbs`.
    pub template: Option<Spanned<String>>,
    /// Inline Block Kit template: a JSON array of blocks.
    pub blocks: Option<Spanned<String>>,
}

/// A compiled Slack action.
pub struct Slack {
    webhook_url: Result<String, String>,
    body: Body,
    blocks: Option<Template>,
}

#[derive(Debug)]
enum Body {
    Text(Template),
    Payload(Template),
    None,
}

/// A rendered Slack message.
#[derive(Clone, Serialize)]
pub struct SlackMessage {
    /// Where it goes (secret).
    #[serde(skip)]
    pub webhook_url: String,
    /// The JSON payload posted.
    pub payload: Value,
}

// By hand, so that the webhook URL (a secret) never reaches a log through `{:?}`.
impl std::fmt::Debug for Slack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slack")
            .field("body", &self.body)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SlackMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackMessage")
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

impl Channel for Slack {
    type Settings = Settings;
    type Message = SlackMessage;

    fn merge(a: Settings, d: &Settings) -> Settings {
        Settings {
            destination: a.destination,
            active: a.active,
            outside: a.outside,
            webhook_url: a.webhook_url.or_else(|| d.webhook_url.clone()),
            text: a.text.or_else(|| d.text.clone()),
            template: a.template.or_else(|| d.template.clone()),
            blocks: a.blocks.or_else(|| d.blocks.clone()),
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
        let Some(url) = &s.webhook_url else {
            let at = cx.at;
            cx.error(
                at,
                "slack action needs `webhook_url` (here or in its destination)",
            );
            return None;
        };
        let expanded = cx.expand(url)?;
        let webhook_url = if expanded.value.trim().is_empty() {
            Err(cx.unconfigured(pos(url), "webhook_url", &expanded))
        } else if reqwest::Url::parse(&expanded.value).is_err() {
            cx.error(pos(url), "`webhook_url` is not a valid URL");
            return None;
        } else {
            Ok(expanded.value)
        };
        let payload_file = s
            .template
            .as_ref()
            .is_some_and(|t| t.value.ends_with(".json.hbs"));
        let escape = if payload_file {
            Escape::SlackJson
        } else {
            Escape::Slack
        };
        let body = match cx.template(
            s.text.as_ref(),
            s.template.as_ref(),
            escape,
            ("text", "template"),
        )? {
            Some(t) if payload_file => Body::Payload(t),
            Some(t) => Body::Text(t),
            None => Body::None,
        };
        let blocks = cx.template(s.blocks.as_ref(), None, Escape::SlackJson, ("blocks", ""))?;
        if matches!(body, Body::None) && blocks.is_none() {
            let at = cx.at;
            cx.error(at, "slack action needs `text`, `template` or `blocks`");
            return None;
        }
        Some(Slack {
            webhook_url,
            body,
            blocks,
        })
    }

    fn unconfigured(&self) -> Option<&str> {
        self.webhook_url.as_ref().err().map(String::as_str)
    }

    fn render(&self, event: &Data, t: &Templates) -> Result<SlackMessage, RenderFailure> {
        let mut payload = self.payload(event, t)?;
        fit_limits(&mut payload);
        let webhook_url = self.webhook_url.clone().unwrap_or_default();
        Ok(SlackMessage {
            webhook_url,
            payload,
        })
    }
    async fn send(m: &SlackMessage, clients: &Clients) -> Result<(), SendError> {
        let response = clients
            .http
            .post(&m.webhook_url)
            .json(&m.payload)
            .send()
            .await
            .map_err(super::http::transport_error)?;
        let status = response.status();
        let retry_after = super::http::retry_after(response.headers());
        let body = super::answer_prefix(response).await;
        let body = body.trim();
        if status.is_success() {
            return Ok(());
        }
        let mut err = super::http::status_error(
            status,
            &format!("Slack answered {status}: {}", truncate(body, 200)),
        );
        if err.retryable {
            err.retry_after = retry_after.or(err.retry_after);
        }
        Err(err)
    }

    fn describe(m: &SlackMessage) -> String {
        format!(
            "POST {}\nContent-Type: application/json\n\n{}",
            if m.webhook_url.is_empty() {
                "(webhook_url not configured)".into()
            } else {
                redact_url(&m.webhook_url)
            },
            serde_json::to_string_pretty(&m.payload).unwrap_or_default()
        )
    }
}

impl Slack {
    /// The payload as its templates render it, before it is fitted to Slack's limits.
    fn payload(&self, event: &Data, t: &Templates) -> Result<Value, RenderFailure> {
        let mut payload = match &self.body {
            Body::Payload(tpl) => parse_json(&t.render(tpl, event)?, "the Slack payload template")?,
            Body::Text(tpl) => json!({ "text": t.render(tpl, event)? }),
            Body::None => json!({}),
        };
        if let Some(tpl) = &self.blocks {
            let blocks = parse_json(&t.render(tpl, event)?, "`blocks`")?;
            if !blocks.is_array() {
                return Err(RenderFailure::Invalid(
                    "`blocks` must render to a JSON array".into(),
                ));
            }
            payload["blocks"] = blocks;
        }
        if !payload.is_object() {
            return Err(RenderFailure::Invalid(
                "the Slack payload must be a JSON object".into(),
            ));
        }
        Ok(payload)
    }

    /// How many blocks the message renders for `event` before they are cut to Slack's limit.
    pub fn blocks_needed(&self, event: &Data, t: &Templates) -> Result<usize, RenderFailure> {
        let payload = self.payload(event, t)?;
        Ok(payload["blocks"].as_array().map_or(0, Vec::len))
    }
}

fn parse_json(text: &str, what: &str) -> Result<Value, RenderFailure> {
    serde_json::from_str(text)
        .map_err(|e| RenderFailure::Invalid(format!("{what} did not render to valid JSON: {e}")))
}

/// Truncates text and blocks to Slack's limits instead of letting Slack reject the message.
pub fn fit_limits(payload: &mut Value) {
    if let Some(Value::String(text)) = payload.get_mut("text") {
        *text = truncate(text, MAX_TEXT);
    }
    if let Some(Value::Array(blocks)) = payload.get_mut("blocks") {
        blocks.truncate(MAX_BLOCKS);
        for block in blocks.iter_mut() {
            let max = if block.get("type").and_then(Value::as_str) == Some("header") {
                150
            } else {
                MAX_SECTION_TEXT
            };
            if let Some(Value::String(t)) = block.pointer_mut("/text/text") {
                *t = truncate(t, max);
            }
            if let Some(Value::Array(fields)) = block.get_mut("fields") {
                fields.truncate(10);
                for f in fields {
                    if let Some(Value::String(t)) = f.get_mut("text") {
                        *t = truncate(t, 2_000);
                    }
                }
            }
            if let Some(Value::Array(elements)) = block.get_mut("elements") {
                for e in elements {
                    if let Some(Value::String(t)) = e.get_mut("text") {
                        *t = truncate(t, MAX_SECTION_TEXT);
                    }
                }
            }
        }
    }
}
