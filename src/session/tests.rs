//! Session behaviour over the memory store: create, resolve, tamper, revoke, single-use login
//! state, expiry and the cache's TTL on a fake clock, and a store that fails (a fake, to prove
//! the cache rule without a network).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::memory::MemoryStore;
use super::*;

/// A fixed start for every test: time only moves when a test moves it.
const T0: Now = Now::from_unix_secs(1_800_000_000);

const LIFETIME: Duration = Duration::from_secs(3600);

fn sessions(store: Arc<dyn SessionStore>, cache_ttl: Duration) -> Arc<Sessions> {
    Sessions::new(store, CookieCodec::new(&[9u8; 32]), cache_ttl, LIFETIME)
}

/// What a lookup found, in a form tests can compare.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Session(String),
    Nothing,
    StoreDown,
}

async fn lookup(s: &Sessions, values: &[&str], now: Now) -> Found {
    match s.resolve(values.iter().copied(), now).await {
        Ok(Some(email)) => Found::Session(email.to_string()),
        Ok(None) => Found::Nothing,
        Err(_) => Found::StoreDown,
    }
}

fn alice() -> Found {
    Found::Session("alice@example.com".into())
}

fn attempt(return_url: &str) -> PendingLogin {
    PendingLogin {
        pkce_verifier: "v".into(),
        nonce: "n".into(),
        return_url: return_url.into(),
        binding: store_key("b"),
    }
}

#[tokio::test]
async fn create_resolve_tamper_revoke() {
    let s = sessions(MemoryStore::new(), Duration::from_secs(5));
    let value = s.create("alice@example.com", T0).await.unwrap();
    let other = s.create("alice@example.com", T0).await.unwrap();
    assert_ne!(value, other, "a fresh id at every login");
    assert_eq!(lookup(&s, &[&value], T0).await, alice());
    let mut tampered = value.clone().into_bytes();
    tampered[3] ^= 1;
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(lookup(&s, &[&tampered], T0).await, Found::Nothing);
    // A signed id the store never issued (e.g. a forged or expired session) is no session.
    let unknown = s.codec().sign(Purpose::Session, &cookie::random_id());
    assert_eq!(lookup(&s, &[&unknown], T0).await, Found::Nothing);
    // Several cookies: the valid one wins, garbage is skipped.
    assert_eq!(lookup(&s, &["junk", &tampered, &value], T0).await, alice());
    s.revoke([value.as_str()].into_iter()).await.unwrap();
    assert_eq!(lookup(&s, &[&value], T0).await, Found::Nothing);
    assert_eq!(lookup(&s, &[&other], T0).await, alice());
}

/// A session ends at its lifetime, also for a replica that validated it a moment before and
/// whose cache would otherwise still trust it.
#[tokio::test]
async fn a_session_ends_at_its_lifetime_even_when_cached() {
    let s = sessions(MemoryStore::new(), Duration::from_secs(86_400));
    let value = s.create("alice@example.com", T0).await.unwrap();
    let last_ms = T0.after(LIFETIME - Duration::from_millis(1));
    assert_eq!(lookup(&s, &[&value], last_ms).await, alice());
    assert_eq!(
        lookup(&s, &[&value], T0.after(LIFETIME)).await,
        Found::Nothing
    );
    // Without the cache, the store's own record says the same.
    let uncached = sessions(MemoryStore::new(), Duration::ZERO);
    let value = uncached.create("alice@example.com", T0).await.unwrap();
    assert_eq!(lookup(&uncached, &[&value], last_ms).await, alice());
    assert_eq!(
        lookup(&uncached, &[&value], T0.after(LIFETIME)).await,
        Found::Nothing
    );
}

#[tokio::test]
async fn login_state_is_single_use_and_expires() {
    let s = sessions(MemoryStore::new(), Duration::from_secs(5));
    let ttl = Duration::from_secs(60);
    let rec = attempt("https://app.example.com/");
    s.put_pending_login("state1", &rec, ttl, T0).await.unwrap();
    assert_eq!(s.take_pending_login("state1", T0).await.unwrap(), Some(rec));
    assert_eq!(
        s.take_pending_login("state1", T0).await.unwrap(),
        None,
        "replay"
    );
    assert_eq!(s.take_pending_login("never", T0).await.unwrap(), None);
    // Usable until the last millisecond of its TTL, and not at its end.
    for (state, at, usable) in [
        ("early", ttl - Duration::from_millis(1), true),
        ("late", ttl, false),
    ] {
        s.put_pending_login(state, &attempt("x"), ttl, T0)
            .await
            .unwrap();
        let taken = s.take_pending_login(state, T0.after(at)).await.unwrap();
        assert_eq!(taken.is_some(), usable, "{state}");
    }
}

/// A store that can be switched to failing, to check what a cached session may do.
struct Flaky {
    inner: Arc<MemoryStore>,
    down: AtomicBool,
    gets: AtomicUsize,
}

impl Flaky {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(),
            down: AtomicBool::new(false),
            gets: AtomicUsize::new(0),
        })
    }
}

impl SessionStore for Flaky {
    fn get_session<'a>(
        &'a self,
        key: &'a str,
        now: Now,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Box::pin(async { Err(StoreError::Unavailable("down".into())) });
        }
        self.inner.get_session(key, now)
    }
    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
        now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put_session(key, record, ttl, now)
    }
    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.revoke_session(key)
    }
    fn put_pending_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a PendingLogin,
        ttl: Duration,
        now: Now,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put_pending_login(state, record, ttl, now)
    }
    fn take_pending_login<'a>(
        &'a self,
        state: &'a str,
        now: Now,
    ) -> BoxFuture<'a, Result<Option<PendingLogin>, StoreError>> {
        self.inner.take_pending_login(state, now)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.ping()
    }
    fn watch_revocations(self: Arc<Self>, _evict: Evict) {}
}

