//! Email authentication (SPF, DKIM, DMARC, ARC) in the real relay. dnsmasq serves every DNS
//! record the checks read (the relay's `[dns] nameservers` point at it); dkimpy (PyPI) is the
//! independent party: it signs and seals what we verify, and verifies what we sign and seal,
//! reading the keys from the same dnsmasq. What plugins see is checked through header-stamp,
//! whose `spf`, `dkim`, `dmarc` and `arc` items copy what the relay handed the plugin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postrider_queue::Envelope;

use crate::harness::{Relay, config_dns, list_json, plugin, python, queue, queue_id};
use crate::peers::{Proc, Receiver, Script, dnsmasq, free_port_on, wait_for};

/// The relay's authserv-id (set explicitly; it is also `hostname` of the test config).
const AUTHSERV_ID: &str = "mx.relay.test";

/// dkimpy as a command line: `sign`, `arc-sign`, `verify`, `arc-verify`. DNS lookups go to the
/// test's dnsmasq (dnspython, straight to 127.0.0.1:PORT), so keys really come from DNS.
const DKIMPY: &str = r#"
import sys
import dkim
import dns.message, dns.query, dns.rdatatype

def txt_lookup(port):
    def lookup(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        answer = dns.query.udp(dns.message.make_query(name, "TXT"), "127.0.0.1", port=port, timeout=timeout)
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(list(rrset)[0].strings)
        return None
    return lookup

cmd, path = sys.argv[1], sys.argv[2]
msg = open(path, "rb").read()
out = sys.stdout.buffer
if cmd == "sign":  # sign MSG KEYFILE SELECTOR DOMAIN ALGORITHM: the signed message
    key, selector, domain, alg = sys.argv[3:7]
    sig = dkim.sign(msg, selector.encode(), domain.encode(), open(key, "rb").read().strip(),
                    signature_algorithm=alg.encode(),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    out.write(sig + msg)
elif cmd == "arc-sign":  # arc-sign MSG KEYFILE SELECTOR DOMAIN SRV_ID: the sealed message
    key, selector, domain, srv_id = sys.argv[3:7]
    headers = dkim.arc_sign(msg, selector.encode(), domain.encode(), open(key, "rb").read(),
                            srv_id.encode())
    assert headers, "dkimpy made no ARC set"
    out.write(b"".join(headers) + msg)
elif cmd == "verify":  # verify MSG PORT: pass or fail, one line per DKIM-Signature, top first
    lookup = txt_lookup(int(sys.argv[3]))
    count = sum(1 for name, _ in dkim.DKIM(msg).headers if name.lower() == b"dkim-signature")
    for i in range(count):
        try:
            ok = dkim.DKIM(msg).verify(idx=i, dnsfunc=lookup)
        except dkim.DKIMException as e:  # a body hash mismatch, a bad key, ...
            print(e, file=sys.stderr)
            ok = False
        print("pass" if ok else "fail")
elif cmd == "arc-verify":  # arc-verify MSG PORT: "CV SETS REASON"
    cv, results, reason = dkim.arc_verify(msg, dnsfunc=txt_lookup(int(sys.argv[3])))
    print(cv.decode(), len(results), reason)
else:
    sys.exit("unknown command " + cmd)
"#;

// ---------------------------------------------------------------- keys and DNS

/// A signing key made with `openssl genpkey`, with what DNS publishes for it.
struct Key {
    /// PKCS#8 PEM, as `[[dkim_sign]] key_file` takes it.
    pem: PathBuf,
    /// The key as dkimpy signs with it: the PEM (RSA), or the base64 private key (Ed25519).
    dkimpy: PathBuf,
    /// `k=` of the DKIM key record.
    k: &'static str,
    /// `p=`: base64 SubjectPublicKeyInfo (RSA) or raw public key (Ed25519, RFC 8463).
    p: String,
}

impl Key {
    fn rsa(dir: &Path, name: &str) -> Key {
        let pem = dir.join(format!("{name}.pem"));
        openssl(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ],
            &pem,
        );
        let public = openssl(&["pkey", "-pubout", "-outform", "DER", "-in"], &pem);
        Key {
            dkimpy: pem.clone(),
            pem,
            k: "rsa",
            p: base64(&public),
        }
    }

    fn ed25519(dir: &Path, name: &str) -> Key {
        let pem = dir.join(format!("{name}.pem"));
        openssl(&["genpkey", "-algorithm", "ed25519", "-out"], &pem);
        // Both DER forms end with the 32 raw key bytes (PKCS#8 v1 and SubjectPublicKeyInfo).
        let private = openssl(&["pkey", "-outform", "DER", "-in"], &pem);
        let public = openssl(&["pkey", "-pubout", "-outform", "DER", "-in"], &pem);
        assert_eq!(
            (private.len(), public.len()),
            (48, 44),
            "unexpected Ed25519 DER"
        );
        let dkimpy = dir.join(format!("{name}.seed"));
        std::fs::write(&dkimpy, base64(&private[16..])).unwrap();
        Key {
            pem,
            dkimpy,
            k: "ed25519",
            p: base64(&public[12..]),
        }
    }

    /// The TXT record at `<selector>._domainkey.<domain>`.
    fn record(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.k, self.p)
    }

    /// The dnsmasq argument publishing this key for `selector` and `domain`.
    fn dns(&self, selector: &str, domain: &str) -> String {
        txt(&format!("{selector}._domainkey.{domain}"), &self.record())
    }
}

