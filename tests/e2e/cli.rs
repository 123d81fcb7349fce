//! The command line: check-config, hash-password, dkim-records, where options go and how
//! the commands find the relay.

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

/// The shipped default passes, builtin plugins included, and checking writes nothing.
#[test]
fn check_config_accepts_the_shipped_default_and_writes_nothing() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/postrider.toml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.toml");
    std::fs::copy(shipped, &path).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": ok (2 plugin(s) loaded and initialised)"),
        "{stdout}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["postrider.toml"], "check-config wrote files");
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

/// Runs the binary with `args` in `cwd`, without POSTRIDER_CONFIG: (success, stdout+stderr).
fn run_in(
    cwd: &std::path::Path,
    args: &[&str],
    env: &[(&str, &std::path::Path)],
) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("POSTRIDER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_config_loads_and_initialises_every_plugin_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.toml");
    let file = path.to_str().unwrap();
    let stamp = |extra: &str| {
        crate::harness::plugin(
            "stamp",
            "header-stamp",
            &format!("config = {{ header = \"X-Stamp\", value = \"1\"{extra} }}"),
        )
    };
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let positional = run_in(dir.path(), &["check-config", file], &[]);
        let option = run_in(dir.path(), &["check-config", "--config", file], &[]);
        assert_eq!(positional.0, option.0, "{positional:?} {option:?}");
        positional
    };
    let (ok, out) = check(&crate::harness::config(&stamp("")));
    assert!(ok, "{out}");
    assert!(
        out.contains(": ok (1 plugin(s) loaded and initialised)"),
        "{out}"
    );

    // init refuses the plugin's config.
    let (ok, out) = check(&crate::harness::config(&stamp(", frobnicate = 1")));
    assert!(!ok, "{out}");
    assert!(
        out.contains("loading plugin stamp")
            && out.contains("init failed")
            && out.contains("frobnicate"),
        "{out}"
    );
    let text = crate::harness::config(&stamp(", frobnicate = 1"));
    std::fs::write(&path, &text).unwrap();
    let (ok, serve_out) = run_in(dir.path(), &["serve", "--config", file], &[]);
    assert!(!ok && serve_out.contains("frobnicate"), "{serve_out}");

    // A missing component, a text file named .wasm, a core module.
    let good = crate::harness::config(&stamp(""));
    let wasm = postrider_testkit::plugin_wasm("header-stamp")
        .display()
        .to_string();
    let missing = dir.path().join("missing.wasm");
    let (ok, out) = check(&good.replace(&wasm, missing.to_str().unwrap()));
    assert!(!ok && out.contains("missing.wasm"), "{out}");
    let text_file = dir.path().join("text.wasm");
    std::fs::write(&text_file, "(component)\n").unwrap();
    let (ok, out) = check(&good.replace(&wasm, text_file.to_str().unwrap()));
    assert!(!ok && out.contains("not a WebAssembly component"), "{out}");
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let (ok, out) = check(&good.replace(&wasm, module.to_str().unwrap()));
    assert!(
        !ok && out.contains("core WebAssembly module, not a component"),
        "{out}"
    );

    // A certificate that is not one.
    std::fs::write(dir.path().join("cert.pem"), "nonsense").unwrap();
    std::fs::write(dir.path().join("key.pem"), "nonsense").unwrap();
    let tls = good.replace(
        "kind = \"smtp\"\n",
        "kind = \"smtp\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n",
    );
    let (ok, out) = check(&tls);
    assert!(!ok && out.contains("listener smtp"), "{out}");
}

#[test]
fn options_go_before_or_after_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.toml");
    std::fs::write(&path, crate::harness::config("")).unwrap();
    std::fs::create_dir(dir.path().join("spool")).unwrap();
    let file = path.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let forms: [&[&str]; 4] = [
        &["queue", "list", "--json", "--config", file],
        &["queue", "--json", "list", "--config", file],
        &["--config", file, "queue", "list", "--json"],
        &["queue", "--config", file, "--json", "list"],
    ];
    for args in forms {
        let (ok, out) = run_in(elsewhere.path(), args, &[]);
        assert!(ok, "{args:?}: {out}");
        let json: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert_eq!(json["entries"], serde_json::json!([]), "{args:?}");
    }
    // POSTRIDER_CONFIG stands for --config.
    let (ok, out) = run_in(
        elsewhere.path(),
        &["queue", "list", "--json"],
        &[("POSTRIDER_CONFIG", &path)],
    );
    assert!(ok && out.contains("\"entries\""), "{out}");
    let (ok, out) = run_in(
        elsewhere.path(),
        &["check-config"],
        &[("POSTRIDER_CONFIG", &path)],
    );
    assert!(ok && out.contains(&format!("{file}: ok")), "{out}");
    // A file named on the command line is checked, not the one POSTRIDER_CONFIG names.
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, "hostname = [\n").unwrap();
    let (ok, out) = run_in(
        elsewhere.path(),
        &["check-config", candidate.to_str().unwrap()],
        &[("POSTRIDER_CONFIG", &path)],
    );
    assert!(!ok && out.contains("candidate.toml:1:"), "{out}");
    let (ok, out) = run_in(
        elsewhere.path(),
        &["check-config"],
        &[("POSTRIDER_CONFIG", &path)],
    );
    assert!(ok && out.contains(&format!("{file}: ok")), "{out}");
}

#[test]
fn commands_without_a_relay_say_where_they_looked_and_create_nothing() {
    let elsewhere = tempfile::tempdir().unwrap();
    let (ok, out) = run_in(elsewhere.path(), &["queue", "list"], &[]);
    assert!(!ok, "{out}");
    let cwd = std::fs::canonicalize(elsewhere.path()).unwrap();
    assert!(
        out.contains(&format!("no spool at {}/var/spool", cwd.display()))
            && out.contains("--config (or POSTRIDER_CONFIG)")
            && out.contains("relative to the directory the relay runs in"),
        "{out}"
    );
    for (args, looked_for) in [
        (
            &["status"][..],
            "no relay answering on {cwd}/var/admin.sock",
        ),
        (
            &["kv", "list", "stamp"][..],
            "no kv store at {cwd}/var/kv.redb",
        ),
    ] {
        let (ok, out) = run_in(elsewhere.path(), args, &[]);
        let looked_for = looked_for.replace("{cwd}", &cwd.display().to_string());
        assert!(
            !ok && out.contains(&looked_for)
                && out.contains("relative to the directory the relay runs in"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "created files"
    );
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
