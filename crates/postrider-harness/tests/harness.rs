//! Runs the built `postrider-harness` binary: every example plugin against its shipped cases,
//! a deliberately wrong case (diff, exit 1), the `misbehave` fixture's traps and timeouts,
//! the JSON format and the transcript player.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postrider_testkit::{plugin_wasm, repo_root};

/// Compiled plugins are shared by every harness run of this test binary.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("harness-plugin-cache")
}

fn harness(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postrider-harness"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .expect("running postrider-harness")
}

fn test_cmd(plugin: &str, cases: &Path, extra: &[&str]) -> Output {
    let wasm = plugin_wasm(plugin);
    let mut args = vec!["test".as_ref(), wasm.as_os_str(), cases.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    harness(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or_default().to_owned()
}

/// The case files shipped in a plugin's directory.
fn shipped_cases(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "toml")
                && p.file_name().is_some_and(|n| n != "Cargo.toml")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_plugin_passes_its_cases() {
    let plugins = repo_root().join("plugins");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&plugins)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    dirs.sort();
    let mut tested = Vec::new();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if shipped_cases(&dir).is_empty() {
            assert_eq!(name, "misbehave", "example plugin {name} ships no cases");
            continue;
        }
        let out = test_cmd(&name, &dir, &[]);
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = last_line(&out);
        let passed: usize = last
            .strip_suffix(" passed, 0 failed")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name}: closing line {last:?}\n{text}"));
        assert!(passed >= 5, "{name}: only {passed} cases");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("ok   ")).count(),
            passed
        );
        tested.push(name);
    }
    for p in [
        "dnsbl",
        "greylist",
        "header-stamp",
        "rate-limit",
        "rcpt-allowlist",
        "route-by-domain",
    ] {
        assert!(tested.iter().any(|t| t == p), "{p} not tested: {tested:?}");
    }
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
config = { domains = { "example.org" = ["alice"] } }
mail_from = "s@sender.example"

[[case]]
name = "right"
rcpt = ["alice@example.org"]
expect.rcpt."alice@example.org" = "continue"

[[case]]
name = "wrong on purpose"
rcpt = ["mallory@example.org"]
expect.rcpt."mallory@example.org" = { verdict = "tempfail", code = 451 }
"#,
    )
    .unwrap();
    let out = test_cmd("rcpt-allowlist", &file, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok   right\n"), "{text}");
    assert!(text.contains("FAIL wrong on purpose\n"), "{text}");
    assert!(text.contains("wrong.toml:11"), "{text}");
    assert!(text.contains("run 1, rcpt <mallory@example.org>"), "{text}");
    assert!(
        text.contains("expected: tempfail 451, no plugin failure"),
        "{text}"
    );
    assert!(
        text.contains("actual:   reject 550 5.1.1 \"<mallory@example.org>: Recipient address rejected: user unknown\""),
        "{text}"
    );
    assert_eq!(last_line(&out), "1 passed, 1 failed");

    // The same as JSON.
    let out = test_cmd("rcpt-allowlist", &file, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["passed"], 1);
    assert_eq!(doc["failed"], 1);
    assert_eq!(
        doc["cases"][1]["mismatches"][0]["at"],
        "run 1, rcpt <mallory@example.org>"
    );
    // connect, helo (the harness greets for a case without helo), mail-from, rcpt.
    let rcpt = &doc["cases"][1]["runs"][0]["stages"][3];
    assert_eq!(rcpt["stage"], "rcpt");
    assert_eq!(rcpt["verdict"]["code"], 550);
    assert_eq!(rcpt["calls"][0]["plugin"], "rcpt-allowlist");
}

