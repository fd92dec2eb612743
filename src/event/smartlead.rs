//! SmartLead's webhook payloads, in both shapes: the documented one (`event`, nested `lead{}`,
//! `reply{}`, `link{}`) and the flat one SmartLead sends in practice (`event_type`,
//! `sl_lead_email`, `reply_message{}`, `leadCorrespondence{}`, …).

use super::{
    Bounce, Campaign, Event, Id, Lead, Link, Noise, Open, Reply, Source, Window, sha256_hex,
    strip_key,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

/// The body field SmartLead carries its secret key in.
const SECRET_FIELD: &str = "secret_key";

/// The body field SmartLead names the URL it posts to in (with a URL token, when used).
const URL_FIELD: &str = "webhook_url";

/// A webhook URL without the token it may carry: its query and any path segment after
/// `/webhooks/{source}/` become `***` (`https://router.example/webhooks/smartlead/***`).
fn redact_webhook_url(url: &str) -> String {
    let (path, query) = match url.split_once('?') {
        Some((p, _)) => (p, "?***"),
        None => (url, ""),
    };
    let path = match path.find("/webhooks/") {
        Some(at) => {
            let rest = &path[at + "/webhooks/".len()..];
            match rest.split_once('/') {
                Some((source, token)) if !token.is_empty() => {
                    format!("{}/webhooks/{source}/***", &path[..at])
                }
                _ => path.to_string(),
            }
        }
        None => path.to_string(),
    };
    format!("{path}{query}")
}

/// A dotted path into a payload, split at its first `.` when the program is compiled (paths are
/// read for every request).
#[derive(Debug, Clone, Copy)]
struct Path {
    /// The top-level name.
    first: &'static str,
    /// The rest, without its leading `.` (empty for a top-level name).
    rest: &'static str,
}

impl Path {
    const fn new(path: &'static str) -> Path {
        let bytes = path.as_bytes();
        let mut i = 0;
        while i < bytes.len() && bytes[i] != b'.' {
            i += 1;
        }
        if i == bytes.len() {
            return Path {
                first: path,
                rest: "",
            };
        }
        let (first, rest) = path.split_at(i);
        Path {
            first,
            rest: rest.split_at(1).1,
        }
    }
}

/// A constant list of [`Path`]s.
macro_rules! paths {
    ($($path:literal),* $(,)?) => {
        const { &[$(Path::new($path)),*] as &[Path] }
    };
}

/// Where SmartLead puts the moment an event happened, in order of preference.
const EVENT_TIME: &[Path] = paths![
    "event_timestamp",
    "timestamp",
    "time_replied",
    "time_clicked",
    "time_opened",
    "time_sent",
    "created_at",
];

/// The SmartLead source, mounted at `/webhooks/smartlead`.
pub struct SmartLead;

impl Source for SmartLead {
    fn name(&self) -> &'static str {
        "smartlead"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &[
            "EMAIL_SENT",
            "EMAIL_OPENED",
            "EMAIL_CLICKED",
            "EMAIL_REPLIED",
            "EMAIL_BOUNCED",
            "EMAIL_UNSUBSCRIBED",
            "LEAD_CATEGORY_UPDATED",
        ]
    }

    fn normalise(&self, payload: Map<String, Value>) -> Event {
        let p = Payload::new(&payload);
        let sent_type = p.str_at(paths!["event_type", "event", "type"]);
        let canonical = sent_type.as_deref().map(canonical_type);
        let is_reply = canonical == Some("EMAIL_REPLIED");
        let mut event = Event {
            event: canonical.unwrap_or("UNKNOWN").to_string(),
            source: self.name().to_string(),
            source_event: sent_type.clone().unwrap_or_else(|| "UNKNOWN".into()),
            timestamp: p.timestamp(),
            campaign: Campaign {
                id: p.int_at(paths!["campaign_id", "campaign.id"]),
                name: p.str_at(paths!["campaign_name", "campaign.name"]),
            },
            lead: p.lead(is_reply),
            sequence_number: p.int_at(paths!["sequence_number", "current_sequence"]),
            email_account_id: p.int_at(paths!["email_account_id"]),
            reply: p.reply(is_reply),
            link: Link {
                url: p.str_at(paths!["link.url", "link_details.0", "link_clicked.0"]),
                clicked_at: p.time_at(paths!["link.clicked_at", "time_clicked"]),
            },
            bounce: p.bounce(canonical == Some("EMAIL_BOUNCED")),
            open: Open {
                count: p.int_at(paths!["opened_count", "open_count"]),
                first_at: p.time_at(paths!["first_opened_at"]),
                last_at: p.time_at(paths!["last_opened_at", "time_opened"]),
            },
            inbox_url: p.str_at(paths!["app_url", "ui_master_inbox_link", "inbox_url"]),
            noise: Noise::default(),
            window: Window::default(),
            digest: Value::Null,
            events: Value::Null,
            raw: Value::Null,
            event_id: String::new(),
        };
        let mut raw = Value::Object(payload);
        strip_key(&mut raw, SECRET_FIELD);
        // The URL SmartLead posts to carries the router's token in token mode.
        if let Some(Value::String(url)) = raw.get_mut(URL_FIELD) {
            *url = redact_webhook_url(url);
        }
        event.raw = raw;
        event
    }

    fn body_secret<'a>(&self, payload: &'a Map<String, Value>) -> Option<&'a str> {
        payload.get(SECRET_FIELD).and_then(Value::as_str)
    }

    fn signature_header(&self) -> &'static str {
        "X-Smartlead-Signature"
    }

    fn sent_at(&self, payload: &Map<String, Value>) -> Option<DateTime<Utc>> {
        let p = Payload::new(payload);
        let sent = p.str_at(EVENT_TIME)?;
        DateTime::parse_from_rfc3339(&rfc3339(&sent))
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The event type, lead, campaign, SmartLead's ids (`stats_id`, message ids) and the
    /// event's own timestamp; a hash of the body when SmartLead sent none of the ids or times.
    /// The event's time (UTC) leads the key: keys of events that happen together sort
    /// together, so the store's key index grows at its end instead of at random places.
    fn dedup_key(
        &self,
        payload: &Map<String, Value>,
        body: &[u8],
        sent_at: Option<DateTime<Utc>>,
    ) -> String {
        let hash = self.identity(payload, body);
        match sent_at {
            Some(at) => format!("smartlead:{}:{hash}", at.format("%Y%m%dT%H%M%S%.fZ")),
            None => format!("smartlead:{hash}"),
        }
    }
}