/// Runs openssl with `args` then `path`; its stdout.
fn openssl(args: &[&str], path: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .arg(path)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A dnsmasq `--txt-record` for one TXT record. A DNS character-string holds at most 255
/// bytes, so a longer text (an RSA key record) is published as several strings, which
/// resolvers join. dnsmasq takes the strings comma-separated; quotes only group in its
/// config files (on the command line they would become part of the text), so the text must
/// not hold a comma.
fn txt(name: &str, text: &str) -> String {
    assert!(!text.contains(','), "a comma would split {text:?}");
    let strings: Vec<&str> = text
        .as_bytes()
        .chunks(255)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("--txt-record={name},{}", strings.join(","))
}

/// dnsmasq answering for `.test` from `records` only: names it does not list are NXDOMAIN
/// (`--local`), as on the internet, rather than REFUSED for want of an upstream server.
fn dns(records: &[String]) -> (Proc, SocketAddr) {
    let mut args = vec!["--local=/test/".to_owned()];
    args.extend_from_slice(records);
    dnsmasq(&args)
}

// ---------------------------------------------------------------- relay, messages, dkimpy

/// A relay resolving through `ns`, with local domain relay.test; `relay` goes into `[relay]`,
/// `auth` into `[authentication]`, `extra` after them (`[[dkim_sign]]`, `[[plugin]]`).
fn start(ns: SocketAddr, relay: &str, auth: &str, extra: &str) -> Relay {
    Relay::builder(&config_dns(
        &ns.to_string(),
        &format!(
            "[relay]\nlocal_domains = [\"relay.test\"]\n{relay}\n\
             [authentication]\nauthserv_id = \"{AUTHSERV_ID}\"\ntimeout_ms = 5000\n{auth}\n{extra}"
        ),
    ))
    .start()
}

/// header-stamp as `X-Stamp: e2e; item=...` with these report items.
fn stamp(items: &str) -> String {
    plugin(
        "stamp",
        "header-stamp",
        &format!("config = {{ header = \"X-Stamp\", value = \"e2e\", report = [{items}] }}"),
    )
}

/// A message from `from` to bob@relay.test; `id` is its Subject and Message-ID local part.
fn message(from: &str, id: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "{extra_headers}From: Alice <{from}>\r\nTo: bob@relay.test\r\nSubject: {id}\r\n\
         Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{id}@e2e.test>\r\n\r\n\
         Hello Bob,\r\n\r\nthis is {id}.\r\n"
    )
    .into_bytes()
}

