//! `${VAR}` and `${VAR:-default}` in rules files, replaced from the environment at load time.
//! `$${` writes a literal `${`.

use regex::Regex;
use std::sync::LazyLock;

static VAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}").expect("valid regex")
});

/// The result of expanding one string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expanded {
    /// The string with every variable replaced.
    pub value: String,
    /// The variables the string referred to, in order.
    pub vars: Vec<String>,
}

impl Expanded {
    /// Whether any part of the value came from the environment (and may be a secret).
    pub fn from_env(&self) -> bool {
        !self.vars.is_empty()
    }
}

/// Why a string could not be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// `${VAR}` with no default, and `VAR` is not set.
    #[error("environment variable {0} is not set (set it, or write ${{{0}:-default}})")]
    Unset(String),
    /// `${` with no valid name and closing brace after it.
    #[error("`${{` starts no valid variable reference (write $${{ for a literal `${{`)")]
    Malformed,
}

/// Expands `text` with variables looked up by `lookup` (the process environment in practice).
pub fn expand_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Expanded, EnvError> {
    let mut out = Expanded::default();
    let mut last = 0;
    for caps in VAR.captures_iter(text) {
        let whole = caps.get(0).expect("match");
        let literal = &text[last..whole.start()];
        if literal.contains("${") {
            return Err(EnvError::Malformed);
        }
        out.value.push_str(literal);
        last = whole.end();
        let Some(name) = caps.get(1) else {
            out.value.push_str("${");
            continue;
        };
        let name = name.as_str();
        out.vars.push(name.to_string());
        // As in the shell: `:-` takes the default when the variable is unset or empty.
        match (lookup(name), caps.get(2)) {
            (Some(v), Some(default)) if v.is_empty() => out.value.push_str(default.as_str()),
            (Some(v), _) => out.value.push_str(&v),
            (None, Some(default)) => out.value.push_str(default.as_str()),
            (None, None) => return Err(EnvError::Unset(name.to_string())),
        }
    }
    let rest = &text[last..];
    if rest.contains("${") {
        return Err(EnvError::Malformed);
    }
    out.value.push_str(rest);
    Ok(out)
}

thread_local! {
    /// Whether this thread reads every variable as unset (see [`without_environment`]).
    static HIDDEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the process environment hidden from [`expand`] on this thread: every variable
/// reads as unset. Rules pasted into the console's playground are compiled so, or they could
/// print the router's secrets (`to: ${SMTP_PASSWORD}`).
pub fn without_environment<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            HIDDEN.set(self.0);
        }
    }
    let _restore = Restore(HIDDEN.replace(true));
    f()
}

/// Expands `text` from the process environment.
pub fn expand(text: &str) -> Result<Expanded, EnvError> {
    expand_with(text, |name| match HIDDEN.get() {
        true => None,
        false => std::env::var(name).ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOOK" => Some("https://hooks.example/T1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let e = expand_with("url ${HOOK}/x ${MISSING:-fallback}", env).unwrap();
        assert_eq!(e.value, "url https://hooks.example/T1/x fallback");
        assert_eq!(e.vars, ["HOOK", "MISSING"]);
        assert_eq!(expand_with("${EMPTY:-d}", env).unwrap().value, "d");
        assert_eq!(expand_with("[${EMPTY}]", env).unwrap().value, "[]");
        assert_eq!(expand_with("${MISSING:-}", env).unwrap().value, "");
    }

    #[test]
    fn unset_variable_without_default_is_an_error_naming_it() {
        let err = expand_with("Bearer ${CRM_TOKEN}", env).unwrap_err();
        assert_eq!(err, EnvError::Unset("CRM_TOKEN".into()));
        assert!(err.to_string().contains("CRM_TOKEN"));
    }

    #[test]
    fn escapes_and_malformed_references() {
        assert_eq!(expand_with("$${HOOK}", env).unwrap().value, "${HOOK}");
        assert_eq!(expand_with("cost $5", env).unwrap().value, "cost $5");
        assert_eq!(expand_with("${bad-name}", env), Err(EnvError::Malformed));
        assert_eq!(
            expand_with("${bad-name} ${HOOK}", env),
            Err(EnvError::Malformed)
        );
    }
}
