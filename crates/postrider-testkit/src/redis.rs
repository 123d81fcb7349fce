//! A real `redis-server` on a free loopback port, for the Redis kv backend's tests: plain,
//! or with TLS (a test CA made with rcgen) and a password.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child (no persistence, loopback only), killed on drop. It can be
/// stopped and started again on the same port, to test outages.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    secure: Option<Secure>,
    child: Option<Child>,
}

/// TLS and AUTH settings of a secured server.
struct Secure {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    password: String,
}

impl RedisServer {
    /// Starts a plain server on a free port of 127.0.0.1 with its files in `dir`.
    ///
    /// # Panics
    /// If `redis-server` (or `$POSTRIDER_REDIS_SERVER`) cannot be started or does not answer
    /// PING within 10 s: the test cannot run without it.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::launch(dir, None)
    }

    /// Starts a server that speaks only TLS (a certificate for 127.0.0.1 from a new test CA,
    /// whose PEM is [`RedisServer::ca_file`]) and requires `password`.
    ///
    /// # Panics
    /// As [`RedisServer::start`], or if the certificates cannot be made.
    pub fn start_secure(dir: &Path, password: &str) -> RedisServer {
        let (ca, cert, key) = make_ca_and_cert(dir);
        RedisServer::launch(
            dir,
            Some(Secure {
                ca,
                cert,
                key,
                password: password.into(),
            }),
        )
    }

    fn launch(dir: &Path, secure: Option<Secure>) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let mut server = RedisServer {
            port,
            dir: dir.to_path_buf(),
            secure,
            child: None,
        };
        server.resume();
        server
    }

    /// The URL of database `db`: `redis://` or, for a secured server,
    /// `rediss://:password@`.
    pub fn url(&self, db: u8) -> String {
        match &self.secure {
            None => format!("redis://127.0.0.1:{}/{db}", self.port),
            Some(s) => format!("rediss://:{}@127.0.0.1:{}/{db}", s.password, self.port),
        }
    }

    /// The PEM file of the test CA of a secured server.
    pub fn ca_file(&self) -> Option<&Path> {
        self.secure.as_ref().map(|s| s.ca.as_path())
    }

    /// Kills the server (SIGKILL: an outage, not a clean shutdown) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers PING.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn resume(&mut self) {
        self.kill();
        let program =
            std::env::var("POSTRIDER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&program);
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.secure {
            None => {
                cmd.arg("--port").arg(self.port.to_string());
            }
            Some(s) => {
                cmd.args(["--port", "0", "--tls-port"])
                    .arg(self.port.to_string())
                    .arg("--tls-cert-file")
                    .arg(&s.cert)
                    .arg("--tls-key-file")
                    .arg(&s.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&s.ca)
                    .args(["--tls-auth-clients", "no", "--requirepass"])
                    .arg(&s.password);
            }
        }
        let child = cmd
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} (install Debian's redis-server): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs one command with `redis-cli` and returns its raw output, trimmed ("PONG", "1",
    /// one line per element of a list); `None` if redis-cli failed.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string());
        if let Some(s) = &self.secure {
            cmd.args(["--tls", "--cacert"])
                .arg(&s.ca)
                .args(["--no-auth-warning", "-a"])
                .arg(&s.password);
        }
        let out = cmd.args(args).stdin(Stdio::null()).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a test CA and a certificate for 127.0.0.1 and localhost signed by it; returns
/// the paths of the CA certificate, the server certificate and its key.
fn make_ca_and_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = crate::TestCa::new(dir, "redis");
    let (cert, key) = ca.issue("server", &["127.0.0.1", "localhost"]);
    (ca.cert_file(), cert, key)
}
