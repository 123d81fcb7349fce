//! What triggers a reload: SIGHUP, and a debounced `notify` watcher on the config file and
//! every file it names.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::reload::Reloader;

/// How long the watched files must be quiet before a change is acted on: an editor's or a
/// copy's several writes make one reload, and a half-written file is not read.
pub const DEBOUNCE: Duration = Duration::from_millis(400);

/// Installs the SIGHUP handler (before anything else starts: the default action of SIGHUP
/// would end the process); hand it to [`on_sighup`] once the relay runs.
pub fn sighup_handler() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).context("SIGHUP handler")
}

/// Reloads at every SIGHUP `hup` receives.
pub fn on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: Arc<Reloader>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP");
            // A failure is logged by reload; the next SIGHUP or change retries.
            let _ = reloader.reload("SIGHUP").await;
        }
    })
}

/// Watches the config file and every file it names, and reloads once they have been quiet
/// for [`DEBOUNCE`] after a change. Parent directories are watched, not the files: editors,
/// `cp` and `mv` replace a file's inode, and a watch on the old inode would see nothing.
pub fn watch_files(reloader: Arc<Reloader>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let filter = Arc::clone(&files);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reads (ours included) are not changes.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(event) => {
                let files = filter.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(path) = event.paths.iter().find(|p| files.contains(*p)) {
                    let _ = tx.send(path.clone());
                }
            }
            Err(e) => warn!(error = %e, "file watcher error"),
        }
    })
    .context("starting the file watcher")?;
    let mut paths = reloader.watched();
    Ok(tokio::spawn(async move {
        let mut dirs = HashSet::new();
        let wanted = paths.borrow_and_update().clone();
        rewatch(&mut watcher, &mut dirs, &files, wanted);
        loop {
            tokio::select! {
                changed = paths.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let wanted = paths.borrow_and_update().clone();
                    rewatch(&mut watcher, &mut dirs, &files, wanted);
                }
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    debug!(file = %first.display(), "watched file changed");
                    let mut changed = BTreeSet::from([first]);
                    // Act only once the files have been quiet for the debounce period.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some(path)) => {
                                changed.insert(path);
                            }
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    let names: Vec<String> =
                        changed.iter().map(|p| p.display().to_string()).collect();
                    info!(files = names.join(", "), "watched files changed");
                    // A failure is logged by reload; the next change retries.
                    let _ = reloader.reload("file change").await;
                }
            }
        }
    }))
}

/// Makes the watcher watch the parent directory of every file in `wanted`, and nothing else.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut HashSet<PathBuf>,
    files: &Mutex<HashSet<PathBuf>>,
    wanted: BTreeSet<PathBuf>,
) {
    let new_dirs: HashSet<PathBuf> = wanted
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    for dir in dirs.difference(&new_dirs) {
        if let Err(e) = watcher.unwatch(dir) {
            debug!(dir = %dir.display(), error = %e, "unwatching");
        }
    }
    dirs.retain(|d| new_dirs.contains(d));
    for dir in new_dirs {
        if dirs.contains(&dir) {
            continue;
        }
        // A directory that cannot be watched now (missing) is tried again next time.
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                debug!(dir = %dir.display(), "watching");
                dirs.insert(dir);
            }
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
    *files.lock().unwrap_or_else(|p| p.into_inner()) = wanted.into_iter().collect();
}
