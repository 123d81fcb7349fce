//! Parsing and validation: TOML text to a checked [`Config`], with errors that name the file,
//! line and key.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;

use crate::error::{ConfigError, Source};
use crate::raw::*;
use crate::schema::*;
use crate::{EMBEDDED_DEFAULT, EMBEDDED_NAME, GrantError, NetworkGrants, Scheme};

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// The embedded default configuration, with paths relative to the working directory.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME, Path::new("."))
    }

    /// Parses and validates `text`; `name` appears in errors, `base` resolves relative paths.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Config, ConfigError> {
        let src = Source { name, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = src.line_col(offset);
            ConfigError::Parse {
                file: name.to_owned(),
                line,
                column,
                key: src.key_near(offset),
                message: e.message().trim().to_owned(),
            }
        })?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let hostname = raw.hostname.get_ref().trim().to_owned();
        if hostname.is_empty()
            || !hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return src.invalid(
                raw.hostname.span(),
                "hostname",
                "must be a host name (letters, digits, '-', '.')",
            );
        }

        if raw.listener.is_empty() {
            return src.invalid(0..0, "listener", "at least one [[listener]] is needed");
        }
        let mut listeners = Vec::with_capacity(raw.listener.len());
        for (i, l) in raw.listener.into_iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            let address: SocketAddr = match l.address.get_ref().parse() {
                Ok(a) => a,
                Err(e) => {
                    return src.invalid(
                        l.address.span(),
                        &key("address"),
                        format!("not an IP:port socket address: {e}"),
                    );
                }
            };
            let name_span = l.name.span();
            let name = l.name.into_inner();
            if name.is_empty() || listeners.iter().any(|x: &Listener| x.name == name) {
                return src.invalid(
                    name_span,
                    &key("name"),
                    "listener names must be non-empty and unique",
                );
            }
            let tls = match (l.tls_cert, l.tls_key) {
                (Some(cert), Some(key_file)) => Some(TlsFiles {
                    cert: resolve(cert.get_ref()),
                    key: resolve(key_file.get_ref()),
                }),
                (None, None) => None,
                (Some(c), None) => {
                    return src.invalid(c.span(), &key("tls_key"), "tls_cert needs tls_key");
                }
                (None, Some(k)) => {
                    return src.invalid(k.span(), &key("tls_cert"), "tls_key needs tls_cert");
                }
            };
            if tls.is_none() && l.kind != ListenerKind::Smtp {
                return src.invalid(name_span, &key("kind"), "submission and submissions listeners need tls_cert and tls_key (AUTH is only offered over TLS)");
            }
            let trusted = networks(&l.proxy_trusted, &key("proxy_trusted"), &src)?;
            let proxy_trusted = match &l.proxy_protocol {
                Some(on) if *on.get_ref() && trusted.is_empty() => {
                    return src.invalid(
                        on.span(),
                        &key("proxy_protocol"),
                        "needs proxy_trusted: the balancers' addresses or networks",
                    );
                }
                Some(on) if *on.get_ref() => Some(trusted),
                _ if !trusted.is_empty() => {
                    return src.invalid(
                        l.proxy_trusted[0].span(),
                        &key("proxy_trusted"),
                        "needs proxy_protocol = true",
                    );
                }
                _ => None,
            };
            listeners.push(Listener {
                name,
                address,
                kind: l.kind,
                tls,
                proxy_trusted,
            });
        }

        let admin = Admin {
            http: match &raw.admin.http {
                None => None,
                Some(text) => match text.get_ref().trim().parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        return src.invalid(
                            text.span(),
                            "admin.http",
                            format!("not an IP:port socket address: {e}"),
                        );
                    }
                },
            },
            metrics_domains: raw.admin.metrics_domains,
        };

        let mut local_domains = Vec::new();
        for (i, d) in raw.relay.local_domains.iter().enumerate() {
            let domain = d
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '@') {
                return src.invalid(
                    d.span(),
                    &format!("relay.local_domains[{i}]"),
                    "not a domain name",
                );
            }
            local_domains.push(domain);
        }
        let relay_networks = networks(&raw.relay.relay_networks, "relay.relay_networks", &src)?;

        let limits = raw.limits;
        if limits.max_message_size == 0
            || limits.max_recipients == 0
            || limits.max_connections == 0
            || limits.max_connections_per_ip == 0
            || limits.message_memory == 0
        {
            return src.invalid(0..0, "limits", "limits must be greater than zero");
        }
        if limits.greet_delay_ms > 60_000 {
            return src.invalid(
                0..0,
                "limits.greet_delay_ms",
                "at most 60000 (clients give up on a greeting after 5 minutes, and wait in line)",
            );
        }
        let timeouts = raw.timeouts;
        if timeouts.command == 0
            || timeouts.data_block == 0
            || timeouts.data_total == 0
            || timeouts.tls_handshake == 0
        {
            return src.invalid(0..0, "timeouts", "timeouts must be greater than zero");
        }

        if raw.smtp_auth.failure_window == 0 {
            return src.invalid(
                0..0,
                "smtp_auth.failure_window",
                "the failure window must be greater than zero",
            );
        }

        let settings = raw.plugins;
        if settings.max_instances == 0
            || settings.kv_timeout_ms == 0
            || settings.dns_timeout_ms == 0
        {
            return src.invalid(
                0..0,
                "plugins",
                "max_instances and timeouts must be greater than zero",
            );
        }
        let kv_redis = match &settings.kv_url {
            None => {
                if settings.kv_ca_file.is_some() {
                    return src.invalid(0..0, "plugins.kv_ca_file", "needs plugins.kv_url");
                }
                None
            }
            Some(url) => {
                let scheme = url.get_ref().split_once("://").map(|(s, _)| s);
                if !matches!(scheme, Some("redis" | "rediss")) {
                    return src.invalid(
                        url.span(),
                        "plugins.kv_url",
                        "must be a redis:// or rediss:// URL",
                    );
                }
                let cluster = settings.kv_cluster.get_ref();
                if cluster.is_empty()
                    || !cluster
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return src.invalid(
                        settings.kv_cluster.span(),
                        "plugins.kv_cluster",
                        "must be letters, digits, '-', '_' or '.'",
                    );
                }
                Some(KvRedis {
                    url: url.get_ref().clone(),
                    cluster: cluster.clone(),
                    ca_file: settings.kv_ca_file.as_deref().map(resolve),
                })
            }
        };
        let mut plugins: Vec<PluginConfig> = Vec::new();
        for (i, p) in raw.plugin.into_iter().enumerate() {
            let key = |k: &str| format!("plugin[{i}].{k}");
            let network = network_grants(&p, &key, &src, &resolve)?;
            let name_span = p.name.span();
            let name = p.name.into_inner();
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok || plugins.iter().any(|x| x.name == name) {
                return src.invalid(
                    name_span,
                    &key("name"),
                    "plugin names must be unique and made of letters, digits, '-' and '_'",
                );
            }
            if !(1..=60_000).contains(p.timeout_ms.get_ref()) {
                return src.invalid(
                    p.timeout_ms.span(),
                    &key("timeout_ms"),
                    "must be between 1 and 60000",
                );
            }
            if !(1..=4096).contains(p.memory_mb.get_ref()) {
                return src.invalid(
                    p.memory_mb.span(),
                    &key("memory_mb"),
                    "must be between 1 and 4096",
                );
            }
            if !(1..=1_000_000).contains(p.reuse.get_ref()) {
                return src.invalid(
                    p.reuse.span(),
                    &key("reuse"),
                    "must be between 1 (a fresh instance per transaction) and 1000000",
                );
            }
            let pool_idle = match &p.pool_idle {
                None => DEFAULT_POOL_IDLE.min(settings.max_instances),
                Some(n) if *p.reuse.get_ref() == 1 => {
                    return src.invalid(
                        n.span(),
                        &key("pool_idle"),
                        "needs reuse greater than 1 (without reuse no instance is kept)",
                    );
                }
                Some(n) if !(1..=settings.max_instances).contains(n.get_ref()) => {
                    return src.invalid(
                        n.span(),
                        &key("pool_idle"),
                        "must be between 1 and plugins.max_instances",
                    );
                }
                Some(n) => *n.get_ref(),
            };
            let config_json = match &p.config {
                Some(table) => match serde_json::to_string(table) {
                    Ok(json) => json,
                    Err(e) => {
                        return src.invalid(
                            name_span,
                            &key("config"),
                            format!("cannot be passed to the plugin: {e}"),
                        );
                    }
                },
                None => "{}".to_owned(),
            };
            plugins.push(PluginConfig {
                name,
                // `builtin:NAME` names a plugin inside the relay binary, not a file.
                path: if crate::builtin_name(&p.path).is_some() {
                    p.path.clone()
                } else {
                    resolve(&p.path)
                },
                config_json,
                failure_policy: p.failure_policy,
                timeout_ms: *p.timeout_ms.get_ref(),
                memory_mb: *p.memory_mb.get_ref(),
                reuse: *p.reuse.get_ref(),
                pool_idle,
                log_level: p.log_level,
                network,
            });
        }
        let milters = milters(raw.milter, &plugins, &src)?;
        let mut certificates: Vec<Certificate> = Vec::new();
        for (i, c) in raw.certificate.iter().enumerate() {
            let key = format!("certificate[{i}].names");
            let mut names = Vec::new();
            for name in c.names.get_ref() {
                let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
                let bare = lower.strip_prefix("*.").unwrap_or(&lower);
                let ok = bare.contains('.')
                    && bare.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    });
                if !ok {
                    return src.invalid(
                        c.names.span(),
                        &key,
                        format!("{name:?} is not a host name or *.domain"),
                    );
                }
                if certificates.iter().any(|x| x.names.contains(&lower)) {
                    return src.invalid(
                        c.names.span(),
                        &key,
                        format!("{name:?} is named by an earlier [[certificate]] too"),
                    );
                }
                names.push(lower);
            }
            if names.is_empty() {
                return src.invalid(c.names.span(), &key, "at least one server name");
            }
            if !listeners.iter().any(|l: &Listener| l.tls.is_some()) {
                return src.invalid(
                    c.names.span(),
                    &key,
                    "no listener has TLS (tls_cert, tls_key) to serve it on",
                );
            }
            certificates.push(Certificate {
                names,
                files: TlsFiles {
                    cert: resolve(&c.cert),
                    key: resolve(&c.key),
                },
            });
        }
        let mut nameservers = Vec::new();
        for (i, n) in raw.dns.nameservers.iter().enumerate() {
            let text = n.get_ref().trim();
            let addr = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match addr {
                Ok(a) => nameservers.push(a),
                Err(_) => {
                    return src.invalid(
                        n.span(),
                        &format!("dns.nameservers[{i}]"),
                        "not an IP address or IP:port",
                    );
                }
            }
        }

        let mut delivery = raw.delivery;
        delivery.ca_file = delivery.ca_file.as_deref().map(resolve);
        if delivery.ca_file.is_some() && delivery.tls != TlsPolicy::Verify {
            return src.invalid(0..0, "delivery.ca_file", "ca_file is for tls = \"verify\"");
        }
        if delivery.concurrency == 0
            || delivery.per_destination == 0
            || delivery.retry_intervals.contains(&0)
            || delivery.retry_intervals.is_empty()
            || delivery.max_age == 0
            || delivery.smtp_port == 0
            || delivery.mta_sts_port == 0
        {
            return src.invalid(0..0, "delivery", "concurrency, per_destination, smtp_port, mta_sts_port, max_age and each retry interval must be greater than zero");
        }
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let domains_span = r.domains.span();
            let domains = domain_list(&src, r.domains, &key("domains"))?;
            if r.relay.is_none() {
                let relay_only = [
                    ("tls", r.tls.as_ref().map(|t| t.span())),
                    ("ca_file", r.ca_file.as_ref().map(|c| c.span())),
                    ("insecure_auth", r.insecure_auth.as_ref().map(|b| b.span())),
                ];
                if let Some((name, Some(span))) = relay_only.into_iter().find(|(_, s)| s.is_some())
                {
                    return src.invalid(span, &key(name), "only for a relay route");
                }
            }
            let to = match (r.relay, r.lmtp, r.maildir) {
                (Some(relay), None, None) => {
                    let text = relay.get_ref();
                    let (host, port) = match text.rsplit_once(':') {
                        Some((h, p)) if !h.contains(':') || h.starts_with('[') => match p
                            .parse::<u16>()
                        {
                            Ok(port) if port > 0 => (h.trim_matches(['[', ']']).to_owned(), port),
                            _ => {
                                return src.invalid(
                                    relay.span(),
                                    &key("relay"),
                                    "expected host or host:port",
                                );
                            }
                        },
                        _ => (text.clone(), 25),
                    };
                    if host.is_empty() {
                        return src.invalid(
                            relay.span(),
                            &key("relay"),
                            "expected host or host:port",
                        );
                    }
                    let auth = match (r.auth_user, r.auth_password) {
                        (Some(u), Some(p)) => Some((u, p)),
                        (None, None) => None,
                        _ => {
                            return src.invalid(
                                relay.span(),
                                &key("auth_user"),
                                "auth_user and auth_password go together",
                            );
                        }
                    };
                    let tls_span = r.tls.as_ref().map_or(relay.span(), |t| t.span());
                    let tls = match (r.tls.map(|t| t.into_inner()), &auth) {
                        (Some(tls), _) => tls,
                        (None, Some(_)) => TlsPolicy::Verify,
                        (None, None) => TlsPolicy::Opportunistic,
                    };
                    if matches!(tls, TlsPolicy::MtaSts | TlsPolicy::Auto) {
                        return src.invalid(
                            tls_span,
                            &key("tls"),
                            "mta-sts and auto choose among a domain's MX hosts; a relay host is named here: use verify or dane",
                        );
                    }
                    let insecure_auth = r.insecure_auth.as_ref().is_some_and(|b| *b.get_ref());
                    let insecure_span = r.insecure_auth.as_ref().map_or(0..0, |b| b.span());
                    match (&auth, tls, insecure_auth) {
                        (None, _, true) => {
                            return src.invalid(
                                insecure_span,
                                &key("insecure_auth"),
                                "insecure_auth needs auth_user",
                            );
                        }
                        (Some(_), TlsPolicy::Verify, true) => {
                            return src.invalid(
                                insecure_span,
                                &key("insecure_auth"),
                                "insecure_auth is for tls = \"require\"; with \"verify\" the certificate is checked",
                            );
                        }
                        (Some(_), TlsPolicy::Require, false) => {
                            return src.invalid(
                                tls_span,
                                &key("tls"),
                                "credentials go only over TLS whose certificate is verified: tls = \"verify\" (the default with auth_user; ca_file for a private CA), or insecure_auth = true to send them over TLS that anyone on the path can intercept",
                            );
                        }
                        (
                            Some(_),
                            TlsPolicy::None | TlsPolicy::Opportunistic | TlsPolicy::Dane,
                            _,
                        ) => {
                            return src.invalid(
                                tls_span,
                                &key("tls"),
                                "with auth_user, tls is \"verify\" (the default), or \"require\" with insecure_auth = true",
                            );
                        }
                        _ => {}
                    }
                    if let Some(ca) = &r.ca_file
                        && tls != TlsPolicy::Verify
                    {
                        return src.invalid(
                            ca.span(),
                            &key("ca_file"),
                            "ca_file is for tls = \"verify\"",
                        );
                    }
                    RouteTarget::Relay {
                        host,
                        port,
                        tls,
                        ca_file: r.ca_file.map(|c| resolve(c.get_ref())),
                        auth,
                        insecure_auth,
                    }
                }
                (None, Some(lmtp), None) => {
                    let t = lmtp.get_ref();
                    let ok = match t.strip_prefix("unix:") {
                        Some(path) => path.starts_with('/'),
                        None => t.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                        }),
                    };
                    if !ok {
                        return src.invalid(
                            lmtp.span(),
                            &key("lmtp"),
                            "expected host:port or unix:/path",
                        );
                    }
                    RouteTarget::Lmtp(t.clone())
                }
                (None, None, Some(dir)) => {
                    if dir.get_ref().as_os_str().is_empty() {
                        return src.invalid(dir.span(), &key("maildir"), "a directory");
                    }
                    RouteTarget::Maildir(resolve(dir.get_ref()))
                }
                _ => {
                    return src.invalid(
                        domains_span,
                        &key("relay"),
                        "a route needs exactly one of relay, lmtp and maildir",
                    );
                }
            };
            routes.push(Route { domains, to });
        }

        let mut tls_policies = Vec::new();
        for (i, p) in raw.tls_policy.into_iter().enumerate() {
            let key = |k: &str| format!("tls_policy[{i}].{k}");
            let domains = domain_list(&src, p.domains, &key("domains"))?;
            if let Some(ca) = &p.ca_file
                && p.tls != TlsPolicy::Verify
            {
                return src.invalid(
                    ca.span(),
                    &key("ca_file"),
                    "ca_file is for tls = \"verify\"",
                );
            }
            tls_policies.push(DomainTls {
                domains,
                tls: p.tls,
                ca_file: p.ca_file.map(|c| resolve(c.get_ref())),
            });
        }

        let auth = raw.authentication;
        if auth.timeout_ms == 0 {
            return src.invalid(
                0..0,
                "authentication.timeout_ms",
                "must be greater than zero",
            );
        }
        let authserv_id = auth.authserv_id.unwrap_or_else(|| hostname.clone());
        if authserv_id.is_empty() || authserv_id.chars().any(|c| c.is_whitespace() || c == ';') {
            return src.invalid(
                0..0,
                "authentication.authserv_id",
                "must be a non-empty token (no spaces or ';')",
            );
        }
        let resolve_key = |k: SigningKey| SigningKey {
            key_file: resolve(&k.key_file),
            ..k
        };
        let mut dkim_sign = Vec::with_capacity(raw.dkim_sign.len());
        for (i, k) in raw.dkim_sign.into_iter().enumerate() {
            if dkim_sign
                .iter()
                .any(|d: &SigningKey| d.domain.eq_ignore_ascii_case(&k.domain))
            {
                return src.invalid(
                    0..0,
                    &format!("dkim_sign[{i}].domain"),
                    "a domain can have only one signing key",
                );
            }
            dkim_sign.push(resolve_key(k));
        }
        let authentication = Authentication {
            verify: auth.verify,
            authserv_id,
            dmarc_enforce: auth.dmarc_enforce,
            timeout_ms: auth.timeout_ms,
            arc_seal: auth.arc_seal.map(resolve_key),
            dkim_sign,
        };

        Ok(Config {
            origin: name.to_owned(),
            hostname,
            spool_dir: resolve(&raw.spool_dir),
            admin_socket: resolve(&raw.admin_socket),
            admin,
            listeners,
            relay: Relay {
                local_domains,
                relay_networks,
                passwords: raw.relay.passwords.as_deref().map(resolve),
            },
            limits,
            timeouts,
            smtp_auth: raw.smtp_auth,
            plugin_settings: PluginSettings {
                cache_dir: resolve(&settings.cache_dir),
                kv_path: resolve(&settings.kv_path),
                kv_redis,
                max_instances: settings.max_instances,
                kv_timeout_ms: settings.kv_timeout_ms,
                dns_timeout_ms: settings.dns_timeout_ms,
            },
            plugins,
            milters,
            nameservers,
            trust_anchor: raw.dns.trust_anchor.as_deref().map(resolve),
            delivery,
            routes,
            tls_policies,
            certificates,
            authentication,
        })
    }
}

