//! Rule memory across events, decided in the intake transaction, in the store: events of one
//! key in one group commit, a restart between them, or two instances on one PostgreSQL change
//! nothing; every event it holds back is kept as a `suppressed` delivery with its reason.
//! - `once`: a rule fires for the first event of each key, then not again for a while;
//! - `unless_seen`: a rule does not fire for a key seen lately with events of some types.

use crate::postgres::fresh_store;
use crate::util::{
    Binary, HttpPeer, Router, Start, check_rule, config_dir, fast_retries, fixture, unique,
};
use serde_json::Value;
use std::time::Duration;
use switchboard::store::{DeliveryStatus, DeliveryView, Filter};

fn rules(peer: &HttpPeer, hold: &str) -> String {
    format!(
        r#"rules:
  - name: first-open
    when: {{ event: EMAIL_OPENED }}
    once: {{ key: "{{{{campaign.id}}}}:{{{{lead.email}}}}", for: {hold} }}
    actions:
      - http: {{ url: "{}", body: '{{"lead": "{{{{lead.email}}}}"}}' }}
"#,
        peer.url("/open")
    )
}

/// A distinct open of `lead` (a real-shape EMAIL_OPEN payload).
fn open(lead: &str) -> Value {
    let mut e = unique(fixture("real_11_email_open"));
    e["to_email"] = Value::String(lead.into());
    e["sl_lead_email"] = Value::String(lead.into());
    e
}

pub async fn all(router: &Router) -> Vec<DeliveryView> {
    let filter = Filter {
        limit: Some(1000),
        ..Filter::default()
    };
    router.store.list(&filter).await.unwrap()
}

/// The deliveries once `n` of them are final (delivered or suppressed; at most 10 s).
pub async fn settled(router: &Router, n: usize) -> Vec<DeliveryView> {
    let begun = std::time::Instant::now();
    loop {
        let list = all(router).await;
        let done = list
            .iter()
            .filter(|d| {
                matches!(
                    d.status,
                    DeliveryStatus::Delivered | DeliveryStatus::Suppressed
                )
            })
            .count();
        if done >= n || begun.elapsed() > Duration::from_secs(10) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn with_status(list: &[DeliveryView], status: DeliveryStatus) -> Vec<&DeliveryView> {
    list.iter().filter(|d| d.status == status).collect()
}

/// Both stores: SQLite in the router's directory, and PostgreSQL when a server is set.
pub async fn each_store(test: impl AsyncFn(Start)) {
    test(Start::default()).await;
    if let Some((url, _schema)) = fresh_store().await {
        test(Start {
            store: Some(url),
            ..Start::default()
        })
        .await;
    }
}

#[tokio::test]
async fn the_first_event_of_each_key_fires_and_the_others_are_kept_suppressed() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&rules(&peer, "1h"), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        // Five opens of one lead at once (one group commit, or a few), then two of another.
        let opens: Vec<Value> = (0..5).map(|_| open("ana@lead.example")).collect();
        futures_util::future::join_all(opens.iter().map(|e| router.post(e))).await;
        router.post(&open("bo@lead.example")).await;
        router.post(&open("bo@lead.example")).await;

        let got = peer.wait_for(2).await;
        let mut leads: Vec<String> = got.iter().map(|r| r.json()["lead"].to_string()).collect();
        leads.sort();
        assert_eq!(leads, ["\"ana@lead.example\"", "\"bo@lead.example\""]);
        // Their attempts are recorded just after the requests arrive.
        let list = settled(&router, 7).await;
        let suppressed = with_status(&list, DeliveryStatus::Suppressed);
        assert_eq!(suppressed.len(), 5, "{list:#?}");
        assert!(
            suppressed
                .iter()
                .all(|d| d.reason.as_deref() == Some("once"))
        );
        assert_eq!(with_status(&list, DeliveryStatus::Delivered).len(), 2);
        router
            .wait_metric(
                "switchboard_deliveries_total",
                &[("outcome", "suppressed"), ("reason", "once")],
                5.0,
            )
            .await;
        // A SmartLead retry of an open is a duplicate: it takes nothing and is not recorded.
        let (status, body) = router
            .post_raw("/webhooks/smartlead", opens[0].to_string())
            .await;
        assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(peer.received().len(), 2);
        assert_eq!(all(&router).await.len(), 7);
    })
    .await;
}

