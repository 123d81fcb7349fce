//! End-to-end tests of the spool: round trips, recovery, group commit, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use postrider_queue::{
    ClientInfo, CorruptReason, Envelope, QueueId, Recipient, Spool, SpoolError, SpoolOptions,
    SyncMode,
};

fn envelope(n: usize) -> Envelope {
    Envelope {
        received_at_unix_ms: 1_700_000_000_000 + n as u64,
        mail_from: format!("sender{n}@example.org"),
        smtputf8: n.is_multiple_of(2),
        body: Some(postrider_smtp::command::Body::EightBitMime),
        ret: None,
        envid: Some(format!("env-{n}")),
        size_param: Some(4096),
        recipients: vec![
            Recipient {
                address: "bob@example.net".into(),
                notify: Some(postrider_smtp::command::Notify::from_keywords(&[
                    "SUCCESS", "FAILURE",
                ])),
                orcpt: Some("rfc822;bob@example.net".into()),
            },
            Recipient {
                address: "carol@example.com".into(),
                notify: None,
                orcpt: None,
            },
        ],
        client: ClientInfo {
            ip: "192.0.2.7".parse().unwrap(),
            port: 41_000,
            listener: "submission".into(),
            helo: "client.example.org".into(),
            tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
            authenticated: Some("alice".into()),
            reverse_dns: None,
            session: None,
            server: None,
            sni: None,
        },
        quarantine: None,
        spf: None,
        require_tls: false,
    }
}

fn message(n: usize) -> Vec<u8> {
    let mut m = format!("Subject: test {n}\r\n\r\nHello {n}\r\n\u{e9}").into_bytes();
    m.push(0xff); // not UTF-8: messages are bytes
    m
}

fn open(dir: &Path) -> (Spool, postrider_queue::Recovery) {
    Spool::open(dir, SpoolOptions::default()).unwrap()
}

#[test]
fn round_trip_store_load_list_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, recovery) = open(&dir);
    assert_eq!(recovery, Default::default());
    assert_eq!(spool.dir(), dir);

    let a = spool.store_blocking(envelope(1), message(1)).unwrap();
    let b = spool.store_blocking(envelope(2), Vec::new()).unwrap();
    assert!(a < b);
    assert_eq!(spool.list().unwrap(), vec![a.clone(), b.clone()]);
    assert!(dir.join("active").join(a.as_str()).is_file());
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);

    let (env, msg) = spool.load(&a).unwrap();
    assert_eq!(env, envelope(1));
    assert_eq!(msg, message(1));
    assert_eq!(spool.load(&b).unwrap(), (envelope(2), Vec::new()));

    spool.remove(&a).unwrap();
    assert_eq!(spool.list().unwrap(), vec![b.clone()]);
    assert!(matches!(spool.load(&a), Err(SpoolError::NotFound { id }) if id == a));
    assert!(matches!(spool.remove(&a), Err(SpoolError::NotFound { .. })));
    assert!(spool.sync_count() >= 2);
    assert_eq!(spool.stored_count(), 2);
}

#[tokio::test]
async fn async_store_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let id = spool.store(envelope(7), message(7)).await.unwrap();
    assert_eq!(spool.load(&id).unwrap(), (envelope(7), message(7)));
    // Blocking inside a runtime must not panic either.
    let id2 = spool.store_blocking(envelope(8), message(8)).unwrap();
    assert_eq!(spool.list().unwrap(), vec![id, id2]);
}

#[test]
fn reopen_recovers_entries_and_never_reuses_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let ids: Vec<QueueId> = {
        let (spool, _) = open(tmp.path());
        (0..5)
            .map(|n| spool.store_blocking(envelope(n), message(n)).unwrap())
            .collect()
    };
    // A far-future id on disk (as after the clock stepped back) raises the floor.
    let future = days_later(&ids[4]);
    fs::copy(
        tmp.path().join("active").join(ids[0].as_str()),
        tmp.path().join("active").join(future.as_str()),
    )
    .unwrap();

    let (spool, recovery) = open(tmp.path());
    let mut expected = ids.clone();
    expected.push(future.clone());
    assert_eq!(recovery.recovered, expected);
    assert_eq!(recovery.removed_partial, 0);
    assert!(recovery.corrupt.is_empty());
    assert_eq!(spool.list().unwrap(), expected);
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(spool.load(id).unwrap(), (envelope(n), message(n)));
    }
    let next = spool.store_blocking(envelope(9), message(9)).unwrap();
    assert!(next > future, "{next} must sort after {future}");
}

