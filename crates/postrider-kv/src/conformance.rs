//! The behaviour every backend must have; run by each backend's tests (memory, embedded and
//! Redis against a real server).
//!
//! [`run`] expects a store with the default [`Limits`] whose clock is the given
//! [`ManualClock`]. It only touches namespaces starting with `conformance-`, and deletes
//! each key before using it, so it also works against a shared, non-empty backend.

use std::fmt::Debug;
use std::time::Duration;

use crate::{Clock, KvError, KvStore, Limits, ManualClock};

const NS: &str = "conformance-a";
const OTHER_NS: &str = "conformance-b";
const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Runs every check against `store`, moving `clock` forward as needed; panics with a clear
/// message on the first failed expectation.
pub async fn run(store: &dyn KvStore, clock: &ManualClock) {
    let t = Tester { store, clock };
    t.get_missing().await;
    t.set_get_overwrite().await;
    t.ttl_expiry().await;
    t.set_replaces_ttl().await;
    t.zero_ttl_is_invalid().await;
    t.incr_counts().await;
    t.incr_ttl().await;
    t.incr_rejects_non_counters().await;
    t.incr_overflow().await;
    t.delete().await;
    t.namespaces_are_isolated().await;
    t.empty_key_is_a_key().await;
    t.limits().await;
    t.list().await;
}

struct Tester<'s> {
    store: &'s dyn KvStore,
    clock: &'s ManualClock,
}

