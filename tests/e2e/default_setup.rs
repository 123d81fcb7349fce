//! What a new operator gets from the README's first command: the embedded default delivers
//! local mail into Maildir with its builtin plugins' header, and the builtin plugins are the
//! ones their recipe builds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::BIN;
use crate::peers::wait_for;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `config/plugins/build.sh` rebuilds the checked-in builtin plugins byte for byte.
#[test]
fn builtin_plugins_rebuild_byte_for_byte() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(repo().join("config/plugins/build.sh"))
        .arg(out.path())
        .env(
            "POSTRIDER_BUILTIN_TARGET",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("builtin-plugins"),
        )
        .status()
        .unwrap();
    assert!(status.success());
    let toolchain = |dir: &Path| std::fs::read_to_string(dir.join("toolchain.txt")).unwrap();
    let (here, shipped) = (
        toolchain(out.path()),
        toolchain(&repo().join("config/plugins")),
    );
    assert_eq!(
        here, shipped,
        "the builtin plugins were built with {shipped:?}, this machine has {here:?}: the bytes \
         cannot match; rebuild them with config/plugins/build.sh and commit them"
    );
    for file in ["header-stamp.wasm", "rate-limit.wasm"] {
        let built = std::fs::read(out.path().join(file)).unwrap();
        let shipped = std::fs::read(repo().join("config/plugins").join(file)).unwrap();
        assert!(
            built == shipped,
            "config/plugins/{file} is not what config/plugins/build.sh builds from plugins/ \
             now: run the script and commit its output"
        );
    }
}

/// The README's walk-through: `postrider serve` on the embedded default, swaks to
/// postmaster@localhost, the message in var/mail/postmaster/new/ with the stamp header,
/// as Python's mailbox.Maildir reads it.
#[test]
fn the_embedded_default_delivers_local_mail_to_maildir_with_the_stamp() {
    /// Kills the relay however the test ends: it holds the default's fixed ports.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("POSTRIDER_CONFIG")
        .env("POSTRIDER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = relay.stdout.take().unwrap();
    let _relay = Killed(relay);
    // Kept open to the end: the relay must not write into a closed pipe.
    let mut stdout = BufReader::new(stdout).lines();
    let ready = stdout
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l == "postrider: ready");
    assert!(
        ready,
        "the relay did not start on the embedded default (port 2525 taken?)"
    );
    let out = Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            "2525",
            "--from",
            "you@example.org",
            "--to",
            "postmaster@localhost",
            "--header",
            "Subject: hello",
            "--body",
            "first message",
        ])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && transcript.contains("<-  250 2.0.0 Ok: queued as "),
        "{transcript}"
    );
    let new = dir.path().join("var/mail/postmaster/new");
    wait_for("the message in new/", Duration::from_secs(30), || {
        std::fs::read_dir(&new).is_ok_and(|d| d.count() == 1)
    });
    let read = Command::new("python3")
        .arg("-c")
        .arg(
            "import mailbox, sys\n\
             box = mailbox.Maildir(sys.argv[1], create=False)\n\
             (m,) = list(box)\n\
             print(m['Subject']); print(m['Return-Path']); print(m['Delivered-To'])\n\
             print(m['X-Postrider-Stamp']); print(m.get_payload().strip())",
        )
        .arg(dir.path().join("var/mail/postmaster"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(
        lines[..3],
        ["hello", "<you@example.org>", "postmaster@localhost"]
    );
    assert!(
        lines[3].starts_with("localhost; queue-id=") && lines[3].contains("subject-length=5"),
        "{text}"
    );
    assert_eq!(lines[4], "first message");
}
