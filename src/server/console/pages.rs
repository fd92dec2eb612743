//! The console's pages: each handler reads what [`super::super::views`] and the store give
//! `/api`, and renders it with a template compiled into the binary. Forms post back here and
//! are answered with a redirect to the page they changed (`303`), so a reload never repeats them.

use super::{Form, State, Viewer, field, html, see_other, session};
use crate::explain::Report;
use crate::server::views::{self, EventQuery, PlaygroundError, PlaygroundInput};
use crate::silence::{Matcher, NewSilence, Silence, SilenceView};
use crate::store::console::{DeadFilter, DeadGroup, EventDetail, EventPage};
use crate::store::{DeliveryStatus, DeliveryView, now_ms};
use askama::Template;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;

/// What every page's frame shows.
pub(super) struct Chrome {
    nav: &'static str,
    logged_in: bool,
    form_token: String,
    flash: Option<String>,
}

fn chrome(v: &Viewer, nav: &'static str, flash: Option<String>) -> Chrome {
    Chrome {
        nav,
        logged_in: v.logged_in,
        form_token: v.form_token.clone(),
        flash,
    }
}

/// Renders a template as a page (or says that it could not).
fn page(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => html(status, body),
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "<!doctype html><title>error</title><p>the page could not be rendered: {}</p>",
                escape(&e.to_string())
            ),
        ),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// UTC time of a Unix-ms instant, to the second.
fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    c: Chrome,
    heading: &'a str,
    text: &'a str,
    back: &'a str,
    is_error: bool,
}

/// A page that only says something.
pub(super) fn message(
    _s: &State,
    v: &Viewer,
    status: StatusCode,
    heading: &str,
    text: &str,
    is_error: bool,
) -> Response {
    page(
        status,
        &MessagePage {
            c: chrome(v, "", None),
            heading,
            text,
            back: "/console",
            is_error,
        },
    )
}

/// 403 with why (no frame: the viewer may not be allowed to see any).
pub(super) fn forbidden(_s: &State, why: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Forbidden · switchboard</title>\
         <link rel=\"stylesheet\" href=\"/console/static/app.css\"></head><body><main><h1>Forbidden</h1>\
         <p class=\"error\" id=\"forbidden\">{}</p></main></body></html>",
        escape(why)
    );
    html(StatusCode::FORBIDDEN, body)
}

/// An error of the store, as a page.
fn store_error(s: &State, v: &Viewer, e: impl std::fmt::Display) -> Response {
    message(
        s,
        v,
        StatusCode::SERVICE_UNAVAILABLE,
        "The store does not answer",
        &e.to_string(),
        true,
    )
}

// ---- login ----

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    error: Option<&'a str>,
}

/// The login form (an open console has none: straight to `next`).
pub(super) fn login_form(s: &State, next: &str, error: Option<&str>) -> Response {
    if !matches!(s.access.console(), super::ConsoleEntry::Login(_)) {
        return see_other(next);
    }
    let status = match error {
        Some(_) => StatusCode::UNAUTHORIZED,
        None => StatusCode::OK,
    };
    page(status, &LoginPage { next, error })
}

/// Checks the token; on success sets the session cookie and goes to `next`.
pub(super) fn login(
    s: &State,
    peer: Option<SocketAddr>,
    origin: Option<String>,
    form: &Form,
) -> Response {
    let next = super::safe_next(field(form, "next").unwrap_or("/console"));
    let super::ConsoleEntry::Login(token) = s.access.console() else {
        return see_other(next);
    };
    let Some(console) = &s.console else {
        return see_other("/");
    };
    let client = peer.map(|p| p.ip());
    if let Some(wait) = client.and_then(|ip| s.limiter.refused_for(ip)) {
        let why = format!(
            "too many failed attempts from this address; try again in {} s",
            wait.as_secs().max(1)
        );
        return login_form(s, next, Some(&why));
    }
    let offered = field(form, "token").unwrap_or_default().trim();
    if !token.matches(offered) {
        if let Some(ip) = client {
            s.limiter.penalise(ip);
        }
        tracing::warn!(client = ?client, "Console login refused: wrong token.");
        return login_form(s, next, Some("That is not the admin token."));
    }
    let cookie = console.keys.new_session(chrono::Utc::now().timestamp());
    let mut resp = see_other(next);
    // Over HTTPS (as the browser's `Origin` says, behind a TLS proxy) the cookie is `Secure`.
    let secure = match origin.is_some_and(|o| o.starts_with("https://")) {
        true => "; Secure",
        false => "",
    };
    let set = format!(
        "{}={cookie}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        session::COOKIE,
        session::LIFETIME_SECS
    );
    if let Ok(v) = HeaderValue::from_str(&set) {
        resp.headers_mut().insert("set-cookie", v);
    }
    resp
}

