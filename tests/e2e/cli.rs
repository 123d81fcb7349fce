//! The command line: check-config and hash-password.

use std::process::Command;

use crate::harness::BIN;

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        all.replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn check_config_accepts_the_shipped_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/postrider.toml");
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_file_line_and_key() {
    let cases = [
        (
            "hostname = \"a\"\n[limits]\nmax_recipients = 5\nmax_frobnicate = 1\n",
            "FILE:4:",
            "max_frobnicate",
        ),
        ("[timeouts]\ncommand = \"soon\"\n", "FILE:2:", "command"),
        (
            "[[listener]]\nname = \"x\"\nkind = \"smtp\"\naddress = \"nowhere\"\n",
            "FILE:4:",
            "listener[0].address",
        ),
        ("hostname = [\n", "FILE:1:", ""),
    ];
    for (text, location, key) in cases {
        let (ok, out) = check_config(text);
        assert!(!ok, "{text:?} must fail");
        assert!(
            out.contains(location) && out.contains(key),
            "{text:?}: {out}"
        );
    }
}

#[test]
fn serve_refuses_a_bad_config_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = crate::harness::config("[relay]\nrelay_networks = [\"10.0.0.0/33\"]\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("relay_networks"))
        .unwrap()
        + 1;
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(":{line}: key `relay.relay_networks[0]`")),
        "{err}"
    );
}