#[tokio::test]
async fn store_down_passes_only_recently_validated_sessions() {
    let flaky = Flaky::new();
    let cache_ttl = Duration::from_millis(200);
    let s = sessions(flaky.clone(), cache_ttl);
    let seen = s.create("alice@example.com", T0).await.unwrap();
    let unseen = s.create("bob@example.com", T0).await.unwrap();
    assert_eq!(lookup(&s, &[&seen], T0).await, alice());
    flaky.down.store(true, Ordering::Relaxed);
    // Validated within cache_ttl, up to its last millisecond: still passes.
    assert_eq!(lookup(&s, &[&seen], T0).await, alice());
    assert_eq!(lookup(&s, &[&seen], T0.after(cache_ttl)).await, alice());
    // Never validated here: the store must answer, and it does not.
    assert_eq!(lookup(&s, &[&unseen], T0).await, Found::StoreDown);
    // After cache_ttl the cached validation no longer counts.
    let after = T0.after(cache_ttl + Duration::from_millis(1));
    assert_eq!(lookup(&s, &[&seen], after).await, Found::StoreDown);
    // Garbage cookies with the store down are simply no session (nothing to look up).
    assert_eq!(lookup(&s, &["junk"], after).await, Found::Nothing);
}

/// A validation the store confirms again starts a new `cache_ttl`; `cleanup` drops only the
/// entries older than `cache_ttl`.
#[tokio::test]
async fn the_cache_counts_from_the_last_validation_and_cleanup_drops_stale_entries() {
    let flaky = Flaky::new();
    let cache_ttl = Duration::from_secs(5);
    let s = sessions(flaky.clone(), cache_ttl);
    let first = s.create("alice@example.com", T0).await.unwrap();
    let second = s.create("bob@example.com", T0).await.unwrap();
    assert_eq!(lookup(&s, &[&first], T0).await, alice());
    let later = T0.after(Duration::from_secs(4));
    assert_eq!(
        lookup(&s, &[&second], later).await,
        Found::Session("bob@example.com".into())
    );
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 2);
    // Within cache_ttl of its validation the cache answers without the store.
    assert_eq!(lookup(&s, &[&first], later).await, alice());
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 0);
    // Past it the store is asked again, and its answer is cached from then on.
    let past = T0.after(Duration::from_secs(6));
    assert_eq!(lookup(&s, &[&first], past).await, alice());
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 1);
    assert_eq!(s.cache.len(), 2);
    // At 10 s: bob's entry (validated at 4 s) is 6 s old, alice's (6 s) 4 s old.
    s.cleanup(T0.after(Duration::from_secs(10)));
    assert_eq!(s.cache.len(), 1);
    flaky.down.store(true, Ordering::Relaxed);
    let at_10 = T0.after(Duration::from_secs(10));
    assert_eq!(lookup(&s, &[&first], at_10).await, alice());
    assert_eq!(lookup(&s, &[&second], at_10).await, Found::StoreDown);
}

#[tokio::test]
async fn repeated_cookies_cost_at_most_a_few_store_calls() {
    let flaky = Flaky::new();
    let s = sessions(flaky.clone(), Duration::ZERO);
    let value = s.create("alice@example.com", T0).await.unwrap();
    s.revoke([value.as_str()].into_iter()).await.unwrap();
    // 300 copies of one revoked cookie: one lookup.
    let copies = vec![value.as_str(); 300];
    assert_eq!(lookup(&s, &copies, T0).await, Found::Nothing);
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 1);
    // 300 different signed ids: at most four lookups.
    let forged: Vec<String> = (0..300)
        .map(|_| s.codec().sign(Purpose::Session, &cookie::random_id()))
        .collect();
    let forged: Vec<&str> = forged.iter().map(String::as_str).collect();
    assert_eq!(lookup(&s, &forged, T0).await, Found::Nothing);
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 4);
    // With the store down the first failure ends the search.
    flaky.down.store(true, Ordering::Relaxed);
    assert_eq!(lookup(&s, &forged, T0).await, Found::StoreDown);
    assert_eq!(flaky.gets.load(Ordering::Relaxed), 1);
}

/// The periodic cleanup also empties the memory store of what has expired: a single replica's
/// sessions and abandoned logins do not pile up for the life of the process.
#[tokio::test]
async fn cleanup_sweeps_the_memory_store() {
    let store = MemoryStore::new();
    let s = sessions(store.clone(), Duration::from_secs(5));
    let value = s.create("alice@example.com", T0).await.unwrap();
    s.put_pending_login("abandoned", &attempt("x"), Duration::from_secs(60), T0)
        .await
        .unwrap();
    s.cleanup(T0.after(Duration::from_secs(60)));
    assert_eq!(
        s.take_pending_login("abandoned", T0).await.unwrap(),
        None,
        "swept at its deadline, so gone even when asked about an earlier instant"
    );
    assert_eq!(lookup(&s, &[&value], T0).await, alice(), "still alive");
    s.cleanup(T0.after(LIFETIME));
    assert_eq!(lookup(&s, &[&value], T0).await, Found::Nothing, "swept");
}
