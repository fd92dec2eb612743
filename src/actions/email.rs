//! Email over SMTP with lettre: plain, STARTTLS (`smtp://`, the default) or implicit TLS
//! (`smtps://`), text and HTML parts. A subject or header never carries CR or LF from an event.

use super::context::Ctx;
use super::{Channel, Clients, Common, FailureKind, RenderFailure, SendError};
use crate::syntax::{OneOrMany, Spanned, pos};
use crate::template::escape::header_value;
use crate::template::{Data, Escape, Template, Templates};
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// `email:` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// A destination to take unset settings from.
    pub destination: Option<Spanned<String>>,
    /// A time window (`time_windows:`) outside which the action is not sent right away.
    pub active: Option<Spanned<String>>,
    /// Outside `active`: `hold` (until the window opens; the default) or `drop`.
    pub outside: Option<Spanned<String>>,
    /// `smtp://user:pass@host:587` (STARTTLS), `smtps://host:465`, `smtp://host:2525?tls=none`;
    /// `?tls=opportunistic` uses STARTTLS when offered; `?ca_file=/path/ca.pem` trusts a private CA.
    pub smtp_url: Option<Spanned<String>>,
    /// The sender, `Name <address>` or an address.
    pub from: Option<Spanned<String>>,
    /// Recipients.
    pub to: Option<Spanned<OneOrMany<String>>>,
    /// Copy recipients.
    pub cc: Option<Spanned<OneOrMany<String>>>,
    /// Inline subject template.
    pub subject: Option<Spanned<String>>,
    /// Inline plain-text body template.
    pub text: Option<Spanned<String>>,
    /// Plain-text body template file.
    pub template: Option<Spanned<String>>,
    /// Inline HTML body template.
    pub html: Option<Spanned<String>>,
    /// HTML body template file.
    pub html_template: Option<Spanned<String>>,
}

type Transport = AsyncSmtpTransport<Tokio1Executor>;

/// A compiled email action.
pub struct Email {
    transport: Result<Arc<Transport>, String>,
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    subject: Template,
    text: Option<Template>,
    html: Option<Template>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("server", &self.server)
            .field("to", &self.to)
            .finish()
    }
}

/// A rendered email.
#[derive(Clone, Serialize)]
pub struct EmailMessage {
    #[serde(skip)]
    transport: Option<Arc<Transport>>,
    /// The SMTP server, with no credentials.
    pub server: String,
    /// Sender.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// Copy recipients.
    pub cc: Vec<String>,
    /// Subject, one line.
    pub subject: String,
    /// Plain-text part.
    pub text: Option<String>,
    /// HTML part.
    pub html: Option<String>,
}

impl std::fmt::Debug for EmailMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailMessage")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .finish()
    }
}

impl Channel for Email {
    type Settings = Settings;
    type Message = EmailMessage;

