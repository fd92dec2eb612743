//! The real binary: `check` names every mistake with line and column; `test` shows what would be
//! sent and sends nothing.

use crate::util::{HttpPeer, repo_path};
use std::process::{Command, Output};

fn switchboard(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_RULES")
        .env_remove("SWITCHBOARD_TEMPLATES")
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

const BAD: &str = r#"destinations:
  sales:
    slack:
      webhook_url: https://hooks.slack.example/services/T/B/X
rules:
  - name: one
    when:
      event: EMAIL_REPLIED
      fields:
        reply.text: { matches: "(unclosed" }
        open.count: { gt: lots }
    actions:
      - slack: { destination: nowhere, text: "hi" }
  - name: one
    actions:
      - slack: { destination: sales, template: slack/missing.hbs }
      - slack: { destination: sales, text: "{{#if lead.email}}unclosed" }
      - slack: { destination: sales, text: "Hi {{lead.frist_name}}" }
"#;

#[test]
fn check_names_line_and_column_of_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("bad.yaml"), BAD).unwrap();
    let out = switchboard(&["check", "--rules", "bad.yaml"], dir.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expect = [
        ("bad.yaml:10:", "bad regular expression"),
        ("bad.yaml:11:", "`gt` takes a number"),
        ("bad.yaml:13:", "unknown destination \"nowhere\""),
        ("bad.yaml:14:", "duplicate rule name \"one\""),
        (
            "bad.yaml:16:",
            "template file \"slack/missing.hbs\" not found",
        ),
        ("bad.yaml:17:", "does not compile"),
        ("bad.yaml:18:", "lead.frist_name"),
    ];
    for (at, what) in expect {
        assert!(
            text.lines().any(|l| l.starts_with(at) && l.contains(what)),
            "missing {at} {what} in:\n{text}"
        );
    }
    assert!(text.contains("7 problem(s) found"), "{text}");
}

#[test]
fn check_reports_yaml_and_shape_errors_with_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        "rules:\n  - name: x\n    actions: []\n    colour: blue\n",
    )
    .unwrap();
    let text = stdout(&switchboard(
        &["check", "--rules", "r.yaml", "--templates", "t"],
        dir.path(),
    ));
    assert!(
        text.lines()
            .any(|l| l.starts_with("r.yaml:4:") && l.contains("colour")),
        "{text}"
    );
    std::fs::write(dir.path().join("r.yaml"), "rules:\n  - name: [unclosed\n").unwrap();
    let text = stdout(&switchboard(
        &["check", "--rules", "r.yaml", "--templates", "t"],
        dir.path(),
    ));
    assert!(
        text.lines()
            .any(|l| l.starts_with("r.yaml:") && !l.starts_with("r.yaml: ")),
        "{text}"
    );
}

#[test]
fn check_passes_the_shipped_rules_and_warns_about_unset_destinations() {
    let out = switchboard(&["check"], &repo_path(""));
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("warning: destination \"sales-slack\" is not configured"),
        "{text}"
    );
    assert!(text.contains("SALES_SLACK_WEBHOOK_URL"), "{text}");
}

#[tokio::test]
async fn test_shows_the_rendered_output_and_sends_nothing() {
    let peer = HttpPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("templates/slack")).unwrap();
    std::fs::copy(
        repo_path("templates/slack/reply.json.hbs"),
        dir.path().join("templates/slack/reply.json.hbs"),
    )
    .unwrap();
    let rules = format!(
        "rules:\n  - name: reply-to-sales\n    when: {{ event: EMAIL_REPLIED }}\n    actions:\n      - slack: {{ webhook_url: \"{}\", template: slack/reply.json.hbs }}\n      - http: {{ url: \"{}\", headers: {{ Authorization: Bearer secret-token }}, body: '{{\"email\": \"{{{{lead.email}}}}\"}}' }}\n  - name: bounces\n    when: {{ event: EMAIL_BOUNCED }}\n    actions:\n      - log: {{ message: bounce }}\n",
        peer.url("/services/T0/B0/SECRETPATH"),
        peer.url("/crm")
    );
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    std::fs::write(
        dir.path().join("event.json"),
        include_str!("../fixtures/smartlead/real_13_email_reply.json"),
    )
    .unwrap();
    let out = switchboard(
        &[
            "test",
            "--event",
            "event.json",
            "--rules",
            "rules.yaml",
            "--explain",
        ],
        dir.path(),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Matched 1 rule(s)"), "{text}");
    assert!(text.contains("== rule reply-to-sales =="), "{text}");
    assert!(text.contains("\"text\": \"Open in SmartLead\""), "{text}");
    assert!(text.contains("POST http://127.0.0.1"), "{text}");
    assert!(
        text.contains("{\"email\": \"james.parker@prospect.example\"}"),
        "{text}"
    );
    assert!(
        text.contains("✗ bounces") && text.contains("✗ event is EMAIL_BOUNCED"),
        "{text}"
    );
    assert!(
        !text.contains("SECRETPATH"),
        "the webhook URL is a secret: {text}"
    );
    assert!(
        !text.contains("secret-token"),
        "headers like Authorization are secrets: {text}"
    );
    assert!(!text.contains("fakesecret"), "{text}");
    assert!(peer.received().is_empty(), "test sent something");
}