impl SmartLead {
    /// A hash of what identifies the event (see [`Source::dedup_key`]).
    fn identity(&self, payload: &Map<String, Value>, body: &[u8]) -> String {
        let p = Payload::new(payload);
        let identifying = [
            p.str_at(paths!["stats_id"]),
            p.str_at(paths![
                "reply_message.message_id",
                "reply.message_id",
                "bounce_message.message_id",
                "message_id",
            ]),
            p.str_at(EVENT_TIME),
        ];
        if identifying.iter().all(Option::is_none) {
            return format!("body:{}", sha256_hex(body));
        }
        let context = [
            p.str_at(paths!["event_type", "event", "type"]),
            p.str_at(paths![
                "leadCorrespondence.targetLeadEmail",
                "sl_lead_email",
                "lead.email",
                "lead_email",
                "to_email",
            ]),
            p.str_at(paths!["lead_id", "sl_email_lead_id", "lead.id"]),
            p.str_at(paths!["campaign_id", "campaign.id"]),
        ];
        let joined: Vec<String> = context
            .into_iter()
            .chain(identifying)
            .map(Option::unwrap_or_default)
            .collect();
        sha256_hex(joined.join("\u{1f}").as_bytes())
    }
}

/// Maps the type names SmartLead uses (in either shape) to the canonical ones.
fn canonical_type(sent: &str) -> &str {
    match sent {
        "EMAIL_SENT" | "FIRST_EMAIL_SENT" => "EMAIL_SENT",
        "EMAIL_OPEN" | "EMAIL_OPENED" => "EMAIL_OPENED",
        "EMAIL_LINK_CLICK" | "EMAIL_CLICKED" | "EMAIL_CLICK" => "EMAIL_CLICKED",
        "EMAIL_REPLY" | "EMAIL_REPLIED" => "EMAIL_REPLIED",
        "EMAIL_BOUNCE" | "EMAIL_BOUNCED" => "EMAIL_BOUNCED",
        "LEAD_UNSUBSCRIBED" | "EMAIL_UNSUBSCRIBED" | "EMAIL_UNSUBSCRIBE" => "EMAIL_UNSUBSCRIBED",
        other => other,
    }
}

/// Read access to a payload by dotted paths, tolerant of nulls, numbers-as-strings and blanks.
/// Normalising reads about a hundred paths, most of them absent, and hashing each name into the
/// payload's maps (SipHash) was most of intake's CPU outside the store: the top-level names are
/// looked up in a sorted list made once, and the few names of a nested object one by one.
struct Payload<'a> {
    top: Vec<(&'a str, &'a Value)>,
}

