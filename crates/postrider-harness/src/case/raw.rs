//! The case file as written: serde's input types, and the short forms (`"reject"` for
//! `{ verdict = "reject" }`, `tls = true`, a kv value or a table) they accept.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use postrider_plugin_host::{FailurePolicy, TlsPolicy};
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use toml::Spanned;

use super::*;

/// Inputs shared by `[defaults]` and `[[case]]` (the case-only keys are refused in defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInputs {
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) config: Option<toml::Table>,
    pub(crate) failure_policy: Option<FailurePolicy>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) memory_mb: Option<u32>,
    pub(crate) reuse: Option<u32>,
    pub(crate) pool_idle: Option<u32>,
    pub(crate) clock_ms: Option<u64>,
    pub(crate) connection: Option<ConnSpec>,
    pub(crate) helo: Option<String>,
    pub(crate) mail_from: Option<String>,
    pub(crate) mail_params: Option<toml::Table>,
    pub(crate) rcpt: Option<Vec<String>>,
    pub(crate) message: Option<String>,
    pub(crate) message_file: Option<PathBuf>,
    pub(crate) queue_id: Option<String>,
    pub(crate) spf: Option<SpfShort>,
    pub(crate) authentication: Option<RawAuthentication>,
    pub(crate) dns: Option<DnsMock>,
    pub(crate) kv: Option<BTreeMap<String, RawKvPreset>>,
    pub(crate) kv_error: Option<KvFault>,
    pub(crate) allow_http: Option<Vec<String>>,
    pub(crate) allow_connect: Option<Vec<String>>,
    pub(crate) allow_udp: Option<Vec<String>>,
    pub(crate) http: Option<Vec<RawHttpMock>>,
    pub(crate) tcp: Option<Vec<RawTcpMock>>,
    pub(crate) expect_load_error: Option<String>,
    pub(crate) expect: Option<RawExpect>,
    pub(crate) run: Option<Vec<RawRun>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    #[serde(default)]
    pub(crate) defaults: RawInputs,
    #[serde(default)]
    pub(crate) case: Vec<Spanned<RawInputs>>,
}

/// One session of a case (`[[case.run]]`): what changes, and what to expect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRun {
    pub(crate) label: Option<String>,
    pub(crate) advance_ms: Option<u64>,
    pub(crate) advance_secs: Option<u64>,
    pub(crate) repeat: Option<u32>,
    pub(crate) connection: Option<ConnSpec>,
    pub(crate) helo: Option<String>,
    pub(crate) mail_from: Option<String>,
    pub(crate) mail_params: Option<toml::Table>,
    pub(crate) rcpt: Option<Vec<String>>,
    pub(crate) message: Option<String>,
    pub(crate) message_file: Option<PathBuf>,
    pub(crate) queue_id: Option<String>,
    pub(crate) spf: Option<SpfShort>,
    pub(crate) authentication: Option<RawAuthentication>,
    pub(crate) expect: Option<RawExpect>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpect {
    pub(crate) connect: Option<StageShort>,
    pub(crate) helo: Option<StageShort>,
    pub(crate) mail_from: Option<StageShort>,
    pub(crate) rcpt: Option<BTreeMap<String, StageShort>>,
    pub(crate) data: Option<StageShort>,
    pub(crate) headers: Option<Vec<RawHeader>>,
    pub(crate) quarantine: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) routes: Option<BTreeMap<String, RouteShort>>,
    pub(crate) kv: Option<BTreeMap<String, KvValue>>,
    pub(crate) kv_match: Option<KvMatch>,
    pub(crate) kv_absent: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStage {
    pub(crate) verdict: VerdictKind,
    pub(crate) code: Option<u16>,
    pub(crate) enhanced: Option<String>,
    pub(crate) text: Option<String>,
    pub(crate) failure: Option<FailureKind>,
    pub(crate) failure_text: Option<String>,
    pub(crate) rewrite: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeader {
    pub(crate) prepend: Option<String>,
    pub(crate) append: Option<String>,
    pub(crate) remove: Option<String>,
    pub(crate) replace: Option<String>,
    pub(crate) index: Option<u32>,
    pub(crate) value: Option<String>,
    pub(crate) value_regex: Option<String>,
}

/// `spf = "pass"` or `spf = { result = "pass", domain = "sender.example" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpf {
    pub(crate) result: String,
    pub(crate) domain: Option<String>,
}

