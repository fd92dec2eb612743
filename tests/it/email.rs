//! Email over SMTP to a real SMTP server: text and HTML parts, and no header injection.

use crate::util::{Router, SmtpPeer, fixture};
use serde_json::json;

const RULES: &str = r#"
destinations:
  ops:
    email:
      smtp_url: SMTP
      from: "Switchboard <alerts@example.com>"
      to: [ops@example.com]
rules:
  - name: reply-email
    when: { event: EMAIL_REPLIED }
    actions:
      - email:
          destination: ops
          cc: sales@example.com
          subject: "Reply: {{reply.subject}}"
          text: "{{lead.email}} wrote:\n{{reply.text}}"
          html: "<p>{{lead.email}} wrote:</p><blockquote>{{reply.text}}</blockquote>"
"#;

#[tokio::test]
async fn reply_is_emailed_with_text_and_html_parts() {
    let smtp = SmtpPeer::start();
    let router = Router::start(&RULES.replace("SMTP", &smtp.url()), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let mails = smtp.wait_for(1).await;
    let m = &mails[0];
    assert_eq!(m.from, "alerts@example.com");
    assert!(
        m.to.contains(&"ops@example.com".to_string())
            && m.to.contains(&"sales@example.com".to_string()),
        "{:?}",
        m.to
    );
    assert!(
        m.data
            .contains("Subject: Reply: Re: Some more conversions?"),
        "{}",
        m.data
    );
    assert!(m.data.contains("multipart/alternative"), "{}", m.data);
    assert!(m.data.contains("text/html"), "{}", m.data);
    assert!(
        m.data.contains("james.parker@prospect.example wrote:"),
        "{}",
        m.data
    );
}

#[tokio::test]
async fn a_subject_carrying_crlf_adds_no_header() {
    let smtp = SmtpPeer::start();
    let router = Router::start(&RULES.replace("SMTP", &smtp.url()), &[]).await;
    let mut e = fixture("docs_04_email_replied");
    e["reply"]["subject"] = json!("Hello\r\nBcc: victim@evil.example\r\nX-Injected: yes");
    e["reply"]["body"] = json!("Tom & Jerry <tom@x.example> said hi");
    router.post(&e).await;
    let mails = smtp.wait_for(1).await;
    let m = &mails[0];
    assert!(!m.to.iter().any(|t| t.contains("evil")), "{:?}", m.to);
    let headers = m.data.split("\r\n\r\n").next().unwrap();
    assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{headers}");
    assert!(
        !headers.lines().any(|l| l.starts_with("X-Injected")),
        "{headers}"
    );
    let subject = headers.lines().find(|l| l.starts_with("Subject:")).unwrap();
    assert!(
        !subject.contains("=?"),
        "the subject needed no encoding, so it carries no CR/LF: {subject}"
    );
    assert!(subject.contains("Hello"), "{headers}");
    let decoded = m.data.replace("=\r\n", "");
    assert!(
        decoded.contains("<blockquote>Tom &amp; Jerry &lt;tom@x.example&gt; said hi"),
        "HTML part escapes the reply: {}",
        m.data
    );
}

const TLS_RULES: &str = r#"
rules:
  - name: reply-email
    actions:
      - email:
          smtp_url: SMTP
          from: alerts@example.com
          to: ops@example.com
          subject: "Reply from {{lead.email}}"
          text: "{{reply.text}}"
"#;

#[tokio::test]
async fn starttls_delivers_when_the_server_certificate_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::util::self_signed(dir.path());
    let smtp = SmtpPeer::start_starttls(&cert, &key);
    let url = format!("smtp://127.0.0.1:{}?ca_file={}", smtp.port, cert.display());
    let router = Router::start(&TLS_RULES.replace("SMTP", &url), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let mails = smtp.wait_for(1).await;
    assert!(
        mails[0]
            .data
            .contains("Subject: Reply from james.parker@prospect.example"),
        "{}",
        mails[0].data
    );
}

#[tokio::test]
async fn starttls_refuses_an_untrusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::util::self_signed(dir.path());
    let smtp = SmtpPeer::start_starttls(&cert, &key);
    let url = format!("smtp://127.0.0.1:{}", smtp.port);
    let router = Router::start(&TLS_RULES.replace("SMTP", &url), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    router
        .wait_metric("switchboard_deliveries_total", &[("outcome", "dead")], 1.0)
        .await;
    assert!(smtp.mails().is_empty());
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::util::self_signed(dir.path());
    let smtp = SmtpPeer::start();
    let tls_port = smtp.behind_implicit_tls(&cert, &key).await;
    let url = format!("smtps://127.0.0.1:{tls_port}?ca_file={}", cert.display());
    let router = Router::start(&TLS_RULES.replace("SMTP", &url), &[]).await;
    router.post(&fixture("real_13_email_reply")).await;
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, ["ops@example.com"]);
}