/// Names ordered by length first: most names differ in length, and telling them apart then
/// takes no comparison of their bytes.
fn by_length(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// An object's value under `name`: small objects (the usual nested ones) are read in order,
/// which is cheaper than hashing the name.
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if map.len() <= 16 {
        map.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v)
    } else {
        map.get(name)
    }
}

impl<'a> Payload<'a> {
    fn new(map: &'a Map<String, Value>) -> Self {
        let mut top: Vec<(&str, &Value)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
        top.sort_unstable_by(|(a, _), (b, _)| by_length(a, b));
        Payload { top }
    }

    /// The value at `path`, `None` when absent or null.
    fn at(&self, path: &Path) -> Option<&'a Value> {
        let at = self
            .top
            .binary_search_by(|(k, _)| by_length(k, path.first))
            .ok()?;
        let first = self.top[at].1;
        let found = match path.rest {
            "" => Some(first),
            rest => rest.split('.').try_fold(first, |v, seg| match v {
                Value::Object(m) => field(m, seg),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }),
        };
        found.filter(|v| !v.is_null())
    }

    /// The first non-blank string (numbers are written out) among `paths`.
    fn str_at(&self, paths: &[Path]) -> Option<String> {
        paths.iter().find_map(|p| match self.at(p)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    }

    /// The first integer among `paths`; numeric strings count.
    fn int_at(&self, paths: &[Path]) -> Option<i64> {
        paths.iter().find_map(|p| match self.at(p)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
    }

    /// An id that is an integer when it looks like one, else the string as sent.
    fn id_at(&self, paths: &[Path]) -> Option<Id> {
        match (self.int_at(paths), self.str_at(paths)) {
            (Some(n), _) => Some(Id::Number(n)),
            (None, Some(s)) => Some(Id::Text(s)),
            _ => None,
        }
    }

    /// The first time among `paths`, as RFC 3339 in UTC when it parses, else as sent.
    fn time_at(&self, paths: &[Path]) -> Option<String> {
        self.str_at(paths).map(|s| rfc3339(&s))
    }

    fn timestamp(&self) -> String {
        self.time_at(EVENT_TIME)
            .unwrap_or_else(|| Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// The targeted lead. For replies the mailbox fields are ambiguous, so only fields that name
    /// the lead are read (`leadCorrespondence.targetLeadEmail`, then `sl_lead_email`).
    fn lead(&self, is_reply: bool) -> Lead {
        let email_paths = match is_reply {
            true => paths![
                "leadCorrespondence.targetLeadEmail",
                "sl_lead_email",
                "lead.email",
                "lead_email",
                "lead_data.email",
            ],
            false => paths![
                "leadCorrespondence.targetLeadEmail",
                "sl_lead_email",
                "lead.email",
                "lead_email",
                "lead_data.email",
                "to_email",
            ],
        };
        let email = self.str_at(email_paths);
        // For replies `to_name` may be the mailbox's owner: trust it only when `to_email` is the lead.
        let to_is_lead = !is_reply || (email.is_some() && self.str_at(paths!["to_email"]) == email);
        let name_paths = if to_is_lead {
            paths!["lead.name", "lead_name", "to_name"]
        } else {
            paths!["lead.name", "lead_name"]
        };
        let full_name = self.str_at(name_paths);
        let (split_first, split_last) = split_name(full_name.as_deref());
        let first = self
            .str_at(paths!["lead.first_name", "lead_data.first_name"])
            .or(split_first);
        let last = self
            .str_at(paths!["lead.last_name", "lead_data.last_name"])
            .or(split_last);
        let name = match (&first, &last) {
            (Some(f), Some(l)) => Some(format!("{f} {l}")),
            (Some(f), None) => Some(f.clone()),
            (None, Some(l)) => Some(l.clone()),
            (None, None) => full_name,
        };
        Lead {
            id: self.id_at(paths!["lead_id", "lead.id", "sl_email_lead_id"]),
            email,
            first_name: first,
            last_name: last,
            name,
            company_name: self.str_at(paths![
                "lead.company_name",
                "lead_data.company_name",
                "company_name",
            ]),
        }
    }

    fn reply(&self, is_reply: bool) -> Reply {
        let html = self
            .str_at(paths!["reply_message.html", "reply_body", "reply.html"])
            .or_else(|| {
                self.str_at(paths!["reply.body"])
                    .filter(|body| looks_like_html(body))
            });
        let text = self
            .str_at(paths!["reply_message.text", "reply.text"])
            .or_else(|| {
                self.str_at(paths!["reply.body"])
                    .filter(|body| !looks_like_html(body))
            })
            .or_else(|| html.as_deref().map(html_to_text))
            .or_else(|| self.str_at(paths!["preview_text"]));
        let from = self.str_at(paths![
            "reply.from",
            "leadCorrespondence.replyReceivedFrom",
            "sl_lead_email",
        ]);
        let subject = self
            .str_at(paths!["reply.subject"])
            .or_else(|| is_reply.then(|| self.str_at(paths!["subject"])).flatten());
        let message_id = self
            .str_at(paths!["reply.message_id", "reply_message.message_id"])
            .or_else(|| {
                is_reply
                    .then(|| self.str_at(paths!["message_id"]))
                    .flatten()
            });
        Reply {
            subject,
            text,
            html,
            from,
            received_at: self.time_at(paths![
                "reply.received_at",
                "reply_message.time",
                "time_replied"
            ]),
            message_id,
        }
    }

    fn bounce(&self, is_bounce: bool) -> Bounce {
        let reason = self.str_at(paths![
            "bounce_reason",
            "bounce.reason",
            "bounce_message.text",
            "bounce_reply_email_preview",
        ]);
        let reason = reason.or_else(|| {
            self.str_at(paths!["bounce_message.html", "bounce_reply_email"])
                .map(|h| html_to_text(&h))
        });
        let declared = self.str_at(paths!["bounce_type", "bounce.type"]);
        let kind = match declared.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("hard" | "permanent") => Some("hard"),
            Some("soft" | "transient" | "temporary") => Some("soft"),
            Some(_) => Some("unknown"),
            None if is_bounce || reason.is_some() => {
                Some(bounce_type_from_text(reason.as_deref().unwrap_or("")))
            }
            None => None,
        };
        Bounce { kind, reason }
    }
}

/// Reads a bounce's type from its text: SMTP 5xx / enhanced 5.x.x codes and the usual phrases
/// are hard, 4xx / 4.x.x and "mailbox full"-style phrases are soft, anything else unknown.
pub(crate) fn bounce_type_from_text(text: &str) -> &'static str {
    let lower = text.to_ascii_lowercase();
    let has_code = |class: char| {
        lower
            .split(|c: char| !c.is_ascii_alphanumeric() && c != '.')
            .any(|word| {
                let mut chars = word.chars();
                let first = chars.next();
                let rest: String = chars.collect();
                first == Some(class)
                    && ((rest.len() == 2 && rest.chars().all(|c| c.is_ascii_digit()))
                        || (rest.starts_with('.')
                            && rest[1..].split('.').count() == 2
                            && rest[1..]
                                .split('.')
                                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))))
            })
    };
    const HARD: &[&str] = &[
        "user unknown",
        "does not exist",
        "no such user",
        "unknown user",
        "address rejected",
        "invalid recipient",
        "recipient not found",
        "mailbox unavailable",
        "address not found",
    ];
    const SOFT: &[&str] = &[
        "mailbox full",
        "over quota",
        "quota exceeded",
        "try again",
        "temporarily",
        "temporary",
        "greylist",
    ];
    if has_code('5') || HARD.iter().any(|p| lower.contains(p)) {
        "hard"
    } else if has_code('4') || SOFT.iter().any(|p| lower.contains(p)) {
        "soft"
    } else {
        "unknown"
    }
}

