//! Scans each message with rspamd (its HTTP `/checkv2`) after DATA and applies the action:
//! `reject` → 550 5.7.1, `soft reject` and `greylist` → 451 4.7.1, `rewrite subject`,
//! `add header` (X-Spam: Yes) and rspamd's own header changes; every scanned message gets
//! `X-Spam-Score`, `X-Spam-Action` and `X-Spam-Symbols`. When rspamd cannot be reached or
//! answers garbage: 451 4.3.5, or continue with `on_error = "continue"`.
//!
//! ```toml
//! [[plugin]]
//! name = "rspamd"
//! path = "rspamd.wasm"
//! allow_http = ["http://127.0.0.1:11333"]
//! [plugin.config]
//! url = "http://127.0.0.1:11333"   # rspamd's normal worker
//! on_error = "tempfail"            # or "continue"
//! max_size_kb = 20480              # larger messages are not scanned (X-Spam-Action: skipped)
//! ```

pub mod check;

use check::{Decision, Edit};
use postrider_plugin::http::Request;
use postrider_plugin::{
    Config, Connection, DataOutcome, Envelope, HeaderEdit, Message, Plugin, Stages, Verdict, log,
    reject, tempfail,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_url")]
    url: String,
    #[serde(default)]
    on_error: OnError,
    #[serde(default = "default_max_size_kb")]
    max_size_kb: u64,
}

fn default_url() -> String {
    "http://127.0.0.1:11333".into()
}

fn default_max_size_kb() -> u64 {
    20 * 1024
}

/// What a failure of rspamd means.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnError {
    /// 451 4.3.5: the client retries later.
    #[default]
    Tempfail,
    /// Deliver unscanned.
    Continue,
}

/// The plugin: where rspamd is and what its failure means.
#[derive(Debug)]
pub struct Rspamd {
    endpoint: String,
    on_error: OnError,
    max_size: u64,
}

/// The message as received, read in the host's 1 MiB chunks.
fn raw_message(msg: &Message) -> Vec<u8> {
    let size = msg.size();
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let chunk = msg.raw(out.len() as u64, 1 << 20);
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    out
}

impl Rspamd {
    fn scan(
        &self,
        conn: &Connection,
        env: &Envelope,
        msg: &Message,
    ) -> Result<check::Reply, String> {
        let mut req = Request::post(&self.endpoint, raw_message(msg))
            .header("IP", &conn.client_ip)
            .header("From", &env.mail_from)
            .header("Pass", "all");
        if let Some(helo) = &conn.helo {
            req = req.header("Helo", helo);
        }
        if let Some(name) = &conn.client_name {
            req = req.header("Hostname", name);
        }
        if let Some(id) = &env.queue_id {
            req = req.header("Queue-Id", id);
        }
        if let Some(user) = &conn.auth_user {
            req = req.header("User", user);
        }
        for rcpt in &env.recipients {
            req = req.header("Rcpt", rcpt);
        }
        let resp = req.send().map_err(|e| e.to_string())?;
        if resp.status != 200 {
            return Err(format!("rspamd answered HTTP {}", resp.status));
        }
        check::parse(&resp.body)
    }
}

impl Plugin for Rspamd {
    fn init(config: &Config) -> Result<Self, String> {
        let raw: RawConfig = config.parse()?;
        if !(raw.url.starts_with("http://") || raw.url.starts_with("https://")) {
            return Err(format!(
                "rspamd: url {:?} must be http:// or https://",
                raw.url
            ));
        }
        Ok(Rspamd {
            endpoint: format!("{}/checkv2", raw.url.trim_end_matches('/')),
            on_error: raw.on_error,
            max_size: raw.max_size_kb.saturating_mul(1024),
        })
    }

    fn stages(&self) -> Stages {
        Stages::DATA
    }

    fn on_data(&mut self, conn: &Connection, env: &Envelope, msg: &Message) -> DataOutcome {
        if msg.size() > self.max_size {
            return DataOutcome::edits(vec![HeaderEdit::append("X-Spam-Action", "skipped")]);
        }
        let reply = match self.scan(conn, env, msg) {
            Ok(r) => r,
            Err(e) => {
                log::warn(format!("rspamd {}: {e}", self.endpoint));
                return match self.on_error {
                    OnError::Continue => DataOutcome::default(),
                    OnError::Tempfail => {
                        tempfail(451, "4.3.5", "Server configuration problem: spam filter").into()
                    }
                };
            }
        };
        let subject = msg.first_header("Subject");
        match check::decide(&reply, subject.as_deref()) {
            Decision::Reject(code, enhanced, text) => reject(code, enhanced, text).into(),
            Decision::Tempfail(code, enhanced, text) => tempfail(code, enhanced, text).into(),
            Decision::Accept(edits) => DataOutcome {
                verdict: Verdict::Continue,
                edits: edits
                    .into_iter()
                    .map(|e| match e {
                        Edit::Add(name, value) => HeaderEdit::append(name, value),
                        Edit::Remove(name) => HeaderEdit::remove(name),
                    })
                    .collect(),
                quarantine: None,
            },
        }
    }
}

postrider_plugin::export!(Rspamd);