#[tokio::test]
async fn a_key_stays_taken_across_a_restart_and_is_free_again_when_its_time_is_over() {
    let peer = HttpPeer::start().await;
    let dir = config_dir(&rules(&peer, "2s"), &[]);
    let router = Router::start_in(dir).await;
    router.post(&open("ana@lead.example")).await;
    peer.wait_for(1).await;
    let router = router.restart().await;
    router.post(&open("ana@lead.example")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer.received().len(), 1, "still taken after the restart");
    // The hold is 2 s from the first open; past it the key is free.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    router.post(&open("ana@lead.example")).await;
    peer.wait_for(2).await;
    let list = settled(&router, 3).await;
    assert_eq!(with_status(&list, DeliveryStatus::Suppressed).len(), 1);
    assert_eq!(with_status(&list, DeliveryStatus::Delivered).len(), 2);
}

#[tokio::test]
async fn two_instances_on_one_postgresql_fire_once_between_them() {
    let Some((url, _schema)) = fresh_store().await else {
        return;
    };
    let peer = HttpPeer::start().await;
    let text = rules(&peer, "1h").replace("for: 1h", "forever: true");
    let ([a, b], _dirs) = crate::util::two_instances(&url, &text).await;
    let client = reqwest::Client::new();
    // The same lead's opens, to both instances alternately and at once.
    let posts = (0..20).map(|i| {
        let target = if i % 2 == 0 { &a.url } else { &b.url };
        client
            .post(format!("{target}/webhooks/smartlead"))
            .body(open("ana@lead.example").to_string())
            .send()
    });
    for r in futures_util::future::join_all(posts).await {
        assert_eq!(r.unwrap().status(), 200);
    }
    peer.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer.received().len(), 1, "once, between both instances");
    let deliveries: Value = client
        .get(format!(
            "{}/api/deliveries?status=suppressed&limit=100",
            a.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deliveries["deliveries"].as_array().unwrap().len(), 19);
}

#[tokio::test]
async fn check_refuses_a_once_without_a_hold_or_a_field() {
    let cases = [
        ("once: { key: \"{{lead.email}}\" }", "`once` needs `for`"),
        ("once: { key: \"everyone\", for: 1d }", "names no field"),
        ("once: { key: \"{{lead.frist}}\", for: 1d }", "lead.frist"),
        (
            "once: { key: \"{{lead.email}}\", for: 500ms }",
            "at least 1s",
        ),
        (
            "once: { key: \"{{lead.email}}\", for: soon }",
            "not a duration",
        ),
    ];
    for (once, expected) in cases {
        let (code, text) = check_rule(once);
        assert_eq!(code, Some(1), "{once}: {text}");
        assert!(
            text.contains("rules.yaml:3:") && text.contains(expected),
            "{once}: {text}"
        );
    }
    // A key whose fields may be missing is a warning, not an error.
    let (code, text) = check_rule("once: { key: \"{{lead.email}}\", for: 1d }");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("rules.yaml:3:") && text.contains("warning") && text.contains("undecided"),
        "{text}"
    );
}

fn unless_replied(peer: &HttpPeer) -> String {
    format!(
        r#"rules:
  - name: warm
    when:
      event: EMAIL_OPENED
      unless_seen: {{ event: [EMAIL_REPLIED, EMAIL_BOUNCED], same: "{{{{lead.email}}}}", within: 1h }}
    actions:
      - http: {{ url: "{}", body: '{{"lead": "{{{{lead.email}}}}"}}' }}
"#,
        peer.url("/warm")
    )
}

