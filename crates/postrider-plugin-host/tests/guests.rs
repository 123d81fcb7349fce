//! Real guests (the example plugins and a misbehaving fixture) through the real host: the
//! chain semantics, and proof that traps, deadlines, memory caps and invalid answers are
//! contained and answered by the failure policy.
#![allow(clippy::unwrap_used)] // helpers of tests fail loudly on purpose

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_kv::{ManualClock, MemoryKv};
use postrider_plugin_host::{
    CallFailure, ConnInfo, Decision, EngineOptions, EnvelopeInfo, FailurePolicy, HeaderEdit,
    HostError, InstanceSource, LoadedPlugin, MessageView, MilterSpec, Pipeline, PluginEngine,
    PluginSpec, RcptOutcome, RouteDecision, Services, Stage, StaticDns, TlsPolicy,
};
use postrider_testkit::plugin_wasm;

struct Env {
    engine: Arc<PluginEngine>,
    services: Services,
    clock: Arc<ManualClock>,
    kv: Arc<MemoryKv>,
}

fn env_with_dns(dns: StaticDns) -> Env {
    env_sized(64, dns)
}

fn env_sized(max_instances: u32, dns: StaticDns) -> Env {
    let engine = Arc::new(
        PluginEngine::new(&EngineOptions {
            max_instances,
            max_memory_bytes: 64 << 20,
        })
        .unwrap(),
    );
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let kv = Arc::new(MemoryKv::new(clock.clone()));
    let services = Services {
        kv: kv.clone(),
        dns: Arc::new(dns),
        clock: clock.clone(),
        kv_timeout: Duration::from_millis(500),
        dns_timeout: Duration::from_millis(500),
        net_observer: None,
    };
    Env {
        engine,
        services,
        clock,
        kv,
    }
}

fn env() -> Env {
    env_with_dns(StaticDns::default())
}

fn spec(name: &str, plugin: &str, config: &str) -> PluginSpec {
    PluginSpec {
        name: name.to_owned(),
        path: plugin_wasm(plugin),
        config_json: config.to_owned(),
        failure_policy: FailurePolicy::Tempfail,
        timeout: Duration::from_millis(500),
        memory_bytes: 16 << 20,
        reuse: 1,
        pool_idle: 8,
        log_level: None,
        network: Default::default(),
    }
}

async fn pipeline(env: &Env, specs: Vec<PluginSpec>) -> Arc<Pipeline> {
    let mut plugins = Vec::new();
    for s in specs {
        plugins.push(Arc::new(
            LoadedPlugin::load(&env.engine, s, Some(&cache_dir()), &env.services)
                .await
                .unwrap(),
        ));
    }
    Arc::new(Pipeline::new(
        Arc::clone(&env.engine),
        plugins,
        env.services.clone(),
    ))
}

/// Compiled components are cached across tests (debug-built Cranelift compiles slowly).
fn cache_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache")
}

fn conn(ip: &str) -> ConnInfo {
    ConnInfo {
        id: "c1".into(),
        client_ip: ip.parse::<IpAddr>().unwrap(),
        client_port: 40000,
        client_name: None,
        listener: "smtp".into(),
        server_ip: "127.0.0.1".parse().unwrap(),
        server_port: 25,
        helo: Some("client.test".into()),
        tls: None,
        auth_user: None,
    }
}

fn envelope(from: &str) -> EnvelopeInfo {
    EnvelopeInfo {
        mail_from: from.into(),
        ..EnvelopeInfo::default()
    }
}

fn code(d: &Decision) -> (u16, String) {
    match d {
        Decision::Reject(r) | Decision::Tempfail(r) | Decision::Disconnect(r) => (
            r.code(),
            r.enhanced().map(|e| e.to_string()).unwrap_or_default(),
        ),
        Decision::Continue => (0, "continue".into()),
        Decision::Accept => (0, "accept".into()),
    }
}

#[tokio::test]
async fn rcpt_allowlist_accepts_known_and_refuses_unknown() {
    let env = env();
    let p = pipeline(
        &env,
        vec![spec(
            "allow",
            "rcpt-allowlist",
            r#"{"domains": {"relay.test": ["alice"]}}"#,
        )],
    )
    .await;
    let mut chain = p.session(false);
    let c = conn("192.0.2.1");
    let e = envelope("s@client.test");
    assert_eq!(
        chain.on_rcpt(&c, &e, "alice@relay.test").await.decision,
        Decision::Continue
    );
    assert_eq!(
        chain
            .on_rcpt(&c, &e, "Alice+news@RELAY.test")
            .await
            .decision,
        Decision::Continue
    );
    assert_eq!(
        code(&chain.on_rcpt(&c, &e, "mallory@relay.test").await.decision),
        (550, "5.1.1".into())
    );
    assert_eq!(
        chain.on_rcpt(&c, &e, "x@other.test").await.decision,
        Decision::Continue
    );
}

