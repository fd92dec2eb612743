//! The layout the code keeps (ARCHITECTURE.md): no two top-level modules import each other,
//! warp is used only under `src/server/`, sqlx only under `src/store/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
    assert!(out.len() > 20, "the sources were found");
    out
}

/// The top-level module a file belongs to (`src/store/sqlite/mod.rs` → `store`).
fn module(path: &Path) -> String {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = path.strip_prefix(&src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without its comments (doc links may name any module).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let from = module(&path);
        if from == "lib" || from == "main" {
            continue;
        }
        for part in code(&text).split("crate::").skip(1) {
            // `crate::store::…`, or `crate::{a, b::…}`: the first name of each path.
            let names: Vec<&str> = match part.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![part],
            };
            for name in names {
                let to: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    uses.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    assert!(uses.contains_key("server") && uses["server"].contains("store"));
    let mut cycles = Vec::new();
    for (a, targets) in &uses {
        for b in targets {
            if a < b && uses.get(b).is_some_and(|t| t.contains(a)) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:?}"
    );
}

#[test]
fn warp_stays_in_the_server_and_sqlx_in_the_store() {
    let mut strays = Vec::new();
    for (path, text) in sources() {
        let code = code(&text);
        let m = module(&path);
        for (krate, home) in [("warp", "server"), ("sqlx", "store")] {
            let used =
                code.contains(&format!("{krate}::")) || code.contains(&format!("use {krate}"));
            if used && m != home {
                strays.push(format!("{} uses {krate}", path.display()));
            }
        }
    }
    assert!(strays.is_empty(), "{strays:#?}");
}