/// An id some days after `id`: bumps the first base32 digit worth at least 2^40 µs.
fn days_later(id: &QueueId) -> QueueId {
    const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut chars: Vec<char> = id.as_str().chars().collect();
    let i = (4..8).find(|&i| chars[i] != 'Z').unwrap();
    let digit = ALPHABET.find(chars[i]).unwrap();
    chars[i] = ALPHABET.as_bytes()[digit + 1] as char;
    chars.into_iter().collect::<String>().parse().unwrap()
}

#[test]
fn recovery_removes_partials_and_quarantines_corrupt_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ids: Vec<QueueId> = {
        let (spool, _) = open(dir);
        (0..6)
            .map(|n| {
                spool
                    .store_blocking(envelope(n), vec![b'x'; 1000 + n])
                    .unwrap()
            })
            .collect()
    };
    let active = dir.join("active");
    let path = |id: &QueueId| active.join(id.as_str());

    // A partial write left in tmp/.
    fs::write(
        dir.join("tmp").join("01ABCDEFGHJKMNPQR"),
        b"POSTRIDER-SPOOL 1\r\n\0\0",
    )
    .unwrap();
    // Truncated.
    let bytes = fs::read(path(&ids[0])).unwrap();
    fs::write(path(&ids[0]), &bytes[..bytes.len() - 10]).unwrap();
    // One bit flipped in the message.
    let mut bytes = fs::read(path(&ids[1])).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    fs::write(path(&ids[1]), &bytes).unwrap();
    // Renamed but never synced: the name survived, the data did not.
    fs::write(path(&ids[2]), b"").unwrap();
    // A stray file that is not a queue id.
    fs::write(active.join("README"), b"hello").unwrap();
    // Written by a newer build.
    let mut bytes = fs::read(path(&ids[3])).unwrap();
    bytes.splice(
        ..b"POSTRIDER-SPOOL 1".len(),
        b"POSTRIDER-SPOOL 2".iter().copied(),
    );
    fs::write(path(&ids[3]), &bytes).unwrap();
    // Evidence from an earlier run must not be overwritten.
    fs::write(dir.join("corrupt").join(ids[0].as_str()), b"older evidence").unwrap();

    let (spool, recovery) = open(dir);
    assert_eq!(recovery.recovered, vec![ids[4].clone(), ids[5].clone()]);
    assert_eq!(recovery.removed_partial, 1);
    assert_eq!(recovery.unsupported, vec![(ids[3].clone(), 2)]);
    assert_eq!(recovery.corrupt.len(), 4, "{:?}", recovery.corrupt);
    for p in &recovery.corrupt {
        assert!(
            p.starts_with(dir.join("corrupt")) && p.is_file(),
            "{}",
            p.display()
        );
    }
    assert_eq!(
        fs::read(dir.join("corrupt").join(ids[0].as_str())).unwrap(),
        b"older evidence"
    );
    assert!(
        recovery
            .corrupt
            .contains(&dir.join("corrupt").join(format!("{}.1", ids[0])))
    );
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);

    // Unsupported entries stay on disk but are not offered for delivery.
    assert!(path(&ids[3]).is_file());
    assert_eq!(spool.list().unwrap(), vec![ids[4].clone(), ids[5].clone()]);
    assert!(matches!(
        spool.load(&ids[3]),
        Err(SpoolError::UnsupportedVersion { version: 2, .. })
    ));
    assert!(matches!(
        spool.load(&ids[0]),
        Err(SpoolError::NotFound { .. })
    ));
    assert_eq!(spool.load(&ids[5]).unwrap().1, vec![b'x'; 1005]);

    // A file corrupted after open is caught by load.
    let mut bytes = fs::read(path(&ids[4])).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(path(&ids[4]), &bytes).unwrap();
    assert!(matches!(
        spool.load(&ids[4]),
        Err(SpoolError::Corrupt {
            reason: CorruptReason::Checksum { .. },
            ..
        })
    ));
}

#[tokio::test]
async fn concurrent_async_stores_share_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let spool = spool.clone();
            tokio::spawn(async move { spool.store(envelope(n), message(n)).await })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        assert!(ids.insert(task.await.unwrap().unwrap()));
    }
    assert_eq!(ids.len(), 200);
    assert_eq!(spool.list().unwrap().len(), 200);
    assert_eq!(spool.stored_count(), 200);
    let syncs = spool.sync_count();
    assert!((1..200).contains(&syncs), "{syncs} syncs for 200 stores");
}

