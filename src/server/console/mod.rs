//! The web console at `/console`: server-rendered pages (askama templates compiled into the
//! binary, with a small CSS and JS file embedded too) over the same store queries and views as
//! `/api` ([`super::views`]).
//!
//! Access follows `/api`'s policy, with a session instead of a bearer header: with an admin
//! token, a login form turns it into an HttpOnly, SameSite=Strict cookie that every instance
//! accepts ([`session`]); without one, the console is open on a loopback-only router to requests
//! for a loopback name (DNS rebinding), and closed beyond loopback. Every POST must come from the
//! console itself: `Sec-Fetch-Site` and `Origin` say so, and its form token matches the session.
//! Every page is `no-store`, framed by nobody, and under a Content-Security-Policy that allows no
//! inline script or style; every text from an event is escaped by the templates.

mod live;
mod pages;
pub mod session;

use super::State;
use super::access::ConsoleEntry;
use session::Keys;
use std::sync::Arc;
use warp::Filter;
use warp::host::Authority;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

/// The console's keys (for sessions and form tokens).
pub struct Console {
    keys: Keys,
}

impl Console {
    /// The console of a router with these admin settings.
    pub fn new(access: &super::AdminAccess) -> Self {
        let keys = match access.console() {
            ConsoleEntry::Login(token) => Keys::from_token(token),
            ConsoleEntry::Open | ConsoleEntry::Closed => Keys::random(),
        };
        Console { keys }
    }
}

/// Who is looking at a page.
#[derive(Clone)]
pub(super) struct Viewer {
    /// Logged in with the admin token (else the console is open).
    logged_in: bool,
    /// The token every form of this viewer carries.
    form_token: String,
    /// The session cookie's value (empty for an open console).
    session: String,
}

/// Why a console request was refused.
#[derive(Debug)]
enum Refusal {
    /// Not logged in: to the login form, then back to this path.
    Login(String),
    /// Not allowed at all (403), with why.
    Forbidden(String),
}
impl warp::reject::Reject for Refusal {}

/// What a POST's guard reads.
#[derive(Debug)]
struct PostOrigin {
    host: Option<String>,
    origin: Option<String>,
    fetch_site: Option<String>,
}

impl PostOrigin {
    /// Whether the request comes from a page of this router (not another site).
    fn same_origin(&self) -> Result<(), String> {
        if let Some(site) = &self.fetch_site
            && !(site.eq_ignore_ascii_case("same-origin") || site.eq_ignore_ascii_case("none"))
        {
            return Err(format!(
                "this request comes from another site (Sec-Fetch-Site: {site}); the console \
                 takes form posts only from its own pages"
            ));
        }
        if let Some(origin) = &self.origin {
            let host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if host.is_none() || host != self.host.as_deref() {
                return Err(format!(
                    "this request comes from another origin ({origin}); the console takes form \
                     posts only from its own pages"
                ));
            }
        }
        Ok(())
    }
}

/// The security headers of every console answer.
fn harden(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    resp
}

/// An HTML answer.
pub(super) fn html(status: StatusCode, body: String) -> Response {
    harden(warp::reply::with_status(warp::reply::html(body), status).into_response())
}

/// `303 See Other` to `to` (after a POST: the page it changed).
pub(super) fn see_other(to: &str) -> Response {
    let mut resp = warp::reply::with_status(warp::reply(), StatusCode::SEE_OTHER).into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert("location", v);
    }
    harden(resp)
}

/// Whether a path is a console path to return to after login (never another site).
fn safe_next(next: &str) -> &str {
    let ok = next.starts_with("/console")
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.chars().any(char::is_control);
    if ok { next } else { "/console" }
}

