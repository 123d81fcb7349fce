//! DANE for SMTP (RFC 7672, RFC 6698): which TLSA records an SMTP client may use, and the
//! certificate check against them.
//!
//! Only DANE-TA(2) and DANE-EE(3) are usable for SMTP (RFC 7672 section 3.1); PKIX usages,
//! unknown selectors or matching types and digests of the wrong length are unusable. A
//! DANE-EE record matches the server's own certificate, with neither name nor validity period
//! checked (section 3.1.1); a DANE-TA record matches a certificate of the chain the server
//! sent (or, for "2 0 0", is the certificate itself), which then anchors an ordinary chain
//! check with the validity periods and the MX host name as reference identifier (section
//! 3.2).

use std::sync::Arc;

use postrider_dns::Tlsa;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::Unverified;

/// DANE-TA: a trust anchor (RFC 7218).
const DANE_TA: u8 = 2;
/// DANE-EE: the server's own certificate.
const DANE_EE: u8 = 3;

/// The records of a TLSA RRset that RFC 7672 lets an SMTP client use.
pub fn usable(records: &[Tlsa]) -> Vec<Tlsa> {
    records
        .iter()
        .filter(|r| {
            let length_ok = match r.matching {
                0 => !r.data.is_empty(),
                1 => r.data.len() == 32,
                2 => r.data.len() == 64,
                _ => false,
            };
            matches!(r.usage, DANE_TA | DANE_EE) && r.selector <= 1 && length_ok
        })
        .cloned()
        .collect()
}

/// The part of `cert` a record's selector names, digested as its matching type says; `None`
/// when the certificate cannot be parsed.
fn association(cert: &CertificateDer<'_>, selector: u8, matching: u8) -> Option<Vec<u8>> {
    let selected = match selector {
        0 => cert.as_ref().to_vec(),
        1 => {
            let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
            webpki::spki_for_anchor(&anchor).as_ref().to_vec()
        }
        _ => return None,
    };
    match matching {
        0 => Some(selected),
        1 => Some(
            ring::digest::digest(&ring::digest::SHA256, &selected)
                .as_ref()
                .to_vec(),
        ),
        2 => Some(
            ring::digest::digest(&ring::digest::SHA512, &selected)
                .as_ref()
                .to_vec(),
        ),
        _ => None,
    }
}

fn matches(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    association(cert, record.selector, record.matching).is_some_and(|a| a == record.data)
}

/// No usable TLSA record matched the chain. rustls shows this error with `Debug`, so both
/// say the same.
struct NoMatch;

impl std::fmt::Display for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no DANE TLSA record matches the certificate chain")
    }
}

impl std::fmt::Debug for NoMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for NoMatch {}

/// Checks the server's chain against usable TLSA records; the handshake signatures as usual.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
    /// Checks the handshake signatures.
    signatures: Unverified,
}

