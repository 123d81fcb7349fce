//! Every backend against the conformance suite, plus what the suite cannot check:
//! persistence across a restart and atomic concurrent increments.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postrider_kv::{
    Clock, EmbeddedKv, KvError, KvStore, Limits, ManualClock, MemoryKv, RedisKv, RedisOptions,
    SystemClock, conformance,
};
use postrider_testkit::RedisServer;

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
async fn embedded_survives_reopen_after_many_commits() {
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

/// 8 tasks each incrementing "hits" 100 times: the counter must end at 800.
async fn concurrent_incr(store: Arc<dyn KvStore>) {
    concurrent_incr_no_check(Arc::clone(&store)).await;
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

fn redis_store(server: &RedisServer, cluster: &str, clock: Arc<dyn Clock>) -> RedisKv {
    RedisKv::new(
        RedisOptions {
            url: server.url(0),
            cluster: cluster.into(),
            ca_pem: server.ca_file().map(|f| std::fs::read(f).unwrap()),
            timeout: Duration::from_millis(500),
        },
        clock,
    )
    .unwrap()
}

#[tokio::test]
async fn redis_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    // Redis expires entries by its own clock too, so start the test clock at the real time:
    // native expiry then never runs ahead of the test clock.
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let kv = redis_store(&server, "conformance", clock.clone());
    conformance::run(&kv, &clock).await;
    // The same suite again, on a store that already holds the first run's keys.
    conformance::run(&kv, &clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn redis_incr_is_atomic_across_relays() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let a: Arc<dyn KvStore> = Arc::new(redis_store(&server, "c", Arc::new(SystemClock)));
    let b: Arc<dyn KvStore> = Arc::new(redis_store(&server, "c", Arc::new(SystemClock)));
    let (ra, rb) = tokio::join!(
        tokio::spawn(concurrent_incr_no_check(a.clone())),
        tokio::spawn(concurrent_incr_no_check(b.clone()))
    );
    ra.unwrap();
    rb.unwrap();
    assert_eq!(a.get("ns", "hits").await.unwrap(), Some(b"1600".to_vec()));
}

/// 8 tasks each incrementing "hits" 100 times.
async fn concurrent_incr_no_check(store: Arc<dyn KvStore>) {
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
}

#[tokio::test]
async fn redis_entries_are_plain_redis_values_with_native_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let kv = redis_store(&server, "eu", Arc::new(SystemClock));
    kv.set(
        "greylist",
        "t1",
        b"seen".to_vec(),
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    kv.incr("rate", "n", 41, None).await.unwrap();
    assert_eq!(kv.incr("rate", "n", 1, None).await.unwrap(), 42);
    assert_eq!(
        server.command(&["GET", "postrider:eu:4:rate:n"]).as_deref(),
        Some("42"),
        "a counter is an ordinary Redis integer string"
    );
    assert_eq!(
        server
            .command(&["EXISTS", "postrider:eu:8:greylist:t1"])
            .as_deref(),
        Some("1")
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        server
            .command(&["EXISTS", "postrider:eu:8:greylist:t1"])
            .as_deref(),
        Some("0"),
        "Redis removed the expired entry on its own"
    );
    // Another cluster name sees none of it.
    let other = redis_store(&server, "us", Arc::new(SystemClock));
    assert_eq!(other.get("rate", "n").await.unwrap(), None);
}

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(dir.path());
    let kv = redis_store(&server, "c", Arc::new(SystemClock));
    kv.set("ns", "k", b"v".to_vec(), None).await.unwrap();
    server.kill();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let r = kv.incr("ns", "n", 1, None).await;
        assert!(matches!(r, Err(KvError::Unavailable(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a kv call while Redis is down took {:?}",
            started.elapsed()
        );
    }
    assert!(kv.failures() >= 3);
    server.resume();
    // The store reconnects by itself (the data is gone: this server keeps nothing on disk).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match kv.incr("ns", "n", 1, None).await {
            Ok(n) => {
                assert_eq!(n, 1);
                break;
            }
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no recovery within 10 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn redis_slow_server_times_out_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path());
    let kv = redis_store(&server, "c", Arc::new(SystemClock));
    kv.set("ns", "k", b"v".to_vec(), None).await.unwrap();
    // Redis stops answering every client for 2 s: a slow server, not a dead one.
    assert_eq!(
        server
            .command(&["CLIENT", "PAUSE", "2000", "ALL"])
            .as_deref(),
        Some("OK")
    );
    let started = std::time::Instant::now();
    let r = kv.get("ns", "k").await;
    let took = started.elapsed();
    assert!(matches!(r, Err(KvError::Unavailable(_))), "{r:?}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "the 500 ms timeout bounded the call: {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while kv.get("ns", "k").await != Ok(Some(b"v".to_vec())) {
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery after the pause"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_with_tls_and_a_password_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start_secure(dir.path(), "s3cret-pw");
    assert!(server.url(0).starts_with("rediss://:s3cret-pw@"));
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    conformance::run(&redis_store(&server, "tls", clock.clone()), &clock).await;

    // A wrong password, or no trust in the server's CA, makes every call fail, never hang.
    let wrong = RedisKv::new(
        RedisOptions {
            url: server.url(0).replace("s3cret-pw", "nope"),
            cluster: "tls".into(),
            ca_pem: server.ca_file().map(|f| std::fs::read(f).unwrap()),
            timeout: Duration::from_millis(500),
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let r = wrong.get("ns", "k").await;
    assert!(matches!(r, Err(KvError::Unavailable(_))), "{r:?}");
    let untrusted = RedisKv::new(
        RedisOptions {
            url: server.url(0),
            cluster: "tls".into(),
            ca_pem: None,
            timeout: Duration::from_millis(500),
        },
        Arc::new(SystemClock),
    )
    .unwrap();
    let r = untrusted.get("ns", "k").await;
    assert!(matches!(r, Err(KvError::Unavailable(_))), "{r:?}");
}
