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
    assert!(headers.contains("Hello"), "{headers}");
    let decoded = m.data.replace("=\r\n", "");
    assert!(
        decoded.contains("<blockquote>Tom &amp; Jerry &lt;tom@x.example&gt; said hi"),
        "HTML part escapes the reply: {}",
        m.data
    );
}