/// Ends the session in this browser.
pub(super) fn logout() -> Response {
    let mut resp = see_other("/console/login");
    let clear = format!(
        "{}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        session::COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&clear) {
        resp.headers_mut().insert("set-cookie", v);
    }
    resp
}

// ---- overview ----

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    c: Chrome,
    o: views::Overview,
    short_hash: String,
}

pub(super) async fn overview(v: Viewer, s: Arc<State>) -> Response {
    match views::overview(&s).await {
        Ok(o) => {
            let short_hash = crate::app::short_hash(&o.config_hash).to_string();
            page(
                StatusCode::OK,
                &OverviewPage {
                    c: chrome(&v, "overview", None),
                    o,
                    short_hash,
                },
            )
        }
        Err(e) => store_error(&s, &v, e),
    }
}

// ---- events ----

/// One `<option>`.
pub(super) struct Choice {
    value: String,
    selected: bool,
}

fn choices<'a>(values: impl IntoIterator<Item = &'a str>, current: &str) -> Vec<Choice> {
    values
        .into_iter()
        .map(|v| Choice {
            value: v.to_string(),
            selected: v == current.trim(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    c: Chrome,
    q: EventQuery,
    page: EventPage,
    error: Option<String>,
    type_choices: Vec<Choice>,
    rule_choices: Vec<Choice>,
    status_choices: Vec<Choice>,
    next_href: Option<String>,
    live_src: String,
}

impl EventsPage {
    fn time(&self, ms: &i64) -> String {
        time(*ms)
    }
}

/// The canonical event types a filter offers.
const EVENT_TYPES: &[&str] = &[
    "EMAIL_SENT",
    "EMAIL_OPENED",
    "EMAIL_CLICKED",
    "EMAIL_REPLIED",
    "EMAIL_BOUNCED",
    "LEAD_UNSUBSCRIBED",
    "LEAD_CATEGORY_UPDATED",
    "UNKNOWN",
];

pub(super) async fn events(v: Viewer, s: Arc<State>, q: EventQuery) -> Response {
    let config = s.app.current();
    let (page_result, error) = match q.filter() {
        Ok(f) => match s.store.events(&f).await {
            Ok(p) => (p, None),
            Err(e) => return store_error(&s, &v, e),
        },
        Err(e) => (
            EventPage {
                events: Vec::new(),
                next: None,
            },
            Some(e),
        ),
    };
    let next_href = page_result
        .next
        .as_deref()
        .map(|c| format!("/console/events?{}", q.to_query(Some(c))));
    let statuses: Vec<&str> = DeliveryStatus::names()
        .into_iter()
        .chain(["unmatched"])
        .collect();
    let rule_names: Vec<&str> = config
        .rules
        .rules()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    let p = EventsPage {
        c: chrome(&v, "events", None),
        type_choices: choices(EVENT_TYPES.iter().copied(), &q.event_type),
        rule_choices: choices(rule_names, &q.rule),
        status_choices: choices(statuses, &q.status),
        live_src: live_src(&q, &page_result),
        next_href,
        error,
        page: page_result,
        q,
    };
    page(StatusCode::OK, &p)
}

/// What the live view of a page asks for: its filters, and to start after the newest event
/// the page shows (the first page; an older page starts from now).
fn live_src(q: &EventQuery, page: &EventPage) -> String {
    let mut src = q.to_query(None);
    if q.after.trim().is_empty()
        && let Some(newest) = page.events.first()
    {
        let cursor = crate::store::console::Cursor {
            at: newest.received_at,
            id: newest.id.clone(),
        };
        let from = percent_encoding::utf8_percent_encode(
            &cursor.to_string(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        if !src.is_empty() {
            src.push('&');
        }
        src.push_str(&format!("from={from}"));
    }
    src
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPageT {
    c: Chrome,
    e: EventDetail,
    payload_pretty: String,
    lead_name: String,
    campaign_name: String,
    reply_text: Option<String>,
    inbox_link: Option<String>,
    config_hash_short: String,
}

impl EventPageT {
    fn time(&self, ms: &i64) -> String {
        time(*ms)
    }
}

/// A link taken from event data only when it is http(s) (never `javascript:` or `data:`).
fn web_link(v: &serde_json::Value) -> Option<String> {
    let s = v.as_str()?.trim();
    let lower = s.to_ascii_lowercase();
    (lower.starts_with("https://") || lower.starts_with("http://")).then(|| s.to_string())
}

pub(super) async fn event(id: String, v: Viewer, s: Arc<State>) -> Response {
    let detail = match s.store.event(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return message(
                &s,
                &v,
                StatusCode::NOT_FOUND,
                "No such event",
                &format!("There is no event {id} in the store (it may have been pruned)."),
                true,
            );
        }
        Err(e) => return store_error(&s, &v, e),
    };
    let p = &detail.payload;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    let p = EventPageT {
        c: chrome(&v, "events", None),
        payload_pretty: serde_json::to_string_pretty(p).unwrap_or_default(),
        lead_name: text(&p["lead"]["name"]).unwrap_or_default(),
        campaign_name: text(&p["campaign"]["name"]).unwrap_or_else(|| "—".into()),
        reply_text: text(&p["reply"]["text"]).or_else(|| text(&p["reply"]["body"])),
        inbox_link: web_link(&p["inbox_url"]),
        config_hash_short: crate::app::short_hash(&detail.config_hash).to_string(),
        e: detail,
    };
    page(StatusCode::OK, &p)
}

/// Retry or discard one dead delivery from its event's page.
pub(super) async fn delivery_action(
    id: i64,
    op: String,
    v: Viewer,
    _form: Form,
    s: Arc<State>,
) -> Response {
    let filter = DeadFilter {
        ids: vec![id],
        ..DeadFilter::default()
    };
    let result = match op.as_str() {
        "retry" => s.store.retry_dead_where(&filter).await,
        "discard" => s.store.discard_dead_where(&filter).await,
        _ => {
            return message(
                &s,
                &v,
                StatusCode::NOT_FOUND,
                "Not found",
                "No such action.",
                true,
            );
        }
    };
    match result {
        Ok(n) => {
            if op == "retry" && n > 0 {
                s.app.wake.notify_one();
            }
            match delivery_event(&s, id).await {
                Some(event) => see_other(&format!("/console/events/{event}")),
                None => see_other("/console/dlq"),
            }
        }
        Err(e) => store_error(&s, &v, e),
    }
}

/// The event a delivery belongs to.
async fn delivery_event(s: &State, id: i64) -> Option<String> {
    s.store.delivery_event(id).await.ok().flatten()
}

// ---- dead letters ----

/// `/console/dlq`'s filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct DeadQuery {
    #[serde(default)]
    rule: String,
    #[serde(default)]
    destination: String,
    #[serde(default)]
    done: String,
    #[serde(default)]
    n: String,
}

#[derive(Template)]
#[template(path = "dlq.html")]
struct DlqPage {
    c: Chrome,
    groups: Vec<DeadGroup>,
    dead: Vec<DeliveryView>,
    rule: String,
    destination: String,
    total: u64,
    shown: u64,
}

fn dead_filter(rule: &str, destination: &str, ids: Vec<i64>) -> DeadFilter {
    let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
    DeadFilter {
        ids,
        rule: text(rule),
        destination: text(destination),
    }
}

pub(super) async fn dlq(v: Viewer, s: Arc<State>, q: DeadQuery) -> Response {
    let n: u64 = q.n.parse().unwrap_or_default();
    let flash = match q.done.as_str() {
        "retried" => Some(format!("{n} dead letter(s) requeued.")),
        "discarded" => Some(format!("{n} dead letter(s) discarded.")),
        "none" => Some("Nothing was selected.".to_string()),
        _ => None,
    };
    let filter = dead_filter(&q.rule, &q.destination, Vec::new());
    let loaded = async {
        let groups = s.store.dead_groups().await?;
        let total = s.store.count_dead(&filter).await?;
        let dead = s.store.dead_letters(&filter, 200).await?;
        Ok::<_, crate::store::StoreError>((groups, total, dead))
    };
    match loaded.await {
        Ok((groups, total, dead)) => page(
            StatusCode::OK,
            &DlqPage {
                c: chrome(&v, "dlq", flash),
                groups,
                shown: dead.len() as u64,
                dead,
                rule: q.rule,
                destination: q.destination,
                total,
            },
        ),
        Err(e) => store_error(&s, &v, e),
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
struct ConfirmPage<'a> {
    c: Chrome,
    op: &'a str,
    verb: &'a str,
    verb_lower: &'a str,
    count: u64,
    rule: &'a str,
    destination: &'a str,
}

/// Retry or discard the selected dead letters, or every one matching the filter once the
/// operator has seen how many that is (and only when it is still that many).
pub(super) async fn dlq_action(v: Viewer, form: Form, s: Arc<State>) -> Response {
    let op = field(&form, "op").unwrap_or_default();
    let rule = field(&form, "rule").unwrap_or_default();
    let destination = field(&form, "destination").unwrap_or_default();
    let back = |done: &str, n: u64| {
        let enc = |x: &str| {
            percent_encoding::utf8_percent_encode(x, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        see_other(&format!(
            "/console/dlq?rule={}&destination={}&done={done}&n={n}",
            enc(rule),
            enc(destination)
        ))
    };
    let (retry, all) = match op {
        "retry-selected" => (true, false),
        "discard-selected" => (false, false),
        "retry-all" => (true, true),
        "discard-all" => (false, true),
        _ => {
            return message(
                &s,
                &v,
                StatusCode::BAD_REQUEST,
                "Unknown action",
                "Choose retry or discard.",
                true,
            );
        }
    };
    let filter = if all {
        let filter = dead_filter(rule, destination, Vec::new());
        let count = match s.store.count_dead(&filter).await {
            Ok(n) => n,
            Err(e) => return store_error(&s, &v, e),
        };
        let confirmed = field(&form, "confirm").and_then(|c| c.parse::<u64>().ok());
        if confirmed != Some(count) {
            // First ask (or ask again: the set changed since the count was shown).
            let (verb, verb_lower) = if retry {
                ("Retry", "retry")
            } else {
                ("Discard", "discard")
            };
            return page(
                StatusCode::OK,
                &ConfirmPage {
                    c: chrome(&v, "dlq", None),
                    op,
                    verb,
                    verb_lower,
                    count,
                    rule,
                    destination,
                },
            );
        }
        filter
    } else {
        let ids: Vec<i64> = form
            .iter()
            .filter(|(k, _)| k == "id")
            .filter_map(|(_, v)| v.parse().ok())
            .take(crate::server::api::MAX_IDS)
            .collect();
        if ids.is_empty() {
            return back("none", 0);
        }
        dead_filter(rule, destination, ids)
    };
    let result = match retry {
        true => s.store.retry_dead_where(&filter).await,
        false => s.store.discard_dead_where(&filter).await,
    };
    match result {
        Ok(n) => {
            if retry && n > 0 {
                s.app.wake.notify_one();
            }
            tracing::info!(count = n, retry, "Dead letters handled from the console.");
            back(if retry { "retried" } else { "discarded" }, n)
        }
        Err(e) => store_error(&s, &v, e),
    }
}

// ---- rules ----

#[derive(Template)]
#[template(path = "rules.html")]
struct RulesPage {
    c: Chrome,
    r: views::RulesView,
    short_hash: String,
}

pub(super) async fn rules(v: Viewer, s: Arc<State>) -> Response {
    match views::rules(&s).await {
        Ok(r) => page(
            StatusCode::OK,
            &RulesPage {
                c: chrome(&v, "rules", None),
                short_hash: crate::app::short_hash(&r.config_hash).to_string(),
                r,
            },
        ),
        Err(e) => store_error(&s, &v, e),
    }
}

/// Reloads now; the rules page then shows the result (the old rules keep serving on errors).
pub(super) async fn reload(_v: Viewer, _form: Form, s: Arc<State>) -> Response {
    let app = s.app.clone();
    let _ = tokio::task::spawn_blocking(move || app.reload("console: Reload now")).await;
    see_other("/console/rules")
}

// ---- silences ----

#[derive(Template)]
#[template(path = "silences.html")]
struct SilencesPage {
    c: Chrome,
    active: Vec<SilenceView>,
    expired: Vec<SilenceView>,
    rule_names: Vec<String>,
}

pub(super) async fn silences(v: Viewer, s: Arc<State>) -> Response {
    silences_page(&s, &v, None, StatusCode::OK).await
}

async fn silences_page(
    s: &State,
    v: &Viewer,
    flash: Option<String>,
    status: StatusCode,
) -> Response {
    let now = now_ms();
    let rows = match s.store.silences(0).await {
        Ok(rows) => rows,
        Err(e) => return store_error(s, v, e),
    };
    let (active, expired): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .filter_map(Silence::from_row)
        .map(|x| x.view(now))
        .partition(|x| x.active);
    page(
        status,
        &SilencesPage {
            c: chrome(v, "silences", flash),
            active,
            expired: expired.into_iter().take(100).collect(),
            rule_names: s
                .app
                .current()
                .rules
                .rules()
                .iter()
                .map(|r| r.name.clone())
                .collect(),
        },
    )
}

pub(super) async fn add_silence(v: Viewer, form: Form, s: Arc<State>) -> Response {
    let parsed = (|| {
        let matchers = field(&form, "matchers")
            .unwrap_or_default()
            .split([',', '\n'])
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(Matcher::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let written = field(&form, "for").unwrap_or_default().trim().to_string();
        let duration = humantime::parse_duration(&written)
            .map_err(|_| format!("`for` {written:?} is not a duration like 2h or 7d"))?;
        NewSilence {
            matchers,
            rule: field(&form, "rule")
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string),
            duration,
            comment: field(&form, "comment").unwrap_or_default().to_string(),
        }
        .start()
    })();
    let silence = match parsed {
        Ok(silence) => silence,
        Err(why) => {
            return silences_page(
                &s,
                &v,
                Some(format!("Not added: {why}")),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    match crate::server::silences::add(&s, silence).await {
        Ok(_) => see_other("/console/silences"),
        Err((_, why)) => {
            silences_page(
                &s,
                &v,
                Some(format!("Not added: {why}")),
                StatusCode::BAD_REQUEST,
            )
            .await
        }
    }
}

pub(super) async fn expire_silence(id: String, v: Viewer, _form: Form, s: Arc<State>) -> Response {
    match crate::server::silences::expire(&s, &id).await {
        Ok(_) => see_other("/console/silences"),
        Err((_, why)) => silences_page(&s, &v, Some(why), StatusCode::NOT_FOUND).await,
    }
}

// ---- playground ----

#[derive(Template)]
#[template(path = "playground.html")]
struct PlaygroundPage {
    c: Chrome,
    event_text: String,
    rules_text: String,
    samples: Vec<&'static str>,
    report: Option<Report>,
    error: Option<PlaygroundError>,
}

impl PlaygroundPage {
    /// A rule's state as a CSS class (`not matched` is `not-matched`).
    fn class(&self, state: &str) -> String {
        state.replace(' ', "-")
    }

    /// A condition tree as indented lines.
    fn tree(&self, c: &crate::explain::Condition) -> String {
        fn walk(out: &mut String, c: &crate::explain::Condition, depth: usize) {
            out.push_str(&"  ".repeat(depth));
            out.push_str(if c.holds { "✓ " } else { "✗ " });
            out.push_str(&c.what);
            out.push('\n');
            for p in &c.parts {
                walk(out, p, depth + 1);
            }
        }
        let mut out = String::new();
        walk(&mut out, c, 0);
        out.trim_end().to_string()
    }
}

/// Sample payloads, as SmartLead posts them.
const SAMPLES: &[(&str, &str)] = &[
    (
        "reply",
        include_str!("../../../examples/events/real_13_email_reply.json"),
    ),
    (
        "open",
        include_str!("../../../examples/events/real_11_email_open.json"),
    ),
    (
        "click",
        include_str!("../../../examples/events/real_12_email_link_click.json"),
    ),
    (
        "sent",
        include_str!("../../../examples/events/real_10_email_sent.json"),
    ),
    (
        "bounce",
        include_str!("../../../examples/events/real_15_email_bounce.json"),
    ),
    (
        "unsubscribe",
        include_str!("../../../examples/events/real_16_lead_unsubscribed.json"),
    ),
];

fn sample(name: &str) -> Option<&'static str> {
    SAMPLES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub(super) async fn playground_page(
    v: Viewer,
    s: Arc<State>,
    q: std::collections::HashMap<String, String>,
) -> Response {
    // A stored event's payload as received (its `raw`), or a sample.
    let mut event_text = sample("reply").unwrap_or_default().to_string();
    let mut error = None;
    if let Some(id) = q.get("event") {
        match s.store.event(id).await {
            Ok(Some(d)) => {
                event_text = serde_json::to_string_pretty(&d.payload["raw"]).unwrap_or_default();
            }
            Ok(None) => {
                error = Some(PlaygroundError {
                    error: format!("there is no event {id} in the store"),
                    problems: Vec::new(),
                })
            }
            Err(e) => return store_error(&s, &v, e),
        }
    } else if let Some(text) = q.get("sample").and_then(|n| sample(n)) {
        event_text = text.to_string();
    }
    page(
        StatusCode::OK,
        &PlaygroundPage {
            c: chrome(&v, "playground", None),
            event_text,
            // Empty: the loaded rules. (Not their text: a rules file may hold secrets.)
            rules_text: String::new(),
            samples: SAMPLES.iter().map(|(n, _)| *n).collect(),
            report: None,
            error,
        },
    )
}

pub(super) async fn run_playground(v: Viewer, form: Form, s: Arc<State>) -> Response {
    let mut event_text = field(&form, "event").unwrap_or_default().to_string();
    let rules_text = field(&form, "rules").unwrap_or_default().to_string();
    if field(&form, "run") == Some("sample")
        && let Some(text) = field(&form, "sample").and_then(sample)
    {
        event_text = text.to_string();
    }
    let (report, error) = match serde_json::from_str::<serde_json::Value>(&event_text) {
        Err(e) => (
            None,
            Some(PlaygroundError {
                error: format!(
                    "the event is not JSON: line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
                problems: Vec::new(),
            }),
        ),
        Ok(event) => {
            let input = PlaygroundInput {
                event,
                rules: Some(rules_text.clone()),
                source: None,
            };
            match views::playground(&s, input).await {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e)),
            }
        }
    };
    let status = match error {
        Some(_) => StatusCode::UNPROCESSABLE_ENTITY,
        None => StatusCode::OK,
    };
    page(
        status,
        &PlaygroundPage {
            c: chrome(&v, "playground", None),
            event_text,
            rules_text,
            samples: SAMPLES.iter().map(|(n, _)| *n).collect(),
            report,
            error,
        },
    )
}
