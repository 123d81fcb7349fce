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
    HostError, LoadedPlugin, MessageView, Pipeline, PluginEngine, PluginSpec, RouteDecision,
    Services, StaticDns, TlsPolicy,
};
use postrider_testkit::plugin_wasm;

struct Env {
    engine: Arc<PluginEngine>,
    services: Services,
    clock: Arc<ManualClock>,
    kv: Arc<MemoryKv>,
}

fn env_with_dns(dns: StaticDns) -> Env {
    let engine = Arc::new(
        PluginEngine::new(&EngineOptions {
            max_instances: 64,
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
