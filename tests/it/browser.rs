//! The console in a real browser: Debian's Chromium, headless, driven through ChromeDriver over
//! WebDriver. Each test saves screenshots of the pages it visits under
//! `target/console-screenshots/`. Without chromedriver the tests are skipped with a printed
//! reason, except where `SWITCHBOARD_BROWSER_TESTS=required` (set by `.ci/run`): there they fail.

use crate::console::{bounce, reply, rules};
use crate::util::{HttpPeer, Router, Start, config_dir, fast_retries};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use switchboard::store::DeliveryStatus;

/// One browser at a time: two cores do not run several Chromiums and the router well.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A headless Chromium under ChromeDriver, stopped when dropped.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Killing chromedriver leaves its Chromium running (each holding an inotify instance
        // of the user's 128, which the routers' file watches need too): end every process of
        // this browser's profile.
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(self._profile.path())
            .status();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Starts a browser (or says why it cannot: `None` when browser tests may be skipped here).
/// `extra` are more Chromium flags.
async fn browser(extra: &[&str]) -> Option<Browser> {
    let required = std::env::var("SWITCHBOARD_BROWSER_TESTS").as_deref() == Ok("required");
    let (Some(driver), Some(chromium)) = (
        find_program(&["chromedriver"]),
        find_program(&["chromium", "chromium-browser"]),
    ) else {
        let why = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)";
        assert!(!required, "browser tests are required here: {why}");
        eprintln!("skipped: {why}");
        return None;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let driver = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let begun = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            begun.elapsed() < Duration::from_secs(10),
            "chromedriver answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--window-size=1360,900".into(),
        format!("--user-data-dir={}", profile.path().display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"binary": chromium, "args": args}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a browser session");
    Some(Browser {
        client,
        driver,
        _profile: profile,
    })
}

impl Browser {
    /// Saves a screenshot of the page as `target/console-screenshots/{name}.png`.
    async fn screenshot(&self, name: &str) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.client
            .wait()
            .at_most(Duration::from_secs(5))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn click(&self, css: &str) {
        self.client
            .wait()
            .at_most(Duration::from_secs(5))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }
}

