//! What the delivery driver's test files share: a deliverer, a message, two MX hosts, a TLS
//! acceptor. Each test file uses part of it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use postrider_delivery::{Deliverer, DeliveryOptions, TrustRoots};
use postrider_dns::StaticDns;
use postrider_smtp::client::{OutboundMessage, OutboundRecipient};

/// A deliverer resolving through `dns`, MX hosts on `smtp_port`, the system's trust store.
pub fn deliverer(dns: StaticDns, smtp_port: u16, reply_timeout: Duration) -> Deliverer {
    let options = DeliveryOptions {
        helo_name: "client.test".into(),
        smtp_port,
        connect_timeout: Duration::from_secs(5),
        reply_timeout,
    };
    Deliverer::new(Arc::new(dns), options, TrustRoots::system().unwrap()).unwrap()
}

/// A message from sender@client.test to `to`, of `data`'s size.
pub fn message(to: &[&str], data: &[u8]) -> OutboundMessage {
    OutboundMessage {
        from: "sender@client.test".into(),
        recipients: to
            .iter()
            .map(|a| OutboundRecipient {
                address: (*a).into(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        size: data.len() as u64,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        require_tls: false,
    }
}

/// MX hosts `a.d.test` (preference 10) and `b.d.test` (20), both on 127.0.0.1 unless
/// `b_resolves` is false.
pub fn two_mx(b_resolves: bool) -> StaticDns {
    let ip: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
    let mut addresses = HashMap::from([("a.d.test".to_owned(), Ok(ip.clone()))]);
    if b_resolves {
        addresses.insert("b.d.test".to_owned(), Ok(ip));
    }
    StaticDns {
        mx: HashMap::from([(
            "d.test".to_owned(),
            Ok(vec![
                (10, "a.d.test".to_owned()),
                (20, "b.d.test".to_owned()),
            ]),
        )]),
        ip: addresses,
        ..StaticDns::default()
    }
}

/// A TLS acceptor presenting the certificate and key `files` (from a `TestCa`).
pub fn acceptor((cert, key): &(PathBuf, PathBuf)) -> TlsAcceptor {
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    TlsAcceptor::from(Arc::new(config))
}
