//! DKIM signing and ARC sealing with keys loaded from PEM files.

use std::path::{Path, PathBuf};

use mail_auth::arc::{ArcSealer as MailAuthSealer, Set};
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::{Header, HeaderWriter};
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, DkimResult};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::AuthError;
use crate::verify::{AuthOutcome, SpfOutcome, seal_results};

/// The headers signed when the configuration names none: the ones a reader sees or a reply
/// threads on, per RFC 6376 §5.4.1.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Where a signing key comes from and what it signs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimSignerConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// A PEM file with the private key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub key_file: PathBuf,
    /// The header fields to sign (canonicalization is always relaxed/relaxed).
    pub headers: Vec<String>,
}

impl DkimSignerConfig {
    /// A configuration with the [`DEFAULT_SIGNED_HEADERS`].
    pub fn new(
        domain: impl Into<String>,
        selector: impl Into<String>,
        key_file: impl Into<PathBuf>,
    ) -> DkimSignerConfig {
        DkimSignerConfig {
            domain: domain.into(),
            selector: selector.into(),
            key_file: key_file.into(),
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| (*h).to_string())
                .collect(),
        }
    }
}

/// A private key for DKIM or ARC: RSA with SHA-256 (2048 to 8192 bits: ring, our crypto, refuses
/// shorter RSA keys for signing) or Ed25519.
pub struct SigningKey(DkimKey);

impl SigningKey {
    /// Loads a key from a PEM file as `openssl genpkey` writes it: RSA as PKCS#1 (`RSA PRIVATE
    /// KEY`) or PKCS#8 (`PRIVATE KEY`), Ed25519 as PKCS#8. Errors name the file.
    pub fn load(path: &Path) -> Result<SigningKey, AuthError> {
        let pem = std::fs::read(path).map_err(|source| AuthError::KeyRead {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| AuthError::KeyInvalid {
            path: path.to_path_buf(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| invalid(format!("no PEM private key found ({e})")))?;
        let key = match der {
            PrivateKeyDer::Pkcs1(_) => DkimKey::Rsa(rsa_key(der).map_err(invalid)?),
            PrivateKeyDer::Pkcs8(ref pkcs8) => {
                // openssl writes Ed25519 keys as PKCS#8 v1 (no public key inside), which only the
                // "maybe unchecked" constructor accepts; it still validates the key.
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                    Ok(key) => DkimKey::Ed25519(key),
                    Err(_) => DkimKey::Rsa(rsa_key(der).map_err(|e| {
                        invalid(format!("neither an Ed25519 nor a usable RSA key: {e}"))
                    })?),
                }
            }
            _ => {
                return Err(invalid(
                    "an EC (SEC1) key: DKIM signs with RSA or Ed25519 only".to_string(),
                ));
            }
        };
        Ok(SigningKey(key))
    }

    /// The DKIM key record to publish as TXT at `{selector}._domainkey.{domain}`:
    /// `v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo>` or `v=DKIM1; k=ed25519; p=<raw key>`
    /// (RFC 6376 §3.6.1, RFC 8463), base64.
    pub fn dns_record(&self) -> String {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        match &self.0 {
            DkimKey::Rsa(key) => {
                format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(&key.public_key())))
            }
            DkimKey::Ed25519(key) => format!("v=DKIM1; k=ed25519; p={}", b64(&key.public_key())),
        }
    }

    /// `rsa-sha256` or `ed25519-sha256`, as the `a=` tag says.
    pub fn algorithm(&self) -> &'static str {
        match self.0 {
            DkimKey::Rsa(_) => "rsa-sha256",
            DkimKey::Ed25519(_) => "ed25519-sha256",
        }
    }
}

/// Wraps a DER `RSAPublicKey` (what ring gives) in a `SubjectPublicKeyInfo` with the
/// rsaEncryption algorithm, the form DKIM key records carry.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    /// `SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }`.
    const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0u8];
    bit_string.extend_from_slice(rsa_public_key);
    let mut body = RSA_ALGORITHM.to_vec();
    body.extend(der_tlv(0x03, &bit_string));
    der_tlv(0x30, &body)
}

/// One DER tag-length-value.
fn der_tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(value);
    out
}

fn rsa_key(der: PrivateKeyDer<'_>) -> Result<RsaKey<Sha256>, String> {
    RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
        let text = e.to_string();
        if text.contains("TooSmall") {
            "RSA key shorter than 2048 bits (generate one with `openssl genpkey -algorithm RSA \
             -pkeyopt rsa_keygen_bits:2048`)"
                .to_string()
        } else {
            format!("not a usable RSA key: {text}")
        }
    })
}

/// Signs outgoing mail for one domain with DKIM (relaxed/relaxed, SHA-256).
pub struct DkimSigner {
    inner: mail_auth::dkim::DkimSigner<DkimKey, Done>,
    domain: String,
}