    fn merge(a: Settings, d: &Settings) -> Settings {
        Settings {
            destination: a.destination,
            active: a.active,
            outside: a.outside,
            smtp_url: a.smtp_url.or_else(|| d.smtp_url.clone()),
            from: a.from.or_else(|| d.from.clone()),
            to: a.to.or_else(|| d.to.clone()),
            cc: a.cc.or_else(|| d.cc.clone()),
            subject: a.subject.or_else(|| d.subject.clone()),
            text: a.text.or_else(|| d.text.clone()),
            template: a.template.or_else(|| d.template.clone()),
            html: a.html.or_else(|| d.html.clone()),
            html_template: a.html_template.or_else(|| d.html_template.clone()),
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
        let at = cx.at;
        let Some(url) = &s.smtp_url else {
            cx.error(
                at,
                "email action needs `smtp_url` (here or in its destination)",
            );
            return None;
        };
        let expanded = cx.expand(url)?;
        let (transport, server) = if expanded.value.trim().is_empty() {
            (
                Err(cx.unconfigured(pos(url), "smtp_url", &expanded)),
                String::new(),
            )
        } else {
            match transport(&expanded.value) {
                Ok((t, server)) => (Ok(Arc::new(t)), server),
                Err(e) => {
                    cx.error(pos(url), format!("bad `smtp_url`: {e}"));
                    return None;
                }
            }
        };
        let from = match &s.from {
            Some(f) => mailbox(cx, f)?,
            None => {
                cx.error(at, "email action needs `from`");
                return None;
            }
        };
        let to = mailboxes(cx, s.to.as_ref())?;
        if to.is_empty() {
            cx.error(at, "email action needs `to`");
            return None;
        }
        let cc = mailboxes(cx, s.cc.as_ref())?;
        let Some(subject) =
            cx.template(s.subject.as_ref(), None, Escape::Plain, ("subject", ""))?
        else {
            cx.error(at, "email action needs `subject`");
            return None;
        };
        let text = cx.template(
            s.text.as_ref(),
            s.template.as_ref(),
            Escape::Plain,
            ("text", "template"),
        )?;
        let html = cx.template(
            s.html.as_ref(),
            s.html_template.as_ref(),
            Escape::Html,
            ("html", "html_template"),
        )?;
        if text.is_none() && html.is_none() {
            cx.error(
                at,
                "email action needs a body: `text`, `template`, `html` or `html_template`",
            );
            return None;
        }
        Some(Email {
            transport,
            server,
            from,
            to,
            cc,
            subject,
            text,
            html,
        })
    }

    fn unconfigured(&self) -> Option<&str> {
        self.transport.as_ref().err().map(String::as_str)
    }

    fn render(&self, event: &Data, t: &Templates) -> Result<EmailMessage, RenderFailure> {
        let subject = header_value(&t.render(&self.subject, event)?);
        let text = self.text.as_ref().map(|x| t.render(x, event)).transpose()?;
        let html = self.html.as_ref().map(|x| t.render(x, event)).transpose()?;
        Ok(EmailMessage {
            transport: self.transport.clone().ok(),
            server: self.server.clone(),
            from: self.from.to_string(),
            to: self.to.iter().map(ToString::to_string).collect(),
            cc: self.cc.iter().map(ToString::to_string).collect(),
            subject,
            text,
            html,
        })
    }

    async fn send(m: &EmailMessage, _: &Clients) -> Result<(), SendError> {
        let transport = m
            .transport
            .as_ref()
            .ok_or_else(|| SendError::permanent("no SMTP server configured"))?;
        let email =
            build(m).map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))?;
        transport.send(email).await.map(|_| ()).map_err(|e| {
            let message = format!("SMTP {}: {e}", m.server);
            let mut err = if e.is_permanent() {
                SendError::permanent(message)
            } else {
                SendError::retryable(message)
            };
            err.status = e.status().and_then(|code| code.to_string().parse().ok());
            let kind = match e.is_timeout() {
                true => FailureKind::Timeout,
                false => FailureKind::Smtp,
            };
            err.because(kind)
        })
    }

    fn describe(m: &EmailMessage) -> String {
        let server = if m.server.is_empty() {
            "(smtp_url not configured)"
        } else {
            &m.server
        };
        let mut out = format!("SMTP {server}\nFrom: {}\nTo: {}\n", m.from, m.to.join(", "));
        if !m.cc.is_empty() {
            out.push_str(&format!("Cc: {}\n", m.cc.join(", ")));
        }
        out.push_str(&format!("Subject: {}\n", m.subject));
        if let Some(text) = &m.text {
            out.push_str(&format!("\n--- text/plain\n{text}\n"));
        }
        if let Some(html) = &m.html {
            out.push_str(&format!("\n--- text/html\n{html}\n"));
        }
        out
    }
}

