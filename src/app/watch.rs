//! Hot reload triggers: a watch on the rules file's directory and the templates directory
//! (directories, not files, because editors save by writing a new file and renaming it over
//! the old one), and SIGHUP. Changes are debounced, then [`App::reload`] compiles and swaps.

use super::App;
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the files must stay quiet before a reload starts (an editor's save is several events).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Keeps the watch alive; dropping it stops watching.
pub struct Watch {
    _watcher: notify::RecommendedWatcher,
}

/// Starts watching the rules and templates of `app`, reloading on every relevant change.
pub fn watch(app: Arc<App>) -> notify::Result<Watch> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let rules = absolute(&app.paths.rules);
    let templates = absolute(&app.paths.templates);
    let rules_dir = if rules.is_dir() {
        rules.clone()
    } else {
        rules.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let (r, t) = (rules.clone(), templates.clone());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let relevant = !matches!(event.kind, EventKind::Access(_))
            && event.paths.iter().any(|p| concerns(p, &r, &t));
        if relevant {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&rules_dir, RecursiveMode::NonRecursive)?;
    if templates.is_dir() {
        watcher.watch(&templates, RecursiveMode::Recursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while tokio::time::timeout(DEBOUNCE, rx.recv())
                .await
                .is_ok_and(|m| m.is_some())
            {}
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.reload("file change")).await;
        }
    });
    Ok(Watch { _watcher: watcher })
}

/// Reloads on every SIGHUP until the returned task is aborted.
#[cfg(unix)]
pub fn reload_on_sighup(app: Arc<App>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let app = app.clone();
            let _ = tokio::task::spawn_blocking(move || app.reload("SIGHUP")).await;
        }
    }))
}

/// Whether a changed path is a rules file or lies under the templates directory.
fn concerns(path: &Path, rules: &Path, templates: &Path) -> bool {
    if path.starts_with(templates) {
        return true;
    }
    if rules.is_dir() {
        path.parent() == Some(rules) && crate::config::is_rules_file(path)
    } else {
        path == rules
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