/// One SMTP transaction to bob@relay.test; the reply to the end of data.
fn send(relay: &Relay, helo: &str, mail_from: &str, msg: &[u8]) -> (u16, Vec<String>) {
    let mut c = relay.client();
    assert_eq!(c.cmd(&format!("EHLO {helo}")).0, 250);
    assert_eq!(
        c.cmd(&format!("MAIL FROM:<{mail_from}>")).0,
        250,
        "MAIL FROM:<{mail_from}>"
    );
    assert_eq!(c.cmd("RCPT TO:<bob@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    assert!(msg.ends_with(b"\r\n"));
    let mut data = Vec::with_capacity(msg.len() + 8);
    for line in msg.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    data.extend_from_slice(b".\r\n");
    c.send(&data);
    let reply = c.reply();
    c.cmd("QUIT");
    reply
}

/// Like [`send`], expecting `250`.
fn accepted(relay: &Relay, helo: &str, mail_from: &str, msg: &[u8]) -> String {
    let (code, lines) = send(relay, helo, mail_from, msg);
    assert_eq!(code, 250, "{lines:?}");
    queue_id(&lines)
}

/// Runs the dkimpy script; its stdout.
fn dkimpy(dir: &Path, command: &str, msg: &[u8], args: &[&str]) -> String {
    let path = dir.join(format!("msg-{}.eml", rand_suffix()));
    std::fs::write(&path, msg).unwrap();
    let mut all = vec![command, path.to_str().unwrap()];
    all.extend_from_slice(args);
    python(DKIMPY, &all)
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// `msg` with a DKIM-Signature by dkimpy.
fn dkimpy_sign(dir: &Path, msg: &[u8], key: &Key, selector: &str, domain: &str) -> Vec<u8> {
    let alg = if key.k == "rsa" {
        "rsa-sha256"
    } else {
        "ed25519-sha256"
    };
    let key_file = key.dkimpy.to_str().unwrap();
    dkimpy(dir, "sign", msg, &[key_file, selector, domain, alg]).into_bytes()
}

/// dkimpy's verdict on each DKIM-Signature of `msg`, top first, keys from dnsmasq at `ns`.
fn dkimpy_verify(dir: &Path, msg: &[u8], ns: SocketAddr) -> Vec<String> {
    let port = ns.port().to_string();
    dkimpy(dir, "verify", msg, &[&port])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Every stored message by Subject (the relay must be stopped).
fn by_subject(spool: Vec<(Envelope, Vec<u8>)>) -> Vec<(String, Envelope, String)> {
    spool
        .into_iter()
        .map(|(env, bytes)| {
            let text = String::from_utf8(bytes).unwrap();
            let subject = header_values(&text, "Subject")
                .first()
                .cloned()
                .unwrap_or_default();
            (subject, env, text)
        })
        .collect()
}

fn stored<'a>(all: &'a [(String, Envelope, String)], subject: &str) -> (&'a Envelope, &'a str) {
    let found: Vec<_> = all.iter().filter(|(s, _, _)| s == subject).collect();
    assert_eq!(
        found.len(),
        1,
        "one stored message with Subject {subject:?}"
    );
    (&found[0].1, &found[0].2)
}

// ---------------------------------------------------------------- reading headers

/// The header fields in order, unfolded (CRLF before white space removed): (name, value).
fn headers(msg: &str) -> Vec<(String, String)> {
    let head = msg.split("\r\n\r\n").next().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            out.last_mut().expect("continuation first").1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("{line:?}"));
            out.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    out
}

fn header_values(msg: &str, name: &str) -> Vec<String> {
    headers(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// One `method=result` of an Authentication-Results header, with its properties.
#[derive(Debug)]
struct Method {
    method: String,
    result: String,
    props: Vec<(String, String)>,
}

impl Method {
    fn prop(&self, name: &str) -> Option<&str> {
        self.props
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An Authentication-Results value parsed leniently (RFC 8601): comments dropped, the
/// authserv-id (and an optional version), then `method=result ptype.property=value ...`
/// statements separated by `;`.
fn parse_results(value: &str) -> (String, Vec<Method>) {
    let mut text = String::new();
    let mut depth = 0usize;
    for c in value.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => text.push(c),
            _ => {}
        }
    }
    let mut parts = text.split(';');
    let id = parts
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let methods = parts
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let mut words = p.split_whitespace();
            let first = words.next().unwrap();
            let (method, result) = first.split_once('=').unwrap_or((first, ""));
            Method {
                method: method.to_ascii_lowercase(),
                result: result.to_ascii_lowercase(),
                props: words
                    .filter_map(|w| w.split_once('='))
                    .map(|(n, v)| (n.to_owned(), v.trim_matches('"').to_owned()))
                    .collect(),
            }
        })
        .collect();
    (id, methods)
}

/// Our Authentication-Results: there is exactly one, right below our Received header.
fn our_results(msg: &str) -> Vec<Method> {
    let all = headers(msg);
    let ours: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (n, v))| {
            n.eq_ignore_ascii_case("Authentication-Results")
                && parse_results(v).0.eq_ignore_ascii_case(AUTHSERV_ID)
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one Authentication-Results of ours in:\n{msg}"
    );
    let received = all
        .iter()
        .position(|(n, v)| n.eq_ignore_ascii_case("Received") && v.contains(AUTHSERV_ID))
        .unwrap_or_else(|| panic!("our Received header in:\n{msg}"));
    assert_eq!(
        ours[0],
        received + 1,
        "A-R right below our Received:\n{msg}"
    );
    parse_results(&all[ours[0]].1).1
}

/// The result of the one statement of `method` whose property `prop` is set (`None`: any).
fn result_of(methods: &[Method], method: &str, prop: Option<&str>) -> String {
    let found: Vec<&Method> = methods
        .iter()
        .filter(|m| m.method == method && prop.is_none_or(|p| m.prop(p).is_some()))
        .collect();
    assert_eq!(found.len(), 1, "one {method} ({prop:?}) in {methods:?}");
    found[0].result.clone()
}

/// The SPF result for the MAIL FROM identity, checking the identity names `domain`.
fn spf_mailfrom(methods: &[Method], domain: &str) -> String {
    let m = methods
        .iter()
        .find(|m| m.method == "spf" && m.prop("smtp.mailfrom").is_some())
        .unwrap_or_else(|| panic!("no spf smtp.mailfrom in {methods:?}"));
    let identity = m.prop("smtp.mailfrom").unwrap();
    assert!(
        identity.eq_ignore_ascii_case(domain)
            || identity
                .to_ascii_lowercase()
                .ends_with(&format!("@{domain}")),
        "smtp.mailfrom={identity}, expected {domain}"
    );
    m.result.clone()
}

/// The signing domain a DKIM statement names: `header.d`, or the domain of `header.i`
/// (mail-auth writes `header.i` instead when the signature has an `i=` tag, as dkimpy's do).
fn dkim_domain(m: &Method) -> Option<String> {
    m.prop("header.d")
        .map(str::to_owned)
        .or_else(|| {
            m.prop("header.i")
                .map(|i| i.rsplit('@').next().unwrap_or(i).to_owned())
        })
        .map(|d| d.to_ascii_lowercase())
}

/// The DKIM statement for signing domain `d`: its result (one statement expected).
fn dkim_for(methods: &[Method], d: &str) -> String {
    let found: Vec<&Method> = methods
        .iter()
        .filter(|m| m.method == "dkim" && dkim_domain(m).as_deref() == Some(d))
        .collect();
    assert_eq!(found.len(), 1, "one dkim header.d={d} in {methods:?}");
    found[0].result.clone()
}

/// The items of our X-Stamp header (header-stamp), after its value `e2e`.
fn stamp_items(msg: &str) -> Vec<(String, String)> {
    let stamps = header_values(msg, "X-Stamp");
    assert_eq!(stamps.len(), 1, "one X-Stamp in:\n{msg}");
    let mut parts = stamps[0].split("; ");
    assert_eq!(parts.next(), Some("e2e"));
    parts
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn stamp_item(msg: &str, item: &str) -> String {
    stamp_items(msg)
        .into_iter()
        .find(|(k, _)| k == item)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {item} in the stamp of:\n{msg}"))
}

// ---------------------------------------------------------------- SPF

#[test]
fn spf_results_reach_the_header_and_plugins() {
    let cases = [
        ("pass.test", Some("v=spf1 ip4:127.0.0.1 -all"), "pass"),
        ("fail.test", Some("v=spf1 ip4:192.0.2.1 -all"), "fail"),
        (
            "softfail.test",
            Some("v=spf1 ip4:192.0.2.1 ~all"),
            "softfail",
        ),
        ("neutral.test", Some("v=spf1 ?all"), "neutral"),
        ("none.test", None, "none"),
        // A mechanism that does not parse: `ip4` without its address. (Not an unknown
        // mechanism such as `foo:x`, nor `ip4:127.0.0.999`, which RFC 7208 also makes
        // permerrors: mail-auth 0.13 skips the first like a modifier and reads the second
        // as some address.)
        ("permerror.test", Some("v=spf1 ip4 -all"), "permerror"),
    ];
    let mut records: Vec<String> = cases
        .iter()
        .filter_map(|(d, r, _)| r.map(|r| txt(d, r)))
        .collect();
    // The HELO identity is checked on its own: fail here, whatever MAIL FROM gives.
    records.push(txt("client.test", "v=spf1 -all"));
    let (_dns, ns) = dns(&records);
    let mut relay = start(ns, "", "", &stamp("\"spf\""));
    for (domain, _, _) in &cases {
        accepted(
            &relay,
            "client.test",
            &format!("alice@{domain}"),
            &message(&format!("alice@{domain}"), domain, ""),
        );
    }
    // The null sender: SPF checks postmaster@<HELO> (RFC 7208 §2.4).
    accepted(
        &relay,
        "client.test",
        "",
        &message("mailer-daemon@client.test", "null-sender", ""),
    );
    let all = by_subject(relay.stop_and_read_spool());
    for (domain, _, expected) in &cases {
        let (_, msg) = stored(&all, domain);
        let results = our_results(msg);
        assert_eq!(
            spf_mailfrom(&results, domain),
            *expected,
            "{domain}:\n{msg}"
        );
        assert_eq!(
            result_of(&results, "spf", Some("smtp.helo")),
            "fail",
            "{msg}"
        );
        assert_eq!(
            stamp_item(msg, "spf"),
            *expected,
            "plugin view for {domain}:\n{msg}"
        );
    }
    let (_, msg) = stored(&all, "null-sender");
    assert_eq!(
        result_of(&our_results(msg), "spf", Some("smtp.mailfrom")),
        "fail",
        "{msg}"
    );
    assert_eq!(stamp_item(msg, "spf"), "fail", "{msg}");
}

// ---------------------------------------------------------------- DKIM verification

#[test]
fn dkimpy_signatures_verify_and_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = Key::rsa(dir.path(), "rsa");
    let ed = Key::ed25519(dir.path(), "ed");
    let (_dns, ns) = dns(&[
        rsa.dns("rsa", "sender.test"),
        ed.dns("ed", "sender.test"),
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
    ]);
    let mut relay = start(ns, "", "", &stamp("\"dkim\", \"dmarc\""));
    let from = "alice@sender.test";
    let signed_rsa = dkimpy_sign(
        dir.path(),
        &message(from, "rsa-signed", ""),
        &rsa,
        "rsa",
        "sender.test",
    );
    let signed_ed = dkimpy_sign(
        dir.path(),
        &message(from, "ed-signed", ""),
        &ed,
        "ed",
        "sender.test",
    );
    let tampered_body = String::from_utf8(dkimpy_sign(
        dir.path(),
        &message(from, "body-tampered", ""),
        &rsa,
        "rsa",
        "sender.test",
    ))
    .unwrap()
    .replace("Hello Bob", "Hello Eve");
    let tampered_header = String::from_utf8(dkimpy_sign(
        dir.path(),
        &message(from, "header-tampered", "X-Pad: 1\r\n"),
        &rsa,
        "rsa",
        "sender.test",
    ))
    .unwrap()
    .replace("To: bob@relay.test", "To: eve@relay.test");
    // The signed messages are good in dkimpy's own eyes.
    assert_eq!(dkimpy_verify(dir.path(), &signed_rsa, ns), ["pass"]);
    assert_eq!(dkimpy_verify(dir.path(), &signed_ed, ns), ["pass"]);
    for msg in [
        &signed_rsa,
        &signed_ed,
        tampered_body.as_bytes(),
        tampered_header.as_bytes(),
    ] {
        accepted(&relay, "client.test", from, msg);
    }
    let all = by_subject(relay.stop_and_read_spool());
    for (subject, selector, expected) in [
        ("rsa-signed", "rsa", "pass"),
        ("ed-signed", "ed", "pass"),
        ("body-tampered", "rsa", "fail"),
        ("header-tampered", "rsa", "fail"),
    ] {
        let (_, msg) = stored(&all, subject);
        let results = our_results(msg);
        assert_eq!(
            dkim_for(&results, "sender.test"),
            expected,
            "{subject}:\n{msg}"
        );
        let dkim = results.iter().find(|m| m.method == "dkim").unwrap();
        assert_eq!(dkim.prop("header.s"), Some(selector), "{msg}");
        assert_eq!(
            stamp_item(msg, "dkim"),
            format!("{expected}(sender.test)"),
            "{msg}"
        );
        // SPF passes and is aligned, so DMARC passes either way.
        assert_eq!(result_of(&results, "dmarc", None), "pass", "{msg}");
        assert_eq!(stamp_item(msg, "dmarc"), "pass", "{msg}");
    }
}

// ---------------------------------------------------------------- DKIM signing

#[test]
fn mail_we_sign_verifies_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = Key::rsa(dir.path(), "rsa");
    let ed = Key::ed25519(dir.path(), "ed");
    let (_dns, ns) = dns(&[
        rsa.dns("r2048", "rsa-signer.test"),
        ed.dns("ed1", "ed-signer.test"),
    ]);
    let signing = format!(
        "[[dkim_sign]]\ndomain = \"rsa-signer.test\"\nselector = \"r2048\"\nkey_file = \"{}\"\n\
         [[dkim_sign]]\ndomain = \"ed-signer.test\"\nselector = \"ed1\"\nkey_file = \"{}\"\n",
        rsa.pem.display(),
        ed.pem.display()
    );
    let mut relay = start(ns, "relay_networks = [\"127.0.0.1/32\"]", "", &signing);
    let forged = format!("Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.test\r\n");
    accepted(
        &relay,
        "client.test",
        "alice@rsa-signer.test",
        &message("alice@rsa-signer.test", "rsa", ""),
    );
    accepted(
        &relay,
        "client.test",
        "alice@ed-signer.test",
        &message("alice@ed-signer.test", "ed", &forged),
    );
    accepted(
        &relay,
        "client.test",
        "alice@other.test",
        &message("alice@other.test", "unsigned", ""),
    );
    let all = by_subject(relay.stop_and_read_spool());
    for (subject, d, s, a) in [
        ("rsa", "rsa-signer.test", "r2048", "rsa-sha256"),
        ("ed", "ed-signer.test", "ed1", "ed25519-sha256"),
    ] {
        let (_, msg) = stored(&all, subject);
        let fields = headers(msg);
        assert!(
            fields[0].0.eq_ignore_ascii_case("DKIM-Signature"),
            "signature on top:\n{msg}"
        );
        assert_eq!(header_values(msg, "DKIM-Signature").len(), 1, "{msg}");
        let tags: Vec<(String, String)> = fields[0]
            .1
            .split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_owned(),
                    v.split_whitespace().collect::<String>(),
                )
            })
            .collect();
        for (tag, want) in [("d", d), ("s", s), ("a", a)] {
            assert!(
                tags.contains(&(tag.to_owned(), want.to_owned())),
                "{tag}={want} in {:?}",
                fields[0].1
            );
        }
        assert_eq!(
            dkimpy_verify(dir.path(), msg.as_bytes(), ns),
            ["pass"],
            "dkimpy on:\n{msg}"
        );
        // The check can fail: the same message with one body byte changed does not verify.
        let tampered = msg.replace("Hello Bob", "Hello Eve");
        assert_eq!(dkimpy_verify(dir.path(), tampered.as_bytes(), ns), ["fail"]);
    }
    let (_, msg) = stored(&all, "ed");
    assert!(
        !msg.contains("bank.test"),
        "forged results removed for a trusted client too:\n{msg}"
    );
    let (_, msg) = stored(&all, "unsigned");
    assert!(
        header_values(msg, "DKIM-Signature").is_empty(),
        "no key for other.test:\n{msg}"
    );
}

