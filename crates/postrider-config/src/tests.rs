//! Parsing and validation of whole config texts: defaults, every error's location.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", Path::new("/etc/postrider"))
}

const MINIMAL: &str =
    "[[listener]]\nname = \"smtp\"\naddress = \"127.0.0.1:25\"\nkind = \"smtp\"\n";

#[test]
fn embedded_default_is_valid_and_loopback_only() {
    let config = Config::embedded().unwrap();
    assert_eq!(config.listeners.len(), 1);
    assert_eq!(
        config.listeners[0].address,
        "127.0.0.1:2525".parse().unwrap()
    );
    assert!(config.listeners[0].address.ip().is_loopback());
    assert!(
        config.relay.relay_networks.is_empty(),
        "default must not relay for anyone"
    );
    assert!(config.relay.passwords.is_none());
    assert_eq!(config.limits.line_endings, LineEndings::Reject);
}

#[test]
fn minimal_config_gets_defaults_and_resolves_paths() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.hostname, "localhost");
    assert_eq!(config.spool_dir, Path::new("/etc/postrider/var/spool"));
    assert_eq!(config.timeouts.command, 300);
    assert_eq!(config.limits.max_message_size, 25 * 1024 * 1024);
}

#[test]
fn kv_redis_settings() {
    assert_eq!(parse(MINIMAL).unwrap().plugin_settings.kv_redis, None);
    let text = format!(
        "{MINIMAL}[plugins]\nkv_url = \"rediss://:pw@10.0.0.5:6380/2\"\nkv_cluster = \"eu-1\"\nkv_ca_file = \"ca.pem\"\n"
    );
    let redis = parse(&text).unwrap().plugin_settings.kv_redis.unwrap();
    assert_eq!(redis.url, "rediss://:pw@10.0.0.5:6380/2");
    assert_eq!(redis.cluster, "eu-1");
    assert_eq!(redis.ca_file.unwrap(), Path::new("/etc/postrider/ca.pem"));

    let text = format!("{MINIMAL}[plugins]\nkv_url = \"redis://h\"\n");
    let redis = parse(&text).unwrap().plugin_settings.kv_redis.unwrap();
    assert_eq!(redis.cluster, "default");

    let text = format!("{MINIMAL}[plugins]\nkv_url = \"http://h\"\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:6:"), "{err}");
    assert!(err.contains("plugins.kv_url"), "{err}");

    let text = format!("{MINIMAL}[plugins]\nkv_url = \"redis://h\"\nkv_cluster = \"a:b\"\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:7:"), "{err}");
    assert!(err.contains("plugins.kv_cluster"), "{err}");

    let text = format!("{MINIMAL}[plugins]\nkv_ca_file = \"ca.pem\"\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("needs plugins.kv_url"), "{err}");
}

#[test]
fn authentication_settings() {
    let auth = parse(MINIMAL).unwrap().authentication;
    assert!(auth.verify);
    assert!(!auth.dmarc_enforce);
    assert_eq!(auth.authserv_id, "localhost");
    assert!(auth.dkim_sign.is_empty() && auth.arc_seal.is_none());
    let text = format!(
        "{MINIMAL}[authentication]\nauthserv_id = \"mx.example.org\"\ndmarc_enforce = true\narc_seal = {{ domain = \"example.org\", selector = \"arc\", key_file = \"arc.pem\" }}\n[[dkim_sign]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey_file = \"keys/s1.pem\"\nheaders = [\"From\", \"Subject\"]\n"
    );
    let auth = parse(&text).unwrap().authentication;
    assert_eq!(auth.authserv_id, "mx.example.org");
    assert!(auth.dmarc_enforce);
    assert_eq!(auth.dkim_sign.len(), 1);
    assert_eq!(
        auth.dkim_sign[0].key_file,
        Path::new("/etc/postrider/keys/s1.pem")
    );
    assert_eq!(auth.dkim_sign[0].headers, ["From", "Subject"]);
    assert_eq!(
        auth.arc_seal.unwrap().key_file,
        Path::new("/etc/postrider/arc.pem")
    );
    let dup = format!(
        "{MINIMAL}[[dkim_sign]]\ndomain = \"a.example\"\nselector = \"s\"\nkey_file = \"k\"\n[[dkim_sign]]\ndomain = \"A.example\"\nselector = \"t\"\nkey_file = \"k\"\n"
    );
    let err = parse(&dup).unwrap_err().to_string();
    assert!(err.contains("dkim_sign[1].domain"), "{err}");
    let bad = format!("{MINIMAL}[authentication]\nauthserv_id = \"a b\"\n");
    assert!(parse(&bad).unwrap_err().to_string().contains("authserv_id"));
    let unknown = format!(
        "{MINIMAL}[[dkim_sign]]\ndomain = \"a\"\nselector = \"s\"\nkey_file = \"k\"\nalgo = 1\n"
    );
    assert!(parse(&unknown).unwrap_err().to_string().contains("algo"));
}