#[tokio::test]
async fn milters_take_their_place_and_are_reached_only_when_the_chain_gets_to_them() {
    let env = env();
    let allow = spec(
        "allow",
        "rcpt-allowlist",
        r#"{"domains": {"relay.test": ["alice"]}}"#,
    );
    let stamp = spec("stamp", "header-stamp", "{}");
    // A "milter" that takes connections and never answers its negotiation.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let milter = |name: &str, after: Option<&str>| MilterSpec {
        name: name.to_owned(),
        address: postrider_milter::Address::Inet {
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        },
        stages: vec![Stage::Rcpt],
        after: after.map(str::to_owned),
        failure_policy: FailurePolicy::Tempfail,
        connect_timeout: Duration::from_millis(200),
        command_timeout: Duration::from_millis(200),
        content_timeout: Duration::from_millis(200),
        max_body: 1 << 20,
        hostname: "mx.relay.test".into(),
    };
    let p = pipeline(&env, vec![allow, stamp]).await;
    let Ok(p) = Arc::try_unwrap(p) else {
        panic!("the pipeline is shared")
    };
    let p = Arc::new(p.with_milters(vec![milter("m1", Some("allow")), milter("m2", None)]));
    assert_eq!(p.order(), ["allow", "m1", "stamp", "m2"]);
    assert!(p.wants(Stage::Rcpt) && !p.wants(Stage::Route));
    let mut chain = p.session(false);
    let (c, e) = (conn("192.0.2.1"), envelope("s@client.test"));
    // Refused by the plugin before it: the milter is not even connected.
    let out = chain.on_rcpt(&c, &e, "mallory@relay.test").await;
    assert_eq!(code(&out.decision), (550, "5.1.1".into()));
    assert!(listener.accept().is_err(), "the milter was connected");
    // Reached: it never negotiates, so its failure policy answers at the deadline.
    let out = chain.on_rcpt(&c, &e, "alice@relay.test").await;
    assert_eq!(code(&out.decision), (451, "4.3.0".into()));
    let failed = out.calls.last().unwrap();
    assert_eq!(failed.plugin, "m1");
    assert_eq!(failed.failure.as_ref().map(|f| f.kind()), Some("timeout"));
    assert!(listener.accept().is_ok());
}

