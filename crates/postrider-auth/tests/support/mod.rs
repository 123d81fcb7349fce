//! Test support: a tiny authoritative DNS server on 127.0.0.1 (UDP, port 0) answering from a
//! table the test fills, so verification goes through the real resolver path — hickory on the
//! wire, the relay's `HickoryDns`, mail-auth's record parsing — with no network and no shared
//! state between tests. Also the test keys and messages.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, TXT};
use hickory_resolver::proto::rr::{RData, Record};
use postrider_auth::{DkimSignerConfig, Verifier};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// What a name answers.
#[derive(Clone)]
enum Entry {
    Records(Vec<RData>),
    ServFail,
}

type Zone = Arc<Mutex<HashMap<String, Entry>>>;

/// The test DNS server. Names are matched case-insensitively without the trailing dot; a name
/// not in the table is NXDOMAIN, a name in it without records of the asked type is NODATA.
pub struct TestDns {
    addr: SocketAddr,
    zone: Zone,
    task: JoinHandle<()>,
}

impl TestDns {
    /// Binds 127.0.0.1:0 and starts answering.
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone: Zone = Arc::default();
        let task = tokio::spawn(serve(socket, Arc::clone(&zone)));
        TestDns { addr, zone, task }
    }

    fn add(&self, name: &str, rdata: RData) {
        let mut zone = self.zone.lock().unwrap();
        match zone
            .entry(key(name))
            .or_insert_with(|| Entry::Records(Vec::new()))
        {
            Entry::Records(records) => records.push(rdata),
            Entry::ServFail => panic!("{name} is set to SERVFAIL"),
        }
    }

    /// Adds a TXT record, split into 255-byte strings as DNS requires.
    pub fn txt(&self, name: &str, text: &str) {
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(255).collect();
        self.add(name, RData::TXT(TXT::from_bytes(chunks)));
    }

    /// Adds an A record.
    pub fn a(&self, name: &str, ip: Ipv4Addr) {
        self.add(name, RData::A(A(ip)));
    }

    /// Makes every query for `name` answer SERVFAIL.
    pub fn servfail(&self, name: &str) {
        self.zone.lock().unwrap().insert(key(name), Entry::ServFail);
    }

    /// A verifier resolving through this server by way of the relay's `HickoryDns`.
    pub fn verifier(&self) -> Verifier {
        let dns = postrider_dns::HickoryDns::with_nameservers(&[self.addr]).unwrap();
        Verifier::new(dns.resolver(), AUTHSERV_ID)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

async fn serve(socket: UdpSocket, zone: Zone) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let mut response = Message::response(query.metadata.id, query.metadata.op_code);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = query.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        if let Some(q) = query.queries.first() {
            response.add_query(q.clone());
            let entry = zone.lock().unwrap().get(&key(&q.name.to_ascii())).cloned();
            match entry {
                None => response.metadata.response_code = ResponseCode::NXDomain,
                Some(Entry::ServFail) => response.metadata.response_code = ResponseCode::ServFail,
                Some(Entry::Records(records)) => {
                    for rdata in records
                        .into_iter()
                        .filter(|r| r.record_type() == q.query_type)
                    {
                        response.add_answer(Record::from_rdata(q.name.clone(), 60, rdata));
                    }
                }
            }
        }
        let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
    }
}

/// Our authserv-id in the tests.
pub const AUTHSERV_ID: &str = "mx.test.example";

/// The client address used in most tests (inside the SPF records' 192.0.2.0/24).
pub const GOOD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));

/// A client address outside every SPF record.
pub const BAD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

/// A test key file under tests/keys.
pub fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

/// The DKIM public key record for a test key (its `p=` made by openssl, see tests/keys/README).
pub fn dkim_record(key: &str) -> String {
    let (k, p) = match key {
        "ed25519" => ("ed25519", "ed25519.p.txt"),
        _ => ("rsa", "rsa2048.p.txt"),
    };
    let p = std::fs::read_to_string(key_file(p)).unwrap();
    format!("v=DKIM1; k={k}; p={}", p.trim())
}

/// A signer configuration for `domain`, selector `sel`, with a key from tests/keys.
pub fn signer_config(domain: &str, key_pem: &str) -> DkimSignerConfig {
    DkimSignerConfig::new(domain, "sel", key_file(key_pem))
}

/// A small message from `from`, CRLF line ends.
pub fn message(from: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <{from}>\r\n\
         To: bob@example.net\r\n\
         Subject: Test message\r\n\
         Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\
         Message-ID: <1234@example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         {body}\r\n"
    )
    .into_bytes()
}

/// `header` prepended to `raw`.
pub fn prepend(header: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(raw);
    out
}