/// A list of recipient domains ("*.example.org" for subdomains), lower-cased, without a
/// trailing dot.
fn domain_list(
    src: &Source<'_>,
    domains: toml::Spanned<Vec<String>>,
    key: &str,
) -> Result<Vec<String>, ConfigError> {
    let span = domains.span();
    let list: Vec<String> = domains
        .into_inner()
        .iter()
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if list.is_empty() || list.iter().any(|d| d.is_empty() || d.contains(['@', ' '])) {
        return src.invalid(span, key, "a non-empty list of domain names");
    }
    Ok(list)
}

/// A list of IP addresses or CIDR networks (`key[i]` names a bad one).
fn networks(
    list: &[toml::Spanned<String>],
    key: &str,
    src: &Source<'_>,
) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::with_capacity(list.len());
    for (i, n) in list.iter().enumerate() {
        let text = n.get_ref().trim();
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(net) => out.push(net.trunc()),
            Err(_) => {
                return src.invalid(
                    n.span(),
                    &format!("{key}[{i}]"),
                    "not an IP address or CIDR network",
                );
            }
        }
    }
    Ok(out)
}

/// The `[[milter]]` entries: names unique among plugins and milters, `after` naming one of
/// them placed before it.
fn milters(
    raw: Vec<RawMilter>,
    plugins: &[PluginConfig],
    src: &Source<'_>,
) -> Result<Vec<MilterConfig>, ConfigError> {
    let mut out: Vec<MilterConfig> = Vec::new();
    for (i, m) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("milter[{i}].{k}");
        let name = m.name.get_ref().clone();
        let known =
            |n: &str| plugins.iter().any(|p| p.name == n) || out.iter().any(|x| x.name == n);
        let name_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok || known(&name) {
            return src.invalid(
                m.name.span(),
                &key("name"),
                "plugin and milter names must be unique and made of letters, digits, '-' and '_'",
            );
        }
        let address = match postrider_milter::Address::parse(m.address.get_ref().trim()) {
            Ok(a) => a,
            Err(e) => return src.invalid(m.address.span(), &key("address"), e),
        };
        let stages = m.stages.get_ref();
        if stages.is_empty() || stages.contains(&Stage::Route) {
            return src.invalid(
                m.stages.span(),
                &key("stages"),
                "a non-empty list of connect, helo, mail-from, rcpt, data (milters do not route)",
            );
        }
        let after = match &m.after {
            Some(a) if !known(a.get_ref()) => {
                return src.invalid(
                    a.span(),
                    &key("after"),
                    "must name a plugin or a milter listed before this one",
                );
            }
            Some(a) => Some(a.get_ref().clone()),
            None => None,
        };
        let timeouts = [
            (&m.connect_timeout_ms, "connect_timeout_ms"),
            (&m.command_timeout_ms, "command_timeout_ms"),
            (&m.content_timeout_ms, "content_timeout_ms"),
        ];
        for (t, k) in timeouts {
            if !(1..=3_600_000).contains(t.get_ref()) {
                return src.invalid(t.span(), &key(k), "must be between 1 and 3600000");
            }
        }
        let mut unique = Vec::new();
        for s in stages {
            if !unique.contains(s) {
                unique.push(*s);
            }
        }
        out.push(MilterConfig {
            name,
            address,
            stages: unique,
            after,
            failure_policy: m.failure_policy,
            connect_timeout_ms: *m.connect_timeout_ms.get_ref(),
            command_timeout_ms: *m.command_timeout_ms.get_ref(),
            content_timeout_ms: *m.content_timeout_ms.get_ref(),
        });
    }
    Ok(out)
}