#[test]
fn misbehaving_plugins_are_answered_by_their_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("misbehave.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
mail_from = "s@sender.example"
rcpt = ["a@example.org"]
timeout_ms = 500

[[case]]
name = "trap, failure_policy tempfail (the default)"
config = { mode = "trap" }
expect.rcpt."a@example.org" = { verdict = "tempfail", code = 451, enhanced = "4.3.0", failure = "trap", failure_text = "trap" }

[[case]]
name = "trap, failure_policy continue"
config = { mode = "trap" }
failure_policy = "continue"
expect.rcpt."a@example.org" = { verdict = "continue", failure = "trap" }

[[case]]
name = "endless loop hits timeout_ms, failure_policy reject"
config = { mode = "loop" }
timeout_ms = 100
failure_policy = "reject"
expect.rcpt."a@example.org" = { verdict = "reject", code = 550, enhanced = "5.7.1", failure = "timeout" }

[[case]]
name = "memory hog hits memory_mb"
config = { mode = "oom" }
memory_mb = 8
timeout_ms = 5000
failure_policy = "continue"
expect.rcpt."a@example.org" = { verdict = "continue", failure = "trap" }

[[case]]
name = "a smuggling reply is invalid"
config = { mode = "bad-reply" }
expect.rcpt."a@example.org" = { verdict = "tempfail", code = 451, failure = "invalid" }

[[case]]
name = "a CRLF in a header edit is invalid"
config = { mode = "bad-header" }
message = "Subject: x\n\nbody\n"
expect.rcpt."a@example.org" = "continue"
expect.data = { verdict = "tempfail", failure = "invalid" }

[[case]]
name = "rewrite"
config = { mode = "rewrite" }
expect.rcpt."a@example.org" = { verdict = "continue", rewrite = "rewritten+a=example.org@relay.test" }

[[case]]
name = "init failure"
config = { mode = "init-fail" }
expect_load_error = "init failed: init-fail asked for"
"#,
    )
    .unwrap();
    let out = test_cmd("misbehave", &file, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(last_line(&out), "8 passed, 0 failed");

    // A failure the case does not name is a mismatch, even when the verdict matches.
    std::fs::write(
        &file,
        r#"
[[case]]
name = "unexpected trap"
config = { mode = "trap" }
failure_policy = "continue"
mail_from = "s@sender.example"
rcpt = ["a@example.org"]
expect.rcpt."a@example.org" = "continue"
"#,
    )
    .unwrap();
    let out = test_cmd("misbehave", &file, &["--trace"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("after a trap failure"), "{text}");
    assert_eq!(last_line(&out), "0 passed, 1 failed");
}

#[test]
fn reuse_in_a_case_keeps_warm_instances_across_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reuse.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
config = { mode = "count" }
mail_from = "s@sender.example"
rcpt = ["a@example.org"]

[[case]]
name = "an instance serves three transactions, init runs again, then a fresh one"
reuse = 3
pool_idle = 1
[[case.run]]
expect.rcpt."a@example.org" = { verdict = "reject", text = "^calls 1 inits 1 seen 1$" }
[[case.run]]
expect.rcpt."a@example.org" = { verdict = "reject", text = "^calls 2 inits 2 seen 1$" }
[[case.run]]
expect.rcpt."a@example.org" = { verdict = "reject", text = "^calls 3 inits 3 seen 1$" }
[[case.run]]
expect.rcpt."a@example.org" = { verdict = "reject", text = "^calls 1 inits 1 seen 1$" }
[[case.run]]
rcpt = ["trap@example.org"]
expect.rcpt."trap@example.org" = { verdict = "tempfail", failure = "trap" }
[[case.run]]
expect.rcpt."a@example.org" = { verdict = "reject", text = "^calls 1 inits 1 seen 1$" }

[[case]]
name = "without reuse every run starts fresh"
[[case.run]]
repeat = 3
expect.rcpt."a@example.org" = { verdict = "reject", text = "^calls 1 inits 1 seen 1$" }
"#,
    )
    .unwrap();
    let out = test_cmd("misbehave", &file, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(last_line(&out), "2 passed, 0 failed");

    std::fs::write(
        &file,
        "[[case]]\nname = \"x\"\nconfig = { mode = \"count\" }\npool_idle = 2\n",
    )
    .unwrap();
    let out = test_cmd("misbehave", &file, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool_idle needs reuse"), "{err}");
}

#[test]
fn trace_shows_stage_inputs_and_host_calls() {
    let cases = repo_root().join("plugins/greylist/cases.toml");
    let out = test_cmd(
        "greylist",
        &cases,
        &["--trace", "--filter", "first attempt is greylisted"],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("rcpt <bob@example.org>, from <alice@sender.example>"),
        "{text}"
    );
    assert!(
        text.contains("kv.get t:203.0.113.0/24|alice@sender.example|bob@example.org -> Ok(None) ["),
        "{text}"
    );
    assert!(text.contains("kv.set t:203.0.113.0/24"), "{text}");
    assert!(text.contains("log.info greylist: new triplet"), "{text}");
    assert_eq!(last_line(&out), "1 passed, 0 failed");
}

#[test]
fn a_malformed_case_file_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[case]]\nname = \"x\"\nexpect.rcpt = 3\n").unwrap();
    let out = test_cmd("greylist", &file, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3:"), "{err}");
}