/// Passes the requests that may see the console, with who is looking.
fn viewer(state: Arc<State>) -> impl Filter<Extract = (Viewer,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("cookie")
        .and(warp::host::optional())
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and_then(
            move |cookie: Option<String>,
                  host: Option<Authority>,
                  path: warp::path::FullPath,
                  query: String| {
                let state = state.clone();
                async move {
                    let Some(console) = &state.console else {
                        return Err(warp::reject::not_found());
                    };
                    match state.access.console() {
                        ConsoleEntry::Closed => Err(warp::reject::custom(Refusal::Forbidden(
                            "the console is off: the router listens beyond loopback and \
                             SWITCHBOARD_ADMIN_TOKEN is not set"
                                .into(),
                        ))),
                        ConsoleEntry::Open => {
                            let host = host.as_ref().map(Authority::as_str);
                            state
                                .access
                                .check_host(host)
                                .map_err(|m| warp::reject::custom(Refusal::Forbidden(m)))?;
                            Ok(Viewer {
                                logged_in: false,
                                form_token: console.keys.form_token(""),
                                session: String::new(),
                            })
                        }
                        ConsoleEntry::Login(_) => {
                            let now = chrono::Utc::now().timestamp();
                            match session::cookie_value(cookie.as_deref()) {
                                Some(v) if console.keys.valid_session(v, now) => Ok(Viewer {
                                    logged_in: true,
                                    form_token: console.keys.form_token(v),
                                    session: v.to_string(),
                                }),
                                _ => {
                                    let mut back = path.as_str().to_string();
                                    if !query.is_empty() {
                                        back = format!("{back}?{query}");
                                    }
                                    Err(warp::reject::custom(Refusal::Login(back)))
                                }
                            }
                        }
                    }
                }
            },
        )
}

/// Passes POSTs that come from the console's own pages.
fn from_own_pages() -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("host")
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("sec-fetch-site"))
        .and_then(
            |host: Option<String>, origin: Option<String>, fetch_site: Option<String>| async move {
                PostOrigin {
                    host,
                    origin,
                    fetch_site,
                }
                .same_origin()
                .map_err(|m| warp::reject::custom(Refusal::Forbidden(m)))
            },
        )
        .untuple_one()
}

/// A form's fields (repeated names kept, such as several `id`).
pub(super) type Form = Vec<(String, String)>;

/// The first value of a form field.
pub(super) fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A POSTed form whose token matches the viewer's session, with the viewer.
fn guarded_form(
    state: Arc<State>,
) -> impl Filter<Extract = (Viewer, Form), Error = warp::Rejection> + Clone {
    warp::post()
        .and(from_own_pages())
        .and(viewer(state.clone()))
        .and(warp::body::content_length_limit(2 * 1024 * 1024))
        .and(warp::body::form::<Form>())
        .and_then(move |viewer: Viewer, form: Form| {
            let state = state.clone();
            async move {
                let console = state.console.as_ref().ok_or_else(warp::reject::not_found)?;
                let offered = field(&form, "_csrf").unwrap_or_default();
                if console.keys.valid_form_token(&viewer.session, offered) {
                    Ok((viewer, form))
                } else {
                    Err(warp::reject::custom(Refusal::Forbidden(
                        "the form's token does not match this session; reload the page and try \
                         again"
                            .into(),
                    )))
                }
            }
        })
        .untuple_one()
}

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