fn build(m: &EmailMessage) -> Result<lettre::Message, Box<dyn std::error::Error>> {
    let mut builder = lettre::Message::builder()
        .from(m.from.parse()?)
        .subject(header_value(&m.subject));
    for to in &m.to {
        builder = builder.to(to.parse()?);
    }
    for cc in &m.cc {
        builder = builder.cc(cc.parse()?);
    }
    let message = match (&m.text, &m.html) {
        (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        ))?,
        (None, Some(html)) => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html.clone()),
        )?,
        (text, None) => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text.clone().unwrap_or_default()),
        )?,
    };
    Ok(message)
}

fn mailbox(cx: &mut Ctx<'_>, value: &Spanned<String>) -> Option<Mailbox> {
    let e = cx.expand(value)?;
    match e.value.parse::<Mailbox>() {
        Ok(m) => Some(m),
        Err(err) => {
            cx.error(
                pos(value),
                format!("{:?} is not an email address: {err}", e.value),
            );
            None
        }
    }
}

fn mailboxes(cx: &mut Ctx<'_>, value: Option<&Spanned<OneOrMany<String>>>) -> Option<Vec<Mailbox>> {
    let Some(list) = value else {
        return Some(vec![]);
    };
    let mut out = Vec::new();
    for address in list.value.clone().into_vec() {
        let spanned = Spanned {
            value: address,
            referenced: list.referenced,
            defined: list.defined,
        };
        let e = cx.expand(&spanned)?;
        for part in e.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse::<Mailbox>() {
                Ok(m) => out.push(m),
                Err(err) => {
                    cx.error(
                        pos(list),
                        format!("{part:?} is not an email address: {err}"),
                    );
                    return None;
                }
            }
        }
    }
    Some(out)
}

/// Builds the SMTP transport for an `smtp_url`, and the server as shown (no credentials).
fn transport(url: &str) -> Result<(Transport, String), String> {
    let u = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let host = u
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("no host")?
        .to_string();
    let param = |name: &str| {
        u.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string())
    };
    if let Some((key, _)) = u.query_pairs().find(|(k, _)| k != "tls" && k != "ca_file") {
        return Err(format!("unknown parameter {key:?}; known: tls, ca_file"));
    }
    let tls_mode = param("tls");
    let ca = match param("ca_file") {
        Some(path) => {
            let pem =
                std::fs::read(&path).map_err(|e| format!("cannot read ca_file {path}: {e}"))?;
            Some(
                Certificate::from_pem(&pem)
                    .map_err(|e| format!("ca_file {path} is not a PEM certificate: {e}"))?,
            )
        }
        None => None,
    };
    let params = || {
        let mut builder = TlsParameters::builder(host.clone());
        if let Some(ca) = ca.clone() {
            builder = builder.add_root_certificate(ca);
        }
        builder.build_rustls().map_err(|e| e.to_string())
    };
    let (tls, default_port) = match (u.scheme(), tls_mode.as_deref()) {
        ("smtps", _) => (Tls::Wrapper(params()?), 465),
        ("smtp", None | Some("starttls" | "required")) => (Tls::Required(params()?), 587),
        ("smtp", Some("opportunistic")) => (Tls::Opportunistic(params()?), 587),
        ("smtp", Some("none")) => (Tls::None, 25),
        ("smtp", Some(other)) => {
            return Err(format!(
                "unknown tls={other}; use starttls, opportunistic or none"
            ));
        }
        (scheme, _) => return Err(format!("scheme {scheme}:// is not smtp:// or smtps://")),
    };
    let port = u.port().unwrap_or(default_port);
    let mut builder = Transport::builder_dangerous(host.clone())
        .port(port)
        .tls(tls)
        .timeout(Some(Duration::from_secs(30)));
    if !u.username().is_empty() {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_string()
        };
        builder = builder.credentials(Credentials::new(
            decode(u.username()),
            decode(u.password().unwrap_or("")),
        ));
    }
    Ok((builder.build(), format!("{}://{host}:{port}", u.scheme())))
}
