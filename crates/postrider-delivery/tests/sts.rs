//! The MTA-STS client against an HTTPS server on loopback (a test CA's certificate): a
//! policy is fetched once and kept while the TXT id is unchanged; a new id with a failing
//! server keeps the fresh cached policy (and is not fetched again at once); a new id with a
//! new policy replaces it; the cache
//! is read back by a new client (a restart) when the record is gone; an expired cache entry
//! counts for nothing; a server that never answers costs the fetch timeout and no policy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::acceptor;
use postrider_delivery::{MtaSts, StsOptions, TrustRoots};
use postrider_dns::{DnsError, StaticDns};
use postrider_mta_sts::Mode;
use postrider_testkit::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers: a full HTTP response, or nothing at all (hang).
type Script = Arc<Mutex<Option<String>>>;

/// An HTTPS server on 127.0.0.1 answering each request with the current script; returns
/// its port and a request counter.
async fn server(ca: &TestCa, script: Script) -> (u16, Arc<Mutex<usize>>) {
    let acceptor = acceptor(&ca.issue("web", &["mta-sts.s.test"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(Mutex::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, script, seen) =
                (acceptor.clone(), Arc::clone(&script), Arc::clone(&seen));
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(n) if n > 0 => request.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                *seen.lock().unwrap() += 1;
                let answer = script.lock().unwrap().clone();
                match answer {
                    Some(response) => {
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        }
    });
    (port, count)
}

fn ok(body: &str) -> Option<String> {
    Some(format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

fn policy(mode: &str, max_age: u64) -> String {
    format!("version: STSv1\nmode: {mode}\nmx: mx.s.test\nmax_age: {max_age}\n")
}

/// `s.test` with the TXT record `record` (none when `None`); its policy host on 127.0.0.1.
fn dns(record: Option<&str>) -> StaticDns {
    let ip: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
    StaticDns {
        ip: HashMap::from([("mta-sts.s.test".to_owned(), Ok(ip))]),
        txt: HashMap::from([(
            "_mta-sts.s.test".to_owned(),
            record.map_or(Err(DnsError::NxDomain), |r| Ok(vec![r.to_owned()])),
        )]),
        ..StaticDns::default()
    }
}

fn client(record: Option<&str>, ca: &TestCa, port: u16, dir: &Path, timeout: Duration) -> MtaSts {
    MtaSts::new(
        Arc::new(dns(record)),
        TrustRoots::from_file(&ca.cert_file()).unwrap(),
        StsOptions {
            port,
            timeout,
            cache_dir: Some(dir.to_owned()),
        },
    )
}

#[tokio::test]
async fn policies_are_cached_refreshed_on_a_new_id_and_kept_when_the_record_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "web");
    let script: Script = Arc::new(Mutex::new(ok(&policy("enforce", 86_400))));
    let (port, requests) = server(&ca, Arc::clone(&script)).await;
    let cache = tmp.path().join("cache");
    let second = Duration::from_secs(5);

    let sts = client(Some("v=STSv1; id=one"), &ca, port, &cache, second);
    let p = sts.policy("S.test.").await.unwrap();
    assert_eq!(
        (p.mode, p.mx.as_slice()),
        (Mode::Enforce, &["mx.s.test".to_owned()][..])
    );
    assert_eq!(sts.policy("s.test").await.unwrap(), p);
    assert_eq!(
        *requests.lock().unwrap(),
        1,
        "same id: served from the cache"
    );

    // A new id, and the server fails: the fresh policy stays.
    *script.lock().unwrap() = Some("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".into());
    let sts = client(Some("v=STSv1; id=two"), &ca, port, &cache, second);
    assert_eq!(sts.policy("s.test").await.unwrap(), p);
    assert_eq!(*requests.lock().unwrap(), 2);

    // The failure stands for a while: the same id is not fetched again at once.
    assert_eq!(sts.policy("s.test").await.unwrap(), p);
    assert_eq!(*requests.lock().unwrap(), 2);

    // A new id with a new policy replaces it.
    *script.lock().unwrap() = ok(&policy("testing", 600));
    let sts = client(Some("v=STSv1; id=three"), &ca, port, &cache, second);
    assert_eq!(sts.policy("s.test").await.unwrap().mode, Mode::Testing);
    assert_eq!(*requests.lock().unwrap(), 3);

    // A restart without the record (or without DNS): the cache file holds.
    let sts = client(None, &ca, port, &cache, second);
    assert_eq!(sts.policy("s.test").await.unwrap().mode, Mode::Testing);
    assert_eq!(*requests.lock().unwrap(), 3);

    // Expired on disk: nothing, once the record is gone.
    let file = cache.join("s.test.policy");
    let text = std::fs::read_to_string(&file).unwrap();
    let (head, body) = text.split_once("\n\n").unwrap();
    let head: String = head
        .lines()
        .map(|l| {
            if l.starts_with("fetched: ") {
                "fetched: 1000"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&file, format!("{head}\n\n{body}")).unwrap();
    let sts = client(None, &ca, port, &cache, second);
    assert_eq!(sts.policy("s.test").await, None);
}

#[tokio::test]
async fn a_server_that_never_answers_costs_the_timeout_and_gives_no_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "web");
    let (port, requests) = server(&ca, Arc::new(Mutex::new(None))).await;
    let sts = client(
        Some("v=STSv1; id=one"),
        &ca,
        port,
        tmp.path(),
        Duration::from_millis(300),
    );
    let started = Instant::now();
    assert_eq!(sts.policy("s.test").await, None);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(*requests.lock().unwrap(), 1);
    // An untrusted certificate: the CA the client trusts is another one.
    let other = TestCa::new(tmp.path(), "other");
    let script: Script = Arc::new(Mutex::new(ok(&policy("enforce", 60))));
    let (port, requests) = server(&ca, script).await;
    let sts = client(
        Some("v=STSv1; id=one"),
        &other,
        port,
        tmp.path(),
        Duration::from_secs(5),
    );
    assert_eq!(sts.policy("s.test").await, None);
    assert_eq!(
        *requests.lock().unwrap(),
        0,
        "no request over an unverified session"
    );
}