// ---------------------------------------------------------------- DMARC

/// Keys and records for the DMARC tests: `other.test` signs validly and passes SPF, but is
/// aligned with none of the From domains below; `aligned.test` signs for itself.
fn dmarc_dns(dir: &Path) -> ((Proc, SocketAddr), Key) {
    let key = Key::rsa(dir, "rsa");
    let mut records = vec![
        key.dns("s1", "other.test"),
        key.dns("s1", "aligned.test"),
        txt("other.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("spf-aligned.test", "v=spf1 ip4:127.0.0.1 -all"),
    ];
    for (domain, policy) in [
        ("aligned", "reject"),
        ("spf-aligned", "reject"),
        ("unaligned", "reject"),
        ("reject", "reject"),
        ("quarantine", "quarantine"),
        ("monitor", "none"),
    ] {
        records.push(txt(
            &format!("_dmarc.{domain}.test"),
            &format!("v=DMARC1; p={policy}"),
        ));
    }
    (dns(&records), key)
}

/// A message from `alice@<from_domain>` signed by `signer` with selector s1.
fn signed(dir: &Path, key: &Key, from_domain: &str, signer: &str, id: &str) -> Vec<u8> {
    dkimpy_sign(
        dir,
        &message(&format!("alice@{from_domain}"), id, ""),
        key,
        "s1",
        signer,
    )
}

#[test]
fn dmarc_passes_with_aligned_dkim_or_spf_and_fails_unaligned() {
    let dir = tempfile::tempdir().unwrap();
    let ((_dns, ns), key) = dmarc_dns(dir.path());
    let mut relay = start(ns, "", "", &stamp("\"spf\", \"dkim\", \"dmarc\""));
    // Aligned DKIM; MAIL FROM (SPF pass) is another domain.
    let msg = signed(
        dir.path(),
        &key,
        "aligned.test",
        "aligned.test",
        "dkim-aligned",
    );
    accepted(&relay, "client.test", "bounce@other.test", &msg);
    // Aligned SPF, no signature.
    let msg = message("alice@spf-aligned.test", "spf-aligned", "");
    accepted(&relay, "client.test", "alice@spf-aligned.test", &msg);
    // Valid DKIM and SPF pass, both for other.test: nothing aligned with unaligned.test.
    let msg = signed(
        dir.path(),
        &key,
        "unaligned.test",
        "other.test",
        "unaligned",
    );
    accepted(&relay, "client.test", "bounce@other.test", &msg);
    let all = by_subject(relay.stop_and_read_spool());

    let (env, msg) = stored(&all, "dkim-aligned");
    let r = our_results(msg);
    assert_eq!(dkim_for(&r, "aligned.test"), "pass", "{msg}");
    assert_eq!(spf_mailfrom(&r, "other.test"), "pass", "{msg}");
    assert_eq!(result_of(&r, "dmarc", None), "pass", "{msg}");
    let dmarc = r.iter().find(|m| m.method == "dmarc").unwrap();
    assert_eq!(dmarc.prop("header.from"), Some("aligned.test"), "{msg}");
    assert_eq!(
        stamp_items(msg),
        [
            ("spf".into(), "pass".into()),
            ("dkim".into(), "pass(aligned.test)".into()),
            ("dmarc".into(), "pass".into())
        ]
    );
    assert!(env.quarantine.is_none());

    let (_, msg) = stored(&all, "spf-aligned");
    let r = our_results(msg);
    assert_eq!(result_of(&r, "dkim", None), "none", "{msg}");
    assert_eq!(spf_mailfrom(&r, "spf-aligned.test"), "pass", "{msg}");
    assert_eq!(result_of(&r, "dmarc", None), "pass", "{msg}");
    assert_eq!(
        stamp_items(msg),
        [
            ("spf".into(), "pass".into()),
            ("dkim".into(), "none".into()),
            ("dmarc".into(), "pass".into())
        ]
    );

    // p=reject, but enforcement is off: accepted, marked, not quarantined.
    let (env, msg) = stored(&all, "unaligned");
    let r = our_results(msg);
    assert_eq!(dkim_for(&r, "other.test"), "pass", "{msg}");
    assert_eq!(spf_mailfrom(&r, "other.test"), "pass", "{msg}");
    assert_eq!(result_of(&r, "dmarc", None), "fail", "{msg}");
    let dmarc = r.iter().find(|m| m.method == "dmarc").unwrap();
    assert_eq!(dmarc.prop("header.from"), Some("unaligned.test"), "{msg}");
    assert_eq!(
        stamp_items(msg),
        [
            ("spf".into(), "pass".into()),
            ("dkim".into(), "pass(other.test)".into()),
            ("dmarc".into(), "fail".into())
        ]
    );
    assert!(env.quarantine.is_none(), "{:?}", env.quarantine);
}

#[test]
fn dmarc_enforcement_rejects_and_quarantines() {
    let dir = tempfile::tempdir().unwrap();
    let ((_dns, ns), key) = dmarc_dns(dir.path());
    let mut relay = start(ns, "", "dmarc_enforce = true", "");
    let (code, lines) = send(
        &relay,
        "client.test",
        "bounce@other.test",
        &signed(dir.path(), &key, "reject.test", "other.test", "rejected"),
    );
    assert_eq!(code, 550, "{lines:?}");
    assert!(lines[0].starts_with("5.7.1"), "{lines:?}");
    let quarantined = accepted(
        &relay,
        "client.test",
        "bounce@other.test",
        &signed(
            dir.path(),
            &key,
            "quarantine.test",
            "other.test",
            "quarantined",
        ),
    );
    let monitored = accepted(
        &relay,
        "client.test",
        "bounce@other.test",
        &signed(dir.path(), &key, "monitor.test", "other.test", "monitored"),
    );
    // A p=reject domain whose mail is aligned still goes through.
    let passing = accepted(
        &relay,
        "client.test",
        "bounce@other.test",
        &signed(dir.path(), &key, "aligned.test", "aligned.test", "aligned"),
    );
    let all = by_subject(relay.stop_and_read_spool());
    assert_eq!(all.len(), 3, "nothing stored for the rejected message");
    assert!(all.iter().all(|(s, _, _)| s != "rejected"));
    let (env, msg) = stored(&all, "quarantined");
    assert!(env.quarantine.is_some(), "p=quarantine quarantines");
    assert_eq!(result_of(&our_results(msg), "dmarc", None), "fail");
    for subject in ["monitored", "aligned"] {
        let (env, _) = stored(&all, subject);
        assert!(env.quarantine.is_none(), "{subject}: {:?}", env.quarantine);
    }
    // `postrider queue list` on the stopped relay's spool says so too.
    let list = list_json(&relay.dir);
    let state = |id: &str| {
        list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["state"].as_str().unwrap_or("").to_owned())
            .unwrap_or_else(|| panic!("{id} not listed: {list}"))
    };
    assert_eq!(state(&quarantined), "quarantined", "{list}");
    assert_ne!(state(&monitored), "quarantined", "{list}");
    assert_ne!(state(&passing), "quarantined", "{list}");
}

