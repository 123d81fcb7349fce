//! The plugins written in C, Python and JavaScript (`plugins/c-header-check`,
//! `plugins/py-keyword-score`, `plugins/js-sender-policy`, `plugins/js-reputation`): built by
//! `plugins/build-polyglot.sh`, then run through the harness against their shipped cases.
//!
//! These tests fail, never skip, when a toolchain is missing: CI installs clang, lld,
//! wasi-libc, libclang-rt-dev-wasm32, python3-venv and npm (see `plugins/README.md`), and the
//! build script installs componentize-py and componentize-js into the plugin directories.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postrider_testkit::{polyglot_wasm, repo_root};

/// Compiled plugins are shared by every harness run of this test binary and with the relay's
/// end-to-end tests (and kept between runs: a CPython or SpiderMonkey component takes a
/// while to compile). The cache is keyed by content and engine, so sharing is safe.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

fn component(plugin: &str) -> PathBuf {
    polyglot_wasm(plugin)
}

fn harness_test(wasm: &Path, cases: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postrider-harness"))
        .arg("test")
        .arg(wasm)
        .arg(cases)
        .arg("--cache-dir")
        .arg(cache_dir())
        .output()
        .expect("running postrider-harness")
}

/// The plugin passes every shipped case, and there are enough of them to mean something:
/// at least `min` cases, some of them refusals and some config errors at load.
fn passes_its_cases(plugin: &str, min: usize) {
    let wasm = component(plugin);
    let cases = repo_root().join("plugins").join(plugin).join("cases.toml");
    let text = std::fs::read_to_string(&cases).unwrap();
    assert!(
        text.contains("expect_load_error"),
        "{plugin}: no config-error case"
    );
    assert!(text.contains("\"reject\""), "{plugin}: no refusal case");
    let out = harness_test(&wasm, &cases);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{plugin}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{plugin}: closing line {last:?}\n{stdout}"));
    assert!(passed >= min, "{plugin}: only {passed} cases");
}

#[test]
fn c_header_check_passes_its_cases() {
    passes_its_cases("c-header-check", 10);
}

#[test]
fn py_keyword_score_passes_its_cases() {
    passes_its_cases("py-keyword-score", 10);
}

#[test]
fn js_sender_policy_passes_its_cases() {
    passes_its_cases("js-sender-policy", 10);
}

/// fetch() over wasi:http, to a service the harness mocks and the plugin's grant allows.
#[test]
fn js_reputation_passes_its_cases() {
    passes_its_cases("js-reputation", 6);
}

/// The cases can fail: the C plugin (the quickest to compile) against a wrong expectation
/// and a config it refuses but a case expects to load.
#[test]
fn a_wrong_expectation_of_a_c_plugin_fails() {
    let wasm = component("c-header-check");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
mail_from = "alice@sender.example"
rcpt = ["bob@example.org"]

[[case]]
name = "right"
message = "From: a@sender.example\nDate: Tue, 14 Nov 2023 22:13:20 +0000\nMessage-ID: <1@x>\n\nx\n"
expect.data = "continue"

[[case]]
name = "wrong: a message without Date passes"
message = "From: a@sender.example\nMessage-ID: <1@x>\n\nx\n"
expect.data = "continue"

[[case]]
name = "wrong: a refused config loads"
config = { action = "drop" }
message = "From: a@sender.example\n\nx\n"
expect.data = "continue"
"#,
    )
    .unwrap();
    let out = harness_test(&wasm, &file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL wrong: a message without Date passes"),
        "{stdout}"
    );
    assert!(stdout.contains("missing Date"), "{stdout}");
    assert!(
        stdout.contains("FAIL wrong: a refused config loads"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("1 passed, 2 failed"),
        "{stdout}"
    );
}
