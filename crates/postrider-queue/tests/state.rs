//! End-to-end tests of delivery state files: save, load, remove, recovery at open.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs;
use std::path::Path;

use postrider_queue::{
    ClientInfo, Envelope, MessageState, QueueId, RcptStatus, Recipient, Spool, SpoolError,
    SpoolOptions, SyncMode,
};

fn envelope() -> Envelope {
    Envelope {
        received_at_unix_ms: 1_700_000_000_000,
        mail_from: "alice@example.org".into(),
        smtputf8: false,
        body: None,
        ret: None,
        envid: None,
        size_param: None,
        recipients: ["bob@example.net", "carol@example.com"]
            .into_iter()
            .map(|address| Recipient {
                address: address.into(),
                notify: None,
                orcpt: None,
            })
            .collect(),
        client: ClientInfo {
            ip: "192.0.2.7".parse().unwrap(),
            port: 41_000,
            listener: "mx".into(),
            helo: "client.example.org".into(),
            tls: None,
            authenticated: None,
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

fn open(dir: &Path) -> (Spool, postrider_queue::Recovery) {
    Spool::open(dir, SpoolOptions::default()).unwrap()
}

fn store(spool: &Spool) -> QueueId {
    spool
        .store_blocking(envelope(), b"Subject: hi\r\n\r\nhello\r\n".to_vec())
        .unwrap()
}

fn delivered_first(now_ms: u64) -> MessageState {
    let mut state = MessageState::new(2, now_ms);
    state.recipients[0].status = RcptStatus::Delivered;
    state.recipients[0].attempts = 1;
    state.recipients[0].last_reply = Some("250 2.0.0 ok".into());
    state.recipients[0].route = Some("mx".into());
    state.recipients[1].attempts = 1;
    state.recipients[1].last_reply = Some("451 4.7.1 later".into());
    state.recipients[1].next_attempt_ms = now_ms + 300_000;
    state
}

#[test]
fn save_load_survives_reopen_and_remove_deletes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = open(&dir);
    let id = store(&spool);
    assert_eq!(spool.load_state(&id).unwrap(), None, "fresh message");

    let state = delivered_first(5);
    spool.save_state(&id, &state).unwrap();
    assert_eq!(spool.load_state(&id).unwrap(), Some(state.clone()));
    assert!(dir.join("state").join(id.as_str()).is_file());
    // Overwrites atomically and leaves no temporary files behind.
    let mut later = state.clone();
    later.recipients[1].status = RcptStatus::Bounced;
    spool.save_state(&id, &later).unwrap();
    assert_eq!(spool.load_state(&id).unwrap(), Some(later.clone()));
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
    assert_eq!(spool.list().unwrap(), vec![id.clone()]);
    drop(spool);

    let (spool, recovery) = open(&dir);
    assert_eq!(recovery.recovered, vec![id.clone()]);
    assert_eq!(recovery.removed_states, 0);
    assert!(recovery.corrupt_states.is_empty());
    assert_eq!(spool.load_state(&id).unwrap(), Some(later));

    spool.remove(&id).unwrap();
    assert!(!dir.join("state").join(id.as_str()).exists());
    assert_eq!(spool.load_state(&id).unwrap(), None);
    // Removing an entry that never had a state works too.
    let fresh = store(&spool);
    spool.remove(&fresh).unwrap();
}

#[test]
fn open_removes_orphaned_states_and_leftover_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = open(&dir);
    let kept = store(&spool);
    let gone = store(&spool);
    spool.save_state(&kept, &delivered_first(1)).unwrap();
    spool.save_state(&gone, &delivered_first(1)).unwrap();
    drop(spool);
    // A crash between removing the entry and its state leaves an orphan behind…
    fs::remove_file(dir.join("active").join(gone.as_str())).unwrap();
    // …and a crash in the middle of a save leaves a temporary file.
    fs::write(dir.join("tmp").join(format!("{kept}.state.7")), b"partial").unwrap();
    // A file that is no queue id is left alone.
    fs::write(dir.join("state").join("README"), b"not mine").unwrap();

    let (spool, recovery) = open(&dir);
    assert_eq!(recovery.recovered, vec![kept.clone()]);
    assert_eq!(recovery.removed_states, 1);
    assert_eq!(recovery.removed_partial, 1);
    assert!(!dir.join("state").join(gone.as_str()).exists());
    assert!(dir.join("state").join("README").exists());
    assert_eq!(spool.load_state(&kept).unwrap(), Some(delivered_first(1)));
}

#[test]
fn a_corrupt_state_reads_as_none_and_never_costs_the_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = open(&dir);
    let id = store(&spool);
    spool.save_state(&id, &delivered_first(1)).unwrap();
    let path = dir.join("state").join(id.as_str());
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    // While running: a warning and None; the message is untouched.
    assert_eq!(spool.load_state(&id).unwrap(), None);
    assert!(spool.load(&id).is_ok());
    drop(spool);

    // At open: quarantined as evidence, message recovered.
    let (spool, recovery) = open(&dir);
    assert_eq!(recovery.recovered, vec![id.clone()]);
    assert!(recovery.corrupt.is_empty());
    assert_eq!(
        recovery.corrupt_states,
        vec![dir.join("corrupt").join(format!("{id}.state"))]
    );
    assert!(!path.exists());
    assert_eq!(spool.load_state(&id).unwrap(), None);
    // Saving again starts afresh.
    spool.save_state(&id, &MessageState::new(2, 9)).unwrap();
    assert_eq!(
        spool.load_state(&id).unwrap(),
        Some(MessageState::new(2, 9))
    );

    // Truncated and empty files are corrupt too.
    fs::write(&path, b"").unwrap();
    assert_eq!(spool.load_state(&id).unwrap(), None);
    fs::write(&path, b"POSTRIDER-STATE 1\r\n\0\0").unwrap();
    assert_eq!(spool.load_state(&id).unwrap(), None);
}

