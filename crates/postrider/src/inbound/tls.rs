//! TLS server configuration from PEM files (rustls with the ring provider): the listener's
//! certificate, and the `[[certificate]]` entries chosen by the server name the client asks
//! for (SNI).

use std::sync::Arc;

use anyhow::Context;
use postrider_config::{Certificate, TlsFiles};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Builds an acceptor (TLS 1.2 and 1.3) serving the listener's chain and key, or the chain of
/// the `certificates` entry naming the server name the client asked for.
pub fn acceptor(files: &TlsFiles, certificates: &[Certificate]) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = certified(files, &provider)?;
    let mut names = Vec::new();
    for c in certificates {
        let key = certified(&c.files, &provider)?;
        names.extend(c.names.iter().map(|n| (n.clone(), Arc::clone(&key))));
    }
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { default, names }));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A chain and key from PEM files, checked to be a pair.
fn certified(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificate chain {}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading private key {}", files.key.display()))?;
    let certified = CertifiedKey::from_der(certs, key, provider).with_context(|| {
        format!(
            "certificate {} and key {} do not make a usable pair",
            files.cert.display(),
            files.key.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The certificate for the client's server name: an exact name, else `*.parent` for one
/// label under it, else the listener's own.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    names: Vec<(String, Arc<CertifiedKey>)>,
}

impl BySni {
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(sni) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) else {
            return &self.default;
        };
        let wildcard = sni
            .split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .map(|(_, parent)| format!("*.{parent}"));
        let find = |want: &str| self.names.iter().find(|(n, _)| n == want).map(|(_, k)| k);
        find(&sni)
            .or_else(|| wildcard.as_deref().and_then(find))
            .unwrap_or(&self.default)
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(self.pick(hello.server_name())))
    }
}

/// Protocol, cipher suite and the server name the client asked for (SNI), as plugins see them.
pub fn describe(conn: &rustls::ServerConnection) -> postrider_plugin_host::TlsInfo {
    let (protocol, cipher) = postrider_delivery::tls::session_params(conn);
    postrider_plugin_host::TlsInfo {
        protocol,
        cipher,
        sni: conn.server_name().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        Arc::new(CertifiedKey::from_der(vec![cert.cert.der().clone()], key, &provider).unwrap())
    }

    #[test]
    fn exact_names_then_one_label_wildcards_then_the_default() {
        let (default, exact, wild) = (
            key("mx.test"),
            key("mail.example.org"),
            key("x.example.net"),
        );
        let sni = BySni {
            default: Arc::clone(&default),
            names: vec![
                ("mail.example.org".into(), Arc::clone(&exact)),
                ("*.example.net".into(), Arc::clone(&wild)),
            ],
        };
        let is = |got: &Arc<CertifiedKey>, want: &Arc<CertifiedKey>| Arc::ptr_eq(got, want);
        assert!(is(sni.pick(Some("mail.example.org")), &exact));
        assert!(is(sni.pick(Some("MAIL.Example.ORG.")), &exact));
        assert!(is(sni.pick(Some("smtp.example.net")), &wild));
        assert!(is(sni.pick(Some("a.b.example.net")), &default));
        assert!(is(sni.pick(Some("example.net")), &default));
        assert!(is(sni.pick(Some("other.test")), &default));
        assert!(is(sni.pick(None), &default));
    }
}