/// Each rule is compiled as soon as it is read; one that names a destination or a time window
/// declared further down, or in a later file of the rules directory, waits for it, gets its
/// settings all the same and keeps its place in the order the rules are written in.
#[tokio::test]
async fn rules_may_name_destinations_and_time_windows_declared_after_them() {
    let peer = HttpPeer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    let rules = r#"rules:
  - name: first-names-one-below
    when: { event: EMAIL_REPLIED }
    actions:
      - http: { destination: crm, body: '{"n": 1}' }
  - name: second-names-none
    when: { event: EMAIL_REPLIED }
    actions:
      - http: { url: "URL/inline", allow_private: true, body: '{"n": 2}' }
  - name: third-names-the-next-file
    when: { event: EMAIL_REPLIED }
    actions:
      - http: { destination: ops, body: '{"n": 3}', active: office }
destinations:
  crm:
    http: { url: "URL/below", allow_private: true }
"#;
    let more = r#"destinations:
  ops:
    http: { url: "URL/next-file", allow_private: true }
time_windows:
  office:
    intervals: [{ times: [{ start_time: '00:00', end_time: '23:59' }] }]
"#;
    let url = peer.url("");
    let url = url.trim_end_matches('/');
    std::fs::write(
        dir.path().join("rules/10-rules.yaml"),
        rules.replace("URL", url),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules/20-more.yaml"),
        more.replace("URL", url),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("event.json"),
        include_str!("../fixtures/smartlead/real_13_email_reply.json"),
    )
    .unwrap();
    let out = switchboard(&["check", "--rules", "rules"], dir.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("ok: 3 rule(s) in 2 file(s)"), "{text}");
    let out = switchboard(
        &["test", "--event", "event.json", "--rules", "rules"],
        dir.path(),
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("Matched 3 rule(s)"), "{text}");
    let at = |what: &str| {
        text.find(what)
            .unwrap_or_else(|| panic!("no {what} in:\n{text}"))
    };
    assert!(
        at("== rule first-names-one-below ==") < at("/below"),
        "{text}"
    );
    assert!(at("/below") < at("== rule second-names-none =="), "{text}");
    assert!(at("== rule second-names-none ==") < at("/inline"), "{text}");
    assert!(
        at("/inline") < at("== rule third-names-the-next-file =="),
        "{text}"
    );
    assert!(
        at("== rule third-names-the-next-file ==") < at("/next-file"),
        "{text}"
    );
    assert!(peer.received().is_empty(), "test sent something");
}

/// A rules file that does not parse counts for nothing but its syntax error: what the parser
/// read of it before the error (rules, names, destinations) neither compiles nor clashes with
/// the other files.
#[test]
fn a_file_that_does_not_parse_reports_its_syntax_error_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    let broken = r#"rules:
  - name: shared-name
    actions:
      - slack: { destination: declared-below, text: hi }
  - name: bad-regex
    when: { fields: { reply.text: { matches: "(unclosed" } } }
    actions:
      - log: { message: hi }
destinations:
  declared-below: [unclosed
"#;
    let good = r#"rules:
  - name: shared-name
    actions:
      - log: { message: hi }
"#;
    std::fs::write(dir.path().join("rules/10-broken.yaml"), broken).unwrap();
    std::fs::write(dir.path().join("rules/20-good.yaml"), good).unwrap();
    let out = switchboard(&["check", "--rules", "rules"], dir.path());
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("1 problem(s) found"), "{text}");
    let problem = text.lines().next().unwrap_or_default();
    assert!(problem.starts_with("rules/10-broken.yaml:1"), "{text}");
}

#[test]
fn test_rejects_bad_input_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("e.json"), "{\"event\": ").unwrap();
    let rules = repo_path("rules/rules.yaml");
    let templates = repo_path("templates");
    let out = switchboard(
        &[
            "test",
            "--event",
            "e.json",
            "--rules",
            rules.to_str().unwrap(),
            "--templates",
            templates.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("e.json:1:"),
        "{out:?}"
    );
}

