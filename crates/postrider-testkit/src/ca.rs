//! A test certificate authority: a CA certificate and leaf certificates it signs, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA made for one test, whose certificate is [`TestCa::cert_file`].
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

fn fail(e: rcgen::Error) -> ! {
    panic!("making test certificates: {e}")
}

fn write(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

impl TestCa {
    /// A new CA called `name` (its common name and file prefix), written to `dir/NAME-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // Distinct names: with rcgen's default name on both, a leaf would look self-signed.
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Postrider test CA {name}"));
        let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let issuer = CertifiedIssuer::self_signed(params, key).unwrap_or_else(|e| fail(e));
        let ca = TestCa {
            issuer,
            dir: dir.to_owned(),
            name: name.to_owned(),
        };
        write(&ca.cert_file(), &ca.issuer.pem());
        ca
    }

    /// The CA certificate (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, written as
    /// `dir/NAME-LEAF-cert.pem` and `…-key.pem`; returns (certificate, key) paths.
    pub fn issue(&self, leaf: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let mut params = CertificateParams::new(names).unwrap_or_else(|e| fail(e));
        params.distinguished_name.push(DnType::CommonName, leaf);
        let cert = params
            .signed_by(&key, &self.issuer)
            .unwrap_or_else(|e| fail(e));
        let prefix = format!("{}-{leaf}", self.name);
        let paths = (
            self.dir.join(format!("{prefix}-cert.pem")),
            self.dir.join(format!("{prefix}-key.pem")),
        );
        write(&paths.0, &cert.pem());
        write(&paths.1, &key.serialize_pem());
        paths
    }
}