/// `authentication = { dkim = [{ result, domain, selector }], dmarc = "...", arc = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthentication {
    pub(crate) dkim: Option<Vec<RawDkim>>,
    pub(crate) dmarc: Option<String>,
    pub(crate) arc: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkim {
    pub(crate) result: String,
    pub(crate) domain: String,
    pub(crate) selector: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum RawRoute {
    Mx,
    Relay {
        host: Option<String>,
        port: Option<u16>,
        tls: Option<TlsPolicy>,
    },
    Lmtp {
        target: Option<String>,
    },
    Hold {
        reason: Option<String>,
    },
    Discard,
    Bounce {
        code: Option<u16>,
        enhanced: Option<String>,
        text: Option<String>,
    },
    Defer {
        reason: Option<String>,
    },
}

// ---- Values with a short form: `"reject"` or `{ verdict = "reject", code = 550 }`, etc. ----

/// A table, or a string standing for a table with one key set.
pub(crate) trait ShortForm: Sized {
    const EXPECTING: &'static str;
    fn from_short(s: &str) -> Result<Self, String>;
}

/// `T` from either its table form or its short string form.
#[derive(Debug, Clone)]
pub(crate) struct Short<T>(pub(crate) T);

impl<'de, T: Deserialize<'de> + ShortForm> Deserialize<'de> for Short<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + ShortForm> Visitor<'de> for V<T> {
            type Value = Short<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                T::from_short(s).map(Short).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Short)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

pub(crate) type StageShort = Short<RawStage>;
pub(crate) type RouteShort = Short<RawRoute>;
pub(crate) type SpfShort = Short<RawSpf>;

impl ShortForm for RawSpf {
    const EXPECTING: &'static str =
        "a result (\"pass\", \"fail\", \"softfail\", ...) or a table { result, domain }";
    fn from_short(s: &str) -> Result<Self, String> {
        Ok(RawSpf {
            result: s.to_owned(),
            domain: None,
        })
    }
}

impl ShortForm for RawStage {
    const EXPECTING: &'static str = "a verdict (\"continue\", \"accept\", \"pass\", \"reject\", \"tempfail\", \"disconnect\", \"not-reached\") or a table { verdict, code, enhanced, text, failure, failure_text, rewrite }";
    fn from_short(s: &str) -> Result<Self, String> {
        let verdict =
            VerdictKind::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s))
                .map_err(|e| e.to_string())?;
        Ok(RawStage {
            verdict,
            code: None,
            enhanced: None,
            text: None,
            failure: None,
            failure_text: None,
            rewrite: None,
        })
    }
}

impl ShortForm for RawRoute {
    const EXPECTING: &'static str = "\"mx\", \"discard\", or a table { type = \"relay\" | \"lmtp\" | \"hold\" | \"bounce\" | \"defer\", ... }";
    fn from_short(s: &str) -> Result<Self, String> {
        Ok(match s {
            "mx" => RawRoute::Mx,
            "discard" => RawRoute::Discard,
            "relay" => RawRoute::Relay {
                host: None,
                port: None,
                tls: None,
            },
            "lmtp" => RawRoute::Lmtp { target: None },
            "hold" => RawRoute::Hold { reason: None },
            "bounce" => RawRoute::Bounce {
                code: None,
                enhanced: None,
                text: None,
            },
            "defer" => RawRoute::Defer { reason: None },
            other => return Err(format!("unknown route type {other:?}")),
        })
    }
}

/// A kv value: a string or an integer (counters are stored as decimal text).
#[derive(Debug, Clone)]
pub(crate) struct KvValue(pub(crate) String);

impl<'de> Deserialize<'de> for KvValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KvValue, E> {
                Ok(KvValue(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<KvValue, E> {
                Ok(KvValue(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<KvValue, E> {
                Ok(KvValue(n.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A preset: `"value"`, `42`, or `{ value = "...", ttl_secs = 60 }`.
#[derive(Debug, Clone)]
pub(crate) struct RawKvPreset {
    pub(crate) value: String,
    pub(crate) ttl_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KvPresetTable {
    pub(crate) value: KvValue,
    pub(crate) ttl_secs: Option<u64>,
}

impl<'de> Deserialize<'de> for RawKvPreset {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawKvPreset;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a table { value, ttl_secs }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawKvPreset, E> {
                Ok(RawKvPreset {
                    value: s.to_owned(),
                    ttl_secs: None,
                })
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawKvPreset, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawKvPreset, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawKvPreset, A::Error> {
                let t = KvPresetTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawKvPreset {
                    value: t.value.0,
                    ttl_secs: t.ttl_secs,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsTable {
    pub(crate) protocol: Option<String>,
    pub(crate) cipher: Option<String>,
    pub(crate) sni: Option<String>,
}

impl<'de> Deserialize<'de> for TlsSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TlsTable::deserialize(d).map(|t| TlsSpec {
            protocol: t.protocol.unwrap_or_else(|| "TLSv1.3".into()),
            cipher: t
                .cipher
                .unwrap_or_else(|| "TLS13_AES_256_GCM_SHA384".into()),
            sni: t.sni,
        })
    }
}

/// `tls = true | false | { protocol, cipher, sni }` (in [`ConnSpec`], where `Option` is
/// "not given" and the inner `Option` is "no TLS").
pub(crate) fn default_tls() -> TlsSpec {
    TlsSpec {
        protocol: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        sni: None,
    }
}

pub(crate) fn de_tls<'de, D: de::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<TlsSpec>>, D::Error> {
    TlsField::deserialize(d).map(|t| Some(t.0))
}

/// Deserializes `Option<TlsSpec>` from a bool or a table.
#[derive(Debug)]
pub(crate) struct TlsField(Option<TlsSpec>);

impl<'de> Deserialize<'de> for TlsField {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TlsField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table { protocol, cipher, sni }")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<TlsField, E> {
                Ok(TlsField(b.then(default_tls)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TlsField, A::Error> {
                TlsSpec::deserialize(MapAccessDeserializer::new(map)).map(|t| TlsField(Some(t)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for DnsAnswer {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DnsAnswer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of records, or one of \"nxdomain\", \"nodata\", \"timeout\", \"servfail\"",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DnsAnswer, E> {
                DnsFault::deserialize(de::value::StrDeserializer::<E>::new(s)).map(DnsAnswer::Fault)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DnsAnswer, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(DnsAnswer::Records(out))
            }
        }
        d.deserialize_any(V)
    }
}
