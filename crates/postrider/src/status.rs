//! `postrider status`: what the running relay is doing — its listeners, plugins (with their
//! hashes and load times), configuration generation and queue summary — as the admin
//! socket answers `{"cmd":"status"}`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The relay's state, as `postrider status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The relay's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// When it started (Unix seconds).
    pub started_at: u64,
    /// Whether it is ready (as `/ready` says): false while starting and shutting down.
    pub ready: bool,
    /// The configuration in use: where it came from.
    pub config: String,
    /// Its generation number (1: the one the relay started with; each reload adds one).
    pub generation: u64,
    /// When that generation was loaded (Unix seconds).
    pub config_loaded_at: u64,
    /// Set when the last reload failed (and none succeeded since): the configuration or
    /// plugin files on disk are then not what runs.
    #[serde(default)]
    pub reload_failure: Option<ReloadFailure>,
    /// The admin HTTP listener (metrics, health), if any.
    pub admin_http: Option<String>,
    /// The SMTP listeners, by name.
    pub listeners: Vec<ListenerStatus>,
    /// The plugins, in call order.
    pub plugins: Vec<PluginStatus>,
    /// Messages in the queue by state (queued, deferred, held, quarantined).
    pub queue: BTreeMap<String, usize>,
}

/// A failed reload: the files on disk are not what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// When it failed (Unix seconds).
    pub at: u64,
    /// What asked for it: signal, admin socket or the file watcher.
    pub trigger: String,
    /// Why, with its causes.
    pub error: String,
}

/// One SMTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    /// Its name.
    pub name: String,
    /// smtp, submission or submissions.
    pub kind: String,
    /// The address it is bound to.
    pub address: String,
    /// Whether it has a certificate (STARTTLS, or implicit TLS for submissions).
    pub tls: bool,
}

/// One loaded plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// Its component file.
    pub path: String,
    /// SHA-256 of the component file: which build is running.
    pub hash: String,
    /// When this build was loaded (Unix seconds); a reload keeps an unchanged plugin.
    pub loaded_at: u64,
    /// The stages it asked for.
    pub stages: Vec<String>,
    /// What a failed call means: tempfail, continue or reject.
    pub failure_policy: String,
    /// Deadline of each call.
    pub timeout_ms: u64,
}

/// Seconds since the Unix epoch.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn date(secs: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from(UNIX_EPOCH + Duration::from_secs(secs))
        .format("%Y-%m-%d %H:%M:%SZ")
        .to_string()
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Renders a status for people.
pub fn render(s: &Status) -> String {
    let now = unix_secs(SystemTime::now());
    let mut out = format!(
        "postrider {}: {} (pid {}, up {})\n",
        s.version,
        if s.ready { "ready" } else { "not ready" },
        s.pid,
        duration(now.saturating_sub(s.started_at)),
    );
    out.push_str(&format!(
        "config: {} (generation {}, loaded {})\n",
        s.config,
        s.generation,
        date(s.config_loaded_at)
    ));
    if let Some(f) = &s.reload_failure {
        out.push_str(&format!(
            "LAST RELOAD FAILED at {} ({}): the files on disk are not what runs; generation {} \
             stays in use\n  {}\n",
            date(f.at),
            f.trigger,
            s.generation,
            f.error
        ));
    }
    out.push_str(&format!(
        "admin http: {}\n",
        s.admin_http.as_deref().unwrap_or("off")
    ));
    out.push_str("listeners:\n");
    for l in &s.listeners {
        out.push_str(&format!(
            "  {:<14} {:<12} {:<24} {}\n",
            l.name,
            l.kind,
            l.address,
            if l.tls { "tls" } else { "plain" }
        ));
    }
    if s.plugins.is_empty() {
        out.push_str("plugins: none\n");
    } else {
        out.push_str("plugins:\n");
        for p in &s.plugins {
            out.push_str(&format!(
                "  {:<14} sha256:{}  loaded {}  stages: {}  on failure: {}  timeout: {} ms\n    {}\n",
                p.name,
                p.hash.get(..16).unwrap_or(&p.hash),
                date(p.loaded_at),
                p.stages.join(", "),
                p.failure_policy,
                p.timeout_ms,
                p.path
            ));
        }
    }
    let total: usize = s.queue.values().sum();
    let parts: Vec<String> = s.queue.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!(
        "queue: {total} message(s) ({})\n",
        parts.join(", ")
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_failed_reload() {
        let mut status = example();
        assert!(!render(&status).contains("RELOAD FAILED"));
        status.reload_failure = Some(ReloadFailure {
            at: 0,
            trigger: "file changed".into(),
            error: "loading plugin greylist: init failed".into(),
        });
        let text = render(&status);
        assert!(
            text.contains(
                "LAST RELOAD FAILED at 1970-01-01 00:00:00Z (file changed): the files on disk \
                 are not what runs; generation 3 stays in use\n  loading plugin greylist: init \
                 failed\n"
            ),
            "{text}"
        );
    }

    fn example() -> Status {
        Status {
            version: "0.1.0".into(),
            pid: 42,
            started_at: unix_secs(SystemTime::now()) - 90,
            ready: true,
            config: "/etc/postrider/postrider.toml".into(),
            generation: 3,
            config_loaded_at: 0,
            reload_failure: None,
            admin_http: Some("127.0.0.1:9587".into()),
            listeners: vec![ListenerStatus {
                name: "mx".into(),
                kind: "smtp".into(),
                address: "0.0.0.0:25".into(),
                tls: true,
            }],
            plugins: vec![PluginStatus {
                name: "greylist".into(),
                path: "/p/greylist.wasm".into(),
                hash: "0123456789abcdef0123".into(),
                loaded_at: 0,
                stages: vec!["rcpt".into()],
                failure_policy: "continue".into(),
                timeout_ms: 2000,
            }],
            queue: [("deferred".to_owned(), 2), ("queued".to_owned(), 1)].into(),
        }
    }

    #[test]
    fn renders_every_part() {
        let text = render(&example());
        assert!(
            text.starts_with("postrider 0.1.0: ready (pid 42, up 90s)\n"),
            "{text}"
        );
        assert!(
            text.contains("generation 3, loaded 1970-01-01 00:00:00Z"),
            "{text}"
        );
        assert!(
            text.contains("mx             smtp         0.0.0.0:25"),
            "{text}"
        );
        assert!(text.contains("sha256:0123456789abcdef  loaded"), "{text}");
        assert!(
            text.contains("queue: 3 message(s) (deferred 2, queued 1)"),
            "{text}"
        );
    }
}