#[test]
fn quarantined_mail_waits_for_release_then_goes_out() {
    let dir = tempfile::tempdir().unwrap();
    let ((_dns, ns), key) = dmarc_dns(dir.path());
    let port = free_port_on(&["127.0.0.7"]);
    let receiver = Receiver::start(
        format!("127.0.0.7:{port}").parse().unwrap(),
        Script(vec!["250 2.0.0 Ok"]),
    );
    let relay = start(
        ns,
        "",
        "dmarc_enforce = true",
        &format!(
            "[delivery]\nretry_intervals = [1]\n\
             [[route]]\ndomains = [\"relay.test\"]\nrelay = \"127.0.0.7:{port}\"\ntls = \"none\"\n"
        ),
    );
    let quarantined = accepted(
        &relay,
        "client.test",
        "bounce@other.test",
        &signed(
            dir.path(),
            &key,
            "quarantine.test",
            "other.test",
            "held-back",
        ),
    );
    accepted(
        &relay,
        "client.test",
        "bounce@other.test",
        &signed(
            dir.path(),
            &key,
            "aligned.test",
            "aligned.test",
            "let-through",
        ),
    );
    wait_for("the aligned message", Duration::from_secs(20), || {
        !receiver.accepted.lock().unwrap().is_empty()
    });
    // A few retry intervals later the quarantined one is still waiting.
    std::thread::sleep(Duration::from_secs(3));
    let delivered = receiver.accepted.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert!(delivered[0].2.contains("Subject: let-through"));
    let list = list_json(&relay.dir);
    assert_eq!(list["entries"][0]["id"], quarantined.as_str(), "{list}");
    assert_eq!(list["entries"][0]["state"], "quarantined", "{list}");

    let (ok, out) = queue(&relay.dir, &["release", &quarantined]);
    assert!(ok, "{out}");
    wait_for("the released message", Duration::from_secs(20), || {
        receiver.accepted.lock().unwrap().len() == 2
    });
    assert!(
        receiver.accepted.lock().unwrap()[1]
            .2
            .contains("Subject: held-back")
    );
    wait_for("an empty queue", Duration::from_secs(10), || {
        relay.queued() == 0
    });
}

