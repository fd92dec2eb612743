//! The web console over HTTP and the API it shares its views with: who may enter (a login
//! with the admin token into a session cookie every instance accepts, or loopback names only
//! without a token), what every POST must carry (its own origin, its form token), the security
//! headers, escaping, the events list (unmatched events included) and its filters, bulk actions
//! on dead letters by filter, the playground, and the live view fed from the store. The
//! browser-driven checks are in `browser.rs`.

use crate::memory::each_store;
use crate::util::{HttpPeer, Router, Start, config_dir, fast_retries, fixture, unique};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use switchboard::store::DeliveryStatus;

/// A client that keeps no cookies and follows no redirects: every answer is seen as sent.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub(crate) fn rules(slack: &HttpPeer, hook: &HttpPeer) -> String {
    format!(
        r#"rules:
  - name: replies
    when: {{ event: EMAIL_REPLIED }}
    actions:
      - slack: {{ webhook_url: "{}", text: "{{{{lead.name}}}} replied: {{{{reply.text}}}}" }}
  - name: bounces
    when: {{ event: EMAIL_BOUNCED }}
    actions:
      - http: {{ url: "{}", body: "{{{{lead.email}}}}" }}
"#,
        slack.url("/services/T/B/X"),
        hook.url("/bounce")
    )
}

pub(crate) fn reply(lead: &str) -> Value {
    let mut e = unique(fixture("real_13_email_reply"));
    e["leadCorrespondence"]["targetLeadEmail"] = json!(lead);
    e["sl_lead_email"] = json!(lead);
    e["to_email"] = json!(lead);
    e
}

pub(crate) fn bounce(lead: &str) -> Value {
    let mut e = unique(fixture("real_15_email_bounce"));
    e["sl_lead_email"] = json!(lead);
    e["to_email"] = json!(lead);
    e
}

async fn text(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, String) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// The form token on a page.
fn form_token(page: &str) -> String {
    let at = page.find("name=\"_csrf\" value=\"").expect("a form token") + 20;
    page[at..at + 64].to_string()
}