#[test]
fn concurrent_blocking_stores_from_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let handles: Vec<_> = (0..20)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let n = t * 10 + i;
                        let id = spool.store_blocking(envelope(n), message(n)).unwrap();
                        (id, n)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let stored: Vec<(QueueId, usize)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: HashSet<_> = stored.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(unique.len(), 200);
    for (id, n) in &stored {
        assert_eq!(spool.load(id).unwrap(), (envelope(*n), message(*n)));
    }
    let syncs = spool.sync_count();
    assert!(syncs < 200, "{syncs} syncs for 200 stores");
    assert_eq!(spool.batch_count(), syncs);
}

#[test]
fn store_after_close_fails_without_panicking() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let id = spool.store_blocking(envelope(1), message(1)).unwrap();
    let clone = spool.clone();
    spool.close();
    spool.close(); // idempotent
    assert!(matches!(
        clone.store_blocking(envelope(2), message(2)),
        Err(SpoolError::Closed)
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert!(matches!(
        rt.block_on(clone.store(envelope(3), message(3))),
        Err(SpoolError::Closed)
    ));
    // Reads still work.
    assert_eq!(clone.list().unwrap(), vec![id]);
}

#[test]
fn a_spool_can_be_open_only_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    assert!(matches!(
        Spool::open(tmp.path(), SpoolOptions::default()),
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
    let (_spool, _) = open(tmp.path());
}

#[test]
fn sync_mode_none_never_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let options = SpoolOptions {
        sync: SyncMode::None,
        max_batch: 1,
    };
    let (spool, _) = Spool::open(tmp.path(), options).unwrap();
    let id = spool.store_blocking(envelope(1), message(1)).unwrap();
    spool.remove(&id).unwrap();
    assert_eq!(spool.sync_count(), 0);
    assert_eq!(spool.batch_count(), 1);
}

#[test]
fn unwritable_spool_fails_the_store_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    // Replace tmp/ with a file so creating the entry fails.
    fs::remove_dir(tmp.path().join("tmp")).unwrap();
    fs::write(tmp.path().join("tmp"), b"").unwrap();
    assert!(matches!(
        spool.store_blocking(envelope(1), message(1)),
        Err(SpoolError::Io { .. })
    ));
    fs::remove_file(tmp.path().join("tmp")).unwrap();
    fs::create_dir(tmp.path().join("tmp")).unwrap();
    let id = spool.store_blocking(envelope(2), message(2)).unwrap();
    assert_eq!(spool.list().unwrap(), vec![id]);
}

#[test]
fn spool_is_send_sync_clone() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Spool>();
    assert_traits::<QueueId>();
}

#[test]
fn a_dropped_store_future_leaves_nothing_behind() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let mut completed = 0;
    for n in 0..20 {
        let mut store = std::pin::pin!(spool.store(envelope(n), message(n)));
        // One poll hands the entry to the writer; then the caller gives up.
        match store.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Pending => {}
            Poll::Ready(result) => {
                result.unwrap();
                completed += 1;
            }
        }
    }
    spool.close(); // waits for the writer to finish everything it was given
    let leftover = fs::read_dir(tmp.path().join("active")).unwrap().count();
    assert_eq!(leftover, completed);
    assert_eq!(spool.list().unwrap().len(), completed);
    assert_eq!(spool.stored_count(), completed as u64);
}

/// A version-1 spool entry written before this build (committed in `tests/fixtures`, with
/// every MAIL and RCPT parameter and no session, server or SNI fields) still loads.
#[test]
fn a_version_1_entry_from_an_older_build_loads() {
    let file = include_bytes!("fixtures/v1-entry.spool");
    let (envelope, message) = postrider_queue::decode_entry(file, true).unwrap();
    assert_eq!(envelope.mail_from, "alice@example.org");
    assert_eq!(envelope.size_param, Some(120));
    assert_eq!(envelope.envid.as_deref(), Some("env-1"));
    assert_eq!(envelope.recipients.len(), 2);
    assert_eq!(
        envelope.recipients[0].orcpt.as_deref(),
        Some("rfc822;bob@example.net")
    );
    assert_eq!(envelope.client.session, None);
    assert_eq!(envelope.client.server, None);
    assert_eq!(envelope.spf.map(|s| s.result), Some("pass".to_owned()));
    let message = message.unwrap();
    assert!(message.ends_with(b"written by the version-1 spool\r\n"));
}