// ---------------------------------------------------------------- forged results

#[test]
fn forged_results_claiming_our_authserv_id_are_removed() {
    let (_dns, ns) = dns(&[txt("sender.test", "v=spf1 ip4:127.0.0.1 -all")]);
    let mut relay = start(ns, "", "", "");
    let forged = format!(
        "Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.test\r\n\
         Authentication-Results: MX.Relay.Test;\r\n\tspf=pass smtp.mailfrom=ceo@bank.test\r\n\
         Authentication-Results: upstream.test; spf=pass smtp.mailfrom=alice@sender.test\r\n"
    );
    accepted(
        &relay,
        "client.test",
        "alice@sender.test",
        &message("alice@sender.test", "forged", &forged),
    );
    let all = by_subject(relay.stop_and_read_spool());
    let (_, msg) = stored(&all, "forged");
    assert!(!msg.contains("bank.test"), "forged results kept:\n{msg}");
    // Ours (and only ours) remains for our authserv-id, with what we found.
    let r = our_results(msg);
    assert_eq!(spf_mailfrom(&r, "sender.test"), "pass");
    assert_eq!(result_of(&r, "dkim", None), "none", "{msg}");
    // Another authserv-id's results are not ours to judge: kept as they were.
    let kept = header_values(msg, "Authentication-Results");
    assert!(
        kept.contains(&"upstream.test; spf=pass smtp.mailfrom=alice@sender.test".to_owned()),
        "{msg}"
    );
    assert_eq!(kept.len(), 2, "{msg}");
}

