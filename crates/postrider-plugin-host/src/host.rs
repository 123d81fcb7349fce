//! The host side of every interface a plugin imports: log, kv, dns, clock, message, types.
//! Each call is bounded in time and size; errors the plugin should handle are returned to it,
//! never turned into traps.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use wasmtime::component::Resource;

use crate::PluginLogLevel;
use crate::bindings::postrider::plugin::{clock, dns, kv, log, message, types};
use crate::message::MessageView;
use crate::state::HostState;

/// Longest key or log line a plugin may pass; longer ones are cut (log) or refused (kv).
const MAX_LOG_LEN: usize = 4096;
/// Most bytes `message.raw` returns in one call.
const MAX_RAW_CHUNK: u32 = 1 << 20;
/// Most bytes `message.text` returns.
const MAX_TEXT: u32 = 4 << 20;

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let started = Instant::now();
        let mut text: String = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if text.len() > MAX_LOG_LEN {
            let mut cut = MAX_LOG_LEN;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let plugin = &*self.namespace;
        let name = match level {
            log::Level::Trace => "log.trace",
            log::Level::Debug => "log.debug",
            log::Level::Info => "log.info",
            log::Level::Warn => "log.warn",
            log::Level::Error => "log.error",
        };
        // With a `log_level`, lines below it are dropped and debug/trace ones that pass are
        // written at info (naming their own level), so they show at the relay's default.
        let shown = match self.log_level {
            None => Some(level),
            Some(min) if rank(level) >= min => Some(match level {
                log::Level::Trace | log::Level::Debug => log::Level::Info,
                other => other,
            }),
            Some(_) => None,
        };
        let plugin_level = &name["log.".len()..];
        match shown {
            None => {}
            Some(raised) if raised != level => tracing::info!(plugin, plugin_level, "{text}"),
            Some(log::Level::Trace) => tracing::trace!(plugin, "{text}"),
            Some(log::Level::Debug) => tracing::debug!(plugin, "{text}"),
            Some(log::Level::Info) => tracing::info!(plugin, "{text}"),
            Some(log::Level::Warn) => tracing::warn!(plugin, "{text}"),
            Some(log::Level::Error) => tracing::error!(plugin, "{text}"),
        }
        self.record(name, text, String::new(), started);
        Ok(())
    }
}

/// The config's name for a WIT log level.
fn rank(level: log::Level) -> PluginLogLevel {
    match level {
        log::Level::Trace => PluginLogLevel::Trace,
        log::Level::Debug => PluginLogLevel::Debug,
        log::Level::Info => PluginLogLevel::Info,
        log::Level::Warn => PluginLogLevel::Warn,
        log::Level::Error => PluginLogLevel::Error,
    }
}

fn kv_err(e: postrider_kv::KvError) -> kv::KvError {
    match e {
        postrider_kv::KvError::Unavailable(m) => kv::KvError::Unavailable(m),
        postrider_kv::KvError::Invalid(m) => kv::KvError::Invalid(m),
    }
}

/// Runs a kv operation with the configured timeout.
async fn bounded<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, postrider_kv::KvError>>,
) -> Result<T, kv::KvError> {
    match tokio::time::timeout(limit, op).await {
        Ok(r) => r.map_err(kv_err),
        Err(_) => Err(kv::KvError::Unavailable(format!(
            "no answer within {} ms",
            limit.as_millis()
        ))),
    }
}

fn ttl(seconds: Option<u32>) -> Option<Duration> {
    seconds.map(|s| Duration::from_secs(u64::from(s)))
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let r = bounded(s.kv_timeout, s.kv.get(&self.namespace, &key)).await;
        self.record(
            "kv.get",
            key,
            format!(
                "{:?}",
                r.as_ref()
                    .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
            ),
            started,
        );
        Ok(r)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<(), kv::KvError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let args = format!(
            "{key} = {:?} ttl {ttl_seconds:?}",
            String::from_utf8_lossy(&value)
        );
        let r = bounded(
            s.kv_timeout,
            s.kv.set(&self.namespace, &key, value, ttl(ttl_seconds)),
        )
        .await;
        self.record("kv.set", args, format!("{r:?}"), started);
        Ok(r)
    }

    async fn incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_seconds: Option<u32>,
    ) -> wasmtime::Result<Result<i64, kv::KvError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let args = format!("{key} += {delta} ttl {ttl_seconds:?}");
        let r = bounded(
            s.kv_timeout,
            s.kv.incr(&self.namespace, &key, delta, ttl(ttl_seconds)),
        )
        .await;
        self.record("kv.incr", args, format!("{r:?}"), started);
        Ok(r)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let r = bounded(s.kv_timeout, s.kv.delete(&self.namespace, &key)).await;
        self.record("kv.delete", key, format!("{r:?}"), started);
        Ok(r)
    }
}

