//! Case files: parsing, defaults, every error's location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn p(text: &str) -> Result<Vec<Case>, CaseError> {
    parse(text, Path::new("x/cases.toml"))
}

#[test]
fn minimal_case_and_short_forms() {
    let cases = p(r#"
[defaults]
config = { a = 1 }
rcpt = ["a@b.example"]

[[case]]
name = "one"
mail_from = "s@c.example"
expect.rcpt."a@b.example" = "tempfail"
expect.routes."a@b.example" = "mx"
expect.kv = { k = 3 }
"#)
    .unwrap();
    assert_eq!(cases.len(), 1);
    let c = &cases[0];
    assert_eq!(c.line, 6);
    assert_eq!(c.plugin.config_json, r#"{"a":1}"#);
    assert_eq!(c.runs.len(), 1);
    assert_eq!(c.runs[0].rcpt, ["a@b.example"]);
    assert_eq!(c.runs[0].expect.rcpt[0].1.verdict, VerdictKind::Tempfail);
    assert_eq!(c.runs[0].expect.kv.as_ref().unwrap()["k"], "3");
}

#[test]
fn errors_name_file_and_line() {
    let e = p("[[case]]\nname = \"x\"\nbogus = 1\n").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("x/cases.toml:3:"), "{text}");
    assert!(text.contains("bogus"), "{text}");
    let e = p("[[case]]\nname = \"x\"\nrcpt = [\"a@b\"]\nexpect.rcpt.\"c@d\" = \"reject\"\n")
        .unwrap_err();
    assert!(
        e.to_string().starts_with("x/cases.toml:1: case \"x\""),
        "{e}"
    );
    let e = p("[[case]]\nname = \"x\"\nexpect.connect = { verdict = \"rejected\" }\n").unwrap_err();
    assert!(e.to_string().contains("x/cases.toml:3"), "{e}");
}

#[test]
fn runs_repeat_and_advance() {
    let c = p(r#"
[[case]]
name = "r"
[[case.run]]
repeat = 3
[[case.run]]
advance_secs = 301
connection = { client_ip = "2001:db8::1", tls = true }
expect.connect = "continue"
"#)
    .unwrap();
    let runs = &c[0].runs;
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[2].label, "run 1 (3/3)");
    assert_eq!(runs[3].advance_ms, 301_000);
    let conn = runs[3].conn.resolve("c");
    assert_eq!(conn.client_ip.to_string(), "2001:db8::1");
    assert_eq!(conn.tls.unwrap().protocol, "TLSv1.3");
}

#[test]
fn authentication_presets() {
    let c = p(r#"
[defaults]
helo = "mail.sender.example"
mail_from = "alice@sender.example"
spf = "softfail"
authentication = { dmarc = "fail" }

[[case]]
name = "from defaults, spf domain from MAIL FROM"
expect.mail_from = "continue"

[[case]]
name = "case and run values"
spf = { result = "pass", domain = "other.example" }
authentication = { dkim = [{ result = "pass", domain = "d.example", selector = "s1" }], arc = "pass" }
[[case.run]]
[[case.run]]
mail_from = "<>"
spf = "none"
authentication = {}
expect.mail_from = "continue"
"#)
    .unwrap();
    let spf = c[0].runs[0].spf.clone().unwrap();
    assert_eq!(
        (spf.result, spf.domain.as_str()),
        (AuthResult::Softfail, "sender.example")
    );
    let auth = c[0].runs[0].authentication.clone().unwrap();
    assert_eq!(
        (auth.dmarc, auth.arc, auth.dkim.len()),
        (AuthResult::Fail, AuthResult::None, 0)
    );
    let first = &c[1].runs[0];
    assert_eq!(first.spf.as_ref().unwrap().domain, "other.example");
    let auth = first.authentication.clone().unwrap();
    assert_eq!(auth.dkim[0].domain, "d.example");
    assert_eq!(auth.dkim[0].selector, "s1");
    assert_eq!(
        (auth.dkim[0].result, auth.dmarc, auth.arc),
        (AuthResult::Pass, AuthResult::None, AuthResult::Pass)
    );
    // The null sender's SPF identity is the HELO name.
    let second = &c[1].runs[1];
    let spf = second.spf.clone().unwrap();
    assert_eq!(
        (spf.result, spf.domain.as_str()),
        (AuthResult::None, "mail.sender.example")
    );
    assert!(second.authentication.as_ref().unwrap().dkim.is_empty());
    // Nothing set: not checked.
    let none = p("[[case]]\nname = \"x\"\nexpect.connect = \"continue\"\n").unwrap();
    assert!(none[0].runs[0].spf.is_none() && none[0].runs[0].authentication.is_none());
}

#[test]
fn unknown_results_name_the_key() {
    for (text, needle) in [
        (
            "[[case]]\nname = \"x\"\nspf = \"passed\"\n",
            "spf.result: unknown result \"passed\"",
        ),
        (
            "[defaults]\nspf = { result = \"Pass\" }\n[[case]]\nname = \"x\"\n",
            "[defaults] spf.result: unknown result \"Pass\"",
        ),
        (
            "[[case]]\nname = \"x\"\nauthentication = { dmarc = \"reject\" }\n",
            "authentication.dmarc: unknown result \"reject\"",
        ),
        (
            "[[case]]\nname = \"x\"\nauthentication = { arc = \"ok\" }\n",
            "authentication.arc: unknown result",
        ),
        (
            "[[case]]\nname = \"x\"\nauthentication = { dkim = [{ result = \"pass\", domain = \"a\", selector = \"s\" }, { result = \"good\", domain = \"b\", selector = \"s\" }] }\n",
            "authentication.dkim[1].result: unknown result \"good\"",
        ),
        (
            "[[case]]\nname = \"x\"\n[[case.run]]\nspf = \"maybe\"\n",
            "run 1: spf.result: unknown result",
        ),
    ] {
        let e = p(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
        assert!(e.contains("expected one of none, pass, fail"), "{e}");
    }
    // Unknown keys are refused by the parser with their line.
    let e = p("[[case]]\nname = \"x\"\nauthentication = { spf = \"pass\" }\n").unwrap_err();
    assert!(e.to_string().starts_with("x/cases.toml:3:"), "{e}");
    assert!(e.to_string().contains("spf"), "{e}");
    let e = p("[[case]]\nname = \"x\"\nauthentication = { dkim = [{ result = \"pass\" }] }\n")
        .unwrap_err();
    assert!(e.to_string().contains("domain"), "{e}");
}

#[test]
fn crlf_conversion() {
    assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
}

#[test]
fn a_case_that_checks_nothing_is_an_error() {
    for text in [
        "[[case]]\nname = \"x\"\nrcpt = [\"a@b.example\"]\n",
        "[[case]]\nname = \"x\"\n[case.expect]\n",
        "[[case]]\nname = \"x\"\n[[case.run]]\nrepeat = 2\n[[case.run]]\nadvance_secs = 5\n",
    ] {
        let e = p(text).unwrap_err().to_string();
        assert!(
            e.starts_with("x/cases.toml:1: case \"x\"") && e.contains("expects nothing"),
            "{text:?}: {e}"
        );
    }
    // A run that only sets up state is fine when a later one checks something.
    let cases = p(
        "[[case]]\nname = \"x\"\n[[case.run]]\nrepeat = 2\n[[case.run]]\nexpect.connect = \"continue\"\n",
    )
    .unwrap();
    assert_eq!(cases[0].runs.len(), 3);
    // So is a case that expects the plugin not to load.
    p("[[case]]\nname = \"x\"\nexpect_load_error = \"init\"\n").unwrap();
}