#[test]
fn a_case_that_expects_nothing_and_a_file_that_is_no_component_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.toml");
    std::fs::write(&file, "[[case]]\nname = \"x\"\nrcpt = [\"a@b.example\"]\n").unwrap();
    let out = test_cmd("greylist", &file, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty.toml:1:") && err.contains("expects nothing"),
        "{err}"
    );

    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        "[[case]]\nname = \"x\"\nexpect.connect = \"continue\"\n",
    )
    .unwrap();
    let text = dir.path().join("text.wasm");
    std::fs::write(&text, "(component)\n").unwrap();
    let out = harness(&["test".as_ref(), text.as_os_str(), cases.as_os_str()]);
    assert_ne!(out.status.code(), Some(0));
    let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(
        all.contains("not a WebAssembly component") && !all.contains("expected `(`"),
        "{all}"
    );
}

#[test]
fn run_plays_a_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let transcript = dir.path().join("session.txt");
    std::fs::write(
        &transcript,
        "EHLO mail.sender.example\nMAIL FROM:<alice@sender.example>\nRCPT TO:<bob@example.org>\nRSET\nQUIT\n",
    )
    .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "delay_seconds = 60\n").unwrap();
    let wasm = plugin_wasm("greylist");
    let out = harness(&[
        "run".as_ref(),
        wasm.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
        "--transcript".as_ref(),
        transcript.as_os_str(),
        "--client-ip".as_ref(),
        "45.33.12.7".as_ref(),
        "--trace".as_ref(),
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("S: 220 "), "{text}");
    let rcpt = text
        .find("C: RCPT TO:<bob@example.org>")
        .expect("RCPT sent");
    let reply = text.find("S: 451 4.7.1 Greylisted").expect("451 reply");
    assert!(rcpt < reply, "{text}");
    assert!(text.contains("S: 221 "), "{text}");
    assert!(
        text.contains("kv.set t:45.33.12.0/24|alice@sender.example|bob@example.org"),
        "{text}"
    );
}

/// The data and route stages see what the relay would show them: the queue id the message is
/// stored under, the connection it came in on (client, listener, our address, HELO, TLS with
/// SNI, AUTH user) and the MAIL FROM parameters (tests/e2e/stage_parity.rs checks the relay).
#[test]
fn data_and_route_stages_see_the_connection_and_envelope_of_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inputs.toml");
    std::fs::write(
        &file,
        r#"
[[case]]
name = "every input at data and route"
config = { mode = "inputs" }
connection = { id = "c-7", client_ip = "198.51.100.7", client_port = 41234, listener = "submission", server_ip = "192.0.2.25", server_port = 587, tls = { protocol = "TLSv1.3", cipher = "TLS13_AES_256_GCM_SHA384", sni = "mx.example.org" }, auth_user = "alice" }
helo = "client.example"
mail_from = "alice@example.org"
mail_params = { SIZE = 300, BODY = "8BITMIME", RET = "HDRS", ENVID = "e-1" }
spf = "softfail"
rcpt = ["bob@example.net", "carol@example.net"]
queue_id = "Q42"
message = "Subject: x\n\nbody\n"
expect.data = "continue"
expect.headers = [{ append = "X-Stage-Inputs", value = "q=Q42 id=c-7 ip=198.51.100.7 port=41234 name=- l=submission srv=192.0.2.25:587 helo=client.example tls=TLSv1.3/TLS13_AES_256_GCM_SHA384/mx.example.org user=alice from=alice@example.org params=SIZE=300,BODY=8BITMIME,RET=HDRS,ENVID=e-1 spf=softfail/example.org rcpts=bob@example.net,carol@example.net" }]
expect.routes."bob@example.net" = { type = "hold", reason = "^q=Q42 id=c-7 ip=198.51.100.7 port=41234 name=- l=submission srv=192.0.2.25:587 helo=client.example tls=TLSv1.3/TLS13_AES_256_GCM_SHA384/mx.example.org user=alice from=alice@example.org params=SIZE=300,BODY=8BITMIME,RET=HDRS,ENVID=e-1 spf=softfail/example.org rcpts=bob@example.net,carol@example.net$" }
expect.routes."carol@example.net" = { type = "hold", reason = "^q=Q42 .* rcpts=bob@example.net,carol@example.net$" }
"#,
    )
    .unwrap();
    let out = test_cmd("misbehave", &file, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(last_line(&out), "1 passed, 0 failed", "{text}");
}
