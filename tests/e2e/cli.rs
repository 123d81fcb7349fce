//! The command line: check-config, hash-password and dkim-records.

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

#[test]
fn dkim_records_publish_the_public_keys_openssl_derives() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}");
        out.stdout
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "rsa.pem",
    ]);
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "ed.pem"]);
    let b64 = |bytes: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let rsa_p = b64(&openssl(&[
        "pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER",
    ]));
    let ed_der = openssl(&["pkey", "-in", "ed.pem", "-pubout", "-outform", "DER"]);
    let ed_p = b64(&ed_der[ed_der.len() - 32..]);
    let config = dir.path().join("postrider.toml");
    std::fs::write(
        &config,
        "[[listener]]\nname = \"smtp\"\naddress = \"127.0.0.1:2525\"\nkind = \"smtp\"\n\
         [authentication]\narc_seal = { domain = \"example.org\", selector = \"arc\", key_file = \"ed.pem\" }\n\
         [[dkim_sign]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey_file = \"rsa.pem\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["dkim-records", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // RSA records are longer than one TXT string: joined, they are the record.
    let rsa = lines[0]
        .strip_prefix("s1._domainkey.example.org. IN TXT ")
        .unwrap_or_else(|| panic!("{text}"));
    let strings: Vec<&str> = rsa.split("\" \"").collect();
    assert!(
        strings.len() > 1 && strings.iter().all(|s| s.len() <= 256),
        "{rsa}"
    );
    assert_eq!(
        rsa.trim_matches('"').replace("\" \"", ""),
        format!("v=DKIM1; k=rsa; p={rsa_p}")
    );
    assert_eq!(
        lines[1],
        format!("arc._domainkey.example.org. IN TXT \"v=DKIM1; k=ed25519; p={ed_p}\"")
    );
    // Without keys it says so and fails.
    let out = Command::new(BIN).arg("dkim-records").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dkim_sign"));
}
