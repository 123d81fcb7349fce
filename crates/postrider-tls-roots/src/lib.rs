//! Trust roots for verified TLS clients: the system store or one CA file, with the rustls
//! configuration and connector that check server certificates against them. Outbound
//! delivery (`verify`, MTA-STS) and plugins' HTTPS requests use the same roots.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

/// The crypto provider of every TLS client of the relay (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why trust roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file has no usable certificate.
    #[error("CA file {path} has no usable PEM certificate{detail}")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What the parser said, if anything.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// The trust anchors of `verify`, with the connector that checks against them: the system
/// store, or the certificates of one CA file (which then replace the system store).
#[derive(Clone)]
pub struct TrustRoots {
    source: Arc<str>,
    count: usize,
    connector: TlsConnector,
    config: Arc<ClientConfig>,
    /// The same check outside a handshake (MTA-STS `testing`); `None` without roots.
    verifier: Option<Arc<WebPkiServerVerifier>>,
}

impl TrustRoots {
    /// The system's store through rustls-native-certs (on Debian /etc/ssl/certs, kept by
    /// `ca-certificates` and `update-ca-certificates`; `SSL_CERT_FILE`/`SSL_CERT_DIR`
    /// override it). Unreadable entries are skipped; [`TrustRoots::count`] says how many
    /// roots were found, and with none every verified session fails.
    pub fn system() -> Result<TrustRoots, RootsError> {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipped part of the system trust store");
        }
        TrustRoots::build("system trust store".into(), found.certs)
    }

    /// The certificates of the PEM file `path`, and no others.
    pub fn from_file(path: &Path) -> Result<TrustRoots, RootsError> {
        let pem = std::fs::read(path).map_err(|source| RootsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut certs = Vec::new();
        let mut detail = String::new();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            match cert {
                Ok(c) => certs.push(c),
                Err(e) => detail = format!(": {e}"),
            }
        }
        let roots = TrustRoots::build(path.display().to_string(), certs)?;
        if roots.count == 0 {
            return Err(RootsError::Empty {
                path: path.to_owned(),
                detail,
            });
        }
        Ok(roots)
    }

    fn build(
        source: String,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<TrustRoots, RootsError> {
        let mut store = RootCertStore::empty();
        let (count, _ignored) = store.add_parsable_certificates(certs);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        // One verifier checks handshakes and, for MTA-STS `testing`, chains already
        // received. rustls builds none from an empty store: that connector fails every
        // chain, and `check` says there are no roots.
        let (verifier, builder) = if count > 0 {
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            let builder = builder.with_webpki_verifier(Arc::clone(&verifier));
            (Some(verifier), builder)
        } else {
            (None, builder.with_root_certificates(store))
        };
        let config = Arc::new(builder.with_no_client_auth());
        Ok(TrustRoots {
            source: source.into(),
            count,
            connector: TlsConnector::from(Arc::clone(&config)),
            config,
            verifier,
        })
    }

    /// Where the roots came from: "system trust store" or the CA file's path.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// How many root certificates were loaded.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The verifying client configuration (for connectors other than tokio-rustls's).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The verifying connector.
    pub fn connector(&self) -> &TlsConnector {
        &self.connector
    }

    /// Checks a chain already received against these roots and `host`, as the connector's
    /// handshake would have.
    pub fn check(&self, chain: &[CertificateDer<'_>], host: &str) -> Result<(), String> {
        let verifier = self.verifier.as_ref().ok_or("no trusted roots")?;
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustRoots({}, {} roots)", self.source, self.count)
    }
}

/// The same roots: the same source, loaded once (a reload that reads a CA file again makes
/// new roots, so a destination with them is a new destination).
impl PartialEq for TrustRoots {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Eq for TrustRoots {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = TrustRoots::from_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("ca.pem") && e.contains("no usable PEM certificate"),
            "{e}"
        );
        let e = TrustRoots::from_file(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read CA file") && e.contains("missing.pem"),
            "{e}"
        );
    }

    #[test]
    fn equal_only_when_loaded_once() {
        let a = TrustRoots::build("x".into(), Vec::new()).unwrap();
        assert_eq!(a, a.clone());
        assert_ne!(a, TrustRoots::build("x".into(), Vec::new()).unwrap());
        assert_eq!(a.count(), 0);
        assert_eq!(format!("{a:?}"), "TrustRoots(x, 0 roots)");
    }
}