#[test]
fn a_state_of_a_newer_version_is_an_error_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = open(&dir);
    let id = store(&spool);
    let path = dir.join("state").join(id.as_str());
    fs::write(&path, b"POSTRIDER-STATE 2\r\nwhatever comes next").unwrap();
    assert!(matches!(
        spool.load_state(&id),
        Err(SpoolError::UnsupportedVersion { version: 2, .. })
    ));
    drop(spool);
    let (spool, recovery) = open(&dir);
    assert!(recovery.corrupt_states.is_empty());
    assert_eq!(recovery.removed_states, 0);
    assert!(path.exists());
    assert_eq!(spool.list().unwrap(), vec![id.clone()]);
    assert!(matches!(
        spool.load_state(&id),
        Err(SpoolError::UnsupportedVersion { version: 2, .. })
    ));
}

#[test]
fn the_state_of_a_quarantined_message_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = open(&dir);
    let id = store(&spool);
    spool.save_state(&id, &delivered_first(1)).unwrap();
    drop(spool);
    fs::write(dir.join("active").join(id.as_str()), b"garbage").unwrap();
    let (_spool, recovery) = open(&dir);
    assert_eq!(recovery.corrupt.len(), 1);
    assert_eq!(recovery.removed_states, 1);
}

#[test]
fn save_state_works_without_syncing() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = Spool::open(
        tmp.path(),
        SpoolOptions {
            sync: SyncMode::None,
            ..SpoolOptions::default()
        },
    )
    .unwrap();
    let id = store(&spool);
    let state = delivered_first(3);
    spool.save_state(&id, &state).unwrap();
    assert_eq!(spool.load_state(&id).unwrap(), Some(state));
}

#[tokio::test]
async fn save_state_from_spawn_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let id = spool
        .store(envelope(), b"Subject: x\r\n\r\ny\r\n".to_vec())
        .await
        .unwrap();
    let handles: Vec<_> = (0..8u64)
        .map(|n| {
            let spool = spool.clone();
            let id = id.clone();
            tokio::task::spawn_blocking(move || spool.save_state(&id, &MessageState::new(2, n)))
        })
        .collect();
    for handle in handles {
        handle.await.unwrap().unwrap();
    }
    // Concurrent saves never interleave: the result is one of the saved states.
    let state = spool.load_state(&id).unwrap().unwrap();
    assert!(state.next_due_ms().is_some_and(|ms| ms < 8));
}

/// Records the syncs it is told about.
#[derive(Debug, Default)]
struct Syncs(std::sync::Mutex<Vec<postrider_queue::SyncOp>>);

impl postrider_queue::SyncObserver for Syncs {
    fn synced(&self, op: postrider_queue::SyncOp, _elapsed: std::time::Duration) {
        self.0.lock().unwrap().push(op);
    }
}

#[test]
fn sync_observer_sees_commit_state_and_remove() {
    use postrider_queue::SyncOp;
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path());
    let syncs = std::sync::Arc::new(Syncs::default());
    assert!(spool.set_sync_observer(syncs.clone()));
    assert!(!spool.set_sync_observer(std::sync::Arc::new(Syncs::default())));
    let id = store(&spool);
    spool.save_state(&id, &delivered_first(1)).unwrap();
    spool.remove(&id).unwrap();
    assert_eq!(
        *syncs.0.lock().unwrap(),
        [SyncOp::Commit, SyncOp::State, SyncOp::Remove]
    );
}

/// A version-1 state file as written before route holds had their own field (committed in
/// `tests/fixtures`): a pending recipient due at `u64::MAX` with a `held: REASON` reply. It
/// reads back as a typed hold.
#[test]
fn a_legacy_route_hold_reads_as_a_typed_hold() {
    let file = include_bytes!("fixtures/v1-route-hold.state");
    let state = postrider_queue::decode_state_file(file).unwrap();
    assert_eq!(
        state.recipients[0].route_hold.as_deref(),
        Some("manual review")
    );
    assert_eq!(state.recipients[0].last_reply, None);
    assert_eq!(state.recipients[1].route_hold, None);
    assert_eq!(state.recipients[1].route.as_deref(), Some("mx"));
    assert_eq!(state.next_due_ms(), Some(1_764_640_300_000));
    assert_eq!(
        state.queue_state(false),
        postrider_queue::state::QueueState::Held
    );
}
