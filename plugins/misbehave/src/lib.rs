//! Test fixture, not for production: misbehaves at the rcpt stage in the way its config asks,
//! so tests can show the host contains traps, runaway loops, memory hogs and invalid answers.
//!
//! ```toml
//! [plugin.config]
//! mode = "trap"   # "trap" | "loop" | "oom" | "bad-reply" | "bad-rewrite" | "bad-header" | "reject" | "rewrite" | "init-fail" | "count"
//! ```
//!
//! `count` shows what a reused instance keeps (the host's warm pool): each rcpt answers
//! `550 5.7.1 calls C inits I seen S`, where C counts rcpt calls and I `init` calls since the
//! instance was created (globals in linear memory, which `init` does not reset) and S counts
//! rcpt calls since the last `init` (a field of the plugin value, which `init` re-creates).
//! A recipient starting with `trap@` traps instead.

use postrider_plugin::{
    Config, Connection, DataOutcome, Envelope, HeaderEdit, Message, Plugin, RcptOutcome, Reply,
    Stages, Verdict,
};
use serde::Deserialize;
use std::sync::atomic::{AtomicU32, Ordering};

/// Rcpt calls since the instance was created (mode `count`).
static CALLS: AtomicU32 = AtomicU32::new(0);
/// `init` calls since the instance was created.
static INITS: AtomicU32 = AtomicU32::new(0);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mode: String,
}

/// The misbehaving plugin.
struct Misbehave {
    mode: String,
    /// Rcpt calls since this value was created by `init`.
    seen: u32,
}

impl Plugin for Misbehave {
    fn init(config: &Config) -> Result<Self, String> {
        INITS.fetch_add(1, Ordering::Relaxed);
        let raw: RawConfig = config.parse()?;
        if raw.mode == "init-fail" {
            return Err("init-fail asked for".into());
        }
        Ok(Misbehave {
            mode: raw.mode,
            seen: 0,
        })
    }

    fn stages(&self) -> Stages {
        Stages::RCPT | Stages::DATA
    }

    fn on_rcpt(&mut self, _conn: &Connection, _env: &Envelope, rcpt: &str) -> RcptOutcome {
        match self.mode.as_str() {
            "trap" => panic!("trap asked for"),
            "loop" => loop {
                std::hint::black_box(rcpt.len());
            },
            "oom" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            "bad-reply" => Verdict::Reject(Reply {
                code: 250,
                enhanced: None,
                text: "ok\r\n250 smuggled".into(),
            })
            .into(),
            "bad-rewrite" => RcptOutcome {
                verdict: Verdict::Continue,
                rewrite: Some("x>\r\nDATA".into()),
            },
            "reject" => Verdict::Reject(Reply {
                code: 550,
                enhanced: Some("5.1.1".into()),
                text: "no such user".into(),
            })
            .into(),
            "count" => {
                if rcpt.starts_with("trap@") {
                    panic!("trap asked for");
                }
                self.seen += 1;
                let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
                let inits = INITS.load(Ordering::Relaxed);
                let text = format!("calls {calls} inits {inits} seen {}", self.seen);
                Verdict::Reject(Reply {
                    code: 550,
                    enhanced: Some("5.7.1".into()),
                    text,
                })
                .into()
            }
            "rewrite" => RcptOutcome {
                verdict: Verdict::Continue,
                rewrite: Some(format!(
                    "rewritten+{}",
                    rcpt.replace('@', "=") + "@relay.test"
                )),
            },
            _ => RcptOutcome::default(),
        }
    }

    fn on_data(&mut self, _conn: &Connection, _env: &Envelope, _msg: &Message) -> DataOutcome {
        match self.mode.as_str() {
            "bad-header" => DataOutcome {
                verdict: Verdict::Continue,
                edits: vec![HeaderEdit::Append(postrider_plugin::Header {
                    name: "X-Evil".into(),
                    value: "a\r\nBcc: victim@x".into(),
                })],
                quarantine: None,
            },
            _ => DataOutcome::default(),
        }
    }
}

postrider_plugin::export!(Misbehave);