impl Tester<'_> {
    async fn get_missing(&self) {
        self.fresh(NS, "missing").await;
        let got = ok("get a missing key", self.store.get(NS, "missing").await);
        expect_eq("get a missing key", got, None);
    }

    async fn set_get_overwrite(&self) {
        self.fresh(NS, "k").await;
        self.set(NS, "k", b"v1", None).await;
        self.expect_value("get after set", NS, "k", Some(b"v1"))
            .await;
        self.set(NS, "k", b"value two", None).await;
        self.expect_value("get after overwrite", NS, "k", Some(b"value two"))
            .await;
        self.set(NS, "k", b"", None).await;
        self.expect_value("an empty value is a value", NS, "k", Some(b""))
            .await;
        let binary = [0u8, 255, 10, 13, 0];
        self.set(NS, "k", &binary, None).await;
        self.expect_value("binary values round-trip", NS, "k", Some(&binary))
            .await;
    }

    async fn ttl_expiry(&self) {
        self.fresh(NS, "ttl").await;
        self.fresh(NS, "forever").await;
        self.set(NS, "ttl", b"v", Some(10 * SECOND)).await;
        self.set(NS, "forever", b"v", None).await;
        self.clock.advance(10 * SECOND - MS);
        self.expect_value("1 ms before the ttl ends", NS, "ttl", Some(b"v"))
            .await;
        self.clock.advance(MS);
        self.expect_value("when the ttl ends", NS, "ttl", None)
            .await;
        let deleted = ok("delete an expired key", self.store.delete(NS, "ttl").await);
        expect_eq("delete of an expired key reports", deleted, false);
        self.clock
            .advance(Duration::from_secs(10 * 365 * 24 * 3600));
        self.expect_value("set without ttl, 10 years later", NS, "forever", Some(b"v"))
            .await;
    }

    async fn set_replaces_ttl(&self) {
        self.fresh(NS, "re").await;
        self.set(NS, "re", b"short", Some(SECOND)).await;
        self.set(NS, "re", b"long", None).await;
        self.clock.advance(2 * SECOND);
        self.expect_value(
            "set without ttl clears the old ttl",
            NS,
            "re",
            Some(b"long"),
        )
        .await;
        self.set(NS, "re", b"again", Some(SECOND)).await;
        self.clock.advance(SECOND);
        self.expect_value("set with ttl adds one", NS, "re", None)
            .await;
    }

    async fn zero_ttl_is_invalid(&self) {
        self.fresh(NS, "zero").await;
        let set = self
            .store
            .set(NS, "zero", b"v".to_vec(), Some(Duration::ZERO))
            .await;
        expect_invalid("set with a zero ttl", set);
        let incr = self.store.incr(NS, "zero", 1, Some(Duration::ZERO)).await;
        expect_invalid("incr with a zero ttl", incr);
        self.expect_value("after rejected zero-ttl writes", NS, "zero", None)
            .await;
    }

    async fn incr_counts(&self) {
        self.fresh(NS, "n").await;
        expect_eq(
            "incr creates at 0 + delta",
            self.incr(NS, "n", 5, None).await,
            5,
        );
        self.expect_value("a counter reads as decimal ASCII", NS, "n", Some(b"5"))
            .await;
        expect_eq("incr adds", self.incr(NS, "n", 1, None).await, 6);
        expect_eq("negative delta", self.incr(NS, "n", -10, None).await, -4);
        self.expect_value("a negative counter", NS, "n", Some(b"-4"))
            .await;
        expect_eq("zero delta", self.incr(NS, "n", 0, None).await, -4);

        self.fresh(NS, "z").await;
        expect_eq("incr by 0 creates", self.incr(NS, "z", 0, None).await, 0);
        self.expect_value("a created zero counter", NS, "z", Some(b"0"))
            .await;

        self.fresh(NS, "s").await;
        self.set(NS, "s", b"41", None).await;
        expect_eq(
            "incr a value set by set",
            self.incr(NS, "s", 1, None).await,
            42,
        );
    }

    async fn incr_ttl(&self) {
        self.fresh(NS, "c").await;
        expect_eq(
            "incr with ttl creates",
            self.incr(NS, "c", 1, Some(10 * SECOND)).await,
            1,
        );
        self.clock.advance(5 * SECOND);
        expect_eq(
            "incr within ttl",
            self.incr(NS, "c", 1, Some(10 * SECOND)).await,
            2,
        );
        self.clock.advance(5 * SECOND - MS);
        self.expect_value(
            "incr keeps the original expiry (before)",
            NS,
            "c",
            Some(b"2"),
        )
        .await;
        self.clock.advance(MS);
        self.expect_value("incr keeps the original expiry (after)", NS, "c", None)
            .await;
        expect_eq(
            "incr after expiry restarts",
            self.incr(NS, "c", 7, Some(SECOND)).await,
            7,
        );
        self.clock.advance(SECOND - MS);
        self.expect_value("restarted counter before its new ttl", NS, "c", Some(b"7"))
            .await;
        self.clock.advance(MS);
        self.expect_value("restarted counter takes the new ttl", NS, "c", None)
            .await;

        self.fresh(NS, "p").await;
        expect_eq("incr without ttl", self.incr(NS, "p", 1, None).await, 1);
        expect_eq(
            "later ttl ignored",
            self.incr(NS, "p", 1, Some(SECOND)).await,
            2,
        );
        self.clock.advance(2 * SECOND);
        self.expect_value(
            "a counter created without ttl never expires",
            NS,
            "p",
            Some(b"2"),
        )
        .await;

        self.fresh(NS, "st").await;
        self.set(NS, "st", b"10", Some(SECOND)).await;
        expect_eq(
            "incr a value set with ttl",
            self.incr(NS, "st", 1, None).await,
            11,
        );
        self.clock.advance(SECOND);
        self.expect_value("incr keeps the ttl given to set", NS, "st", None)
            .await;
    }

    async fn incr_rejects_non_counters(&self) {
        for bad in [&b"abc"[..], b"", b" 1", b"1.5", b"+1", b"01", b"\xff"] {
            self.fresh(NS, "bad").await;
            self.set(NS, "bad", bad, None).await;
            let result = self.store.incr(NS, "bad", 1, None).await;
            expect_invalid(
                &format!("incr on {:?}", String::from_utf8_lossy(bad)),
                result,
            );
            self.expect_value("a rejected incr leaves the value", NS, "bad", Some(bad))
                .await;
        }
    }

    async fn incr_overflow(&self) {
        self.fresh(NS, "big").await;
        expect_eq(
            "incr to i64::MAX",
            self.incr(NS, "big", i64::MAX, None).await,
            i64::MAX,
        );
        expect_invalid(
            "incr past i64::MAX",
            self.store.incr(NS, "big", 1, None).await,
        );
        let max = i64::MAX.to_string();
        self.expect_value("overflow leaves the value", NS, "big", Some(max.as_bytes()))
            .await;
        self.fresh(NS, "small").await;
        expect_eq(
            "incr to i64::MIN",
            self.incr(NS, "small", i64::MIN, None).await,
            i64::MIN,
        );
        expect_invalid(
            "incr past i64::MIN",
            self.store.incr(NS, "small", -1, None).await,
        );
    }

    async fn delete(&self) {
        self.fresh(NS, "d").await;
        self.set(NS, "d", b"v", None).await;
        let deleted = ok("delete an existing key", self.store.delete(NS, "d").await);
        expect_eq("delete of an existing key reports", deleted, true);
        self.expect_value("get after delete", NS, "d", None).await;
        let deleted = ok("delete a missing key", self.store.delete(NS, "d").await);
        expect_eq("delete of a missing key reports", deleted, false);
        expect_eq(
            "incr after delete starts over",
            self.incr(NS, "d", 3, None).await,
            3,
        );
    }

    async fn namespaces_are_isolated(&self) {
        self.fresh(NS, "shared").await;
        self.fresh(OTHER_NS, "shared").await;
        self.set(NS, "shared", b"a", None).await;
        self.expect_value(
            "same key, other namespace, before",
            OTHER_NS,
            "shared",
            None,
        )
        .await;
        self.set(OTHER_NS, "shared", b"b", None).await;
        self.expect_value("namespace a keeps its value", NS, "shared", Some(b"a"))
            .await;
        self.expect_value("namespace b has its own", OTHER_NS, "shared", Some(b"b"))
            .await;
        ok(
            "delete in namespace a",
            self.store.delete(NS, "shared").await,
        );
        self.expect_value(
            "delete does not cross namespaces",
            OTHER_NS,
            "shared",
            Some(b"b"),
        )
        .await;
        // Pairs that would collide under naive concatenation.
        self.fresh("conformance-a\0x", "y").await;
        self.fresh(NS, "x\0y").await;
        self.set("conformance-a\0x", "y", b"1", None).await;
        self.expect_value("no separator collisions", NS, "x\0y", None)
            .await;
        let empty = self.store.get("", "k").await;
        expect_invalid("an empty namespace", empty);
    }

    async fn empty_key_is_a_key(&self) {
        self.fresh(NS, "").await;
        self.set(NS, "", b"empty", None).await;
        self.expect_value("the empty key", NS, "", Some(b"empty"))
            .await;
        let deleted = ok("delete the empty key", self.store.delete(NS, "").await);
        expect_eq("delete of the empty key reports", deleted, true);
    }

    async fn limits(&self) {
        let limits = Limits::default();
        let longest = "k".repeat(limits.max_key_len);
        let too_long = "k".repeat(limits.max_key_len + 1);
        self.fresh(NS, &longest).await;
        self.set(NS, &longest, b"v", None).await;
        self.expect_value("the longest key", NS, &longest, Some(b"v"))
            .await;
        expect_invalid("get a too long key", self.store.get(NS, &too_long).await);
        expect_invalid(
            "set a too long key",
            self.store.set(NS, &too_long, b"v".to_vec(), None).await,
        );
        expect_invalid(
            "incr a too long key",
            self.store.incr(NS, &too_long, 1, None).await,
        );
        expect_invalid(
            "delete a too long key",
            self.store.delete(NS, &too_long).await,
        );
        let long_ns = "n".repeat(limits.max_key_len + 1);
        expect_invalid("a too long namespace", self.store.get(&long_ns, "k").await);

        self.fresh(NS, "big").await;
        let largest = vec![b'x'; limits.max_value_len];
        self.set(NS, "big", &largest, None).await;
        self.expect_value("the largest value", NS, "big", Some(&largest))
            .await;
        let too_large = vec![b'x'; limits.max_value_len + 1];
        expect_invalid(
            "set a too large value",
            self.store.set(NS, "big", too_large, None).await,
        );
        self.expect_value("a rejected set leaves the value", NS, "big", Some(&largest))
            .await;
        // Multi-byte characters: the limit is in bytes.
        let wide = "é".repeat(limits.max_key_len / 2 + 1);
        expect_invalid(
            "a key over the limit in bytes",
            self.store.get(NS, &wide).await,
        );
    }

    /// `list`: by prefix, sorted, live entries only, with expiry, limited, glob characters
    /// literal, namespaces apart.
    async fn list(&self) {
        const LIST_NS: &str = "conformance-list";
        for key in ["p:a", "p:b", "p:c", "p*x", "pzx", "q:a", "p:gone"] {
            self.fresh(LIST_NS, key).await;
        }
        self.fresh(OTHER_NS, "p:other").await;
        self.set(LIST_NS, "p:b", b"2", Some(100 * SECOND)).await;
        self.set(LIST_NS, "p:a", b"1", None).await;
        self.set(LIST_NS, "p:c", b"3", None).await;
        self.set(LIST_NS, "p*x", b"star", None).await;
        self.set(LIST_NS, "pzx", b"z", None).await;
        self.set(LIST_NS, "q:a", b"q", None).await;
        self.set(LIST_NS, "p:gone", b"g", Some(SECOND)).await;
        self.set(OTHER_NS, "p:other", b"o", None).await;
        self.clock.advance(SECOND);
        let keys = |entries: &[crate::KvEntry]| -> Vec<String> {
            entries.iter().map(|e| e.key.clone()).collect()
        };
        let all = ok("list p:", self.store.list(LIST_NS, "p:", 100).await);
        expect_eq(
            "list by prefix, sorted, live only",
            keys(&all),
            vec!["p:a".to_owned(), "p:b".to_owned(), "p:c".to_owned()],
        );
        expect_eq("list returns values", all[0].value.clone(), b"1".to_vec());
        expect_eq("no expiry is None", all[0].expires_at_ms, None);
        let expiry = self.clock.now_ms() - 1000 + 100_000;
        expect_eq("expiry in Unix ms", all[1].expires_at_ms, Some(expiry));
        let star = ok("list p*", self.store.list(LIST_NS, "p*", 100).await);
        expect_eq(
            "glob characters match literally",
            keys(&star),
            vec!["p*x".to_owned()],
        );
        let two = ok("list with a limit", self.store.list(LIST_NS, "p:", 2).await);
        expect_eq("the limit holds", two.len(), 2);
        let everything = ok("list everything", self.store.list(LIST_NS, "", 100).await);
        expect_eq("an empty prefix lists the namespace", everything.len(), 6);
        let glob = ok(
            "list conformance-l*",
            self.store.list("conformance-l*", "", 100).await,
        );
        expect_eq(
            "a namespace's glob characters match literally",
            glob.len(),
            0,
        );
        for key in ["p:a", "p:b", "p:c", "p*x", "pzx", "q:a"] {
            self.fresh(LIST_NS, key).await;
        }
        self.fresh(OTHER_NS, "p:other").await;
    }

    /// Deletes a key so the check starts from nothing.
    async fn fresh(&self, namespace: &str, key: &str) {
        ok(
            &format!("delete {} before a check", name(namespace, key)),
            self.store.delete(namespace, key).await,
        );
    }

    async fn set(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) {
        ok(
            &format!("set {}", name(namespace, key)),
            self.store.set(namespace, key, value.to_vec(), ttl).await,
        );
    }

    async fn incr(&self, namespace: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        ok(
            &format!("incr {} by {delta}", name(namespace, key)),
            self.store.incr(namespace, key, delta, ttl).await,
        )
    }

    async fn expect_value(&self, what: &str, namespace: &str, key: &str, want: Option<&[u8]>) {
        let got = ok(what, self.store.get(namespace, key).await);
        if got.as_deref() != want {
            panic!(
                "kv conformance: {what}: get {} returned {}, expected {}",
                name(namespace, key),
                show(got.as_deref()),
                show(want),
            );
        }
    }
}

#[track_caller]
fn ok<T>(what: &str, result: Result<T, KvError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("kv conformance: {what}: unexpected error: {e}"),
    }
}

#[track_caller]
fn expect_eq<T: PartialEq + Debug>(what: &str, got: T, want: T) {
    if got != want {
        panic!("kv conformance: {what}: got {got:?}, expected {want:?}");
    }
}

#[track_caller]
fn expect_invalid<T: Debug>(what: &str, result: Result<T, KvError>) {
    match result {
        Err(KvError::Invalid(_)) => {}
        other => panic!("kv conformance: {what}: got {other:?}, expected Err(Invalid(..))"),
    }
}

fn show(value: Option<&[u8]>) -> String {
    match value {
        None => "None".into(),
        Some(bytes) if bytes.len() > 40 => format!("Some({} bytes)", bytes.len()),
        Some(bytes) => format!("Some({:?})", String::from_utf8_lossy(bytes)),
    }
}

/// `namespace/key` for messages, with long keys shortened.
fn name(namespace: &str, key: &str) -> String {
    if key.len() > 40 {
        let head: String = key.chars().take(20).collect();
        format!("{namespace:?}/{head:?}... ({} bytes)", key.len())
    } else {
        format!("{namespace:?}/{key:?}")
    }
}