/// Waits (at most 15 s) until `n` deliveries are in `status`.
async fn wait_status(router: &Router, status: DeliveryStatus, n: usize) {
    let begun = Instant::now();
    loop {
        let count = crate::memory::all(router)
            .await
            .iter()
            .filter(|d| d.status == status)
            .count();
        if count >= n {
            return;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(15),
            "{n} deliveries {status:?}; {count} are"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn login_is_refused_with_a_wrong_token_and_hostile_reply_text_runs_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start_as(
        config_dir(&rules(&slack, &hook), &[]),
        fast_retries(),
        Start {
            admin_token: Some("br0wser-token".into()),
            ..Start::default()
        },
    )
    .await;
    let mut e = reply("eve@lead.example");
    e["reply_message"]["text"] =
        json!("<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"> thanks!");
    e["to_name"] = json!("<img src=y onerror=\"window.pwned = 3\">Eve");
    let id = router.post(&e).await;
    slack.wait_for(1).await;
    let Some(b) = browser(&[]).await else { return };
    let c = &b.client;

    c.goto(&router.url(&format!("/console/events/{id}")))
        .await
        .unwrap();
    assert!(
        c.current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/console/login")
    );
    b.screenshot("login").await;
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    b.click("#login").await;
    assert!(b.text("#login-error").await.contains("not the admin token"));
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("br0wser-token")
        .await
        .unwrap();
    b.click("#login").await;
    // Back to the page asked for, logged in.
    let reply_text = b.text("#reply-text").await;
    assert!(c.current_url().await.unwrap().path().ends_with(&id));
    assert!(
        reply_text.contains("<script>window.pwned = 1</script>"),
        "{reply_text}"
    );
    assert!(b.text("#lead").await.contains("<img src=y"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pwned = c
        .execute("return window.pwned === undefined", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!(true), "nothing from the event ran");
    assert!(c.get_alert_text().await.is_err(), "no dialog opened");
    assert_eq!(
        c.find_all(Locator::Css("main img")).await.unwrap().len(),
        0,
        "no element was made from the event"
    );
    b.screenshot("event").await;

    c.goto(&router.url("/console")).await.unwrap();
    assert!(b.text("#readiness").await.contains("ready"));
    b.screenshot("overview").await;
    c.goto(&router.url("/console/events")).await.unwrap();
    assert!(b.text("#event-rows").await.contains("eve@lead.example"));
    b.screenshot("events").await;
    c.goto(&router.url("/console/silences")).await.unwrap();
    b.screenshot("silences").await;
}

#[tokio::test]
async fn a_dead_letter_retried_in_the_console_is_delivered_and_bulk_retry_keeps_to_its_filter() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    // Slack answers 500 to every attempt of the first reply (4 in all), the hook to both
    // bounces' (8), and the three replies after that too (12).
    slack.script(vec![(500, "internal_error", vec![]); 4]);
    hook.script(vec![(500, "down", vec![]); 8]);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let first = router.post(&reply("one@lead.example")).await;
    wait_status(&router, DeliveryStatus::Dead, 1).await;
    let Some(b) = browser(&[]).await else { return };
    let c = &b.client;
    c.goto(&router.url(&format!("/console/events/{first}")))
        .await
        .unwrap();
    assert_eq!(
        c.find(Locator::Css(".delivery .chip"))
            .await
            .unwrap()
            .attr("data-status")
            .await
            .unwrap()
            .as_deref(),
        Some("dead")
    );
    b.click("button.retry").await;
    wait_status(&router, DeliveryStatus::Delivered, 1).await;
    c.goto(&router.url(&format!("/console/events/{first}")))
        .await
        .unwrap();
    assert_eq!(b.text(".delivery .chip").await, "delivered");
    assert_eq!(slack.received().len(), 5, "four failures, then the retry");

    // Three replies and two bounces dead; retry every dead reply, and only those.
    slack.script(vec![(500, "internal_error", vec![]); 12]);
    for n in 0..3 {
        router.post(&reply(&format!("r{n}@lead.example"))).await;
    }
    for n in 0..2 {
        router.post(&bounce(&format!("b{n}@lead.example"))).await;
    }
    wait_status(&router, DeliveryStatus::Dead, 5).await;
    c.goto(&router.url("/console/dlq?rule=replies"))
        .await
        .unwrap();
    b.screenshot("dead-letters").await;
    b.click("#retry-all").await;
    assert!(
        b.text("#confirm-count")
            .await
            .contains("retry 3 dead letter(s)")
    );
    b.screenshot("dead-letters-confirm").await;
    let hook_before = hook.received().len();
    b.click("#confirm").await;
    assert!(b.text(".flash").await.contains("3 dead letter(s) requeued"));
    wait_status(&router, DeliveryStatus::Delivered, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hook.received().len(),
        hook_before,
        "the bounces were not touched"
    );
    let dead: Vec<String> = crate::memory::all(&router)
        .await
        .into_iter()
        .filter(|d| d.status == DeliveryStatus::Dead)
        .map(|d| d.rule)
        .collect();
    assert_eq!(dead, vec!["bounces", "bounces"]);
}

#[tokio::test]
async fn the_playground_shows_verdicts_and_slack_json_and_a_broken_reload_shows_where() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let Some(b) = browser(&[]).await else { return };
    let c = &b.client;
    c.goto(&router.url("/console/playground")).await.unwrap();
    b.click("#run").await;
    let result = b.text("#pg-result").await;
    assert!(result.contains("replies matched"), "{result}");
    assert!(result.contains("bounces not matched"), "{result}");
    let message = b.text(".message-body").await;
    assert!(message.starts_with("POST "), "{message}");
    let body = &message[message.find("\n\n").expect("headers, then the body") + 2..];
    let slack_json: Value = serde_json::from_str(body).expect("the exact Slack JSON");
    assert!(
        slack_json["text"]
            .as_str()
            .unwrap()
            .contains("replied: Sounds good"),
        "{slack_json}"
    );
    b.screenshot("playground").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(slack.received().is_empty(), "the playground sent nothing");

    // A broken rules file: Reload now shows where, and the old rules keep serving.
    std::fs::write(
        router.rules_path(),
        "rules:\n  - name: replies\n    when: { event: { bogus: 1 } }\n    actions:\n      - log: { message: hi }\n",
    )
    .unwrap();
    c.goto(&router.url("/console/rules")).await.unwrap();
    b.click("#reload").await;
    let errors = b.text("#reload-errors").await;
    assert!(errors.contains("rules.yaml:3:"), "{errors}");
    assert!(b.text("#last-reload").await.contains("failed"));
    b.screenshot("rules").await;
    router.post(&reply("still@lead.example")).await;
    slack.wait_for(1).await;
}

#[tokio::test]
async fn the_live_events_page_shows_a_new_event_within_two_seconds() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    let Some(b) = browser(&[]).await else { return };
    let c = &b.client;
    c.goto(&router.url("/console/events")).await.unwrap();
    b.click("#live").await;
    // The stream takes its starting point before the event is posted.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let id = router.post(&reply("live@lead.example")).await;
    let row = c
        .wait()
        .at_most(Duration::from_secs(2))
        .for_element(Locator::Css(&format!("tr[data-id=\"{id}\"]")))
        .await;
    assert!(row.is_ok(), "the event appears within 2 s");
}

#[tokio::test]
async fn a_cross_site_post_and_a_foreign_host_get_403() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (slack, hook) = (HttpPeer::start().await, HttpPeer::start().await);
    let router = Router::start(&rules(&slack, &hook), &[]).await;
    // Another site's page whose form posts to the console as soon as it loads.
    let target = router.url("/console/rules/reload");
    let page = format!(
        "<!doctype html><form id=f method=post action=\"{target}\"><input name=_csrf value=x></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    use warp::Filter as _;
    let evil = warp::any().map(move || warp::reply::html(page.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_port = listener.local_addr().unwrap().port();
    tokio::spawn(warp::serve(evil).incoming(listener).run());
    let port = router.addr.port();
    let rule = "--host-resolver-rules=MAP evil.example 127.0.0.1";
    let Some(b) = browser(&[rule]).await else {
        return;
    };
    let c = &b.client;
    let before = router.status().await["last_reload"].clone();
    c.goto(&format!("http://evil.example:{evil_port}/"))
        .await
        .unwrap();
    let refused = b.text("#forbidden").await;
    assert!(refused.contains("another site"), "{refused}");
    let after = router.status().await["last_reload"].clone();
    assert_eq!(after, before, "no reload was done");
    assert_ne!(after["trigger"], "console: Reload now");
    // A foreign name pointed at the router (DNS rebinding) gets nothing.
    c.goto(&format!("http://evil.example:{port}/console"))
        .await
        .unwrap();
    let refused = b.text("#forbidden").await;
    assert!(refused.contains("DNS rebinding"), "{refused}");
}