// ---------------------------------------------------------------- ARC

#[test]
fn arc_chains_verify_and_our_seal_is_valid_for_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Key::rsa(dir.path(), "upstream");
    let ours = Key::rsa(dir.path(), "ours");
    let (_dns, ns) = dns(&[
        upstream.dns("arc", "upstream.test"),
        ours.dns("arc", "relay.test"),
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
    ]);
    let seal = format!(
        "arc_seal = {{ domain = \"relay.test\", selector = \"arc\", key_file = \"{}\" }}",
        ours.pem.display()
    );
    let mut relay = start(ns, "", &seal, &stamp("\"arc\""));
    let from = "alice@sender.test";
    // upstream.test verified the message and sealed it (i=1) with dkimpy.
    let upstream_seal = |id: &str| -> Vec<u8> {
        let msg = message(
            from,
            id,
            "Authentication-Results: upstream.test; spf=pass smtp.mailfrom=alice@sender.test\r\n",
        );
        let key = upstream.dkimpy.to_str().unwrap();
        dkimpy(
            dir.path(),
            "arc-sign",
            &msg,
            &[key, "arc", "upstream.test", "upstream.test"],
        )
        .into_bytes()
    };
    let sealed = upstream_seal("sealed");
    let port = ns.port().to_string();
    let cv = dkimpy(dir.path(), "arc-verify", &sealed, &[&port]);
    assert!(cv.starts_with("pass 1 "), "dkimpy on its own seal: {cv}");
    let broken = String::from_utf8(upstream_seal("broken"))
        .unwrap()
        .replace("Hello Bob", "Hello Eve");
    accepted(&relay, "client.test", from, &sealed);
    accepted(&relay, "client.test", from, broken.as_bytes());
    accepted(&relay, "client.test", from, &message(from, "plain", ""));
    let all = by_subject(relay.stop_and_read_spool());

    // An intact chain verifies; we extend it with set i=2.
    let (_, msg) = stored(&all, "sealed");
    assert_eq!(result_of(&our_results(msg), "arc", None), "pass", "{msg}");
    assert_eq!(stamp_item(msg, "arc"), "pass", "{msg}");
    assert_arc_set_on_top(msg, 2, "pass");
    let cv = dkimpy(dir.path(), "arc-verify", msg.as_bytes(), &[&port]);
    assert!(
        cv.starts_with("pass 2 "),
        "dkimpy on our seal over upstream's: {cv}\n{msg}"
    );

    // A chain whose message was changed after sealing fails.
    let (_, msg) = stored(&all, "broken");
    assert_eq!(result_of(&our_results(msg), "arc", None), "fail", "{msg}");
    assert_eq!(stamp_item(msg, "arc"), "fail", "{msg}");

    // No chain yet: arc=none, and we start one (i=1, cv=none).
    let (_, msg) = stored(&all, "plain");
    let r = our_results(msg);
    assert!(
        r.iter().all(|m| m.method != "arc" || m.result == "none"),
        "{msg}"
    );
    assert_eq!(stamp_item(msg, "arc"), "none", "{msg}");
    assert_arc_set_on_top(msg, 1, "none");
    let cv = dkimpy(dir.path(), "arc-verify", msg.as_bytes(), &[&port]);
    assert!(cv.starts_with("pass 1 "), "dkimpy on our seal: {cv}\n{msg}");
    // The check can fail: our set does not cover a changed body.
    let changed = msg.replace("Hello Bob", "Hello Eve");
    let cv = dkimpy(dir.path(), "arc-verify", changed.as_bytes(), &[&port]);
    assert!(cv.starts_with("fail"), "dkimpy on a changed message: {cv}");
}

