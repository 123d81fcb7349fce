//! MTA-STS for delivery (RFC 8461): the `_mta-sts` TXT lookup, the policy fetched over
//! HTTPS with a verified certificate, and the cache in memory and on disk. The decisions are
//! `postrider_mta_sts`'s; this is the I/O around them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use postrider_dns::{Dns, DnsError};
use postrider_mta_sts::{
    Announcement, Cached, MAX_POLICY_BYTES, Policy, Step, WELL_KNOWN_PATH, next_step, parse_record,
};
use tracing::{debug, info, warn};

use crate::https::HttpsError;
use postrider_tls_roots::TrustRoots;

/// Why a policy could not be fetched; each is logged and the sender goes on as RFC 8461
/// section 5.1 says (a fresh cached policy, else none).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No address, no connection, no TLS (an invalid certificate among them), no HTTP
    /// answer, or a body over the cap.
    #[error("{0}")]
    Https(#[from] HttpsError),
    /// Not answered within the fetch timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A redirect: RFC 8461 section 3.3 forbids following it.
    #[error("HTTP {status} redirect (not followed)")]
    Redirect {
        /// The status.
        status: u16,
    },
    /// Any status but 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Not `text/plain`.
    #[error("content type {0:?}, not text/plain")]
    ContentType(String),
    /// Not a valid policy.
    #[error("invalid policy: {0}")]
    Invalid(#[from] postrider_mta_sts::PolicyError),
}

impl FetchError {
    /// The TLS report's name for this failure (RFC 8460 section 4.3.2.2).
    pub fn result_type(&self) -> postrider_tlsrpt::ResultType {
        use postrider_tlsrpt::ResultType;
        match self {
            FetchError::Https(HttpsError::Transport(e))
                if e.contains("invalid peer certificate") =>
            {
                ResultType::StsWebpkiInvalid
            }
            FetchError::Invalid(_)
            | FetchError::ContentType(_)
            | FetchError::Https(HttpsError::TooLarge(_)) => ResultType::StsPolicyInvalid,
            _ => ResultType::StsPolicyFetchError,
        }
    }
}

/// Settings of the MTA-STS client.
#[derive(Debug, Clone)]
pub struct StsOptions {
    /// The HTTPS port of `mta-sts.DOMAIN` (443; tests use another).
    pub port: u16,
    /// Limit for one fetch: connecting, TLS, request and body.
    pub timeout: Duration,
    /// Where policies are kept across restarts (`None`: memory only).
    pub cache_dir: Option<PathBuf>,
}

/// Finds and keeps the MTA-STS policies of recipient domains.
pub struct MtaSts {
    dns: Arc<dyn Dns>,
    roots: TrustRoots,
    options: StsOptions,
    /// Every policy kept, by domain: those on disk are read once, when the client is made,
    /// so a delivery never waits for the disk to learn that a domain has none.
    cache: Mutex<HashMap<String, Cached>>,
    /// One fetch at a time per domain: the others wait and use its result.
    fetching: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Failed fetches by domain: the record id and when, so a broken or slow policy host
    /// costs one fetch per [`RETRY_FAILED_FETCH`], not one per delivery.
    failed: Mutex<HashMap<String, (String, std::time::Instant)>>,
}

/// How long a failed fetch stands before the same record id is fetched again.
const RETRY_FAILED_FETCH: Duration = Duration::from_secs(300);

/// Seconds since the Unix epoch.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MtaSts {
    /// A client looking up records through `dns` and checking policy hosts' certificates
    /// against `roots`, with the policies kept in `options.cache_dir` by an earlier run
    /// (read here; unreadable files are logged and ignored).
    pub fn new(dns: Arc<dyn Dns>, roots: TrustRoots, options: StsOptions) -> MtaSts {
        let cache = options
            .cache_dir
            .as_deref()
            .map(load_cache)
            .unwrap_or_default();
        MtaSts {
            dns,
            roots,
            options,
            cache: Mutex::new(cache),
            fetching: tokio::sync::Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain`, if any: from the cache while its TXT id is
    /// unchanged (or the record is gone and the policy has not expired), else fetched.
    pub async fn policy(&self, domain: &str) -> Option<Policy> {
        self.lookup(domain).await.0
    }

    /// [`MtaSts::policy`], and why a fetch failed if one did (for TLS reports).
    pub async fn lookup(&self, domain: &str) -> (Option<Policy>, Option<FetchError>) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let found = self.announcement(&domain).await;
        let cached = self.cached(&domain);
        if let Step::UseCached = next_step(&found, cached.as_ref(), now()) {
            return (cached.map(|c| c.policy), None);
        }
        let lock = {
            let mut fetching = self.fetching.lock().await;
            fetching.retain(|_, l| Arc::strong_count(l) > 1);
            Arc::clone(fetching.entry(domain.clone()).or_default())
        };
        let _one = lock.lock().await;
        // Another delivery may have fetched it while this one waited.
        let cached = self.cached(&domain);
        let fetched = match next_step(&found, cached.as_ref(), now()) {
            Step::UseCached => return (cached.map(|c| c.policy), None),
            Step::NoPolicy => return (None, None),
            Step::Fetch(id) if self.failed_recently(&domain, &id) => {
                return (cached.filter(|c| c.fresh(now())).map(|c| c.policy), None);
            }
            Step::Fetch(id) => {
                let fetched = self
                    .fetch(&domain)
                    .await
                    .and_then(|body| Ok(Cached::new(&id, now(), &body)?));
                let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.retain(|_, (_, at)| at.elapsed() < RETRY_FAILED_FETCH);
                match &fetched {
                    Ok(_) => failed.remove(&domain),
                    Err(_) => failed.insert(domain.clone(), (id, std::time::Instant::now())),
                };
                fetched
            }
        };
        match fetched {
            Ok(fresh) => {
                info!(domain = %domain, id = %fresh.id, policy = %fresh.policy, "MTA-STS policy fetched");
                let policy = fresh.policy.clone();
                self.store(&domain, fresh).await;
                (Some(policy), None)
            }
            Err(e) => (self.fetch_failed(&domain, &e, cached), Some(e)),
        }
    }

    /// A fetch for `domain` under record id `id` failed less than [`RETRY_FAILED_FETCH`]
    /// ago.
    fn failed_recently(&self, domain: &str, id: &str) -> bool {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(domain)
            .is_some_and(|(was, at)| was == id && at.elapsed() < RETRY_FAILED_FETCH)
    }

    /// After a failed fetch: the cached policy while fresh, else none.
    fn fetch_failed(
        &self,
        domain: &str,
        error: &FetchError,
        cached: Option<Cached>,
    ) -> Option<Policy> {
        let fresh = cached.filter(|c| c.fresh(now()));
        warn!(
            domain = %domain,
            error = %error,
            using = if fresh.is_some() { "the cached policy" } else { "no policy" },
            "MTA-STS policy fetch failed"
        );
        fresh.map(|c| c.policy)
    }

    /// The `_mta-sts` record's id, or why there is none.
    async fn announcement(&self, domain: &str) -> Announcement {
        match self.dns.lookup_txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => match parse_record(&records) {
                Ok(id) => Announcement::Id(id),
                Err(e) => {
                    debug!(domain = %domain, error = %e, "no MTA-STS record");
                    Announcement::Absent
                }
            },
            Err(DnsError::NxDomain | DnsError::NoData) => Announcement::Absent,
            Err(e) => {
                info!(domain = %domain, error = %e, "MTA-STS record lookup failed");
                Announcement::Unknown
            }
        }
    }

    /// The cached entry of `domain`.
    fn cached(&self, domain: &str) -> Option<Cached> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(domain).cloned()
    }

    /// Keeps `entry` in memory and writes it to disk (a new file renamed over the old).
    async fn store(&self, domain: &str, entry: Cached) {
        let text = entry.to_text();
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_owned(), entry);
        let Some(path) = self.file(domain) else {
            return;
        };
        let tmp = path.with_extension("tmp");
        let written = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::write(&tmp, text).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        if let Err(e) = written.await {
            warn!(file = %path.display(), error = %e, "cannot write the MTA-STS cache");
        }
    }

    /// The cache file of `domain`; none for names that are not plain LDH labels (a path
    /// must not come from a recipient's domain otherwise).
    fn file(&self, domain: &str) -> Option<PathBuf> {
        let plain = !domain.is_empty()
            && domain.len() <= 253
            && !domain.starts_with('.')
            && !domain.contains("..")
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
        let dir = self.options.cache_dir.as_ref()?;
        plain.then(|| dir.join(format!("{domain}{CACHE_SUFFIX}")))
    }

    /// GET `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`: certificate verified against
    /// the roots for that name, no redirect followed, 200 and `text/plain` only, the body
    /// capped, everything within the fetch timeout.
    async fn fetch(&self, domain: &str) -> Result<Vec<u8>, FetchError> {
        let host = format!("mta-sts.{domain}");
        let limit = self.options.timeout;
        match tokio::time::timeout(limit, self.get(&host)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout(limit)),
        }
    }

    async fn get(&self, host: &str) -> Result<Vec<u8>, FetchError> {
        let request = hyper::Request::get(WELL_KNOWN_PATH)
            .body(Full::new(Bytes::new()))
            .map_err(|e| HttpsError::Transport(e.to_string()))?;
        let response = crate::https::send(
            &*self.dns,
            &self.roots,
            host,
            self.options.port,
            request,
            MAX_POLICY_BYTES,
        )
        .await?;
        if (300..400).contains(&response.status) {
            return Err(FetchError::Redirect {
                status: response.status,
            });
        }
        if response.status != 200 {
            return Err(FetchError::Status(response.status));
        }
        let essence = response.content_type.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("text/plain") {
            return Err(FetchError::ContentType(response.content_type));
        }
        Ok(response.body)
    }
}

/// The cache file of a domain is `DOMAIN` followed by this.
const CACHE_SUFFIX: &str = ".policy";

/// The policies kept in `dir`, by domain (an absent directory holds none).
fn load_cache(dir: &Path) -> HashMap<String, Cached> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    let mut cache = HashMap::new();
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let Some(domain) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(CACHE_SUFFIX))
        else {
            continue;
        };
        match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| Cached::from_text(&text).map_err(|e| e.to_string()))
        {
            Ok(c) => {
                cache.insert(domain.to_owned(), c);
            }
            Err(e) => {
                warn!(file = %path.display(), error = %e, "unreadable MTA-STS cache file ignored")
            }
        }
    }
    cache
}