#[test]
fn unknown_key_names_file_key_and_line() {
    let text = format!("{MINIMAL}\n[limits]\nmax_recipients = 10\nmax_frobs = 3\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:8:"), "{err}");
    assert!(err.contains("max_frobs"), "{err}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let text = format!("{MINIMAL}[timeouts]\ncommand = \"soon\"\n");
    let err = parse(&text).unwrap_err();
    match &err {
        ConfigError::Parse { line, key, .. } => {
            assert_eq!(*line, 6);
            assert_eq!(key, "command");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bad_toml_syntax_is_located() {
    let err = parse("hostname = \n").unwrap_err().to_string();
    assert!(err.starts_with("test.toml:1:"), "{err}");
}

#[test]
fn bad_address_names_listener_key_and_line() {
    let text = "[[listener]]\nname = \"a\"\nkind = \"smtp\"\naddress = \"localhost:25\"\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(
        err.starts_with("test.toml:4: key `listener[0].address`"),
        "{err}"
    );
}

#[test]
fn bad_network_names_index_and_line() {
    let text = format!("{MINIMAL}[relay]\nrelay_networks = [\"10.0.0.0/8\",\n  \"300.1.1.1\"]\n");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with("test.toml:7: key `relay.relay_networks[1]`"),
        "{err}"
    );
}

#[test]
fn submission_needs_tls() {
    let text = "[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:587\"\nkind = \"submission\"\n";
    let err = parse(text).unwrap_err().to_string();
    assert!(err.contains("listener[0].kind"), "{err}");
}

#[test]
fn duplicate_listener_names_refused() {
    let text = format!("{MINIMAL}{MINIMAL}");
    assert!(
        parse(&text)
            .unwrap_err()
            .to_string()
            .contains("listener[1].name")
    );
}

#[test]
fn relay_checks() {
    let text = format!(
        "{MINIMAL}[relay]\nlocal_domains = [\"Example.ORG.\"]\nrelay_networks = [\"192.0.2.0/24\", \"::1\"]\n"
    );
    let relay = parse(&text).unwrap().relay;
    assert!(relay.is_local_domain("example.org"));
    assert!(relay.is_local_domain("EXAMPLE.org."));
    assert!(!relay.is_local_domain("sub.example.org"));
    assert!(relay.is_relay_client("192.0.2.7".parse().unwrap()));
    assert!(relay.is_relay_client("::ffff:192.0.2.7".parse().unwrap()));
    assert!(relay.is_relay_client("::1".parse().unwrap()));
    assert!(!relay.is_relay_client("127.0.0.1".parse().unwrap()));
}