/// Every route under `/console`.
pub(super) fn routes(state: Arc<State>) -> warp::filters::BoxedFilter<(Response,)> {
    if state.console.is_none() {
        // `--console off`: no page, no asset, no login.
        return warp::path("console")
            .map(|| {
                super::error(
                    StatusCode::NOT_FOUND,
                    "the console is off (serve --console off)",
                )
            })
            .boxed();
    }
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };
    let asset = |body: &'static str, kind: &'static str| {
        move || {
            let mut resp = warp::reply::with_header(body, "content-type", kind).into_response();
            resp.headers_mut().insert(
                "cache-control",
                HeaderValue::from_static("public, max-age=300"),
            );
            resp.headers_mut().insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            resp
        }
    };
    let css = warp::get()
        .and(warp::path!("console" / "static" / "app.css"))
        .map(asset(APP_CSS, "text/css; charset=utf-8"));
    let js = warp::get()
        .and(warp::path!("console" / "static" / "app.js"))
        .map(asset(APP_JS, "text/javascript; charset=utf-8"));
    let login_page = warp::get()
        .and(warp::path!("console" / "login"))
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(with_state.clone())
        .map(
            |q: std::collections::HashMap<String, String>, s: Arc<State>| {
                pages::login_form(&s, q.get("next").map_or("/console", |n| safe_next(n)), None)
            },
        );
    let login = warp::post()
        .and(warp::path!("console" / "login"))
        .and(from_own_pages())
        .and(super::peer())
        .and(warp::header::optional::<String>("origin"))
        .and(warp::body::content_length_limit(16 * 1024))
        .and(warp::body::form::<Form>())
        .and(with_state.clone())
        .map(|peer, origin: Option<String>, form: Form, s: Arc<State>| {
            pages::login(&s, peer, origin, &form)
        });
    let logout = warp::path!("console" / "logout")
        .and(guarded_form(state.clone()))
        .map(|_: Viewer, _: Form| pages::logout());
    let get = |path: &'static str| {
        warp::get()
            .and(warp::path("console"))
            .and(move_path(path))
            .and(warp::path::end())
            .and(viewer(state.clone()))
            .and(with_state.clone())
    };
    let overview = get("").then(pages::overview);
    let events = get("events")
        .and(warp::query::<super::views::EventQuery>())
        .then(pages::events);
    let event = warp::get()
        .and(warp::path!("console" / "events" / String))
        .and(viewer(state.clone()))
        .and(with_state.clone())
        .then(pages::event);
    let delivery_action = warp::path!("console" / "deliveries" / i64 / String)
        .and(guarded_form(state.clone()))
        .and(with_state.clone())
        .then(pages::delivery_action);
    let dlq = get("dlq")
        .and(warp::query::<pages::DeadQuery>())
        .then(pages::dlq);
    let dlq_action = warp::path!("console" / "dlq")
        .and(guarded_form(state.clone()))
        .and(with_state.clone())
        .then(pages::dlq_action);
    let rules = get("rules").then(pages::rules);
    let reload = warp::path!("console" / "rules" / "reload")
        .and(guarded_form(state.clone()))
        .and(with_state.clone())
        .then(pages::reload);
    let silences = get("silences").then(pages::silences);
    let add_silence = warp::path!("console" / "silences")
        .and(guarded_form(state.clone()))
        .and(with_state.clone())
        .then(pages::add_silence);
    let expire_silence = warp::path!("console" / "silences" / String / "expire")
        .and(guarded_form(state.clone()))
        .and(with_state.clone())
        .then(pages::expire_silence);
    let playground = get("playground")
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .then(pages::playground_page);
    let run_playground = warp::path!("console" / "playground")
        .and(guarded_form(state.clone()))
        .and(with_state.clone())
        .then(pages::run_playground);
    let live = warp::get()
        .and(warp::path!("console" / "live"))
        .and(viewer(state.clone()))
        .and(warp::query::<super::views::EventQuery>())
        .and(warp::header::optional::<String>("last-event-id"))
        .and(with_state.clone())
        .map(live::stream);
    let not_found = warp::get()
        .and(warp::path("console"))
        .and(viewer(state.clone()))
        .and(with_state.clone())
        .map(|v: Viewer, s: Arc<State>| {
            pages::message(
                &s,
                &v,
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such page.",
                true,
            )
        });
    let all: Vec<warp::filters::BoxedFilter<(Response,)>> = vec![
        css.boxed(),
        js.boxed(),
        login_page.boxed(),
        login.boxed(),
        logout.boxed(),
        overview.boxed(),
        events.boxed(),
        event.boxed(),
        delivery_action.boxed(),
        dlq.boxed(),
        dlq_action.boxed(),
        rules.boxed(),
        reload.boxed(),
        silences.boxed(),
        add_silence.boxed(),
        expire_silence.boxed(),
        playground.boxed(),
        run_playground.boxed(),
        live.boxed(),
        not_found.boxed(),
    ];
    all.into_iter()
        .reduce(|a, b| a.or(b).unify().boxed())
        .expect("routes")
        .recover(move |r: warp::Rejection| {
            let state = state.clone();
            async move { refusal(&state, r) }
        })
        .unify()
        .boxed()
}

/// The segment after `/console` (none for the overview).
fn move_path(segment: &'static str) -> warp::filters::BoxedFilter<()> {
    if segment.is_empty() {
        warp::any().boxed()
    } else {
        warp::path(segment).boxed()
    }
}

/// A refused console request as a page (the login form, or 403), and anything else the
/// console's filters turned down (not found, a bad query) as the API would answer it.
fn refusal(state: &State, r: warp::Rejection) -> Result<Response, warp::Rejection> {
    match r.find::<Refusal>() {
        Some(Refusal::Login(back)) => {
            let to = format!(
                "/console/login?next={}",
                percent_encoding::utf8_percent_encode(back, percent_encoding::NON_ALPHANUMERIC)
            );
            Ok(see_other(&to))
        }
        Some(Refusal::Forbidden(why)) => Ok(pages::forbidden(state, why)),
        None => Err(r),
    }
}
