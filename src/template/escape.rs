//! Escaping: what a value from an event becomes where it lands. Lead-written text (replies,
//! names, subjects) is untrusted, so escaping is automatic and chosen by destination.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Everything but RFC 3986's unreserved characters is percent-encoded in URL values.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Where a rendered template lands, and so how values are escaped inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Escape {
    /// Slack mrkdwn text: `&`, `<`, `>` become entities (no mentions, no disguised links).
    Slack,
    /// Slack text inside a JSON document (Block Kit): Slack escaping, then JSON string escaping.
    SlackJson,
    /// HTML: the usual HTML escaping.
    Html,
    /// Inside a JSON string: quotes, backslashes and control characters escaped.
    Json,
    /// A URL: values percent-encoded.
    Url,
    /// Plain text: values as they are.
    Plain,
}

impl Escape {
    /// Every mode, in registry order.
    pub const ALL: [Escape; 6] = [
        Escape::Slack,
        Escape::SlackJson,
        Escape::Html,
        Escape::Json,
        Escape::Url,
        Escape::Plain,
    ];

    pub(crate) fn index(self) -> usize {
        Escape::ALL.iter().position(|&e| e == self).expect("listed")
    }

    /// The escaping function for values inserted with `{{…}}`.
    pub fn function(self) -> fn(&str) -> String {
        match self {
            Escape::Slack => slack,
            Escape::SlackJson => |s| json_string(&slack(s)),
            Escape::Html => handlebars::html_escape,
            Escape::Json => json_string,
            Escape::Url => url_component,
            Escape::Plain => handlebars::no_escape,
        }
    }

    /// Whether values are Slack-escaped in this mode.
    pub fn is_slack(self) -> bool {
        matches!(self, Escape::Slack | Escape::SlackJson)
    }
}

/// Slack's three control characters as entities, as Slack's formatting guide asks.
pub fn slack(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The inside of a JSON string literal (no surrounding quotes).
pub fn json_string(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("strings serialise");
    quoted[1..quoted.len() - 1].to_string()
}

/// Percent-encoding for a value placed inside a URL.
pub fn url_component(s: &str) -> String {
    utf8_percent_encode(s, URL_COMPONENT).to_string()
}

/// One header line's value: CR, LF and other control characters become spaces.
pub fn header_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// Cuts `s` to at most `max` characters, ending with an ellipsis when cut. Never leaves half
/// of an `&…;` entity behind.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(1);
    let mut cut: String = s.chars().take(keep).collect();
    if let Some(amp) = cut.rfind('&')
        && !cut[amp..].contains(';')
        && cut.len() - amp < 8
    {
        cut.truncate(amp);
    }
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_escaping_neutralises_mentions_and_links() {
        assert_eq!(
            slack("<!channel> & <@U123|x>"),
            "&lt;!channel&gt; &amp; &lt;@U123|x&gt;"
        );
    }

    #[test]
    fn json_string_escaping_keeps_json_valid() {
        let v = json_string("a \"quoted\"\nline\\ \u{1}");
        let parsed: String = serde_json::from_str(&format!("\"{v}\"")).unwrap();
        assert_eq!(parsed, "a \"quoted\"\nline\\ \u{1}");
    }

    #[test]
    fn header_values_lose_line_breaks() {
        assert_eq!(
            header_value("Hi\r\nBcc: evil@example.com"),
            "Hi  Bcc: evil@example.com"
        );
    }

    #[test]
    fn truncate_counts_characters_and_keeps_entities_whole() {
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ab &amp; cd", 6), "ab …");
        assert_eq!(truncate("ab &amp; cd", 5).chars().count(), 4);
    }
}