#[test]
fn plugins_in_order_with_config_as_json() {
    let text = format!(
        "{MINIMAL}[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\nconfig = {{ zones = [\"x.test\"], n = 3 }}\n\
         [[plugin]]\nname = \"b\"\npath = \"/p/b.wasm\"\nfailure_policy = \"continue\"\ntimeout_ms = 50\nmemory_mb = 8\n\
         reuse = 100\npool_idle = 4\n\
         [dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n"
    );
    let config = parse(&text).unwrap();
    let names: Vec<_> = config.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(config.plugins[0].path, Path::new("/etc/postrider/a.wasm"));
    assert_eq!(
        config.plugins[0].config_json,
        r#"{"n":3,"zones":["x.test"]}"#
    );
    assert_eq!(config.plugins[0].failure_policy, FailurePolicy::Tempfail);
    assert_eq!(
        (config.plugins[1].timeout_ms, config.plugins[1].memory_mb),
        (50, 8)
    );
    assert_eq!(config.plugins[1].failure_policy, FailurePolicy::Continue);
    assert_eq!(
        (config.plugins[0].reuse, config.plugins[0].pool_idle),
        (1, 8)
    );
    assert_eq!(
        (config.plugins[1].reuse, config.plugins[1].pool_idle),
        (100, 4)
    );
    assert_eq!(config.plugins[1].config_json, "{}");
    assert_eq!(
        config.nameservers,
        [
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ]
    );
    assert_eq!(
        config.plugin_settings.kv_path,
        Path::new("/etc/postrider/var/kv.redb")
    );
}