/// The top three headers are our ARC set with instance `i` (ARC-Seal with `cv`, signed by
/// relay.test), and our ARC-Authentication-Results carries our authserv-id.
fn assert_arc_set_on_top(msg: &str, i: u32, cv: &str) {
    let fields = headers(msg);
    let mut names: Vec<String> = fields[..3]
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "arc-authentication-results",
            "arc-message-signature",
            "arc-seal"
        ],
        "ARC set on top:\n{msg}"
    );
    let tags = |v: &str| -> Vec<(String, String)> {
        v.split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.split_whitespace().collect(),
                )
            })
            .collect()
    };
    for (name, value) in &fields[..3] {
        let t = tags(value);
        assert!(
            t.contains(&("i".into(), i.to_string())),
            "{name}: i={i} in {value}"
        );
        match name.to_ascii_lowercase().as_str() {
            "arc-seal" => {
                assert!(t.contains(&("cv".into(), cv.into())), "cv={cv} in {value}");
                assert!(t.contains(&("d".into(), "relay.test".into())), "{value}");
            }
            "arc-message-signature" => {
                assert!(t.contains(&("d".into(), "relay.test".into())), "{value}");
            }
            _ => assert!(value.to_ascii_lowercase().contains(AUTHSERV_ID), "{value}"),
        }
    }
}

// ---------------------------------------------------------------- a resolver that never answers

#[test]
fn a_silent_resolver_gives_temperror_within_the_timeout() {
    // A "DNS server" that reads every query and never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ns = silent.local_addr().unwrap();
    let mut relay = Relay::builder(&config_dns(
        &ns.to_string(),
        &format!(
            "[relay]\nlocal_domains = [\"relay.test\"]\n\
             [authentication]\nauthserv_id = \"{AUTHSERV_ID}\"\ntimeout_ms = 300\n{}",
            stamp("\"spf\", \"dmarc\"")
        ),
    ))
    .start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    let started = std::time::Instant::now();
    assert_eq!(c.cmd("MAIL FROM:<alice@slow.test>").0, 250);
    let waited = started.elapsed();
    // Both SPF checks run together, each bounded by timeout_ms: one timeout, not two.
    assert!(
        waited >= std::time::Duration::from_millis(250)
            && waited < std::time::Duration::from_secs(3),
        "MAIL FROM took {waited:?}"
    );
    assert_eq!(c.cmd("RCPT TO:<bob@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(&message("alice@slow.test", "slow", ""));
    c.send(b".\r\n");
    assert_eq!(c.reply().0, 250);
    c.cmd("QUIT");
    let all = by_subject(relay.stop_and_read_spool());
    let (_, msg) = stored(&all, "slow");
    let results = our_results(msg);
    assert_eq!(spf_mailfrom(&results, "slow.test"), "temperror", "{msg}");
    assert_eq!(
        result_of(&results, "spf", Some("smtp.helo")),
        "temperror",
        "{msg}"
    );
    assert_eq!(stamp_item(msg, "spf"), "temperror", "{msg}");
    drop(silent);
}
