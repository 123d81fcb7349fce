//! Asks a Postfix SMTP access policy daemon at `RCPT TO`, so existing policy services
//! (postgrey, policyd-spf, policyd-rate-limit, ...) work unchanged.
//!
//! For each recipient the plugin connects to `server` (TCP: the `[[plugin]]` entry needs the
//! matching `allow_connect` grant), sends the policy request (Postfix's attributes: client,
//! HELO, sender, recipient, queue id, SASL user, ...) and maps the daemon's action: `REJECT`
//! → 550 5.7.1, `DEFER`/`DEFER_IF_PERMIT` (greylisting) → 450 4.7.1, `NNN [x.y.z] text` →
//! that reply, `OK`/`DUNNO`/others → continue. When the daemon cannot be reached or answers
//! garbage: 451 4.3.5, or continue with `on_error = "continue"`.
//!
//! ```toml
//! [[plugin]]
//! name = "postgrey"
//! path = "policy_delegation.wasm"
//! allow_connect = ["127.0.0.1:10023"]
//! [plugin.config]
//! server = "127.0.0.1:10023"
//! on_error = "tempfail"        # or "continue"
//! ```

pub mod protocol;

use postrider_plugin::{
    Config, Connection, Envelope, Plugin, RcptOutcome, Stages, Verdict, log, reject, tempfail,
};
use protocol::{Action, MAX_ANSWER};
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::TcpStream;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: String,
    #[serde(default)]
    on_error: OnError,
}

/// What a failure of the policy server means.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OnError {
    /// 451 4.3.5: the client retries later (Postfix's default for an unreachable server).
    #[default]
    Tempfail,
    /// Let the recipient through.
    Continue,
}

/// The plugin: where the daemon is and what its failure means.
#[derive(Debug)]
pub struct PolicyDelegation {
    server: String,
    on_error: OnError,
}

/// The request attributes for one recipient, as Postfix's smtpd sends them.
fn attributes<'a>(
    conn: &'a Connection,
    env: &'a Envelope,
    rcpt: &'a str,
    count: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let or_empty = |v: &'a Option<String>| v.as_deref().unwrap_or("");
    vec![
        ("request", "smtpd_access_policy"),
        ("protocol_state", "RCPT"),
        (
            "protocol_name",
            if conn.helo.is_some() { "ESMTP" } else { "SMTP" },
        ),
        ("helo_name", or_empty(&conn.helo)),
        ("queue_id", or_empty(&env.queue_id)),
        ("sender", &env.mail_from),
        ("recipient", rcpt),
        ("recipient_count", count),
        ("client_address", &conn.client_ip),
        (
            "client_name",
            conn.client_name.as_deref().unwrap_or("unknown"),
        ),
        (
            "reverse_client_name",
            conn.client_name.as_deref().unwrap_or("unknown"),
        ),
        ("instance", &conn.id),
        ("sasl_username", or_empty(&conn.auth_user)),
        ("server_address", &conn.server_ip),
    ]
}

impl PolicyDelegation {
    fn ask(&self, request: &[u8]) -> Result<Action, String> {
        let mut stream = TcpStream::connect(&self.server)
            .map_err(|e| format!("connect {}: {e}", self.server))?;
        stream
            .write_all(request)
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 1024];
        while !protocol::complete(&answer) {
            let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection before answering".into());
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.len() > MAX_ANSWER {
                return Err(format!("answer longer than {MAX_ANSWER} bytes"));
            }
        }
        protocol::parse_answer(&answer).map_err(|e| e.0)
    }
}

impl Plugin for PolicyDelegation {
    fn init(config: &Config) -> Result<Self, String> {
        let raw: RawConfig = config.parse()?;
        if raw.server.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "policy-delegation: server {:?} must be IP:port (names are not resolved)",
                raw.server
            ));
        }
        Ok(PolicyDelegation {
            server: raw.server,
            on_error: raw.on_error,
        })
    }

    fn stages(&self) -> Stages {
        Stages::RCPT
    }

    fn on_rcpt(&mut self, conn: &Connection, env: &Envelope, rcpt: &str) -> RcptOutcome {
        let count = env.recipients.len().to_string();
        let request = protocol::request(&attributes(conn, env, rcpt, &count));
        let verdict = match self.ask(&request) {
            Ok(Action::Continue) => Verdict::Continue,
            Ok(Action::Reject(code, enhanced, text)) => reject(code, &enhanced, text),
            Ok(Action::Defer(code, enhanced, text)) => tempfail(code, &enhanced, text),
            Err(e) => {
                log::warn(format!("policy server {}: {e}", self.server));
                match self.on_error {
                    OnError::Continue => Verdict::Continue,
                    OnError::Tempfail => {
                        tempfail(451, "4.3.5", "Server configuration problem: policy service")
                    }
                }
            }
        };
        verdict.into()
    }
}

postrider_plugin::export!(PolicyDelegation);