/// A `[[plugin]]`'s network grants; an error names the entry (`plugin[0].allow_http[1]`).
fn network_grants(
    p: &RawPlugin,
    key: &dyn Fn(&str) -> String,
    src: &Source<'_>,
    resolve: &dyn Fn(&Path) -> std::path::PathBuf,
) -> Result<NetworkGrants, ConfigError> {
    fn list<T: std::str::FromStr<Err = GrantError>>(
        entries: &[toml::Spanned<String>],
        name: &str,
        key: &dyn Fn(&str) -> String,
        src: &Source<'_>,
    ) -> Result<Vec<T>, ConfigError> {
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            match e.get_ref().trim().parse() {
                Ok(g) => out.push(g),
                Err(err) => return src.invalid(e.span(), &key(&format!("{name}[{i}]")), err),
            }
        }
        Ok(out)
    }
    let mut grants = NetworkGrants {
        http: list(&p.allow_http, "allow_http", key, src)?,
        connect: list(&p.allow_connect, "allow_connect", key, src)?,
        udp: list(&p.allow_udp, "allow_udp", key, src)?,
        ..NetworkGrants::default()
    };
    if let Some(ca) = &p.ca_file {
        if !grants.http.iter().any(|g| g.scheme == Scheme::Https) {
            return src.invalid(
                ca.span(),
                &key("ca_file"),
                "needs an https:// allow_http grant",
            );
        }
        grants.ca_file = Some(resolve(ca.get_ref()));
    }
    if let Some(kb) = &p.max_http_response_kb {
        if grants.http.is_empty() {
            return src.invalid(kb.span(), &key("max_http_response_kb"), "needs allow_http");
        }
        if !(1..=65_536).contains(kb.get_ref()) {
            return src.invalid(
                kb.span(),
                &key("max_http_response_kb"),
                "must be between 1 and 65536",
            );
        }
        grants.max_http_response_bytes = *kb.get_ref() as usize * 1024;
    }
    Ok(grants)
}