impl DaneVerifier {
    /// A verifier for `records` (already [`usable`]).
    pub fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier {
            records,
            signatures: Unverified(Arc::clone(&provider)),
            provider,
        }
    }

    /// A client configuration that authenticates servers with `records`.
    pub fn client_config(records: Vec<Tlsa>) -> Result<Arc<ClientConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = DaneVerifier::new(records, Arc::clone(&provider));
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The chain checked from a DANE-TA anchor, with the usual name and validity checks.
    fn anchored(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier
            .verify_server_cert(end_entity, intermediates, server_name, &[], now)
            .map(|_| ())
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .records
            .iter()
            .any(|r| r.usage == DANE_EE && matches(r, end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        let mut last = None;
        for record in self.records.iter().filter(|r| r.usage == DANE_TA) {
            let published = (record.selector == 0 && record.matching == 0)
                .then(|| CertificateDer::from(record.data.as_slice()));
            let anchors = intermediates
                .iter()
                .filter(|c| matches(record, c))
                .chain(published.as_ref());
            for anchor in anchors {
                match self.anchored(anchor, end_entity, intermediates, server_name, now) {
                    Ok(()) => return Ok(ServerCertVerified::assertion()),
                    Err(e) => last = Some(e),
                }
            }
        }
        // A chain that reached a matching anchor but failed its checks says why.
        Err(last.unwrap_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                NoMatch,
            ))))
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls_pki_types::pem::PemObject;

    fn tlsa(usage: u8, selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: association(cert, selector, matching).unwrap(),
        }
    }

    struct Chain {
        ca: CertificateDer<'static>,
        leaf: CertificateDer<'static>,
    }

    /// A CA and a leaf for `names` it signed, valid now (or expired with `expired`).
    fn chain(names: &[&str], expired: bool) -> Chain {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params
            .distinguished_name
            .push(DnType::CommonName, "DANE TA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, "mx");
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let leaf = params
            .signed_by(&KeyPair::generate().unwrap(), &ca)
            .unwrap();
        Chain {
            ca: CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap(),
            leaf: leaf.der().clone(),
        }
    }

    fn check(records: Vec<Tlsa>, chain: &Chain, name: &str, send_ca: bool) -> Result<(), String> {
        let verifier = DaneVerifier::new(
            usable(&records),
            Arc::new(rustls::crypto::ring::default_provider()),
        );
        let intermediates = if send_ca {
            vec![chain.ca.clone()]
        } else {
            Vec::new()
        };
        verifier
            .verify_server_cert(
                &chain.leaf,
                &intermediates,
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn dane_ee_matches_the_leaf_in_every_selector_and_matching_type_ignoring_name_and_dates() {
        let chain = chain(&["mx.example"], true);
        for selector in 0..=1 {
            for matching in 0..=2 {
                let record = tlsa(3, selector, matching, &chain.leaf);
                assert_eq!(
                    check(vec![record], &chain, "other.example", false),
                    Ok(()),
                    "3 {selector} {matching}"
                );
            }
        }
        let other = self::chain(&["mx.example"], false);
        let e = check(vec![tlsa(3, 1, 1, &other.leaf)], &chain, "mx.example", true).unwrap_err();
        assert!(e.contains("no DANE TLSA record matches"), "{e}");
    }

    #[test]
    fn dane_ta_anchors_a_chain_that_must_name_the_host_and_be_valid() {
        let chain = chain(&["mx.example"], false);
        for (selector, matching) in [(0, 1), (1, 1), (0, 2), (1, 0)] {
            let record = tlsa(2, selector, matching, &chain.ca);
            assert_eq!(
                check(vec![record.clone()], &chain, "mx.example", true),
                Ok(())
            );
            // A digest of the anchor needs the anchor in the chain the server sends.
            let e = check(vec![record.clone()], &chain, "mx.example", false).unwrap_err();
            assert!(e.contains("no DANE TLSA record matches"), "{e}");
            let e = check(vec![record], &chain, "www.example", true).unwrap_err();
            assert!(e.contains("not valid for name"), "{e}");
        }
        // "2 0 0": the anchor is in the record itself.
        assert_eq!(
            check(vec![tlsa(2, 0, 0, &chain.ca)], &chain, "mx.example", false),
            Ok(())
        );
        let expired = self::chain(&["mx.example"], true);
        let e = check(
            vec![tlsa(2, 0, 1, &expired.ca)],
            &expired,
            "mx.example",
            true,
        )
        .unwrap_err();
        assert!(e.contains("expired"), "{e}");
        // The leaf's own digest under DANE-TA is no anchor for itself.
        let e = check(vec![tlsa(2, 0, 1, &chain.leaf)], &chain, "mx.example", true).unwrap_err();
        assert!(e.contains("no DANE TLSA record matches"), "{e}");
    }

    #[test]
    fn pkix_usages_unknown_types_and_bad_lengths_are_unusable() {
        let chain = chain(&["mx.example"], false);
        let good = tlsa(3, 1, 1, &chain.leaf);
        let mut cases = vec![
            Tlsa {
                usage: 0,
                ..good.clone()
            },
            Tlsa {
                usage: 1,
                ..good.clone()
            },
            Tlsa {
                usage: 4,
                ..good.clone()
            },
            Tlsa {
                selector: 2,
                ..good.clone()
            },
            Tlsa {
                matching: 3,
                ..good.clone()
            },
            Tlsa {
                data: good.data[..31].to_vec(),
                ..good.clone()
            },
            Tlsa {
                matching: 2,
                ..good.clone()
            },
            Tlsa {
                matching: 0,
                data: Vec::new(),
                ..good.clone()
            },
        ];
        assert!(usable(&cases).is_empty());
        cases.push(good.clone());
        assert_eq!(usable(&cases), [good]);
    }
}