#[tokio::test]
async fn init_errors_fail_the_load_with_the_plugins_message() {
    let env = env();
    let err = LoadedPlugin::load(
        &env.engine,
        spec("allow", "rcpt-allowlist", r#"{"domains": 7}"#),
        None,
        &env.services,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HostError::Init { .. }), "{err}");
    let err = LoadedPlugin::load(
        &env.engine,
        spec("m", "misbehave", r#"{"mode": "init-fail"}"#),
        None,
        &env.services,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("init-fail asked for"), "{err}");
    let mut bad = spec("x", "misbehave", "{}");
    bad.path = std::env::temp_dir().join("postrider-not-a-component.wasm");
    std::fs::write(&bad.path, b"\0asm\x01\0\0\0garbage").unwrap();
    assert!(matches!(
        LoadedPlugin::load(&env.engine, bad, None, &env.services)
            .await
            .unwrap_err(),
        HostError::Compile { .. }
    ));
}

async fn misbehave(
    mode: &str,
    policy: FailurePolicy,
    timeout_ms: u64,
    memory_mb: usize,
) -> (Decision, Option<CallFailure>, Duration) {
    let env = env();
    let mut s = spec("m", "misbehave", &format!(r#"{{"mode": "{mode}"}}"#));
    s.failure_policy = policy;
    s.timeout = Duration::from_millis(timeout_ms);
    s.memory_bytes = memory_mb << 20;
    let p = pipeline(&env, vec![s]).await;
    let mut chain = p.session(false);
    let started = Instant::now();
    let out = chain
        .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
        .await;
    let elapsed = started.elapsed();
    (out.decision, out.calls[0].failure.clone(), elapsed)
}

#[tokio::test]
async fn trap_is_contained_and_tempfails_by_default() {
    let (decision, failure, _) = misbehave("trap", FailurePolicy::Tempfail, 500, 16).await;
    assert_eq!(code(&decision), (451, "4.3.0".into()));
    assert!(
        matches!(
            failure,
            Some(CallFailure::Trap(_)) | Some(CallFailure::Invalid(_))
        ),
        "{failure:?}"
    );
}

#[tokio::test]
async fn runaway_loop_hits_the_deadline() {
    let (decision, failure, elapsed) = misbehave("loop", FailurePolicy::Reject, 100, 16).await;
    assert_eq!(code(&decision), (550, "5.7.1".into()));
    assert!(
        failure
            .as_ref()
            .is_some_and(|f| f.to_string().contains("timed out")),
        "{failure:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "deadline not enforced: {elapsed:?}"
    );
}

#[tokio::test]
async fn memory_hog_hits_the_cap() {
    let (decision, failure, _) = misbehave("oom", FailurePolicy::Continue, 5000, 8).await;
    assert_eq!(decision, Decision::Continue);
    assert!(
        failure.is_some(),
        "allocating past the cap must fail the call"
    );
}

#[tokio::test]
async fn invalid_answers_are_refused() {
    for mode in ["bad-reply", "bad-rewrite"] {
        let (decision, failure, _) = misbehave(mode, FailurePolicy::Tempfail, 500, 16).await;
        assert_eq!(code(&decision), (451, "4.3.0".into()), "{mode}");
        assert!(failure.is_some(), "{mode}");
    }
}

#[tokio::test]
async fn after_a_trap_the_next_call_gets_a_fresh_instance() {
    let env = env();
    // Traps on "trap" at rcpt; the allowlist after it still runs on the next recipient.
    let p = pipeline(&env, vec![spec("m", "misbehave", r#"{"mode": "reject"}"#)]).await;
    let mut chain = p.session(false);
    for _ in 0..3 {
        let out = chain
            .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
            .await;
        assert_eq!(code(&out.decision), (550, "5.1.1".into()));
    }
    let trap = pipeline(&env, vec![spec("t", "misbehave", r#"{"mode": "trap"}"#)]).await;
    let mut chain = trap.session(false);
    for _ in 0..3 {
        let out = chain
            .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
            .await;
        assert_eq!(
            code(&out.decision),
            (451, "4.3.0".into()),
            "each call traps on its own fresh instance"
        );
    }
}

/// The data stage of one `misbehave` plugin in `set-body` mode with `target` on `message`.
async fn set_body(target: &str, message: &[u8], max: u64) -> postrider_plugin_host::DataOutcome {
    let env = env();
    let config = serde_json::json!({ "mode": "set-body", "target": target }).to_string();
    let p = pipeline(&env, vec![spec("m", "misbehave", &config)]).await;
    let mut chain = p.session(false);
    let msg = MessageView::new(Arc::from(message)).with_max_size(max);
    chain
        .on_data(&conn("192.0.2.1"), &envelope("a@b.test"), &msg)
        .await
}

fn refusals(out: &postrider_plugin_host::DataOutcome) -> Vec<String> {
    out.edits
        .iter()
        .filter_map(|e| match e {
            HeaderEdit::Append { name, value } if name == "X-Refused" => Some(value.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn plugins_set_the_body_and_append_text_within_the_hosts_checks() {
    let plain = b"Subject: s\r\n\r\nold\r\n";
    let out = set_body("new\nbody", plain, 1 << 20).await;
    assert_eq!(refusals(&out), Vec::<String>::new());
    assert_eq!(out.body.as_deref(), Some(&b"new\r\nbody\r\n"[..]));
    assert_eq!(out.texts, ["new\nbody"]);

    // A multipart message's body must close its boundary; the text part is fine.
    let multipart =
        b"Content-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\n\r\na\r\n--zz--\r\n";
    let out = set_body("flat text", multipart, 1 << 20).await;
    assert_eq!(out.body, None);
    let refused = refusals(&out);
    assert!(
        refused.len() == 1 && refused[0].contains("--zz--"),
        "{refused:?}"
    );
    assert_eq!(out.texts, ["flat text"]);
    let out = set_body("--zz\r\n\r\nb\r\n--zz--\r\n", multipart, 1 << 20).await;
    assert!(out.body.is_some(), "{:?}", refusals(&out));

    // Over the size limit, a NUL, a line over 998 octets: refused, nothing kept.
    let out = set_body(&"x".repeat(2000), plain, 1000).await;
    assert!(out.body.is_none() && refusals(&out)[0].contains("over 1000 octets"));
    let out = set_body("a\u{0}b", plain, 1 << 20).await;
    assert!(out.body.is_none() && out.texts.is_empty(), "{out:?}");
    assert_eq!(refusals(&out).len(), 2);
    let out = set_body(&"y".repeat(999), plain, 1 << 20).await;
    assert!(out.body.is_none() && refusals(&out)[0].contains("998"));
    assert!(out.texts.is_empty() && refusals(&out)[1].contains("998"));
    // A text holding the message's boundary would close its part early.
    let out = set_body("x\n--zz--\n", multipart, 1 << 20).await;
    assert!(out.texts.is_empty(), "{out:?}");
    assert!(
        refusals(&out).iter().any(|r| r.contains("boundary")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_component_built_before_the_body_changes_still_loads_and_runs() {
    // header-stamp as built (and shipped as a builtin) before `set-body` and `append-text`
    // joined the message resource.
    let env = env();
    let mut s = spec("old", "header-stamp", r#"{"value": "mx1"}"#);
    s.path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/header-stamp-before-body-changes.wasm");
    let p = pipeline(&env, vec![s]).await;
    let mut chain = p.session(false);
    let msg = MessageView::new(Arc::from(&b"Subject: hello\r\n\r\nbody\r\n"[..]));
    let out = chain
        .on_data(&conn("192.0.2.1"), &envelope("a@b.test"), &msg)
        .await;
    assert_eq!(out.decision, Decision::Continue);
    assert!(out.calls[0].failure.is_none(), "{:?}", out.calls);
    assert!(
        out.edits
            .iter()
            .any(|e| matches!(e, HeaderEdit::Prepend { name, value }
            if name == "X-Postrider-Stamp" && value.starts_with("mx1; "))),
        "{:?}",
        out.edits
    );
}

#[tokio::test]
async fn rewrite_is_seen_by_later_plugins_and_reported() {
    let env = env();
    let p = pipeline(
        &env,
        vec![
            spec("m", "misbehave", r#"{"mode": "rewrite"}"#),
            spec(
                "allow",
                "rcpt-allowlist",
                r#"{"domains": {"relay.test": ["rewritten"]}, "strip_detail": true}"#,
            ),
        ],
    )
    .await;
    let mut chain = p.session(false);
    let out = chain
        .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "bob@other.test")
        .await;
    assert_eq!(out.decision, Decision::Continue);
    assert_eq!(
        out.rewrite.as_deref(),
        Some("rewritten+bob=other.test@relay.test")
    );
}

#[tokio::test]
async fn header_stamp_edits_and_reads_the_message() {
    let env = env();
    let p = pipeline(
        &env,
        vec![spec(
            "stamp",
            "header-stamp",
            r#"{"header": "X-Stamp", "value": "mx1", "report": ["message-id", "subject-length"]}"#,
        )],
    )
    .await;
    let mut chain = p.session(false);
    let msg = MessageView::new(Arc::from(
        &b"Subject: hello\r\nX-Stamp: forged\r\n\r\nbody\r\n"[..],
    ));
    let out = chain
        .on_data(&conn("192.0.2.1"), &envelope("a@b.test"), &msg)
        .await;
    assert_eq!(out.decision, Decision::Continue);
    assert!(
        out.edits.contains(&HeaderEdit::Remove {
            name: "X-Stamp".into()
        }),
        "{:?}",
        out.edits
    );
    let stamped = out.edits.iter().find_map(|e| match e {
        HeaderEdit::Prepend { name, value } | HeaderEdit::Append { name, value }
            if name == "X-Stamp" =>
        {
            Some(value.clone())
        }
        _ => None,
    });
    assert_eq!(
        stamped.as_deref(),
        Some("mx1; message-id=missing; subject-length=5")
    );
}

#[tokio::test]
async fn bad_header_edit_is_refused() {
    let env = env();
    let p = pipeline(
        &env,
        vec![spec("m", "misbehave", r#"{"mode": "bad-header"}"#)],
    )
    .await;
    let mut chain = p.session(false);
    let msg = MessageView::new(Arc::from(&b"Subject: x\r\n\r\nbody\r\n"[..]));
    let out = chain
        .on_data(&conn("192.0.2.1"), &envelope("a@b.test"), &msg)
        .await;
    assert_eq!(code(&out.decision), (451, "4.3.0".into()));
    assert!(out.edits.is_empty());
}

#[tokio::test]
async fn greylist_uses_namespaced_kv_and_the_clock() {
    let env = env();
    let p = pipeline(
        &env,
        vec![spec("greylist", "greylist", r#"{"delay_seconds": 60}"#)],
    )
    .await;
    let c = conn("198.51.100.7");
    let e = envelope("sender@client.test");
    let first = p.session(false).on_rcpt(&c, &e, "user@relay.test").await;
    assert_eq!(code(&first.decision).0, 451);
    let early = p.session(false).on_rcpt(&c, &e, "user@relay.test").await;
    assert_eq!(code(&early.decision).0, 451, "retry before the delay");
    env.clock.advance(Duration::from_secs(61));
    let later = p.session(false).on_rcpt(&c, &e, "user@relay.test").await;
    assert_eq!(
        later.decision,
        Decision::Continue,
        "retry after the delay passes"
    );
    let entries = env.kv.entries();
    assert!(
        !entries.is_empty() && entries.iter().all(|(ns, _, _)| ns == "greylist"),
        "{entries:?}"
    );
}

#[tokio::test]
async fn dnsbl_rejects_listed_clients_via_the_dns_import() {
    let dns = StaticDns {
        ip: HashMap::from([(
            "160.69.2.81.bl.test".to_owned(),
            Ok(vec!["127.0.0.2".parse().unwrap()]),
        )]),
        ..StaticDns::default()
    };
    let env = env_with_dns(dns);
    let p = pipeline(
        &env,
        vec![spec(
            "dnsbl",
            "dnsbl",
            r#"{"zones": [{"zone": "bl.test"}]}"#,
        )],
    )
    .await;
    let listed = p.session(false).on_connect(&conn("81.2.69.160")).await;
    assert_eq!(code(&listed.decision), (554, "5.7.1".into()));
    let clean = p.session(false).on_connect(&conn("81.2.69.161")).await;
    assert_eq!(clean.decision, Decision::Continue);
}

#[tokio::test]
async fn route_by_domain_routes_with_fresh_instances() {
    let env = env();
    let p = pipeline(
        &env,
        vec![spec(
            "routes",
            "route-by-domain",
            r#"{"routes": {"relay.test": {"type": "lmtp", "target": "127.0.0.1:24"}, "*.corp.test": {"type": "relay", "host": "127.0.0.2", "port": 2525, "tls": "require"}}}"#,
        )],
    )
    .await;
    let c = conn("192.0.2.1");
    let e = envelope("a@b.test");
    assert_eq!(
        p.route(&c, &e, "u@relay.test", false).await.0,
        RouteDecision::Lmtp("127.0.0.1:24".into())
    );
    assert_eq!(
        p.route(&c, &e, "u@eu.corp.test", false).await.0,
        RouteDecision::Relay {
            host: "127.0.0.2".into(),
            port: 2525,
            tls: TlsPolicy::Require
        }
    );
    assert_eq!(
        p.route(&c, &e, "u@elsewhere.test", false).await.0,
        RouteDecision::Mx
    );
}

// ---- The warm instance pool (`reuse` > 1) ----

fn counting(name: &str, reuse: u32, pool_idle: u32) -> PluginSpec {
    let mut s = spec(name, "misbehave", r#"{"mode": "count"}"#);
    s.reuse = reuse;
    s.pool_idle = pool_idle;
    s
}

/// Loads one plugin on its own (tests build pipelines of several from the same plugins).
async fn load(env: &Env, spec: PluginSpec) -> Arc<LoadedPlugin> {
    Arc::new(
        LoadedPlugin::load(&env.engine, spec, Some(&cache_dir()), &env.services)
            .await
            .unwrap(),
    )
}

fn chain_of(env: &Env, plugins: &[&Arc<LoadedPlugin>]) -> Arc<Pipeline> {
    Arc::new(Pipeline::new(
        Arc::clone(&env.engine),
        plugins.iter().map(|p| Arc::clone(p)).collect(),
        env.services.clone(),
    ))
}

/// What the `count` fixture answered: (calls, inits, seen) of the instance that served it.
fn counts(d: &Decision) -> (u32, u32, u32) {
    let Decision::Reject(r) = d else {
        panic!("expected the count answer, got {d:?}");
    };
    let n: Vec<u32> = r.text().split(' ').filter_map(|w| w.parse().ok()).collect();
    assert_eq!(n.len(), 3, "{}", r.text());
    (n[0], n[1], n[2])
}

/// One transaction with one RCPT per recipient, given back at its end.
async fn transaction(p: &Arc<Pipeline>, rcpts: &[&str]) -> Vec<Decision> {
    rcpt_outcomes(p, rcpts)
        .await
        .into_iter()
        .map(|o| o.decision)
        .collect()
}

/// One transaction with these recipients: each RCPT stage's outcome, calls included.
async fn rcpt_outcomes(p: &Arc<Pipeline>, rcpts: &[&str]) -> Vec<RcptOutcome> {
    let mut chain = p.session(false);
    let mut out = Vec::new();
    for r in rcpts {
        out.push(
            chain
                .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), r)
                .await,
        );
    }
    chain.end_transaction();
    out
}

#[tokio::test]
async fn without_reuse_every_transaction_gets_a_fresh_instance() {
    let env = env();
    let p = pipeline(&env, vec![counting("m", 1, 8)]).await;
    for _ in 0..3 {
        let out = transaction(&p, &["x@relay.test"]).await;
        assert_eq!(counts(&out[0]), (1, 1, 1));
        assert_eq!(p.plugins()[0].idle_instances(), 0);
    }
}

#[tokio::test]
async fn warm_instance_serves_reuse_transactions_then_a_fresh_one() {
    let env = env();
    let p = pipeline(&env, vec![counting("m", 3, 2)]).await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        // Two recipients: the plugin value lives for the transaction, as without reuse.
        let out = transaction(&p, &["x@relay.test", "y@relay.test"]).await;
        let (a, b) = (counts(&out[0]), counts(&out[1]));
        assert_eq!(
            (b.0, b.1, b.2),
            (a.0 + 1, a.1, 2),
            "same instance and value within"
        );
        seen.push(a);
    }
    // calls (globals) carry over; init runs again on every reuse and re-creates the value.
    assert_eq!(
        seen,
        [
            (1, 1, 1),
            (3, 2, 1),
            (5, 3, 1),
            (1, 1, 1),
            (3, 2, 1),
            (5, 3, 1),
            (1, 1, 1)
        ]
    );
    assert_eq!(p.plugins()[0].idle_instances(), 1);
}

#[tokio::test]
async fn the_call_that_takes_an_instance_says_where_it_came_from() {
    let env = env();
    let p = pipeline(&env, vec![counting("m", 2, 2)]).await;
    let mut sources = Vec::new();
    for _ in 0..3 {
        let outcomes = rcpt_outcomes(&p, &["x@relay.test", "y@relay.test"]).await;
        sources.extend(outcomes.iter().map(|o| o.calls[0].instance));
    }
    // The second call of a transaction uses the instance the first took; reuse = 2 retires
    // an instance after two transactions.
    assert_eq!(
        sources,
        [
            Some(InstanceSource::Fresh),
            None,
            Some(InstanceSource::Warm),
            None,
            Some(InstanceSource::Fresh),
            None
        ]
    );
}

#[tokio::test]
async fn failures_recycle_a_warm_instance() {
    let env = env();
    let p = pipeline(&env, vec![counting("m", 100, 4)]).await;
    assert_eq!(counts(&transaction(&p, &["x@relay.test"]).await[0]).0, 1);
    assert_eq!(counts(&transaction(&p, &["x@relay.test"]).await[0]).0, 2);
    assert_eq!(p.plugins()[0].idle_instances(), 1);

    // A trap: the instance is dropped, not given back; the next transaction starts fresh.
    let out = transaction(&p, &["trap@relay.test"]).await;
    assert_eq!(code(&out[0]), (451, "4.3.0".into()));
    assert_eq!(p.plugins()[0].idle_instances(), 0);
    assert_eq!(
        counts(&transaction(&p, &["x@relay.test"]).await[0]),
        (1, 1, 1)
    );

    // After a trap within a transaction, its later calls run on a fresh instance, which
    // ended cleanly and may be reused.
    let out = transaction(&p, &["x@relay.test", "trap@relay.test", "x@relay.test"]).await;
    assert_eq!(counts(&out[0]).0, 2);
    assert_eq!(counts(&out[2]), (1, 1, 1));
    assert_eq!(p.plugins()[0].idle_instances(), 1);
    assert_eq!(counts(&transaction(&p, &["x@relay.test"]).await[0]).0, 2);
}

#[tokio::test]
async fn timeouts_invalid_answers_and_cancelled_calls_are_never_pooled() {
    let env = env();
    for (mode, policy) in [
        ("loop", FailurePolicy::Tempfail),
        ("bad-reply", FailurePolicy::Tempfail),
    ] {
        let mut s = spec("m", "misbehave", &format!(r#"{{"mode": "{mode}"}}"#));
        s.reuse = 100;
        s.failure_policy = policy;
        s.timeout = Duration::from_millis(100);
        let p = pipeline(&env, vec![s]).await;
        let out = transaction(&p, &["x@relay.test"]).await;
        assert_eq!(code(&out[0]), (451, "4.3.0".into()), "{mode}");
        assert_eq!(p.plugins()[0].idle_instances(), 0, "{mode}");
    }
    // A call whose future is dropped midway (the session went away while the guest ran):
    // the store is not at a safe point and must not be reused.
    let mut s = spec("m", "misbehave", r#"{"mode": "loop"}"#);
    s.reuse = 100;
    s.timeout = Duration::from_millis(5000);
    let p = pipeline(&env, vec![s]).await;
    let mut chain = p.session(false);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        chain.on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test"),
    )
    .await;
    assert!(cancelled.is_err());
    chain.end_transaction();
    drop(chain);
    assert_eq!(p.plugins()[0].idle_instances(), 0);
    assert_eq!(env.engine.idle_instances(), 0);
}

#[tokio::test]
async fn reload_discards_the_pools_of_replaced_plugins_only() {
    let env = env();
    let kept = load(&env, counting("kept", 100, 4)).await;
    let changed = load(&env, counting("changed", 100, 4)).await;
    let (only_kept, only_changed) = (chain_of(&env, &[&kept]), chain_of(&env, &[&changed]));
    transaction(&only_kept, &["x@relay.test"]).await;
    transaction(&only_changed, &["x@relay.test"]).await;
    assert_eq!((kept.idle_instances(), changed.idle_instances()), (1, 1));

    // A session of the old generation is mid-transaction across the reload.
    let mut running = only_changed.session(false);
    let out = running
        .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
        .await;
    assert_eq!(counts(&out.decision).0, 2, "the idle instance was taken");

    let old = chain_of(&env, &[&kept, &changed]);
    let replacement = load(&env, counting("changed", 50, 4)).await;
    let new = chain_of(&env, &[&kept, &replacement]);
    old.retire_replaced(Some(&new));
    assert_eq!((kept.idle_instances(), changed.idle_instances()), (1, 0));

    // The running transaction finishes on its instance, which is then dropped, not pooled.
    running.end_transaction();
    assert_eq!(changed.idle_instances(), 0);
    assert_eq!(
        counts(&transaction(&only_changed, &["x@relay.test"]).await[0]).0,
        1
    );
    assert_eq!(changed.idle_instances(), 0);
    // The unchanged plugin keeps its warm instance.
    assert_eq!(
        counts(&transaction(&only_kept, &["x@relay.test"]).await[0]).0,
        2
    );
    assert_eq!(kept.idle_instances(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_limits_hold_under_concurrency() {
    let env = env();
    let p = pipeline(&env, vec![counting("m", 1000, 4)]).await;
    let mut tasks = Vec::new();
    for t in 0..50 {
        let p = Arc::clone(&p);
        let engine = Arc::clone(&env.engine);
        tasks.push(tokio::spawn(async move {
            let mut most_calls = 0;
            for n in 0..6 {
                let mut chain = p.session(false);
                let out = chain
                    .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
                    .await;
                assert!(out.calls[0].failure.is_none(), "task {t} #{n}: {out:?}");
                most_calls = most_calls.max(counts(&out.decision).0);
                tokio::time::sleep(Duration::from_millis(1 + (t + n) as u64 % 3)).await;
                chain.end_transaction();
                let idle = p.plugins()[0].idle_instances();
                assert!(idle <= 4, "{idle} idle instances, pool_idle is 4");
                assert!(engine.idle_instances() <= 4);
            }
            most_calls
        }));
    }
    let mut most = 0;
    for t in tasks {
        most = most.max(t.await.unwrap());
    }
    assert!(most > 1, "instances were reused");
    assert!(p.plugins()[0].idle_instances() <= 4);
}

#[tokio::test]
async fn idle_instances_never_starve_new_ones() {
    // 8 slots; idle instances may hold at most half of them, and give them back when needed.
    let env = env_sized(8, StaticDns::default());
    let a = load(&env, counting("a", 100, 8)).await;
    let b = load(&env, counting("b", 100, 8)).await;
    let (pa, pb) = (chain_of(&env, &[&a]), chain_of(&env, &[&b]));
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut chain = pa.session(false);
        chain
            .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
            .await;
        held.push(chain);
    }
    drop(held);
    assert_eq!(
        a.idle_instances(),
        4,
        "the engine-wide idle cap is half the slots"
    );
    assert_eq!(env.engine.idle_instances(), 4);

    // Plugin b needs every slot: a's idle instances are evicted, no call waits or fails.
    let started = Instant::now();
    let mut held = Vec::new();
    for n in 0..8 {
        let mut chain = pb.session(false);
        let out = chain
            .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
            .await;
        assert!(out.calls[0].failure.is_none(), "#{n}: {out:?}");
        held.push(chain);
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "a call waited for a slot"
    );
    assert_eq!(a.idle_instances(), 0);
    drop(held);
    assert_eq!(b.idle_instances(), 4);
}

/// What the network observer saw: "kind grant result" per event.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<String>>);

impl postrider_plugin_host::NetObserver for Seen {
    fn observe(&self, _plugin: &str, kind: &str, grant: Option<&str>, result: &str, _: Duration) {
        let grant = grant.unwrap_or("-");
        self.0
            .lock()
            .unwrap()
            .push(format!("{kind} {grant} {result}"));
    }
}

/// Runs misbehave in a network mode against `target` with these grants; the rcpt reply text.
async fn network_call(
    env: &Env,
    mode: &str,
    target: &str,
    grants: postrider_config::NetworkGrants,
) -> String {
    let mut s = spec(
        "net",
        "misbehave",
        &format!(r#"{{"mode": "{mode}", "target": "{target}"}}"#),
    );
    s.network = grants;
    s.timeout = Duration::from_secs(5);
    let p = pipeline(env, vec![s]).await;
    let mut chain = p.session(false);
    let out = chain
        .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
        .await;
    match out.decision {
        Decision::Reject(r) => r.text().to_owned(),
        other => panic!("{other:?} {:?}", out.calls[0].failure),
    }
}

fn observed_env() -> (Env, Arc<Seen>) {
    let mut env = env();
    let seen = Arc::new(Seen::default());
    env.services.net_observer = Some(seen.clone());
    (env, seen)
}

/// A minimal HTTP/1.1 server answering every request with `body`; counts connections.
async fn http_server(
    body: &'static str,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    // Request line and headers up to the blank line (GETs carry no body).
                    loop {
                        line.clear();
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[tokio::test]
async fn http_goes_only_to_granted_origins_over_pooled_connections_with_capped_bodies() {
    let (env, seen) = observed_env();
    let (addr, conns) = http_server("pong").await;
    let origin = format!("http://{addr}");
    let granted = postrider_config::NetworkGrants {
        http: vec![origin.parse().unwrap()],
        ..Default::default()
    };
    // Two instances (a fresh one per transaction) share the plugin's pooled connection.
    let p_url = format!("{origin}/ping");
    let mut s = spec(
        "net",
        "misbehave",
        &format!(r#"{{"mode": "http", "target": "{p_url}"}}"#),
    );
    s.network = granted.clone();
    s.timeout = Duration::from_secs(5);
    let p = pipeline(&env, vec![s]).await;
    for _ in 0..2 {
        let out = p
            .session(false)
            .on_rcpt(&conn("192.0.2.1"), &envelope("a@b.test"), "x@relay.test")
            .await;
        match out.decision {
            Decision::Reject(r) => assert_eq!(r.text(), "http 200 pong"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Another port, another scheme, no grant at all: denied, and nothing connects.
    let other_port = format!("http://127.0.0.1:{}/", addr.port() + 1);
    let https = format!("https://{addr}/");
    for (target, grants) in [
        (other_port.as_str(), granted.clone()),
        (https.as_str(), granted.clone()),
        (p_url.as_str(), Default::default()),
    ] {
        let text = network_call(&env, "http", target, grants).await;
        assert!(text.starts_with("http error: denied"), "{target}: {text}");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A body over the cap fails the read, not the host.
    let (big_addr, _) = http_server("0123456789".repeat(200).leak()).await;
    let capped = postrider_config::NetworkGrants {
        http: vec![format!("http://{big_addr}").parse().unwrap()],
        max_http_response_bytes: 1000,
        ..Default::default()
    };
    let text = network_call(&env, "http", &format!("http://{big_addr}/"), capped).await;
    assert!(text.starts_with("http error: failed"), "{text}");

    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|e| e.ends_with(" 2xx")).count(),
        3,
        "{seen:?}"
    );
    assert!(seen.contains(&format!("http {origin} 2xx")), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|e| *e == "http - denied").count(),
        3,
        "{seen:?}"
    );
}

#[tokio::test]
async fn tcp_connects_only_to_granted_addresses() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (env, seen) = observed_env();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut s = BufReader::new(s);
            let mut line = String::new();
            let _ = s.read_line(&mut line).await;
            let _ = s.get_mut().write_all(b"action=DUNNO\n").await;
        }
    });
    let grant = |g: &str| postrider_config::NetworkGrants {
        connect: vec![g.parse().unwrap()],
        ..Default::default()
    };
    let target = addr.to_string();
    let text = network_call(&env, "connect", &target, grant(&target)).await;
    assert_eq!(text, "connect ok action=DUNNO");
    for grants in [
        grant(&format!("127.0.0.1:{}", addr.port() + 1)),
        grant(&format!("10.0.0.0/8:{}", addr.port())),
        Default::default(),
    ] {
        let text = network_call(&env, "connect", &target, grants).await;
        assert!(text.starts_with("connect error"), "{text}");
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    let seen = seen.0.lock().unwrap().clone();
    assert_eq!(seen[0], format!("tcp {target} allowed"), "{seen:?}");
    assert_eq!(
        seen.iter().filter(|e| *e == "tcp - denied").count(),
        2,
        "{seen:?}"
    );
}

#[tokio::test]
async fn udp_datagrams_go_only_to_granted_addresses() {
    let (env, _seen) = observed_env();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = got.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buf).await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = socket.send_to(b"pong", from).await;
        }
    });
    let grants = |g: String| postrider_config::NetworkGrants {
        udp: vec![g.parse().unwrap()],
        ..Default::default()
    };
    let text = network_call(&env, "udp", &addr.to_string(), grants(addr.to_string())).await;
    assert_eq!(text, "udp ok pong");
    let other = format!("127.0.0.1:{}", addr.port() + 1);
    let text = network_call(&env, "udp", &addr.to_string(), grants(other)).await;
    assert!(text.starts_with("udp error"), "{text}");
    assert_eq!(got.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http_host_names_resolve_through_the_relays_resolver() {
    let dns = StaticDns {
        ip: HashMap::from([(
            "rspamd.test".to_owned(),
            Ok(vec!["127.0.0.1".parse().unwrap()]),
        )]),
        ..StaticDns::default()
    };
    let env = env_with_dns(dns);
    let (addr, _) = http_server("pong").await;
    let origin = format!("http://rspamd.test:{}", addr.port());
    let grants = postrider_config::NetworkGrants {
        http: vec![origin.parse().unwrap()],
        ..Default::default()
    };
    let text = network_call(&env, "http", &format!("{origin}/ping"), grants.clone()).await;
    assert_eq!(text, "http 200 pong");
    // A granted name the relay's resolver does not know fails (the system's is not asked).
    let unknown = postrider_config::NetworkGrants {
        http: vec![format!("http://localhost:{}", addr.port()).parse().unwrap()],
        ..Default::default()
    };
    let text = network_call(
        &env,
        "http",
        &format!("http://localhost:{}/ping", addr.port()),
        unknown,
    )
    .await;
    assert!(text.starts_with("http error: failed"), "{text}");
}