impl DkimSigner {
    /// Loads the key and prepares the signature template; errors name the key file.
    pub fn load(cfg: &DkimSignerConfig) -> Result<DkimSigner, AuthError> {
        let SigningKey(key) = SigningKey::load(&cfg.key_file)?;
        let inner = mail_auth::dkim::DkimSigner::from_key(key)
            .domain(cfg.domain.clone())
            .selector(cfg.selector.clone())
            .headers(cfg.headers.iter().cloned())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(DkimSigner {
            inner,
            domain: cfg.domain.clone(),
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The DKIM-Signature header (CRLF-terminated, folded) for this message (header block and
    /// body, CRLF line ends), to prepend to it.
    pub fn sign(&self, raw: &[u8]) -> Result<String, AuthError> {
        let signature = self.inner.sign(raw).map_err(AuthError::Sign)?;
        Ok(signature.to_header())
    }
}

/// The DKIM signers of the relay, one per domain, and the choice among them.
#[derive(Default)]
pub struct Signers {
    signers: Vec<DkimSigner>,
}

impl Signers {
    /// The given signers; the first one wins when two share a domain.
    pub fn new(signers: Vec<DkimSigner>) -> Signers {
        Signers { signers }
    }

    /// Loads every configuration; the first failure is returned (naming its key file).
    pub fn load(cfgs: &[DkimSignerConfig]) -> Result<Signers, AuthError> {
        Ok(Signers::new(
            cfgs.iter()
                .map(DkimSigner::load)
                .collect::<Result<Vec<_>, _>>()?,
        ))
    }

    /// The signer whose domain equals the RFC5322.From domain (case-insensitively), so the
    /// signature aligns for DMARC; `None` when no signer matches, or when the From header is
    /// missing or names more than one domain.
    pub fn for_message(&self, raw: &[u8]) -> Option<&DkimSigner> {
        let message = AuthenticatedMessage::parse(raw)?;
        let mut domains = message
            .from
            .iter()
            .filter_map(|address| address.rsplit_once('@').map(|(_, d)| d));
        let domain = domains.next()?;
        if domains.any(|other| !other.eq_ignore_ascii_case(domain)) {
            return None;
        }
        self.signers
            .iter()
            .find(|s| s.domain.eq_ignore_ascii_case(domain))
    }

    /// True when there are no signers.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }
}

/// Adds an ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results; RFC 8617) so
/// that the next hop can trust our verification results after we forward a message.
pub struct ArcSealer {
    inner: MailAuthSealer<DkimKey, Done>,
    authserv_id: String,
}

impl ArcSealer {
    /// Loads the key (same configuration as a DKIM signer: `d=`, `s=`, key and signed headers)
    /// and seals under `authserv_id`, which should be the [`crate::Verifier`]'s.
    pub fn load(
        cfg: &DkimSignerConfig,
        authserv_id: impl Into<String>,
    ) -> Result<ArcSealer, AuthError> {
        let SigningKey(key) = SigningKey::load(&cfg.key_file)?;
        let inner = MailAuthSealer::from_key(key)
            .domain(cfg.domain.clone())
            .selector(cfg.selector.clone())
            .headers(cfg.headers.iter().cloned())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(ArcSealer {
            inner,
            authserv_id: authserv_id.into(),
        })
    }

    /// The header block (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results, each
    /// CRLF-terminated) to prepend to `raw`. `results` is what [`crate::Verifier::verify_message`]
    /// found for this message (its ARC headers must be unchanged since); `spf_helo` is added to
    /// the ARC-Authentication-Results when given. Refuses a chain that already failed (`cv=fail`,
    /// RFC 8617 §5.1.2) or that is broken beyond extending.
    pub fn seal(
        &self,
        raw: &[u8],
        spf_helo: Option<&SpfOutcome>,
        results: &AuthOutcome,
    ) -> Result<String, AuthError> {
        let message = AuthenticatedMessage::parse(raw).ok_or(AuthError::Unparsable)?;
        let chain = arc_chain(&message, results.arc_result().clone());
        if chain.sets().is_empty() && *chain.result() != DkimResult::None {
            return Err(AuthError::Seal(format!(
                "the ARC chain is broken ({}); not adding to it",
                chain.result()
            )));
        }
        let aar = seal_results(&self.authserv_id, spf_helo, results);
        let set = self
            .inner
            .seal(&message, &aar, &chain)
            .map_err(|e| AuthError::Seal(e.to_string()))?;
        Ok(set.to_header())
    }
}

/// The ARC chain of `message` as `mail-auth`'s `verify_arc` reports it, rebuilt from the parsed
/// headers and the result verification gave (the sealer needs both; the verification output
/// itself borrows the message it was made from). Mirrors `verify_arc`: no sets when the headers
/// do not form a chain at all, otherwise every set in instance order.
fn arc_chain<'x>(message: &'x AuthenticatedMessage<'x>, result: DkimResult) -> ArcOutput<'x> {
    let n = message.ams_headers.len();
    let mut output = ArcOutput::default().with_result(result);
    if message.has_arc_errors
        || n == 0
        || n > 50
        || n != message.as_headers.len()
        || n != message.aar_headers.len()
    {
        return output;
    }
    for ((seal, signature), results) in message
        .as_headers
        .iter()
        .zip(message.ams_headers.iter())
        .zip(message.aar_headers.iter())
    {
        output = output.with_set(Set {
            signature: Header::new(signature.name, signature.value, &signature.header),
            seal: Header::new(seal.name, seal.value, &seal.header),
            results: Header::new(results.name, results.value, &results.header),
        });
    }
    output
}