#[test]
fn bad_plugin_settings_are_located() {
    let base = format!("{MINIMAL}[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\n");
    let err = parse(&format!("{base}timeout_ms = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml:8: key `plugin[0].timeout_ms`"),
        "{err}"
    );
    let err = parse(&format!("{base}failure_policy = \"explode\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:8:"), "{err}");
    let err = parse(&format!(
        "{base}[[plugin]]\nname = \"a\"\npath = \"b.wasm\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("plugin[1].name"), "{err}");
    let err = parse(&format!("{base}reuse = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml:8: key `plugin[0].reuse`"),
        "{err}"
    );
    let err = parse(&format!("{base}pool_idle = 4\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml:8: key `plugin[0].pool_idle`") && err.contains("reuse"),
        "{err}"
    );
    let err = parse(&format!("{base}reuse = 10\npool_idle = 0\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("test.toml:9: key `plugin[0].pool_idle`"),
        "{err}"
    );
    let err = parse(&format!("{base}reuse = 10\npool_size = 4\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pool_size"), "{err}");
}

#[test]
fn credentials_default_to_verified_tls_and_anything_less_is_named_insecure() {
    let route = |extra: &str| {
        parse(&format!(
            "{MINIMAL}[[route]]\ndomains = [\"x.test\"]\nrelay = \"smart.test:587\"\n{extra}"
        ))
    };
    let target = |c: Config| c.routes[0].to.clone();
    let auth = "auth_user = \"u\"\nauth_password = \"p\"\n";
    let RouteTarget::Relay {
        tls, insecure_auth, ..
    } = target(route(auth).unwrap())
    else {
        panic!()
    };
    assert_eq!((tls, insecure_auth), (TlsPolicy::Verify, false));
    let RouteTarget::Relay { tls, .. } = target(route("").unwrap()) else {
        panic!()
    };
    assert_eq!(tls, TlsPolicy::Opportunistic);
    let RouteTarget::Relay {
        tls,
        insecure_auth,
        ca_file,
        ..
    } = target(route(&format!("{auth}tls = \"require\"\ninsecure_auth = true\n")).unwrap())
    else {
        panic!()
    };
    assert_eq!(
        (tls, insecure_auth, ca_file),
        (TlsPolicy::Require, true, None)
    );
    let RouteTarget::Relay { ca_file, .. } =
        target(route(&format!("{auth}ca_file = \"ca.pem\"\n")).unwrap())
    else {
        panic!()
    };
    assert_eq!(ca_file, Some(Path::new("/etc/postrider/ca.pem").into()));
    for (extra, key, says) in [
        (
            "tls = \"require\"\n",
            "route[0].tls",
            "insecure_auth = true",
        ),
        (
            "tls = \"opportunistic\"\n",
            "route[0].tls",
            "\"verify\" (the default)",
        ),
        (
            "tls = \"none\"\n",
            "route[0].tls",
            "\"verify\" (the default)",
        ),
        // DANE falls back to unverified TLS where a host has no TLSA records.
        (
            "tls = \"dane\"\n",
            "route[0].tls",
            "\"verify\" (the default)",
        ),
        (
            "insecure_auth = true\n",
            "route[0].insecure_auth",
            "certificate is checked",
        ),
        (
            "tls = \"require\"\nca_file = \"ca.pem\"\ninsecure_auth = true\n",
            "route[0].ca_file",
            "for tls = \"verify\"",
        ),
    ] {
        let err = route(&format!("{auth}{extra}")).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
    }
    let err = route("insecure_auth = true\n").unwrap_err().to_string();
    assert!(err.contains("needs auth_user"), "{err}");
    let err = parse(&format!(
        "{MINIMAL}[[route]]\ndomains = [\"x.test\"]\nlmtp = \"h:24\"\nca_file = \"ca.pem\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("route[0].ca_file") && err.contains("only for a relay route"),
        "{err}"
    );
    let config = parse(&format!(
        "{MINIMAL}[delivery]\ntls = \"verify\"\nca_file = \"/etc/ssl/mx-ca.pem\"\n"
    ))
    .unwrap();
    assert_eq!(config.delivery.tls, TlsPolicy::Verify);
    assert_eq!(
        config.delivery.ca_file,
        Some(Path::new("/etc/ssl/mx-ca.pem").into())
    );
    let config = parse(&format!(
        "{MINIMAL}[delivery]\ntls = \"require\"\n\
         [[tls_policy]]\ndomains = [\"Bank.Example.\", \"*.gov.example\"]\ntls = \"verify\"\nca_file = \"bank.pem\"\n\
         [[tls_policy]]\ndomains = [\"old.example\"]\ntls = \"opportunistic\"\n"
    ))
    .unwrap();
    let bank = Some(Path::new("/etc/postrider/bank.pem"));
    assert_eq!(config.mx_tls_for("bank.example"), (TlsPolicy::Verify, bank));
    assert_eq!(
        config.mx_tls_for("a.gov.example."),
        (TlsPolicy::Verify, bank)
    );
    assert_eq!(
        config.mx_tls_for("OLD.example"),
        (TlsPolicy::Opportunistic, None)
    );
    assert_eq!(config.mx_tls_for("gov.example"), (TlsPolicy::Require, None));
    for (extra, key) in [
        ("domains = []\ntls = \"verify\"\n", "tls_policy[0].domains"),
        (
            "domains = [\"a.test\"]\ntls = \"require\"\nca_file = \"x.pem\"\n",
            "tls_policy[0].ca_file",
        ),
        ("domains = [\"a.test\"]\ntls = \"dane-ish\"\n", "tls"),
        ("domains = [\"a.test\"]\n", "tls"),
    ] {
        let err = parse(&format!("{MINIMAL}[[tls_policy]]\n{extra}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    let err = parse(&format!("{MINIMAL}[delivery]\nca_file = \"ca.pem\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("delivery.ca_file"), "{err}");
    // MX delivery defaults to auto; mta-sts and auto are for MX hosts, not relay routes.
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.mx_tls_for("any.example"), (TlsPolicy::Auto, None));
    let config = parse(&format!(
        "{MINIMAL}[[tls_policy]]\ndomains = [\"sts.example\"]\ntls = \"mta-sts\"\n"
    ))
    .unwrap();
    assert_eq!(config.mx_tls_for("sts.example"), (TlsPolicy::MtaSts, None));
    for tls in ["mta-sts", "auto"] {
        let err = parse(&format!(
            "{MINIMAL}[[route]]\ndomains = [\"a.test\"]\nrelay = \"smarthost.test:25\"\ntls = \"{tls}\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("route[0].tls") && err.contains("use verify or dane"),
            "{tls}: {err}"
        );
    }
}

#[test]
fn routes_and_delivery_settings() {
    let text = format!(
        "{MINIMAL}[delivery]\nsmtp_port = 2525\nretry_intervals = [1, 2]\n\
         [[route]]\ndomains = [\"Relay.Test\", \"*.corp.test\"]\nrelay = \"127.0.0.2:2526\"\ntls = \"none\"\n\
         [[route]]\ndomains = [\"local.test\"]\nlmtp = \"unix:/run/lmtp\"\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.delivery.smtp_port, 2525);
    assert_eq!(config.delivery.retry_intervals, [1, 2]);
    let relay = RouteTarget::Relay {
        host: "127.0.0.2".into(),
        port: 2526,
        tls: TlsPolicy::None,
        ca_file: None,
        auth: None,
        insecure_auth: false,
    };
    assert_eq!(config.route_for("relay.test.").map(|r| &r.to), Some(&relay));
    assert_eq!(config.route_for("a.corp.test").map(|r| &r.to), Some(&relay));
    assert_eq!(config.route_for("corp.test"), None);
    assert_eq!(
        config.route_for("LOCAL.test").map(|r| &r.to),
        Some(&RouteTarget::Lmtp("unix:/run/lmtp".into()))
    );
    let err = parse(&format!(
        "{MINIMAL}[[route]]\ndomains = [\"x.test\"]\nrelay = \"h:0\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("route[0].relay"), "{err}");
    let err = parse(&format!("{MINIMAL}[[route]]\ndomains = [\"x.test\"]\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exactly one of relay, lmtp and maildir"),
        "{err}"
    );
    let config = parse(&format!(
        "{MINIMAL}[[route]]\ndomains = [\"localhost\"]\nmaildir = \"var/mail\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.route_for("localhost").map(|r| &r.to),
        Some(&RouteTarget::Maildir(
            Path::new("/etc/postrider/var/mail").into()
        ))
    );
    let err = parse(&format!(
        "{MINIMAL}[[route]]\ndomains = [\"x.test\"]\nmaildir = \"m\"\nlmtp = \"h:24\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("exactly one of relay, lmtp and maildir"),
        "{err}"
    );
}

#[test]
fn admin_http_listener() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.admin.http, None,
        "no HTTP listener unless configured"
    );
    assert_eq!(config.admin.metrics_domains, 20);
    let text = format!("{MINIMAL}[admin]\nhttp = \"127.0.0.1:9587\"\nmetrics_domains = 5\n");
    let admin = parse(&text).unwrap().admin;
    assert_eq!(admin.http, Some("127.0.0.1:9587".parse().unwrap()));
    assert_eq!(admin.metrics_domains, 5);
    let err = parse(&format!("{MINIMAL}[admin]\nhttp = \"localhost:80\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:6: key `admin.http`"), "{err}");
    let err = parse(&format!("{MINIMAL}[admin]\nlisten = \"127.0.0.1:1\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("test.toml:6:"), "{err}");
    assert!(err.contains("listen"), "{err}");
    let embedded = Config::embedded().unwrap().admin.http.unwrap();
    assert!(embedded.ip().is_loopback(), "{embedded}");
}

#[test]
fn load_reports_missing_file() {
    let err = Config::load(Path::new("/nonexistent/postrider.toml")).unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/postrider.toml:"));
}

#[test]
fn network_grants_are_parsed_and_bad_ones_located() {
    let base = format!("{MINIMAL}[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\n");
    let config = parse(&base).unwrap();
    assert!(config.plugins[0].network.is_empty());

    let config = parse(&format!(
        "{base}allow_http = [\"http://127.0.0.1:11333\", \"https://*.rep.example\"]\n\
         allow_connect = [\"127.0.0.1:10023\", \"10.0.0.0/8:389\"]\n\
         allow_udp = [\"[::1]:53\"]\nca_file = \"ca.pem\"\nmax_http_response_kb = 64\n"
    ))
    .unwrap();
    let net = &config.plugins[0].network;
    let shown = |v: &[String]| v.join(" ");
    assert_eq!(
        shown(&net.http.iter().map(|g| g.to_string()).collect::<Vec<_>>()),
        "http://127.0.0.1:11333 https://*.rep.example:443"
    );
    assert_eq!(
        shown(
            &net.connect
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
        ),
        "127.0.0.1:10023 10.0.0.0/8:389"
    );
    assert_eq!(net.udp[0].to_string(), "[::1]:53");
    assert!(net.ca_file.as_ref().unwrap().is_absolute());
    assert_eq!(net.max_http_response_bytes, 64 * 1024);

    for (extra, line, key) in [
        (
            "allow_http = [\"http://ok.example\",\n \"ftp://x\"]\n",
            9,
            "allow_http[1]",
        ),
        (
            "allow_connect = [\"0.0.0.0/0:25\"]\n",
            8,
            "allow_connect[0]",
        ),
        ("allow_udp = [\"host.example:53\"]\n", 8, "allow_udp[0]"),
        ("ca_file = \"ca.pem\"\n", 8, "ca_file"),
        (
            "allow_http = [\"http://x.example\"]\nca_file = \"ca.pem\"\n",
            9,
            "ca_file",
        ),
        ("max_http_response_kb = 4\n", 8, "max_http_response_kb"),
        (
            "allow_http = [\"http://x.example\"]\nmax_http_response_kb = 0\n",
            9,
            "max_http_response_kb",
        ),
    ] {
        let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("test.toml:{line}: key `plugin[0].{key}`")),
            "{extra}: {err}"
        );
    }
}

#[test]
fn milters_take_defaults_and_a_place_after_a_named_link() {
    let config = parse(&format!(
        "{MINIMAL}[[plugin]]\nname = \"stamp\"\npath = \"a.wasm\"\n\
         [[milter]]\nname = \"opendkim\"\naddress = \"inet:127.0.0.1:8891\"\n\
         [[milter]]\nname = \"rspamd\"\naddress = \"unix:/run/rspamd/milter.sock\"\n\
         after = \"opendkim\"\nstages = [\"data\", \"data\"]\nfailure_policy = \"continue\"\n"
    ))
    .unwrap();
    let [dkim, rspamd] = &config.milters[..] else {
        panic!("{:?}", config.milters)
    };
    assert_eq!(dkim.address.to_string(), "inet:127.0.0.1:8891");
    assert_eq!(
        dkim.stages,
        [
            Stage::Connect,
            Stage::Helo,
            Stage::MailFrom,
            Stage::Rcpt,
            Stage::Data
        ]
    );
    assert_eq!(dkim.failure_policy, FailurePolicy::Tempfail);
    assert_eq!(
        (
            dkim.connect_timeout_ms,
            dkim.command_timeout_ms,
            dkim.content_timeout_ms
        ),
        (30_000, 30_000, 300_000)
    );
    assert_eq!(dkim.after, None);
    assert_eq!(rspamd.stages, [Stage::Data]);
    assert_eq!(rspamd.after.as_deref(), Some("opendkim"));
    assert_eq!(rspamd.failure_policy, FailurePolicy::Continue);
}

#[test]
fn bad_milter_settings_are_located() {
    let base = format!("{MINIMAL}[[milter]]\nname = \"m\"\n");
    for (extra, key) in [
        ("address = \"127.0.0.1:8891\"\n", "milter[0].address"),
        ("address = \"inet:[::1]:0\"\n", "milter[0].address"),
        (
            "address = \"inet:127.0.0.1:1\"\nstages = [\"route\"]\n",
            "milter[0].stages",
        ),
        (
            "address = \"inet:127.0.0.1:1\"\nstages = []\n",
            "milter[0].stages",
        ),
        (
            "address = \"inet:127.0.0.1:1\"\nafter = \"nobody\"\n",
            "milter[0].after",
        ),
        (
            "address = \"inet:127.0.0.1:1\"\ncommand_timeout_ms = 0\n",
            "milter[0].command_timeout_ms",
        ),
        (
            "address = \"inet:127.0.0.1:1\"\n[[milter]]\nname = \"m\"\naddress = \"inet:127.0.0.1:2\"\n",
            "milter[1].name",
        ),
    ] {
        let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(err.contains(&format!("key `{key}`")), "{extra}: {err}");
        assert!(err.starts_with("test.toml:"), "{err}");
    }
    // A milter cannot take a plugin's name, and unknown keys are refused.
    let err = parse(&format!(
        "{MINIMAL}[[plugin]]\nname = \"m\"\npath = \"a.wasm\"\n[[milter]]\nname = \"m\"\naddress = \"inet:127.0.0.1:1\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("milter[0].name"), "{err}");
    let err = parse(&format!(
        "{base}address = \"inet:127.0.0.1:1\"\ntimeout_ms = 5\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("timeout_ms"), "{err}");
}

#[test]
fn proxy_protocol_listeners_name_their_balancers() {
    let base = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"smtp\"\n";
    let config = parse(&format!(
        "{base}proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/24\", \"192.0.2.7\", \"10.1.2.3/16\"]\n"
    ))
    .unwrap();
    let trusted: Vec<String> = config.listeners[0]
        .proxy_trusted
        .as_ref()
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(trusted, ["10.0.0.0/24", "192.0.2.7/32", "10.1.0.0/16"]);
    assert_eq!(parse(MINIMAL).unwrap().listeners[0].proxy_trusted, None);
    let false_is_off = parse(&format!("{base}proxy_protocol = false\n")).unwrap();
    assert_eq!(false_is_off.listeners[0].proxy_trusted, None);
    for (extra, key) in [
        ("proxy_protocol = true\n", "listener[0].proxy_protocol"),
        (
            "proxy_trusted = [\"10.0.0.0/8\"]\n",
            "listener[0].proxy_trusted",
        ),
        (
            "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\", \"nowhere\"]\n",
            "listener[0].proxy_trusted[1]",
        ),
    ] {
        let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml:") && err.contains(&format!("key `{key}`")),
            "{extra}: {err}"
        );
    }
}

#[test]
fn certificates_by_server_name() {
    let tls = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"smtp\"\n\
               tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n";
    let config = parse(&format!(
        "{tls}[[certificate]]\nnames = [\"Mail.Example.ORG.\", \"*.example.net\"]\ncert = \"m.pem\"\nkey = \"m.key\"\n"
    ))
    .unwrap();
    assert_eq!(
        config.certificates[0].names,
        ["mail.example.org", "*.example.net"]
    );
    assert_eq!(
        config.certificates[0].files.cert,
        Path::new("/etc/postrider/m.pem")
    );
    for (text, why) in [
        (
            format!("{tls}[[certificate]]\nnames = []\ncert = \"m.pem\"\nkey = \"m.key\"\n"),
            "at least one",
        ),
        (
            format!(
                "{tls}[[certificate]]\nnames = [\"*.*.example\"]\ncert = \"m.pem\"\nkey = \"m.key\"\n"
            ),
            "not a host name",
        ),
        (
            format!(
                "{tls}[[certificate]]\nnames = [\"a.example\"]\ncert = \"m.pem\"\nkey = \"m.key\"\n\
                 [[certificate]]\nnames = [\"A.example\"]\ncert = \"n.pem\"\nkey = \"n.key\"\n"
            ),
            "earlier",
        ),
        (
            format!(
                "{MINIMAL}[[certificate]]\nnames = [\"a.example\"]\ncert = \"m.pem\"\nkey = \"m.key\"\n"
            ),
            "no listener has TLS",
        ),
    ] {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("certificate[") && err.contains(why), "{err}");
    }
}
