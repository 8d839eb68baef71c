//! Session behaviour over the memory store: create, resolve, tamper, revoke, single-use login
//! state, and a store that fails (a fake, to prove the cache rule without a network).

use std::sync::atomic::{AtomicBool, Ordering};

use super::memory::MemoryStore;
use super::*;

fn sessions(store: Arc<dyn SessionStore>, cache_ttl: Duration) -> Arc<Sessions> {
    Sessions::new(
        store,
        CookieCodec::new(&[9u8; 32]),
        cache_ttl,
        Duration::from_secs(3600),
        Arc::new(Metrics::new()),
    )
}

#[tokio::test]
async fn create_resolve_tamper_revoke() {
    let s = sessions(MemoryStore::new(), Duration::from_secs(5));
    let value = s.create("alice@example.com").await.unwrap();
    let other = s.create("alice@example.com").await.unwrap();
    assert_ne!(value, other, "a fresh id at every login");
    assert_eq!(
        s.resolve([value.as_str()].into_iter()).await,
        SessionState::Valid {
            email: "alice@example.com".into()
        }
    );
    let mut tampered = value.clone().into_bytes();
    tampered[3] ^= 1;
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(
        s.resolve([tampered.as_str()].into_iter()).await,
        SessionState::None
    );
    // A signed id the store never issued (e.g. a forged or expired session) is no session.
    let unknown = s.codec().sign(Purpose::Session, &cookie::random_id());
    assert_eq!(
        s.resolve([unknown.as_str()].into_iter()).await,
        SessionState::None
    );
    // Several cookies: the valid one wins, garbage is skipped.
    assert!(matches!(
        s.resolve(["junk", tampered.as_str(), value.as_str()].into_iter())
            .await,
        SessionState::Valid { .. }
    ));
    s.revoke([value.as_str()].into_iter()).await.unwrap();
    assert_eq!(
        s.resolve([value.as_str()].into_iter()).await,
        SessionState::None
    );
    assert!(matches!(
        s.resolve([other.as_str()].into_iter()).await,
        SessionState::Valid { .. }
    ));
}

#[tokio::test]
async fn login_state_is_single_use() {
    let s = sessions(MemoryStore::new(), Duration::from_secs(5));
    let rec = LoginRecord {
        pkce_verifier: "v".into(),
        nonce: "n".into(),
        return_url: "https://app.example.com/".into(),
        binding: store_key("b"),
    };
    s.put_login("state1", &rec, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(s.take_login("state1").await.unwrap(), Some(rec));
    assert_eq!(s.take_login("state1").await.unwrap(), None, "replay");
    assert_eq!(s.take_login("never").await.unwrap(), None);
    s.put_login(
        "short",
        &LoginRecord {
            pkce_verifier: "v".into(),
            nonce: "n".into(),
            return_url: "x".into(),
            binding: "b".into(),
        },
        Duration::from_millis(1),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(s.take_login("short").await.unwrap(), None, "expired");
}

/// A store that can be switched to failing, to check what a cached session may do.
struct Flaky {
    inner: Arc<MemoryStore>,
    down: AtomicBool,
    gets: std::sync::atomic::AtomicUsize,
}

impl SessionStore for Flaky {
    fn get_session<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        self.gets.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) {
            return Box::pin(async { Err(StoreError::Unavailable("down".into())) });
        }
        self.inner.get_session(key)
    }
    fn put_session<'a>(
        &'a self,
        key: &'a str,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put_session(key, record, ttl)
    }
    fn revoke_session<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.revoke_session(key)
    }
    fn put_login<'a>(
        &'a self,
        state: &'a str,
        record: &'a LoginRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.put_login(state, record, ttl)
    }
    fn take_login<'a>(
        &'a self,
        state: &'a str,
    ) -> BoxFuture<'a, Result<Option<LoginRecord>, StoreError>> {
        self.inner.take_login(state)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.ping()
    }
    fn watch_revocations(self: Arc<Self>, _evict: Evict) {}
}

#[tokio::test]
async fn store_down_passes_only_recently_validated_sessions() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        down: AtomicBool::new(false),
        gets: Default::default(),
    });
    let s = sessions(flaky.clone(), Duration::from_millis(200));
    let seen = s.create("alice@example.com").await.unwrap();
    let unseen = s.create("bob@example.com").await.unwrap();
    assert!(matches!(
        s.resolve([seen.as_str()].into_iter()).await,
        SessionState::Valid { .. }
    ));
    flaky.down.store(true, Ordering::Relaxed);
    // Validated within cache_ttl: still passes.
    assert!(matches!(
        s.resolve([seen.as_str()].into_iter()).await,
        SessionState::Valid { .. }
    ));
    // Never validated here: the store must answer, and it does not.
    assert_eq!(
        s.resolve([unseen.as_str()].into_iter()).await,
        SessionState::StoreUnavailable
    );
    // After cache_ttl the cached validation no longer counts.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        s.resolve([seen.as_str()].into_iter()).await,
        SessionState::StoreUnavailable
    );
    // Garbage cookies with the store down are simply no session (nothing to look up).
    assert_eq!(s.resolve(["junk"].into_iter()).await, SessionState::None);
}

#[tokio::test]
async fn repeated_cookies_cost_at_most_a_few_store_calls() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(),
        down: AtomicBool::new(false),
        gets: Default::default(),
    });
    let s = sessions(flaky.clone(), Duration::ZERO);
    let value = s.create("alice@example.com").await.unwrap();
    s.revoke([value.as_str()].into_iter()).await.unwrap();
    // 300 copies of one revoked cookie: one lookup.
    let copies = vec![value.as_str(); 300];
    assert_eq!(s.resolve(copies.iter().copied()).await, SessionState::None);
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 1);
    // 300 different signed ids: at most four lookups.
    let forged: Vec<String> = (0..300)
        .map(|_| s.codec().sign(Purpose::Session, &cookie::random_id()))
        .collect();
    assert_eq!(
        s.resolve(forged.iter().map(String::as_str)).await,
        SessionState::None
    );
    assert_eq!(flaky.gets.swap(0, Ordering::Relaxed), 4);
    // With the store down the first failure ends the search.
    flaky.down.store(true, Ordering::Relaxed);
    assert_eq!(
        s.resolve(forged.iter().map(String::as_str)).await,
        SessionState::StoreUnavailable
    );
    assert_eq!(flaky.gets.load(Ordering::Relaxed), 1);
}
