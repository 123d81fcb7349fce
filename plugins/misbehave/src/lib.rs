//! Test fixture, not for production: misbehaves at the rcpt stage in the way its config asks,
//! so tests can show the host contains traps, runaway loops, memory hogs and invalid answers.
//!
//! ```toml
//! [plugin.config]
//! mode = "trap"   # "trap" | "loop" | "oom" | "bad-reply" | "bad-rewrite" | "bad-header" | "reject" | "rewrite" | "init-fail" | "count" | "inputs" | "http" | "connect" | "udp" | "set-body"
//! target = "..."  # http: the URL to GET; connect, udp: the IP:port to reach; set-body: the body
//! ```
//!
//! `set-body` asks at data for `target` as the new body and for `target` appended as a text
//! part; each refusal the host answers is added as an `X-Refused` header (so a test can hand
//! it a body the host must refuse and see why).
//!
//! `http`, `connect` and `udp` show what the host's network grants let through: each rcpt
//! answers `550 5.7.1 <what happened>`: the status and body of a GET of `target`, the line a
//! TCP peer at `target` answered to `hello`, the datagram a UDP peer answered to `ping`, or
//! the error.
//!
//! `inputs` shows what the host gives the data and route stages: at data it appends
//! `X-Stage-Inputs: <summary>`, at route it holds the recipient with the summary as reason
//! (see [`summary`]), so tests can check each field against the connection they made.
//!
//! `count` shows what a reused instance keeps (the host's warm pool): each rcpt answers
//! `550 5.7.1 calls C inits I seen S`, where C counts rcpt calls and I `init` calls since the
//! instance was created (globals in linear memory, which `init` does not reset) and S counts
//! rcpt calls since the last `init` (a field of the plugin value, which `init` re-creates).
//! A recipient starting with `trap@` traps instead.

use postrider_plugin::{
    Config, Connection, DataOutcome, Envelope, HeaderEdit, Message, Plugin, RcptOutcome, Reply,
    Route, Stages, Verdict,
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
    #[serde(default)]
    target: String,
}

/// The misbehaving plugin.
struct Misbehave {
    mode: String,
    /// URL or address of the network modes.
    target: String,
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
            target: raw.target,
            seen: 0,
        })
    }

    fn stages(&self) -> Stages {
        if self.mode == "inputs" {
            return Stages::DATA | Stages::ROUTE;
        }
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
            "http" | "connect" | "udp" => Verdict::Reject(Reply {
                code: 550,
                enhanced: Some("5.7.1".into()),
                text: network(&self.mode, &self.target),
            })
            .into(),
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

    fn on_data(&mut self, conn: &Connection, env: &Envelope, msg: &Message) -> DataOutcome {
        match self.mode.as_str() {
            "set-body" => {
                let refused = [
                    msg.set_body(self.target.as_bytes()),
                    msg.append_text(&self.target),
                ];
                DataOutcome {
                    verdict: Verdict::Continue,
                    edits: refused
                        .into_iter()
                        .filter_map(Result::err)
                        .map(|e| {
                            HeaderEdit::Append(postrider_plugin::Header {
                                name: "X-Refused".into(),
                                value: e,
                            })
                        })
                        .collect(),
                    quarantine: None,
                }
            }
            "bad-header" => DataOutcome {
                verdict: Verdict::Continue,
                edits: vec![HeaderEdit::Append(postrider_plugin::Header {
                    name: "X-Evil".into(),
                    value: "a\r\nBcc: victim@x".into(),
                })],
                quarantine: None,
            },
            "inputs" => DataOutcome {
                verdict: Verdict::Continue,
                edits: vec![HeaderEdit::Append(postrider_plugin::Header {
                    name: "X-Stage-Inputs".into(),
                    value: summary(conn, env),
                })],
                quarantine: None,
            },
            _ => DataOutcome::default(),
        }
    }

    fn on_route(&mut self, conn: &Connection, env: &Envelope, _rcpt: &str) -> Route {
        Route::Hold(summary(conn, env))
    }
}

/// The stage's inputs on one line, fields separated by spaces, `-` for an absent value:
/// `q=QUEUEID id=CONN ip=IP port=P name=N l=LISTENER srv=IP:P helo=H
/// tls=PROTO/CIPHER/SNI user=U from=F params=K=V,K spf=RESULT/DOMAIN rcpts=A,B`.
fn summary(c: &Connection, e: &Envelope) -> String {
    let or = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let tls = c.tls.as_ref().map_or("-".to_owned(), |t| {
        format!("{}/{}/{}", t.protocol, t.cipher, or(t.sni.as_deref()))
    });
    let params: Vec<String> = e
        .mail_params
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    let spf = e.spf.as_ref().map_or("-".to_owned(), |s| {
        let result = format!("{:?}", s.result).to_lowercase();
        let result = result.rsplit("::").next().unwrap_or_default().to_owned();
        format!("{result}/{}", s.domain)
    });
    format!(
        "q={} id={} ip={} port={} name={} l={} srv={}:{} helo={} tls={tls} user={} from={} params={} spf={spf} rcpts={}",
        or(e.queue_id.as_deref()),
        if c.id.is_empty() { "-" } else { &c.id },
        c.client_ip,
        c.client_port,
        or(c.client_name.as_deref()),
        c.listener,
        c.server_ip,
        c.server_port,
        or(c.helo.as_deref()),
        or(c.auth_user.as_deref()),
        if e.mail_from.is_empty() {
            "<>"
        } else {
            &e.mail_from
        },
        if params.is_empty() {
            "-".to_owned()
        } else {
            params.join(",")
        },
        e.recipients.join(","),
    )
}

postrider_plugin::export!(Misbehave);

/// What a network mode got: one line of printable text.
fn network(mode: &str, target: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let text = match mode {
        "http" => match postrider_plugin::http::Request::get(target).send() {
            Ok(r) => format!("http {} {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => format!("http error: {e}"),
        },
        "connect" => match std::net::TcpStream::connect(target) {
            Ok(mut s) => {
                let mut line = String::new();
                match s
                    .write_all(b"hello\n")
                    .and_then(|()| BufReader::new(s).read_line(&mut line))
                {
                    Ok(_) => format!("connect ok {}", line.trim()),
                    Err(e) => format!("connect io error: {e}"),
                }
            }
            Err(e) => format!("connect error: {e}"),
        },
        _ => {
            let answer = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
                // No read timeout (wasi-libc has no SO_RCVTIMEO): the call's deadline bounds it.
                s.send_to(b"ping", target)?;
                let mut buf = [0u8; 512];
                let (n, _) = s.recv_from(&mut buf)?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            });
            match answer {
                Ok(a) => format!("udp ok {a}"),
                Err(e) => format!("udp error: {e}"),
            }
        }
    };
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(200)
        .collect()
}