/// The README's first command: `switchboard serve` on the shipped rules with no variables set.
/// It accepts an event, logs what it would have sent, and stops cleanly on SIGTERM.
#[tokio::test]
async fn serve_runs_the_shipped_rules_with_no_accounts_and_logs_what_it_would_send() {
    use std::io::Read;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let store_dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", store_dir.path().join("s.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", &listen, "--store", &store])
        .current_dir(repo_path(""))
        .env("RUST_LOG", "info")
        .env_remove("SALES_SLACK_WEBHOOK_URL")
        .env_remove("SWITCHBOARD_RULES")
        .env_remove("SWITCHBOARD_TEMPLATES")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/webhooks/smartlead");
    let body = include_str!("../fixtures/smartlead/real_13_email_reply.json");
    let mut answer = None;
    for _ in 0..100 {
        match client.post(&url).body(body).send().await {
            Ok(r) => {
                answer = Some((r.status().as_u16(), r.text().await.unwrap()));
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let (status, text) = answer.expect("the router answers");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"status\":\"received\""), "{text}");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.success(), "exit {exit:?}\n{log}");
    assert!(
        log.contains("Reply from James Parker <james.parker@prospect.example>"),
        "{log}"
    );
    assert!(log.contains("set SALES_SLACK_WEBHOOK_URL"), "{log}");
    assert!(log.contains("reply-to-sales"), "{log}");
    assert!(
        log.contains("trigger=\"SIGHUP\"") && log.contains("Configuration reloaded."),
        "{log}"
    );
    assert!(!log.contains("fakesecret"), "{log}");
}

#[test]
fn every_recipe_in_examples_passes_check() {
    let recipes = std::fs::read_dir(repo_path("examples/recipes")).unwrap();
    let mut checked = 0;
    for entry in recipes {
        let path = entry.unwrap().path();
        let out = switchboard(
            &["check", "--rules", path.to_str().unwrap()],
            &repo_path(""),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            stdout(&out)
        );
        checked += 1;
    }
    assert!(checked >= 2);
}

/// `dlq` and `deliveries` work on the store of a running router and of a stopped one.
#[tokio::test]
async fn dlq_and_deliveries_commands_on_a_running_and_a_stopped_router() {
    let slack = HttpPeer::start().await;
    slack.script(vec![(404, "no_service", vec![])]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        format!("rules:\n  - name: reply-to-sales\n    actions:\n      - slack: {{ webhook_url: \"{}\", text: hi }}\n", slack.url("/services/T/B/SECRET")),
    )
    .unwrap();
    let store = format!("sqlite://{}", dir.path().join("switchboard.db").display());
    let router = crate::util::Binary::start(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/webhooks/smartlead", router.url))
        .body(include_str!(
            "../fixtures/smartlead/real_13_email_reply.json"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    slack.wait_for(1).await;
    let list = || switchboard(&["dlq", "list", "--store", &store], dir.path());
    let mut text = String::new();
    for _ in 0..100 {
        text = stdout(&list());
        if text.contains("no_service") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("dead")
            && text.contains("reply-to-sales")
            && text.contains("no_service")
            && text.contains("404"),
        "{text}"
    );
    assert!(
        !text.contains("SECRET"),
        "the webhook URL is a secret: {text}"
    );
    let id = text
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    router.signal("-TERM");
    drop(router);
    let out = switchboard(&["dlq", "retry", &id, "--store", &store], dir.path());
    assert!(stdout(&out).contains("Requeued 1"), "{}", stdout(&out));
    let out = switchboard(&["dlq", "discard", "999", "--store", &store], dir.path());
    assert!(
        stdout(&out).contains("No dead letter with id 999"),
        "{}",
        stdout(&out)
    );

    let _router = crate::util::Binary::start(dir.path(), &[]).await;
    slack.wait_for(2).await;
    let mut text = String::new();
    for _ in 0..100 {
        text = stdout(&switchboard(
            &["deliveries", "--status", "delivered", "--store", &store],
            dir.path(),
        ));
        if text.contains("delivered") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        text.contains("james.parker@prospect.example") && text.contains("reply-to-sales"),
        "{text}"
    );
    let json = stdout(&switchboard(
        &[
            "deliveries",
            "--lead",
            "james.parker@prospect.example",
            "--json",
            "--store",
            &store,
        ],
        dir.path(),
    ));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["status"], "delivered");
    assert_eq!(v[0]["history"].as_array().unwrap().len(), 2);
    let missing = switchboard(
        &["deliveries", "--store", "sqlite:///nonexistent/x.db"],
        dir.path(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store at /nonexistent/x.db"));
}
