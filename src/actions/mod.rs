//! Actions: what a matching rule does. Each channel is one file with the same shape (settings as
//! written, a compiled action, the message it renders, and how it sends), behind the
//! [`Channel`] trait, declared as a module below and registered by one line in the
//! `channels!` invocation, which builds the closed enums [`RawAction`], [`Action`] and
//! [`Message`].

pub mod context;
mod email;
pub mod forgery;
mod http;
mod log;
#[cfg(test)]
mod props;
pub mod slack;

pub use context::{Ctx, Unconfigured};

use crate::syntax::Spanned;
use crate::template::{Data, Templates};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// Clients shared by every delivery (connection pools live here, not per message).
#[derive(Clone)]
pub struct Clients {
    /// The HTTP client for Slack and `http` actions.
    pub http: reqwest::Client,
    /// The same, for URLs built from event data: its resolver refuses internal addresses
    /// (see [`forgery`]). Behind a proxy it is the client above.
    pub screened: reqwest::Client,
    /// Whether requests go through a proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`): the proxy
    /// then resolves the names, and [`forgery`] checks them before sending instead.
    pub proxied: bool,
    /// How long one send may take in all ([`SEND_DEADLINE`] unless told otherwise).
    pub deadline: Duration,
}

impl Clients {
    /// Clients with the router's defaults (timeouts, same-host redirects only, a user agent).
    pub fn new() -> Self {
        let builder = || {
            reqwest::Client::builder()
                .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
                .redirect(same_host_redirects())
        };
        let built = "the HTTP client builds with static settings";
        // Behind a proxy the resolver would only see the proxy's name (often an internal
        // address itself), so the target is resolved and checked before sending instead.
        let proxied = [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
        let http = builder().build().expect(built);
        let screened = if proxied {
            http.clone()
        } else {
            builder()
                .dns_resolver(forgery::ScreenedResolver)
                .build()
                .expect(built)
        };
        Clients {
            http,
            screened,
            proxied,
            deadline: SEND_DEADLINE,
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Self::new()
    }
}

/// Follows at most 5 redirects, and only to the host the request was sent to: a redirect never
/// carries a delivery (and its headers) to another host.
fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt
            .previous()
            .first()
            .and_then(|u| u.host_str().map(str::to_string));
        if attempt.previous().len() > 5 {
            attempt.error("too many redirects")
        } else if first.as_deref() == attempt.url().host_str() {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Whether a later attempt may succeed (network errors, timeouts, 408, 429, 5xx, SMTP 4xx).
    pub retryable: bool,
    /// How long the peer asked us to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// The peer's status: HTTP status or SMTP reply code.
    pub status: Option<u16>,
    /// What happened, for logs and history.
    pub message: String,
    /// The kind of failure, for metrics (bounded: see [`SendError::reason`]).
    pub kind: FailureKind,
}

/// What kind of failure a send met, when the peer's answer does not say more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The peer took too long.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The host name does not resolve.
    Dns,
    /// Any other network or protocol failure.
    Network,
    /// The SMTP server refused or failed.
    Smtp,
    /// A URL built from event data points at an internal address.
    InternalAddress,
    /// Anything else (a message that cannot be built, a bad answer).
    Other,
}

impl FailureKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Connect => "connect",
            FailureKind::Dns => "dns",
            FailureKind::Network => "network",
            FailureKind::Smtp => "smtp",
            FailureKind::InternalAddress => "internal_address",
            FailureKind::Other => "other",
        }
    }
}

