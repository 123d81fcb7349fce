//! A polyglot plugin chain in the real relay: a JavaScript sender policy at MAIL FROM, then
//! a C header check, a Python keyword scorer and a Rust stamp at DATA, each refusing what it
//! should and letting the rest through, in one process.

use postrider_testkit::polyglot_wasm;

use crate::harness::{Relay, config, plugin, send_message};

fn entry(name: &str, file: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n",
        polyglot_wasm(file).display()
    )
}

#[test]
fn a_chain_of_c_python_javascript_and_rust_plugins_filters_mail() {
    let chain = [
        entry(
            "policy",
            "js-sender-policy",
            // Warm instances for the heavy guests: later transactions reuse them.
            "reuse = 10\nconfig = { default = \"continue\", domains = { \"spam.example\" = \"deny\" } }",
        ),
        entry("headers", "c-header-check", ""),
        entry(
            "score",
            "py-keyword-score",
            "reuse = 10\nconfig = { threshold = 5, rules = [{ pattern = \"viagra\", weight = 4 }, { pattern = \"act now\", weight = 2, where = \"subject\" }] }",
        ),
        plugin(
            "stamp",
            "header-stamp",
            "config = { header = \"X-Stamp\", value = \"polyglot\" }",
        ),
    ]
    .concat();
    let mut relay = Relay::builder(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{chain}"
    )))
    .start();
    let headers = "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <1@sender.example>\r\n";

    // JavaScript, at MAIL FROM.
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<offers@spam.example>"),
        (550, "5.7.1".into())
    );
    assert_eq!(c.cmd("QUIT").0, 221);

    // C, at DATA: no Date, no Message-ID.
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "alice@sender.example",
        &["bob@relay.test"],
        "From: alice@sender.example\r\nSubject: hi\r\n\r\nhello",
    );
    assert_eq!(code, 550, "{lines:?}");

    // Python, at DATA: 4 + 2 >= 5.
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "alice@sender.example",
        &["bob@relay.test"],
        &format!("From: alice@sender.example\r\nSubject: act now\r\n{headers}\r\ncheap viagra"),
    );
    assert_eq!(code, 550, "{lines:?}");
    assert!(lines[0].contains("5.7.1"), "{lines:?}");

    // A clean message passes all four; Python scores it and Rust stamps it.
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "alice@sender.example",
        &["bob@relay.test"],
        &format!("From: alice@sender.example\r\nSubject: lunch\r\n{headers}\r\nnoon?"),
    );
    assert_eq!(code, 250, "{lines:?}");
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1, "only the clean message is queued");
    let text = String::from_utf8_lossy(&spool[0].1).into_owned();
    assert!(text.contains("X-Spam-Score: 0"), "{text}");
    assert!(text.contains("X-Stamp: polyglot"), "{text}");
}