/// A distinct reply of `lead`.
fn reply(lead: &str) -> Value {
    let mut e = unique(fixture("real_13_email_reply"));
    e["sl_lead_email"] = Value::String(lead.into());
    e["to_email"] = Value::String(lead.into());
    e["leadCorrespondence"]["targetLeadEmail"] = Value::String(lead.into());
    e
}

#[tokio::test]
async fn a_lead_who_replied_is_not_announced_as_warm() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&unless_replied(&peer), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        // The reply matches no rule, and still counts.
        router.post(&reply("ana@lead.example")).await;
        router.post(&open("ana@lead.example")).await;
        router.post(&open("bo@lead.example")).await;
        let got = peer.wait_for(1).await;
        assert_eq!(got[0].json()["lead"], "bo@lead.example");
        let list = settled(&router, 2).await;
        let suppressed = with_status(&list, DeliveryStatus::Suppressed);
        assert_eq!(suppressed.len(), 1, "{list:#?}");
        assert_eq!(
            suppressed[0].lead_email.as_deref(),
            Some("ana@lead.example")
        );
        assert_eq!(suppressed[0].reason.as_deref(), Some("unless_seen"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(peer.received().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn check_places_unless_seen_under_the_rules_own_when() {
    let cases = [
        (
            "when: { any: [{ event: EMAIL_OPENED, unless_seen: { event: EMAIL_REPLIED, same: \"{{lead.email}}\", within: 1d } }] }",
            "directly under the rule's `when`",
        ),
        (
            "when: { unless_seen: { event: EMAIL_REPLIED, same: \"{{lead.email}}\", within: a while } }",
            "not a duration",
        ),
        (
            "when: { unless_seen: { event: [], same: \"{{lead.email}}\", within: 1d } }",
            "lists no event type",
        ),
        (
            "when: { unless_seen: { event: EMAIL_REPLIED, same: \"everyone\", within: 1d } }",
            "names no field",
        ),
    ];
    for (when, expected) in cases {
        let (code, text) = check_rule(when);
        assert_eq!(code, Some(1), "{when}: {text}");
        assert!(
            text.contains("rules.yaml:3:") && text.contains(expected),
            "{when}: {text}"
        );
    }
}

fn hot(peer: &HttpPeer, once: &str) -> String {
    format!(
        r#"rules:
  - name: hot
    when:
      event: EMAIL_OPENED
      fields: {{ open.count: {{ gte: 3 }} }}
{once}    actions:
      - http: {{ url: "{}", body: '{{"lead": "{{{{lead.email}}}}", "opens": {{{{json open.count}}}}}}' }}
"#,
        peer.url("/hot")
    )
}

/// The `opens` of the requests a peer received, sorted.
fn opens(peer: &HttpPeer) -> Vec<i64> {
    let mut seen: Vec<i64> = peer
        .received()
        .iter()
        .map(|r| r.json()["opens"].as_i64().expect("a count"))
        .collect();
    seen.sort_unstable();
    seen
}

#[tokio::test]
async fn the_router_counts_opens_that_come_without_a_count() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&hot(&peer, ""), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        // Real-shape opens carry no count: the router counts them, these five at once.
        let five: Vec<Value> = (0..5).map(|_| open("ana@lead.example")).collect();
        futures_util::future::join_all(five.iter().map(|e| router.post(e))).await;
        peer.wait_for(3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(opens(&peer), [3, 4, 5], "the third, fourth and fifth open");
        // Another lead counts from one; a SmartLead retry counts nothing.
        router.post(&open("bo@lead.example")).await;
        let (_, again) = router
            .post_raw("/webhooks/smartlead", five[0].to_string())
            .await;
        assert_eq!(again["status"], "duplicate");
        router.post(&open("ana@lead.example")).await;
        peer.wait_for(4).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(opens(&peer), [3, 4, 5, 6]);
        // A count SmartLead sends (the documented shape) is its own.
        let mut documented = unique(fixture("docs_02_email_opened"));
        documented["lead"]["email"] = Value::String("cy@lead.example".into());
        documented["opened_count"] = Value::from(9);
        router.post(&documented).await;
        peer.wait_for(5).await;
        assert_eq!(opens(&peer), [3, 4, 5, 6, 9]);
    })
    .await;
}

#[tokio::test]
async fn a_hot_lead_is_announced_on_the_third_open_and_once_across_a_restart() {
    let peer = HttpPeer::start().await;
    let once = "    once: { key: \"{{campaign.id}}:{{lead.email}}\", for: 14d }\n";
    let dir = config_dir(&hot(&peer, once), &[]);
    let router = Router::start_in(dir).await;
    router.post(&open("ana@lead.example")).await;
    router.post(&open("ana@lead.example")).await;
    let router = router.restart().await;
    for _ in 0..3 {
        router.post(&open("ana@lead.example")).await;
    }
    peer.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(opens(&peer), [3], "the third open, and only it");
    let list = settled(&router, 3).await;
    let suppressed = with_status(&list, DeliveryStatus::Suppressed);
    assert_eq!(suppressed.len(), 2, "the fourth and fifth: {list:#?}");
    assert!(
        suppressed
            .iter()
            .all(|d| d.reason.as_deref() == Some("once"))
    );
    // The first two opens matched nothing: no delivery at all.
    assert_eq!(list.len(), 3);
}

/// The shipped rules and templates in a directory of their own, as the binary reads them.
pub fn shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        crate::util::repo_path("rules/rules.yaml"),
        dir.path().join("rules.yaml"),
    )
    .unwrap();
    let templates = crate::util::repo_path("templates");
    for entry in walk(&templates) {
        let to = dir
            .path()
            .join("templates")
            .join(entry.strip_prefix(&templates).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, to).unwrap();
    }
    dir
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Slack messages announcing a hot lead.
fn hot_leads(slack: &HttpPeer) -> Vec<String> {
    slack
        .received()
        .iter()
        .filter(|r| r.body.contains("Hot lead"))
        .map(|r| r.json()["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn the_shipped_hot_lead_fires_on_the_third_real_open_once_across_a_sigkill() {
    let slack = HttpPeer::start().await;
    let dir = shipped();
    let env = [("SALES_SLACK_WEBHOOK_URL", slack.url("/hooks"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let client = reqwest::Client::new();
    let post = async |url: &str, event: Value| {
        let r = client
            .post(format!("{url}/webhooks/smartlead"))
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    let router = Binary::start_with_env(dir.path(), &[], &env).await;
    post(&router.url, open("ana@lead.example")).await;
    post(&router.url, open("ana@lead.example")).await;
    // Killed between the opens: what was acknowledged was counted.
    router.signal("-KILL");
    drop(router);
    let router = Binary::start_with_env(dir.path(), &[], &env).await;
    for _ in 0..3 {
        post(&router.url, open("ana@lead.example")).await;
    }
    // A lead who replied first is never announced, however often they open.
    post(&router.url, reply("bo@lead.example")).await;
    for _ in 0..4 {
        post(&router.url, open("bo@lead.example")).await;
    }
    slack.wait_for(2).await; // bo's reply, and ana's third open
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hot = hot_leads(&slack);
    assert_eq!(hot.len(), 1, "{hot:?}");
    assert!(
        hot[0].contains("James Parker") || hot[0].contains("ana@lead.example"),
        "{hot:?}"
    );
    let suppressed: Value = client
        .get(format!(
            "{}/api/deliveries?status=suppressed&rule=hot-lead",
            router.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let reasons: Vec<&str> = suppressed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    // ana's fourth and fifth opens (two actions each), bo's third and fourth (two each).
    assert_eq!(
        reasons.iter().filter(|r| **r == "once").count(),
        4,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| **r == "unless_seen").count(),
        4,
        "{reasons:?}"
    );
}

fn capped(peer: &HttpPeer, window: &str) -> String {
    format!(
        r#"rules:
  - name: opens-cap
    when: {{ event: EMAIL_OPENED }}
    throttle: {{ key: "{{{{lead.email}}}}", limit: 2, per: 2s, window: {window} }}
    actions:
      - http: {{ url: "{}", body: '{{"lead": "{{{{lead.email}}}}", "held": {{{{json noise.suppressed}}}}}}' }}
"#,
        peer.url("/cap")
    )
}

/// The `held` of the requests a peer received, in arrival order.
fn held(peer: &HttpPeer) -> Vec<i64> {
    peer.received()
        .iter()
        .map(|r| r.json()["held"].as_i64().expect("a number"))
        .collect()
}

#[tokio::test]
async fn a_throttle_lets_its_limit_through_and_tells_how_many_it_held_back() {
    each_store(async |start: Start| {
        let peer = HttpPeer::start().await;
        let dir = config_dir(&capped(&peer, "fixed"), &[]);
        let router = Router::start_as(dir, fast_retries(), start).await;
        let ten: Vec<Value> = (0..10).map(|_| open("ana@lead.example")).collect();
        let opened = std::time::Instant::now();
        futures_util::future::join_all(ten.iter().map(|e| router.post(e))).await;
        peer.wait_for(2).await;
        let list = settled(&router, 10).await;
        let throttled = with_status(&list, DeliveryStatus::Suppressed);
        assert_eq!(throttled.len(), 8, "{list:#?}");
        assert!(
            throttled
                .iter()
                .all(|d| d.reason.as_deref() == Some("throttled"))
        );
        assert_eq!(held(&peer), [0, 0]);
        // The window (2 s from its first firing) reopens: the next message tells of the eight.
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(opened.elapsed())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        router.post(&open("ana@lead.example")).await;
        peer.wait_for(3).await;
        assert_eq!(held(&peer), [0, 0, 8]);
        router
            .wait_metric(
                "switchboard_deliveries_total",
                &[("outcome", "suppressed"), ("reason", "throttled")],
                8.0,
            )
            .await;
    })
    .await;
}

#[tokio::test]
async fn a_rolling_throttle_counts_the_last_window() {
    let peer = HttpPeer::start().await;
    let dir = config_dir(&capped(&peer, "rolling"), &[]);
    let router = Router::start_in(dir).await;
    router.post(&open("ana@lead.example")).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    router.post(&open("ana@lead.example")).await;
    router.post(&open("ana@lead.example")).await; // the third within 2 s: held back
    peer.wait_for(2).await;
    // 2.1 s after the first: it left the window, the second is still in it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    router.post(&open("ana@lead.example")).await;
    peer.wait_for(3).await;
    router.post(&open("ana@lead.example")).await; // two in the last 2 s again: held back
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(held(&peer), [0, 0, 1]);
}

#[tokio::test]
async fn check_refuses_a_throttle_without_a_limit_or_a_window() {
    for (throttle, expected) in [
        (
            "{ key: \"{{lead.email}}\", limit: 0, per: 1h }",
            "at least 1",
        ),
        (
            "{ key: \"{{lead.email}}\", limit: 2, per: 100ms }",
            "at least 1s",
        ),
        (
            "{ key: \"{{lead.email}}\", limit: 2, per: 1h, window: sliding }",
            "`fixed` or `rolling`",
        ),
    ] {
        let (code, text) = check_rule(&format!("throttle: {throttle}"));
        assert_eq!(code, Some(1), "{throttle}: {text}");
        assert!(
            text.contains("rules.yaml:3:") && text.contains(expected),
            "{throttle}: {text}"
        );
    }
}