impl SendError {
    /// A failure that a later attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        SendError {
            retryable: true,
            retry_after: None,
            status: None,
            message: message.into(),
            kind: FailureKind::Other,
        }
    }
    /// The same error, classified.
    pub fn because(mut self, kind: FailureKind) -> Self {
        self.kind = kind;
        self
    }

    /// The metric reason: the HTTP status class or SMTP reply class when there was an answer,
    /// else the kind of failure.
    pub fn reason(&self) -> &'static str {
        match (self.kind, self.status) {
            (FailureKind::Smtp, Some(400..=499)) => "smtp_4xx",
            (FailureKind::Smtp, Some(500..=599)) => "smtp_5xx",
            (_, Some(429)) => "http_429",
            (_, Some(400..=499)) => "http_4xx",
            (_, Some(500..=599)) => "http_5xx",
            (kind, _) => kind.label(),
        }
    }

    /// A failure that trying again cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        SendError {
            retryable: false,
            retry_after: None,
            status: None,
            message: message.into(),
            kind: FailureKind::Other,
        }
    }
}

/// Why an action produced no message for an event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderFailure {
    /// A template failed for this event.
    #[error(transparent)]
    Template(#[from] crate::template::RenderError),
    /// The rendered output is not what the channel needs (Block Kit that is not JSON, …).
    #[error("{0}")]
    Invalid(String),
}

/// The settings every channel has, as written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Common<'a> {
    /// The destination to take unset settings from.
    pub destination: Option<&'a Spanned<String>>,
    /// The time window the action is sent in.
    pub active: Option<&'a Spanned<String>>,
    /// What becomes of it outside the window: `hold` or `drop`.
    pub outside: Option<&'a Spanned<String>>,
}

/// One channel: how its settings compile, how it renders an event, how it sends.
pub trait Channel: Sized {
    /// The settings as written in the rules file (destination or action).
    type Settings: Clone + serde::de::DeserializeOwned;
    /// What the channel sends for one event: rendered, ready to go, shown by `test`.
    type Message: Serialize + Clone + Send + Sync + std::fmt::Debug;

    /// Fills settings the action leaves out from its destination's.
    fn merge(action: Self::Settings, destination: &Self::Settings) -> Self::Settings;
    /// The settings every channel has: destination, time window.
    fn common(settings: &Self::Settings) -> Common<'_>;
    /// Validates and compiles settings, reporting every problem through `cx`.
    fn compile(settings: Self::Settings, cx: &mut Ctx<'_>) -> Option<Self>;
    /// What to set when the destination's address came out empty (deliveries are skipped).
    fn unconfigured(&self) -> Option<&str>;
    /// Renders the message for one event (also when unconfigured, for `test`).
    fn render(&self, event: &Data, templates: &Templates) -> Result<Self::Message, RenderFailure>;
    /// Sends a rendered message.
    fn send(
        message: &Self::Message,
        clients: &Clients,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send;
    /// The message as `test` prints it, secrets redacted.
    fn describe(message: &Self::Message) -> String;
}

macro_rules! channels {
    ($($variant:ident($module:ident)),+ $(,)?) => {
        /// An action or destination as written: one key naming the channel.
        /// Boxed: the channels' settings differ in size by hundreds of bytes, and a file of
        /// 10,000 rules holds an action per rule while it compiles.
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum RawAction {
            $(
                #[doc = concat!("`", stringify!($module), ":` settings.")]
                $variant(Box<<$module::$variant as Channel>::Settings>),
            )+
        }

        /// A compiled action.
        #[derive(Debug)]
        pub enum Action {
            $(
                #[doc = concat!("A `", stringify!($module), "` action.")]
                $variant($module::$variant),
            )+
        }

        /// A rendered message, ready to send.
        #[derive(Debug, Clone, Serialize)]
        #[serde(tag = "kind", rename_all = "lowercase")]
        pub enum Message {
            $(
                #[doc = concat!("A `", stringify!($module), "` message.")]
                $variant(<$module::$variant as Channel>::Message),
            )+
        }

        impl RawAction {
            /// The channel's name as written (`slack`, `email`, …).
            pub fn kind(&self) -> &'static str {
                match self { $(RawAction::$variant(_) => stringify!($module),)+ }
            }

            /// The settings every channel has.
            pub fn common(&self) -> Common<'_> {
                match self { $(RawAction::$variant(s) => $module::$variant::common(s),)+ }
            }

            /// The destination this action names, if any.
            pub fn destination(&self) -> Option<&Spanned<String>> {
                self.common().destination
            }

            /// Compiles the action, with settings it leaves out taken from `destination`
            /// (which must be of the same channel).
            pub fn compile(self, destination: Option<&RawAction>, cx: &mut Ctx<'_>) -> Option<Action> {
                match (self, destination) {
                    $(
                        (RawAction::$variant(s), Some(RawAction::$variant(d))) =>
                            $module::$variant::compile($module::$variant::merge(*s, d), cx).map(Action::$variant),
                        (RawAction::$variant(s), None) =>
                            $module::$variant::compile(*s, cx).map(Action::$variant),
                    )+
                    (action, Some(d)) => {
                        let at = cx.at;
                        cx.error(at, format!(
                            "a {} action cannot use a {} destination",
                            action.kind(), d.kind()
                        ));
                        None
                    }
                }
            }
        }

        impl Action {
            /// The channel's name (`slack`, `email`, …).
            pub fn kind(&self) -> &'static str {
                match self { $(Action::$variant(_) => stringify!($module),)+ }
            }

            /// What to set when the destination's address came out empty.
            pub fn unconfigured(&self) -> Option<&str> {
                match self { $(Action::$variant(a) => a.unconfigured(),)+ }
            }

            /// Renders the message this action sends for an event.
            pub fn render(&self, event: &Value, templates: &Templates) -> Result<Message, RenderFailure> {
                self.render_data(&Data::new(event), templates)
            }

            /// Renders the message from an event already prepared for rendering.
            pub fn render_data(&self, data: &Data, templates: &Templates) -> Result<Message, RenderFailure> {
                match self { $(Action::$variant(a) => a.render(data, templates).map(Message::$variant),)+ }
            }
        }

