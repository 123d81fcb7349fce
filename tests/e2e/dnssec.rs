//! A real BIND 9 authoritative server (`named`) on loopback serving DNSSEC-signed zones, for
//! DANE (RFC 7672) tests: the signed parent `test.` and below it child zones that are signed,
//! unsigned (an insecure delegation) or bogus. Keys come from `dnssec-keygen`
//! (ECDSAP256SHA256, a KSK and a ZSK per zone), zones are signed by `dnssec-signzone` (NSEC),
//! a signed root zone delegates to `test.`, and a validating resolver is given the root's KSK
//! as its trust anchor (hickory checks the DS of a non-root anchor's zone at its parent, so
//! the chain starts at a root, as on the Internet). Config, keys,
//! zone files and named's output all live in the caller's directory.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a child zone is published under the signed parent `test.`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed, with its DS in `test.`: answers validate as secure.
    Signed,
    /// Delegated without a DS: the parent's signed NSEC proves the zone insecure.
    Unsigned,
    /// Signed, with its DS in `test.`, but every signature (the DNSKEY set's too) expired in
    /// 2020: every answer from the zone, positive or negative, is bogus.
    Bogus,
}

/// One zone below `test.`.
pub struct Zone {
    /// The zone's name, e.g. "dane.test" (a trailing dot is allowed).
    pub name: String,
    /// How the zone is signed and delegated.
    pub signing: Signing,
    /// Zone-file lines with relative or absolute owner names, e.g. "mx 300 IN A 127.0.0.2",
    /// "@ 300 IN MX 10 mx.dane.test.", "_25._tcp.mx 300 IN TLSA 3 1 1 <hex>". The SOA and
    /// the NS (`ns.test.`) are added; the TTL defaults to 300.
    pub records: Vec<String>,
}

/// A running `named` serving the signed `test.` (NS and DS delegations to each child zone, DS
/// only for signed and bogus ones) and each child zone on 127.0.0.1, UDP and TCP; killed on
/// drop. Every zone's NS is `ns.test.`, which `test.` gives the address 127.0.0.1.
pub struct SignedDns {
    /// Where `named` listens (UDP and TCP).
    pub addr: SocketAddr,
    /// The DNSKEY records of the root zone's key-signing key (the fixture signs a root above
    /// `test.`), in zone-file syntax (". 3600 IN DNSKEY 257 3 13 <base64>"): the trust anchor a validating
    /// resolver is given (hickory's `TrustAnchors::from_file` reads this format).
    pub trust_anchor: PathBuf,
    /// The `named` process.
    named: Child,
    /// named's stdout and stderr (`-g` logs there).
    log: PathBuf,
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        let _ = self.named.kill();
        let _ = self.named.wait();
    }
}

/// What named logs before it exits when its port was taken after `free_port` found it free.
const PORT_TAKEN: &str = "unable to listen on any configured interfaces";

