//! The TLS client configurations for delivery.
//!
//! Under `opportunistic` and `require` (Postfix's `may` and `encrypt`) the certificate is not
//! verified: between MTAs certificates are commonly self-signed or for another name, and
//! refusing them would only push mail back to plain text; the handshake signatures are still
//! checked, so the session is encrypted to whoever holds the key. Under `verify` the chain
//! must lead to a trusted root ([`postrider_tls_roots::TrustRoots`]) and name the next hop.

use std::sync::Arc;

use postrider_tls_roots::provider;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any certificate chain, but checks the handshake signatures (which other
/// verifiers delegate to it).
#[derive(Debug)]
pub(crate) struct Unverified(pub(crate) Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration for unverified STARTTLS (`opportunistic`, `require`).
pub(crate) fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The protocol version and cipher suite of an established session, as logs, `Received`
/// headers and plugins show them: ("TLSv1.3", "TLS13_AES_256_GCM_SHA384").
pub fn session_params(state: &rustls::CommonState) -> (String, String) {
    let version = state
        .protocol_version()
        .and_then(|v| v.as_str())
        .map_or_else(|| "TLS".to_owned(), |v| v.replace('_', "."));
    let suite = state
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown");
    (version, suite.to_owned())
}