fn dns_err(e: postrider_dns::DnsError) -> dns::DnsError {
    match e {
        postrider_dns::DnsError::NxDomain => dns::DnsError::NxDomain,
        postrider_dns::DnsError::NoData => dns::DnsError::NoData,
        postrider_dns::DnsError::Timeout => dns::DnsError::Timeout,
        postrider_dns::DnsError::Failure(m) => dns::DnsError::Failure(m),
        postrider_dns::DnsError::Bogus(m) => dns::DnsError::Failure(format!("DNSSEC: {m}")),
    }
}

/// Runs a lookup with the configured timeout.
async fn lookup<T>(
    limit: Duration,
    op: impl Future<Output = Result<T, postrider_dns::DnsError>>,
) -> Result<T, dns::DnsError> {
    match tokio::time::timeout(limit, op).await {
        Ok(r) => r.map_err(dns_err),
        Err(_) => Err(dns::DnsError::Timeout),
    }
}

impl dns::Host for HostState {
    async fn lookup_ip(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let r = lookup(s.dns_timeout, s.dns.lookup_ip(&name))
            .await
            .map(|ips| ips.iter().map(IpAddr::to_string).collect::<Vec<_>>());
        self.record("dns.lookup-ip", name, format!("{r:?}"), started);
        Ok(r)
    }

    async fn lookup_mx(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Vec<(u16, String)>, dns::DnsError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let r = lookup(s.dns_timeout, s.dns.lookup_mx(&name)).await;
        self.record("dns.lookup-mx", name, format!("{r:?}"), started);
        Ok(r)
    }

    async fn lookup_txt(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        let started = Instant::now();
        let s = self.services.clone();
        let r = lookup(s.dns_timeout, s.dns.lookup_txt(&name)).await;
        self.record("dns.lookup-txt", name, format!("{r:?}"), started);
        Ok(r)
    }

    async fn lookup_ptr(
        &mut self,
        ip: String,
    ) -> wasmtime::Result<Result<Vec<String>, dns::DnsError>> {
        let started = Instant::now();
        let r = match ip.parse::<IpAddr>() {
            Ok(addr) => {
                let s = self.services.clone();
                lookup(s.dns_timeout, s.dns.lookup_ptr(addr)).await
            }
            Err(_) => Err(dns::DnsError::Failure(format!("not an IP address: {ip}"))),
        };
        self.record("dns.lookup-ptr", ip, format!("{r:?}"), started);
        Ok(r)
    }
}

impl clock::Host for HostState {
    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.services.clock.now_ms())
    }
}

impl message::Host for HostState {}

impl message::HostMessage for HostState {
    async fn size(&mut self, msg: Resource<MessageView>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&msg)?.size())
    }

    async fn headers(
        &mut self,
        msg: Resource<MessageView>,
    ) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.table.get(&msg)?.headers())
    }

    async fn header(
        &mut self,
        msg: Resource<MessageView>,
        name: String,
    ) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&msg)?.header(&name))
    }

    async fn text(
        &mut self,
        msg: Resource<MessageView>,
        max_bytes: u32,
    ) -> wasmtime::Result<String> {
        Ok(self.table.get(&msg)?.text(max_bytes.min(MAX_TEXT)))
    }

    async fn attachments(
        &mut self,
        msg: Resource<MessageView>,
    ) -> wasmtime::Result<Vec<message::Attachment>> {
        Ok(self.table.get(&msg)?.attachments())
    }

    async fn raw(
        &mut self,
        msg: Resource<MessageView>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&msg)?.raw(offset, len.min(MAX_RAW_CHUNK)))
    }

    async fn authentication(
        &mut self,
        msg: Resource<MessageView>,
    ) -> wasmtime::Result<message::Authentication> {
        Ok(self.table.get(&msg)?.authentication())
    }

    async fn set_body(
        &mut self,
        msg: Resource<MessageView>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.table.get_mut(&msg)?.set_body(&body))
    }

    async fn append_text(
        &mut self,
        msg: Resource<MessageView>,
        text: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.table.get_mut(&msg)?.append_text(&text))
    }

    async fn drop(&mut self, msg: Resource<MessageView>) -> wasmtime::Result<()> {
        // The host owns the message and removes it after on-data; a guest drop of its borrow
        // needs nothing here.
        let _ = msg;
        Ok(())
    }
}