/// Signs `test.` and `zones` with keys made in `dir`, writes named's config there and starts
/// `named` on a free port of 127.0.0.1; returns once every zone answers for its SOA. Panics
/// with named's output if it does not start within 10 s.
pub fn signed_dns(dir: &Path, zones: &[Zone]) -> SignedDns {
    fs::create_dir_all(dir.join("keys")).unwrap();
    fs::create_dir_all(dir.join("zones")).unwrap();
    let dir = fs::canonicalize(dir).unwrap();

    // (origin, zone file named loads, relative to `dir`), the parent first.
    let mut served = Vec::new();
    let mut parent = zone_head("test");
    parent.push_str("ns IN A 127.0.0.1\n");
    for zone in zones {
        let name = zone.name.trim_end_matches('.');
        assert!(
            name.len() > ".test".len() && name.ends_with(".test"),
            "zone {name} is not below test."
        );
        let mut text = zone_head(name);
        for record in &zone.records {
            writeln!(text, "{record}").unwrap();
        }
        fs::write(dir.join(format!("zones/{name}.db")), text).unwrap();
        writeln!(parent, "{name}. IN NS ns.test.").unwrap();
        let file = match zone.signing {
            Signing::Unsigned => format!("zones/{name}.db"),
            Signing::Signed => {
                sign(&dir, name, &[]);
                format!("zones/{name}.db.signed")
            }
            Signing::Bogus => {
                // Post-sign verification (-P disables it) would refuse the expired signatures.
                sign(
                    &dir,
                    name,
                    &["-P", "-s", "20200101000000", "-e", "20200201000000"],
                );
                format!("zones/{name}.db.signed")
            }
        };
        if zone.signing != Signing::Unsigned {
            let ds = fs::read_to_string(dir.join(format!("zones/dsset-{name}."))).unwrap();
            parent.push_str(&ds);
        }
        served.push((name.to_owned(), file));
    }
    fs::write(dir.join("zones/test.db"), parent).unwrap();
    sign(&dir, "test", &[]);
    served.insert(0, ("test".to_owned(), "zones/test.db.signed".to_owned()));
    // A signed root above `test.`, whose key is the trust anchor: validators walk the chain
    // from the root as they would on the Internet.
    let mut root = zone_head("");
    root.push_str("test. IN NS ns.test.\nns.test. IN A 127.0.0.1\n");
    root.push_str(&fs::read_to_string(dir.join("zones/dsset-test.")).unwrap());
    fs::write(dir.join("zones/root.db"), root).unwrap();
    let ksk = sign(&dir, "", &[]);
    served.insert(0, (String::new(), "zones/root.db.signed".to_owned()));

    let trust_anchor = dir.join("trust-anchor.dnskey");
    let key = fs::read_to_string(dir.join(format!("keys/{ksk}.key"))).unwrap();
    fs::write(&trust_anchor, dnskey_lines(&key)).unwrap();

    let conf = dir.join("named.conf");
    let log = dir.join("named.log");
    for _ in 0..5 {
        let port = crate::peers::free_port("127.0.0.1");
        fs::write(&conf, named_conf(&dir, port, &served)).unwrap();
        run(Command::new("named-checkconf").arg("-z").arg(&conf));
        let out = File::create(&log).unwrap();
        let named = Command::new("named")
            .args(["-g", "-n", "1", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("named must be installed (apt-get install bind9)");
        let mut dns = SignedDns {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            trust_anchor: trust_anchor.clone(),
            named,
            log: log.clone(),
        };
        if dns.wait_ready(&served) {
            return dns;
        }
    }
    panic!("named found no free port in 5 tries");
}

impl SignedDns {
    /// Waits until `named` answers authoritatively for the SOA of each of `zones` (origin,
    /// file); false if it exited because its port was taken meanwhile. Panics with named's
    /// output on any other failure.
    fn wait_ready(&mut self, zones: &[(String, String)]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if zones.iter().all(|(zone, _)| answers_soa(self.addr, zone)) {
                return true;
            }
            let exited = self.named.try_wait().unwrap().is_some();
            if exited || Instant::now() >= deadline {
                let output = fs::read_to_string(&self.log).unwrap_or_default();
                if exited && output.contains(PORT_TAKEN) {
                    return false;
                }
                panic!(
                    "named did not start on {} (log {}):\n{output}",
                    self.addr,
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The start of a zone file for `origin`: its SOA and its NS, `ns.test.`.
fn zone_head(origin: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 300\n\
         @ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 300\n\
         @ IN NS ns.test.\n"
    )
}

/// Makes a KSK and a ZSK for `zone` ("" for the root, whose files are `root.db...`) in
/// `dir/keys` and signs `dir/zones/<zone>.db` into `<zone>.db.signed` (and `dsset-<zone>.`,
/// its DS) beside it, passing `extra` to `dnssec-signzone`. Returns the KSK's file stem
/// (`K<zone>.+013+<tag>`).
fn sign(dir: &Path, zone: &str, extra: &[&str]) -> String {
    let (keys, zones) = (dir.join("keys"), dir.join("zones"));
    let stem = if zone.is_empty() { "root" } else { zone };
    let ksk = keygen(&keys, zone, true);
    keygen(&keys, zone, false);
    run(Command::new("dnssec-signzone")
        .args(["-q", "-S", "-K"])
        .arg(&keys)
        .arg("-d")
        .arg(&zones)
        .args(["-o", &format!("{zone}.")])
        .arg("-f")
        .arg(zones.join(format!("{stem}.db.signed")))
        .args(extra)
        .arg(zones.join(format!("{stem}.db"))));
    ksk
}

/// Makes an ECDSAP256SHA256 key for `zone` in `keys` (DNSKEY TTL 3600); returns its file stem.
fn keygen(keys: &Path, zone: &str, ksk: bool) -> String {
    let mut cmd = Command::new("dnssec-keygen");
    cmd.args(["-q", "-a", "ECDSAP256SHA256", "-L", "3600", "-K"])
        .arg(keys);
    if ksk {
        cmd.args(["-f", "KSK"]);
    }
    run(cmd.arg(format!("{zone}."))).trim().to_owned()
}

/// The DNSKEY lines of a `.key` file, comments dropped and the base64 key joined into one
/// field (dnssec-keygen splits it with a space).
fn dnskey_lines(key_file: &str) -> String {
    key_file
        .lines()
        .filter(|line| !line.starts_with(';') && !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (head, key) = fields.split_at(7.min(fields.len()));
            format!("{} {}\n", head.join(" "), key.concat())
        })
        .collect()
}

/// named's config: authoritative only, on 127.0.0.1:`port`, serving `zones` (origin, file).
fn named_conf(dir: &Path, port: u16, zones: &[(String, String)]) -> String {
    let dir = dir.display();
    let mut conf = format!(
        r#"options {{
	directory "{dir}";
	pid-file none;
	session-keyfile "{dir}/session.key";
	managed-keys-directory "{dir}";
	listen-on port {port} {{ 127.0.0.1; }};
	listen-on-v6 {{ none; }};
	recursion no;
	dnssec-validation no;
	notify no;
}};
controls {{ }};
"#
    );
    for (origin, file) in zones {
        writeln!(
            conf,
            r#"zone "{origin}." {{ type primary; file "{file}"; }};"#
        )
        .unwrap();
    }
    conf
}

/// Runs a BIND tool; its stdout, or a panic with its output.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (apt-get install bind9)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Whether `addr` answers a UDP query for `zone`'s SOA authoritatively with a record.
fn answers_soa(addr: SocketAddr, zone: &str) -> bool {
    // ID, flags (a plain query, no recursion desired), one question.
    let mut query = vec![0x50, 0x52, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in zone.split('.').filter(|l| !l.is_empty()) {
        query.push(u8::try_from(label.len()).unwrap());
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]); // the root label, type SOA, class IN
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let mut reply = [0u8; 512];
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_ok()
        && socket.connect(addr).is_ok()
        && socket.send(&query).is_ok()
        && socket.recv(&mut reply).is_ok_and(|n| {
            // Same ID; QR and AA set; RCODE NOERROR; at least one answer.
            n >= 12
                && reply[..2] == query[..2]
                && reply[2] & 0x84 == 0x84
                && reply[3] & 0x0f == 0
                && reply[6..8] != [0, 0]
        })
}