        impl Message {
            /// Sends the message, giving up (a retryable timeout) past the clients' deadline, or
            /// past an `http` action's own timeout when that is longer.
            pub async fn send(&self, clients: &Clients) -> Result<(), SendError> {
                let deadline = match self {
                    Message::Http(m) => clients.deadline.max(m.timeout + Duration::from_secs(1)),
                    _ => clients.deadline,
                };
                let send = async {
                    match self { $(Message::$variant(m) => $module::$variant::send(m, clients).await,)+ }
                };
                match tokio::time::timeout(deadline, send).await {
                    Ok(sent) => sent,
                    Err(_) => Err(SendError {
                        retryable: true,
                        retry_after: None,
                        status: None,
                        message: format!(
                            "no answer within {} s (connecting, greeting, commands and body in all)",
                            deadline.as_secs_f64()
                        ),
                        kind: FailureKind::Timeout,
                    }),
                }
            }

            /// The message as `test` prints it, secrets redacted.
            pub fn describe(&self) -> String {
                match self { $(Message::$variant(m) => $module::$variant::describe(m),)+ }
            }
        }
    };
}

channels! {
    Slack(slack),
    Email(email),
    Http(http),
    Log(log),
}

/// How much of a peer's answer is read: enough for Slack's error strings and an error page's
/// first lines; the rest is never read (a peer answering gigabytes costs nothing).
pub const ANSWER_PREFIX_BYTES: usize = 4096;

/// The first [`ANSWER_PREFIX_BYTES`] of an answer's body, as text (the connection is dropped
/// rather than drained after it).
pub async fn answer_prefix(mut response: reqwest::Response) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < ANSWER_PREFIX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = ANSWER_PREFIX_BYTES - prefix.len();
                prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&prefix).into_owned()
}

/// How long one send may take in all (connect, TLS, greeting, each command, body, answer)
/// unless the router is told otherwise: a peer that accepts and never answers frees the
/// worker and the destination's slot after this.
pub const SEND_DEADLINE: Duration = Duration::from_secs(30);

/// Shows a URL with its path and query hidden, for URLs that carry a secret (webhook tokens).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/***", u.scheme(), u.host_str().unwrap_or("?"))
        }
        Err(_) => "***".into(),
    }
}
