//! TLS server configuration from PEM files (rustls with the ring provider).

use std::sync::Arc;

use anyhow::Context;
use postrider_config::TlsFiles;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Builds an acceptor for a listener's certificate chain and key (TLS 1.2 and 1.3).
pub fn acceptor(files: &TlsFiles) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificate chain {}", files.cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{}: no certificate found", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading private key {}", files.key.display()))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .with_context(|| {
                format!(
                    "certificate {} and key {} do not make a usable pair",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
