//! Every backend against the conformance suite, plus what the suite cannot check:
//! persistence across a restart and atomic concurrent increments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postrider_kv::{
    Clock, EmbeddedKv, KvError, KvStore, Limits, ManualClock, MemoryKv, SystemClock, conformance,
};

fn embedded(path: &Path, clock: &Arc<ManualClock>) -> EmbeddedKv {
    EmbeddedKv::open(path, clock.clone()).unwrap()
}

#[tokio::test]
async fn memory_conforms() {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let kv = MemoryKv::new(clock.clone());
    conformance::run(&kv, &clock).await;
}

#[tokio::test]
async fn embedded_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let kv = embedded(&dir.path().join("kv.redb"), &clock);
    conformance::run(&kv, &clock).await;
}

#[tokio::test]
async fn conformance_starts_from_any_clock() {
    // Expiry 0 means "never"; a clock at 0 must not confuse that.
    let clock = Arc::new(ManualClock::new(0));
    conformance::run(&MemoryKv::new(clock.clone()), &clock).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    conformance::run(&embedded(&dir.path().join("kv.redb"), &clock), &clock).await;
}

#[tokio::test]
async fn embedded_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let clock = Arc::new(ManualClock::new(1_000_000));
    {
        let kv = embedded(&path, &clock);
        kv.set("ns", "plain", b"kept".to_vec(), None).await.unwrap();
        kv.set("ns", "short", b"x".to_vec(), Some(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(
            kv.incr("ns", "count", 3, Some(Duration::from_secs(60)))
                .await
                .unwrap(),
            3
        );
        kv.set("ns", "gone", b"x".to_vec(), None).await.unwrap();
        assert!(kv.delete("ns", "gone").await.unwrap());
    }
    clock.advance(Duration::from_secs(30));
    let kv = embedded(&path, &clock);
    assert_eq!(kv.get("ns", "plain").await.unwrap(), Some(b"kept".to_vec()));
    assert_eq!(
        kv.get("ns", "short").await.unwrap(),
        None,
        "expiry persists"
    );
    assert_eq!(kv.get("ns", "count").await.unwrap(), Some(b"3".to_vec()));
    assert_eq!(kv.get("ns", "gone").await.unwrap(), None, "deletes persist");
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        kv.incr("ns", "count", 1, None).await.unwrap(),
        1,
        "the counter's original expiry survived the restart"
    );
}

#[tokio::test]
async fn embedded_survives_reopen_after_many_eventual_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let clock = Arc::new(ManualClock::new(0));
    {
        let kv = embedded(&path, &clock);
        for i in 0..500 {
            kv.incr("ns", "n", 1, None).await.unwrap();
            kv.set("ns", &format!("k{i}"), vec![1; 100], None)
                .await
                .unwrap();
        }
    }
    let kv = embedded(&path, &clock);
    assert_eq!(kv.get("ns", "n").await.unwrap(), Some(b"500".to_vec()));
    assert_eq!(kv.get("ns", "k499").await.unwrap(), Some(vec![1; 100]));
}

#[tokio::test]
async fn embedded_open_fails_cleanly_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let _kv = EmbeddedKv::open(&path, Arc::new(SystemClock)).unwrap();
    let again = EmbeddedKv::open(&path, Arc::new(SystemClock));
    assert!(matches!(again, Err(KvError::Unavailable(_))), "{again:?}");
}

#[tokio::test]
async fn embedded_purges_expired_entries() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let kv = embedded(&dir.path().join("kv.redb"), &clock);
    for i in 0..10 {
        let ttl = (i % 2 == 0).then(|| Duration::from_secs(1));
        kv.set("ns", &format!("k{i}"), b"v".to_vec(), ttl)
            .await
            .unwrap();
    }
    assert_eq!(kv.purge_expired().await.unwrap(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(kv.purge_expired().await.unwrap(), 5);
    assert_eq!(kv.purge_expired().await.unwrap(), 0);
    assert_eq!(kv.get("ns", "k1").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn embedded_custom_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_key_len: 4,
        max_value_len: 8,
    };
    let kv =
        EmbeddedKv::open_with_limits(&dir.path().join("kv.redb"), Arc::new(SystemClock), limits)
            .unwrap();
    kv.set("ns", "abcd", vec![0; 8], None).await.unwrap();
    assert!(matches!(
        kv.set("ns", "abcde", vec![0; 8], None).await,
        Err(KvError::Invalid(_))
    ));
    assert!(matches!(
        kv.set("ns", "abcd", vec![0; 9], None).await,
        Err(KvError::Invalid(_))
    ));
}

#[test]
fn embedded_without_runtime_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let kv = EmbeddedKv::open(&dir.path().join("kv.redb"), Arc::new(SystemClock)).unwrap();
    // Poll the future on a bare executor: no tokio runtime is current.
    let result = futures_lite_block_on(kv.get("ns", "k"));
    assert!(matches!(result, Err(KvError::Unavailable(_))), "{result:?}");
}

/// Enough of an executor to poll a future that completes without waking.
fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("future did not complete on first poll"),
    }
}

async fn concurrent_incr(store: Arc<dyn KvStore>) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for _ in 0..100 {
                    store.incr("ns", "hits", 1, None).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        store.get("ns", "hits").await.unwrap(),
        Some(b"800".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn memory_incr_is_atomic() {
    concurrent_incr(Arc::new(MemoryKv::new(Arc::new(SystemClock)))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn embedded_incr_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let kv = EmbeddedKv::open(&dir.path().join("kv.redb"), clock).unwrap();
    concurrent_incr(Arc::new(kv)).await;
}