#[tokio::test]
async fn an_open_console_answers_loopback_names_with_strict_headers_and_refuses_foreign_posts() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let c = client();
    let (status, headers, page) = text(c.get(router.url("/console")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Overview"), "{page}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        !page.contains("<script>") && !page.contains(" style="),
        "no inline script or style"
    );

    // DNS rebinding: a foreign name pointed at 127.0.0.1 gets nothing.
    let (status, _, page) = text(
        c.get(router.url("/console/events"))
            .header("host", "evil.example")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("DNS rebinding"), "{page}");

    // A page of another site cannot post, with or without the form token.
    let (_, _, rules_page) = text(c.get(router.url("/console/rules")).send().await.unwrap()).await;
    let token = form_token(&rules_page);
    for (header, value) in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("origin", "null"),
    ] {
        let (status, _, page) = text(
            c.post(router.url("/console/rules/reload"))
                .header(header, value)
                .form(&[("_csrf", token.as_str())])
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 403, "{header}: {value}: {page}");
    }
    // Nor can a form without the token, even from the console's own origin.
    let own = router.url("");
    let (status, _, _) = text(
        c.post(router.url("/console/rules/reload"))
            .header("origin", own.trim_end_matches('/'))
            .form(&[("_csrf", "0".repeat(64).as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    // With it, from its own pages, the reload is done.
    let (status, headers, _) = text(
        c.post(router.url("/console/rules/reload"))
            .header("origin", own.trim_end_matches('/'))
            .header("sec-fetch-site", "same-origin")
            .form(&[("_csrf", token.as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/console/rules");
    let status = router.status().await;
    assert_eq!(status["last_reload"]["trigger"], "console: Reload now");
}

#[tokio::test]
async fn a_token_router_asks_for_a_login_whose_session_works_on_every_instance() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let token = "s3cret-admin-token";
    let start = |store: Option<String>| Start {
        admin_token: Some(token.into()),
        store,
        ..Start::default()
    };
    let a = Router::start_as(
        config_dir(&rules(&slack, &hook), &[]),
        fast_retries(),
        start(None),
    )
    .await;
    let c = client();
    let (status, headers, _) =
        text(c.get(a.url("/console/dlq?rule=x")).send().await.unwrap()).await;
    assert_eq!(status, 303);
    assert_eq!(
        headers["location"],
        "/console/login?next=%2Fconsole%2Fdlq%3Frule%3Dx"
    );
    let login = |router: &Router, offered: &str| {
        c.post(router.url("/console/login"))
            .form(&[("token", offered), ("next", "/console/dlq")])
            .send()
    };
    let (status, headers, page) = text(login(&a, "wrong").await.unwrap()).await;
    assert_eq!(status, 401, "{page}");
    assert!(headers.get("set-cookie").is_none());
    assert!(page.contains("not the admin token"), "{page}");
    // A login form may not send the visitor elsewhere afterwards.
    let (_, headers, _) = text(
        c.post(a.url("/console/login"))
            .form(&[("token", token), ("next", "//evil.example/")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(headers["location"], "/console");
    let (status, headers, _) = text(login(&a, token).await.unwrap()).await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], "/console/dlq");
    let cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(token), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();

    let (status, _, page) = text(
        c.get(a.url("/console"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!page.contains(token), "no secret on any page");
    // `/api` stays bearer-only: the session cookie opens nothing there.
    let (status, _, _) = text(
        c.get(a.url("/api/events"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // A second instance with the same token (as on one PostgreSQL) takes the same session.
    let b = Router::start_as(
        config_dir(&rules(&slack, &hook), &[]),
        fast_retries(),
        start(None),
    )
    .await;
    let (status, _, _) = text(
        c.get(b.url("/console/events"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    // Another token does not.
    let other = Router::start_as(
        config_dir(&rules(&slack, &hook), &[]),
        fast_retries(),
        Start {
            admin_token: Some("another".into()),
            ..Start::default()
        },
    )
    .await;
    let (status, _, _) = text(
        c.get(other.url("/console/events"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 303);
}

#[tokio::test]
async fn a_console_beyond_loopback_without_a_token_is_closed() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    // The webhook asks for a token (a router beyond loopback must authenticate its sources).
    let dir = config_dir(
        &format!(
            "sources:\n  smartlead:\n    token: t0k\n{}",
            rules(&slack, &hook)
        ),
        &[],
    );
    let router = Router::start_on(
        dir,
        fast_retries(),
        ("0.0.0.0:0".parse().unwrap(), None),
        1_000,
    )
    .await;
    let (status, _, page) = text(client().get(router.url("/console")).send().await.unwrap()).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("SWITCHBOARD_ADMIN_TOKEN"), "{page}");
}

#[tokio::test]
async fn events_are_listed_with_unmatched_ones_filtered_and_paged_on_both_stores() {
    each_store(async |start: Start| {
        let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
        let router = Router::start_as(
            config_dir(&rules(&slack, &hook), &[]),
            fast_retries(),
            start,
        )
        .await;
        let replied = router.post(&reply("ana@lead.example")).await;
        let bounced = router.post(&bounce("bo@lead.example")).await;
        let mut sent = unique(fixture("real_10_email_sent"));
        sent["campaign_id"] = json!(777);
        let unmatched = router.post(&sent).await;
        slack.wait_for(1).await;
        hook.wait_for(1).await;

        let c = client();
        let events = |q: &'static str| {
            let c = c.clone();
            let url = router.url(&format!("/api/events{q}"));
            async move {
                let r = c.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let v: Value = r.json().await.unwrap();
                v
            }
        };
        let ids = |v: &Value| -> Vec<String> {
            v["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_string())
                .collect()
        };
        let all = events("").await;
        assert_eq!(
            ids(&all),
            vec![unmatched.clone(), bounced.clone(), replied.clone()]
        );
        assert_eq!(all["events"][0]["deliveries"], json!([]));
        assert_eq!(all["events"][2]["deliveries"][0]["rule"], "replies");
        assert_eq!(
            ids(&events("?status=unmatched").await),
            vec![unmatched.clone()]
        );
        assert_eq!(
            ids(&events("?type=EMAIL_BOUNCED").await),
            vec![bounced.clone()]
        );
        assert_eq!(
            ids(&events("?lead=ANA@lead.example").await),
            vec![replied.clone()]
        );
        assert_eq!(ids(&events("?campaign=777").await), vec![unmatched.clone()]);
        assert_eq!(ids(&events("?rule=bounces").await), vec![bounced.clone()]);
        assert_eq!(
            ids(&events("?status=delivered&type=EMAIL_REPLIED").await),
            vec![replied.clone()]
        );
        assert!(ids(&events("?since=2999-01-01T00:00").await).is_empty());
        assert_eq!(ids(&events("?until=2999-01-01").await).len(), 3);
        // Pages of two: the second starts where the first ended.
        let first = events("?limit=2").await;
        assert_eq!(ids(&first), vec![unmatched.clone(), bounced.clone()]);
        let next = first["next"].as_str().unwrap().to_string();
        let r = c
            .get(router.url(&format!("/api/events?limit=2&after={next}")))
            .send()
            .await
            .unwrap();
        let second: Value = r.json().await.unwrap();
        assert_eq!(ids(&second), vec![replied.clone()]);
        // A bad filter says what is wrong.
        let r = c
            .get(router.url("/api/events?since=yesterday"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("since"), "{body}");

        // One event whole: its deliveries with their attempts.
        let r = c
            .get(router.url(&format!("/api/events/{replied}")))
            .send()
            .await
            .unwrap();
        let detail: Value = r.json().await.unwrap();
        assert_eq!(
            detail["delivery_history"][0]["status"], "delivered",
            "{detail}"
        );
        assert_eq!(
            detail["delivery_history"][0]["history"][0]["outcome"],
            "delivered"
        );
        assert_eq!(detail["payload"]["lead"]["email"], "ana@lead.example");

        // The console's page of the same list.
        let (status, _, page) = text(
            c.get(router.url("/console/events?status=unmatched"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            page.contains(&unmatched) && !page.contains(&replied),
            "{page}"
        );
        assert!(page.contains("matched no rule"), "{page}");
    })
    .await;
}

#[tokio::test]
async fn lead_written_text_is_escaped_and_links_from_events_are_only_web_links() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let mut e = reply("x@lead.example");
    e["reply_message"]["text"] = json!("<script>alert(1)</script><img src=x onerror=alert(2)>");
    e["to_name"] = json!("<b onmouseover=alert(3)>Eve</b>");
    e["ui_master_inbox_link"] = json!("javascript:alert(4)");
    e["app_url"] = json!("javascript:alert(4)");
    let id = router.post(&e).await;
    let (status, _, page) = text(
        client()
            .get(router.url(&format!("/console/events/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("<img src=x"), "{page}");
    assert!(!page.contains("<b onmouseover"), "{page}");
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{page}"
    );
    assert!(!page.contains("href=\"javascript:"), "{page}");
    assert!(!page.contains("open the conversation"), "{page}");
    // A web link from the event is a link.
    let id = router.post(&reply("y@lead.example")).await;
    let (_, _, page) = text(
        client()
            .get(router.url(&format!("/console/events/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        page.contains("href=\"https://app.smartlead.ai/app/master-inbox?leadMap=1438627\""),
        "{page}"
    );
}

#[tokio::test]
async fn pasted_playground_rules_never_read_the_routers_environment() {
    // SAFETY: a variable of this test alone, set before any thread reads it.
    unsafe { std::env::set_var("SB_PLAYGROUND_SECRET", "hunter2-s3cret") };
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let pasted = "rules:\n  - name: leak\n    actions:\n      - email:\n          smtp_url: smtp://127.0.0.1:1\n          from: \"${SB_PLAYGROUND_SECRET}\"\n          to: \"${SB_PLAYGROUND_SECRET}@x.example\"\n          subject: hi\n          text: hi\n";
    let r = client()
        .post(router.url("/api/playground"))
        .body(json!({"event": reply("pg@lead.example"), "rules": pasted}).to_string())
        .send()
        .await
        .unwrap();
    let answer = r.text().await.unwrap();
    assert!(!answer.contains("hunter2"), "{answer}");
    assert!(answer.contains("SB_PLAYGROUND_SECRET"), "{answer}");
}

#[tokio::test]
async fn a_bulk_retry_by_filter_touches_exactly_the_filtered_dead_letters() {
    each_store(async |start: Start| {
        let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
        // Every send fails for now: 4 attempts each, then dead.
        slack.script(vec![(500, "internal_error", vec![]); 12]);
        hook.script(vec![(500, "down", vec![]); 8]);
        let router = Router::start_as(
            config_dir(&rules(&slack, &hook), &[]),
            fast_retries(),
            start,
        )
        .await;
        for n in 0..3 {
            router.post(&reply(&format!("r{n}@lead.example"))).await;
        }
        for n in 0..2 {
            router.post(&bounce(&format!("b{n}@lead.example"))).await;
        }
        let begun = Instant::now();
        while crate::memory::all(&router)
            .await
            .iter()
            .filter(|d| d.status == DeliveryStatus::Dead)
            .count()
            < 5
        {
            assert!(
                begun.elapsed() < Duration::from_secs(15),
                "five dead letters"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let c = client();
        let r = c
            .get(router.url("/api/dlq/count?rule=replies"))
            .send()
            .await
            .unwrap();
        let count: Value = r.json().await.unwrap();
        assert_eq!(count["count"], 3);
        // What the operator saw must still hold.
        let r = c
            .post(router.url("/api/dlq/retry"))
            .body(json!({"rule": "replies", "expect": 2}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let slack_before = slack.received().len();
        let hook_before = hook.received().len();
        let r = c
            .post(router.url("/api/dlq/retry"))
            .body(json!({"rule": "replies", "expect": 3}).to_string())
            .send()
            .await
            .unwrap();
        let done: Value = r.json().await.unwrap();
        assert_eq!(done["requeued"], 3, "{done}");
        slack.wait_for(slack_before + 3).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hook.received().len(), hook_before, "the bounces stay dead");
        let list = crate::memory::all(&router).await;
        let state = |rule: &str, status: DeliveryStatus| {
            list.iter()
                .filter(|d| d.rule == rule && d.status == status)
                .count()
        };
        assert_eq!(state("replies", DeliveryStatus::Delivered), 3);
        assert_eq!(state("bounces", DeliveryStatus::Dead), 2);
        // Discard by ids: exactly those.
        let dead: Vec<i64> = list
            .iter()
            .filter(|d| d.status == DeliveryStatus::Dead)
            .map(|d| d.id)
            .collect();
        let r = c
            .post(router.url("/api/dlq/discard"))
            .body(json!({"ids": [dead[0]]}).to_string())
            .send()
            .await
            .unwrap();
        let done: Value = r.json().await.unwrap();
        assert_eq!(done["discarded"], 1);
        let r = c.get(router.url("/api/dlq/count")).send().await.unwrap();
        let count: Value = r.json().await.unwrap();
        assert_eq!(count["count"], 1);
        // The console's "discard all matching": first how many, then only that many.
        let (_, _, page) = text(c.get(router.url("/console/dlq")).send().await.unwrap()).await;
        let token = form_token(&page);
        let own = router.url("");
        let post = |fields: Vec<(&'static str, String)>| {
            c.post(router.url("/console/dlq"))
                .header("origin", own.trim_end_matches('/').to_string())
                .form(&fields)
                .send()
        };
        let (status, _, page) = text(
            post(vec![
                ("_csrf", token.clone()),
                ("op", "discard-all".into()),
                ("rule", "bounces".into()),
            ])
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            page.contains("discard <strong>1</strong> dead letter(s)"),
            "{page}"
        );
        let r = c.get(router.url("/api/dlq/count")).send().await.unwrap();
        let count: Value = r.json().await.unwrap();
        assert_eq!(count["count"], 1, "nothing is done before the confirmation");
        let (status, headers, _) = text(
            post(vec![
                ("_csrf", token),
                ("op", "discard-all".into()),
                ("rule", "bounces".into()),
                ("confirm", "1".into()),
            ])
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, 303);
        assert!(
            headers["location"]
                .to_str()
                .unwrap()
                .contains("done=discarded&n=1")
        );
        let r = c.get(router.url("/api/dlq/count")).send().await.unwrap();
        let count: Value = r.json().await.unwrap();
        assert_eq!(count["count"], 0);
    })
    .await;
}

#[tokio::test]
async fn the_playground_shows_verdicts_and_the_exact_slack_json_and_sends_nothing() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let c = client();
    let r = c
        .post(router.url("/api/playground"))
        .body(json!({"event": reply("pg@lead.example")}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["rules"][0]["name"], "replies");
    assert_eq!(report["rules"][0]["state"], "matched");
    assert_eq!(report["rules"][1]["state"], "not matched");
    assert_eq!(report["rules"][1]["conditions"]["holds"], false);
    let message = report["messages"][0]["message"].as_str().unwrap();
    assert!(message.contains("\"text\""), "{message}");
    assert!(message.contains("replied:"), "{message}");
    // Edited rules: compiled, and their errors with file:line:col.
    let r = c
        .post(router.url("/api/playground"))
        .body(json!({"event": reply("pg@lead.example"), "rules": "rules:\n  - name: x\n    when: { event: { bogus: 1 } }\n    actions:\n      - log: { message: hi }\n"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("playground.yaml:3:"),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(slack.received().is_empty(), "the playground sends nothing");
    assert!(
        crate::memory::all(&router).await.is_empty(),
        "and stores nothing"
    );
}

#[tokio::test]
async fn the_live_view_streams_new_events_from_the_store_and_ends_at_shutdown() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let mut router = Router::start(&rules(&slack, &hook), &[]).await;
    use futures_util::StreamExt;
    let r = client()
        .get(router.url("/console/live?type=EMAIL_REPLIED"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.bytes_stream();
    // Let the stream take its starting point, then post: a bounce (filtered out), a reply.
    tokio::time::sleep(Duration::from_millis(700)).await;
    router.post(&bounce("no@lead.example")).await;
    let id = router.post(&reply("live@lead.example")).await;
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(&id) {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "the reply arrives within 2 s: {seen}");
    assert!(seen.contains("event:event"), "{seen}");
    assert!(!seen.contains("no@lead.example"), "{seen}");
    // An open stream does not hold up shutdown.
    let begun = Instant::now();
    router.stop().await;
    assert!(
        begun.elapsed() < Duration::from_secs(3),
        "{:?}",
        begun.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream ended");
}

#[tokio::test]
async fn the_live_view_starts_after_the_newest_event_its_page_shows() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    use futures_util::StreamExt;
    let shown = router.post(&reply("shown@lead.example")).await;
    let c = client();
    let page: Value = c
        .get(router.url("/api/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let newest = &page["events"][0];
    assert_eq!(newest["id"], shown.as_str());
    let cursor = format!("{}-{}", newest["received_at"], shown);
    // Posted after the page was read, before its live view was switched on.
    let missed = router.post(&reply("between@lead.example")).await;
    let r = c
        .get(router.url(&format!("/console/live?from={cursor}")))
        .send()
        .await
        .unwrap();
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    let got = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains(&missed) {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "the event between arrives: {seen}");
    assert!(!seen.contains(&format!("\"id\":\"{shown}\"")), "{seen}");
    assert!(
        seen.contains("id:"),
        "events carry ids to resume from: {seen}"
    );
}

#[tokio::test]
async fn console_off_serves_no_page_asset_or_login() {
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules(&slack, &hook)).unwrap();
    let router = crate::util::Binary::start(dir.path(), &["--console", "off"]).await;
    for path in [
        "/console",
        "/console/login",
        "/console/static/app.css",
        "/console/events",
    ] {
        let r = client()
            .get(format!("{}{path}", router.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let r = client()
        .get(format!("{}/api/events", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the API stays");
}