fn looks_like_html(s: &str) -> bool {
    let t = s.trim_start();
    t.starts_with('<') && t.contains('>')
}

/// Plain text from an HTML email body (quoted history kept, markup gone).
pub(crate) fn html_to_text(html: &str) -> String {
    let text = html2text::config::plain_no_decorate()
        .string_from_read(html.as_bytes(), 10_000)
        .unwrap_or_else(|_| html.to_string());
    text.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

fn split_name(name: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(name) = name else {
        return (None, None);
    };
    let mut parts = name.splitn(2, char::is_whitespace);
    let first = parts.next().map(str::to_string).filter(|s| !s.is_empty());
    let last = parts
        .next()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    (first, last)
}

/// A time as RFC 3339 in UTC: RFC 3339 with any offset, `2025-03-28 09:35:01` (read as UTC),
/// or Unix seconds or milliseconds. Anything else passes through as sent.
fn rfc3339(s: &str) -> String {
    let out = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return out(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, format) {
            return out(t.and_utc());
        }
    }
    if let Ok(n) = s.parse::<i64>() {
        let t = if n.abs() >= 100_000_000_000 {
            DateTime::from_timestamp_millis(n)
        } else {
            DateTime::from_timestamp(n, 0)
        };
        if let Some(t) = t {
            return out(t);
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests;
