//! Regular expressions (`matches`) and campaign-name globs, compiled for matching one string
//! at a time. They are built without a full DFA: the regex engine builds one for every small
//! pattern when its `dfa-build` feature is on (the log filter's dependencies turn it on), and at
//! about a million instructions a pattern that was most of the time a rules file of thousands
//! of patterns took to load; the lazy DFA it falls back on matches as fast once warm. Globs
//! whose only wildcard is `*` need no regex at all, and a pattern already compiled (by another
//! rule, or by the configuration a reload replaces) is shared ([`crate::intern`]).

use crate::intern::Interner;
use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use std::sync::Arc;

/// A compiled pattern and the text it was written as. Clones share the compiled form.
#[derive(Debug, Clone)]
pub struct Pattern(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    text: String,
    matcher: Matcher,
}

#[derive(Debug)]
enum Matcher {
    Regex(Regex),
    /// A glob whose only wildcard is `*` (`Q2 SaaS*`, most campaign globs): its literal pieces,
    /// split at each `*`, matched in order without a regex.
    Stars(Vec<Box<str>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Regex,
    Glob,
}

/// Every pattern compiled and still in use, by kind and text.
static COMPILED: Interner<(Kind, String), Compiled> = Interner::new();

impl Pattern {
    /// A regular expression, with the `regex` crate's syntax and limits.
    pub fn regex(text: &str) -> Result<Pattern, String> {
        interned(Kind::Regex, text, || {
            build(&mut Regex::builder(), text, engine())
        })
    }

    /// A glob (`Q2 SaaS*`), matched as `globset` matches it against a whole string.
    pub fn glob(text: &str) -> Result<Pattern, String> {
        interned(Kind::Glob, text, || {
            // `*` alone needs no regex (`**` and every other glob syntax go to `globset`).
            if !text.contains(['?', '[', ']', '{', '}', '\\']) && !text.contains("**") {
                return Ok(Matcher::Stars(text.split('*').map(Box::from).collect()));
            }
            let glob = globset::Glob::new(text).map_err(|e| e.to_string())?;
            // The settings `globset` compiles a glob's regex with.
            let syntax = syntax::Config::new().utf8(false).dot_matches_new_line(true);
            let config = engine().utf8_empty(false);
            build(Regex::builder().syntax(syntax), glob.regex(), config)
        })
    }

    /// Whether the pattern matches (anywhere in `text` for a regex; all of it for a glob).
    pub fn is_match(&self, text: &str) -> bool {
        match &self.0.matcher {
            Matcher::Regex(re) => re.is_match(text),
            Matcher::Stars(pieces) => stars_match(pieces, text),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

/// The engine's settings for every pattern: no full DFA (see the module's documentation),
/// the `regex` crate's size limits.
fn engine() -> meta::Config {
    meta::Config::new()
        .dfa(false)
        .nfa_size_limit(Some(10 * (1 << 20)))
        .hybrid_cache_capacity(2 * (1 << 20))
}

fn build(builder: &mut meta::Builder, text: &str, config: meta::Config) -> Result<Matcher, String> {
    builder
        .configure(config)
        .build(text)
        .map(Matcher::Regex)
        .map_err(|e| e.to_string())
}

/// The pattern of this kind and text, shared with the rules already using it.
fn interned(
    kind: Kind,
    text: &str,
    compile: impl FnOnce() -> Result<Matcher, String>,
) -> Result<Pattern, String> {
    COMPILED
        .get_or_compile((kind, text.to_string()), || {
            Ok(Compiled {
                text: text.to_string(),
                matcher: compile()?,
            })
        })
        .map(Pattern)
}

/// Whether `text` is the pieces in order, the first at its start and the last at its end, with
/// anything between them (what `*` matches in a glob, `/` and newlines included).
fn stars_match(pieces: &[Box<str>], text: &str) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return text.is_empty();
    };
    let Some((last, middle)) = rest.split_last() else {
        return text == &**first;
    };
    let Some(mut left) = text.strip_prefix(&**first) else {
        return false;
    };
    for piece in middle {
        match left.find(&**piece) {
            Some(at) => left = &left[at + piece.len()..],
            None => return false,
        }
    }
    left.ends_with(&**last)
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
            ("*SaaS*", "Q2 SaaS Outreach"),
            ("*SaaS*", "Q2 Saas Outreach"),
            ("Q*S*s", "Q2 SaaS"),
            ("Q*S*s", "Q2 SaaS Outreach"),
            ("a*a", "a"),
            ("a*a", "aa"),
            ("ab*b*bc", "abbc"),
            ("ab*b*bc", "abbbc"),
            ("*", ""),
            ("*", "line\nbreak"),
            ("exact", "exact"),
            ("exact", "exactly"),
            ("Q2 **", "Q2 SaaS/x"),
            ("", ""),
            ("", "x"),
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

    #[test]
    fn a_pattern_in_use_is_compiled_once_and_shared() {
        let text = "(?i)\\bshared by two rules\\b";
        let (a, b) = (Pattern::regex(text).unwrap(), Pattern::regex(text).unwrap());
        assert!(std::sync::Arc::ptr_eq(&a.0, &b.0));
        // The same text as a glob is another pattern.
        let glob = Pattern::glob(text).unwrap();
        assert!(!std::sync::Arc::ptr_eq(&a.0, &glob.0));
        assert!(a.is_match("It is SHARED BY TWO RULES."));
        assert!(!glob.is_match("It is SHARED BY TWO RULES."));
        drop((a, b));
        // Compiled again once no rule holds it.
        let again = Pattern::regex(text).unwrap();
        assert!(again.is_match("shared by two rules"));
        assert_eq!(again.as_str(), text);
    }
}
