//! `log`: writes the rendered message to the router's own log. Needs no account, so the shipped
//! rules show what they would have sent on a fresh machine.

use super::context::Ctx;
use super::{Channel, Clients, Common, RenderFailure, SendError};
use crate::syntax::Spanned;
use crate::template::{Data, Escape, Template, Templates};
use serde::{Deserialize, Serialize};

/// `log:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A destination to take unset settings from.
    pub destination: Option<Spanned<String>>,
    /// A time window (`time_windows:`) outside which the action is not sent right away.
    pub active: Option<Spanned<String>>,
    /// Outside `active`: `hold` (until the window opens; the default) or `drop`.
    pub outside: Option<Spanned<String>>,
    /// Inline message template.
    pub message: Option<Spanned<String>>,
    /// Message template file.
    pub template: Option<Spanned<String>>,
}

/// A compiled log action.
#[derive(Debug)]
pub struct Log {
    message: Template,
}

/// A rendered log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogMessage {
    /// The text written to the log.
    pub message: String,
}

impl Channel for Log {
    type Settings = Settings;
    type Message = LogMessage;

    fn merge(a: Settings, d: &Settings) -> Settings {
        Settings {
            destination: a.destination,
            active: a.active,
            outside: a.outside,
            message: a.message.or_else(|| d.message.clone()),
            template: a.template.or_else(|| d.template.clone()),
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
        match cx.template(
            s.message.as_ref(),
            s.template.as_ref(),
            Escape::Plain,
            ("message", "template"),
        )? {
            Some(message) => Some(Log { message }),
            None => {
                let at = cx.at;
                cx.error(at, "log action needs `message` or `template`");
                None
            }
        }
    }

    fn unconfigured(&self) -> Option<&str> {
        None
    }

    fn render(&self, event: &Data, t: &Templates) -> Result<LogMessage, RenderFailure> {
        Ok(LogMessage {
            message: t.render(&self.message, event)?,
        })
    }

    async fn send(m: &LogMessage, _: &Clients) -> Result<(), SendError> {
        // Lead-written text must not be able to start a new, forged log line.
        let text = m.message.replace('\r', "\\r").replace('\n', "\\n");
        tracing::info!(target: "switchboard::log_action", text = %text, "Log action.");
        Ok(())
    }

    fn describe(m: &LogMessage) -> String {
        format!("LOG {}", m.message)
    }
}
