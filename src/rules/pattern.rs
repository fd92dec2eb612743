//! Regular expressions (`matches`) and campaign-name globs, compiled for matching one string
//! at a time. They are built without a full DFA: the regex engine builds one for every small
//! pattern when its `dfa-build` feature is on (the log filter's dependencies turn it on), and at
//! about a million instructions a pattern that was most of the time a rules file of thousands
//! of patterns took to load; the lazy DFA it falls back on matches as fast once warm.

use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;

/// A compiled pattern and the text it was written as.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    re: Regex,
}

impl Pattern {
    /// A regular expression, with the `regex` crate's syntax and limits.
    pub fn regex(text: &str) -> Result<Pattern, String> {
        let config = meta::Config::new()
            .dfa(false)
            .nfa_size_limit(Some(10 * (1 << 20)))
            .hybrid_cache_capacity(2 * (1 << 20));
        let re = Regex::builder()
            .configure(config)
            .build(text)
            .map_err(|e| e.to_string())?;
        Ok(Pattern {
            text: text.to_string(),
            re,
        })
    }

    /// A glob (`Q2 SaaS*`), matched as `globset` matches it against a whole string.
    pub fn glob(text: &str) -> Result<Pattern, String> {
        let glob = globset::Glob::new(text).map_err(|e| e.to_string())?;
        // The settings `globset` compiles a glob's regex with.
        let syntax = syntax::Config::new().utf8(false).dot_matches_new_line(true);
        let config = meta::Config::new()
            .dfa(false)
            .utf8_empty(false)
            .nfa_size_limit(Some(10 * (1 << 20)))
            .hybrid_cache_capacity(2 * (1 << 20));
        let re = Regex::builder()
            .syntax(syntax)
            .configure(config)
            .build(glob.regex())
            .map_err(|e| e.to_string())?;
        Ok(Pattern {
            text: text.to_string(),
            re,
        })
    }

    /// Whether the pattern matches (anywhere in `text` for a regex; all of it for a glob).
    pub fn is_match(&self, text: &str) -> bool {
        self.re.is_match(text)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    #[test]
    fn a_glob_matches_as_globset_does_and_a_regex_as_regex_does() {
        for (glob, name) in [
            ("Q2 SaaS*", "Q2 SaaS Outreach"),
            ("Q2 SaaS*", "Q1 SaaS Outreach"),
            ("*Outreach", "Q2 SaaS Outreach"),
            ("Q? [Ss]aaS", "Q2 SaaS"),
            ("Q2 {SaaS,Fintech}", "Q2 Fintech"),
            ("Ünïcode*", "Ünïcode campaign"),
            ("a/b*", "a/b/c"),
        ] {
            let ours = Pattern::glob(glob).unwrap().is_match(name);
            let theirs = globset::Glob::new(glob)
                .unwrap()
                .compile_matcher()
                .is_match(name);
            assert_eq!(ours, theirs, "{glob} on {name}");
        }
        for (re, text) in [
            ("(?i)\\b(interested|pricing)\\b", "We are INTERESTED."),
            ("^re:", "fwd: re: hello"),
            ("\\d{3}", "call 555"),
            ("é+", "café"),
        ] {
            let ours = Pattern::regex(re).unwrap().is_match(text);
            let theirs = regex::Regex::new(re).unwrap().is_match(text);
            assert_eq!(ours, theirs, "{re} on {text}");
        }
        assert!(Pattern::regex("(unclosed").is_err());
        assert!(Pattern::glob("[unclosed").is_err());
    }
}
