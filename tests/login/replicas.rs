//! Sessions on Redis Sentinel and Redis Cluster (README: `[session]`): real logins through two
//! gate replicas whose store is a Sentinel set or a 3-master Cluster on 127.0.0.1, sign-out
//! reaching the other replica within 1 s, and Sentinel failovers while a user is logged in (one
//! the Sentinels are asked for, one after the master froze).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::gate::Gate;
use crate::support::login::{walk_to_callback, LoginGate, Store, COOKIE_NAME};
use crate::support::oidc::{OidcProvider, ALICE};
use crate::support::redis_ha::{RedisCluster, RedisSentinel, GATE_PASSWORD};
use crate::support::web::{Browser, Response};
use crate::support::{eventually, reserve_port};

/// Two gates (A and B) on one store, behind A's public URL as behind a load balancer, with a
/// 30 s session cache, so that only the sign-out broadcast can make B refuse a session soon.
struct Replicas {
    idp: OidcProvider,
    a: Gate,
    b: Gate,
    page: String,
}

impl Replicas {
    fn start(url: &str) -> Replicas {
        let (port_a, port_b, app_port) = (reserve_port(), reserve_port(), reserve_port());
        let public = format!("http://127.0.0.1:{port_a}");
        let idp = OidcProvider::setup()
            .redirect_uri(&format!("{public}/oauth2/callback"))
            .start();
        let replica = |port| {
            LoginGate::new(&idp, port)
                .public_url(&public)
                .store(Store::Redis(url.to_owned()))
                .redis_password(GATE_PASSWORD)
                .cache_ttl("30s")
                .redirect_domains(&[
                    &format!("127.0.0.1:{app_port}"),
                    &format!("127.0.0.1:{port_a}"),
                ])
                .start()
        };
        let (a, b) = (replica(port_a), replica(port_b));
        let page = format!("http://127.0.0.1:{app_port}/shared");
        Replicas { idp, a, b, page }
    }

    fn context(&self) -> String {
        format!(
            "\ngate A:\n{}\ngate B:\n{}\nprovider:\n{}",
            self.a.logs(),
            self.b.logs(),
            self.idp.log()
        )
    }

    /// A login started at B and finished at A; returns the browser and its session cookie.
    async fn log_in(&self) -> (Browser, String) {
        let browser = Browser::new();
        let first = browser
            .forward_auth(
                &format!("{}/auth", self.b.url()),
                "GET",
                &self.page,
                true,
                &[],
            )
            .await;
        assert_eq!(first.status, 302, "{}{}", first.describe(), self.context());
        let walk = walk_to_callback(&browser, &self.idp, first, ALICE).await;
        let answer = browser.navigate(walk.callback.as_str()).await;
        assert_eq!(
            answer.status,
            302,
            "{}{}",
            answer.describe(),
            self.context()
        );
        let value = browser.cookie(COOKIE_NAME).expect("a session cookie").value;
        (browser, value)
    }

    /// `/auth` at `gate` with the session `value` (none when empty), as an API call.
    async fn ask(&self, gate: &Gate, value: &str) -> Response {
        let cookie = format!("{COOKIE_NAME}={value}");
        let headers: &[(&str, &str)] = if value.is_empty() {
            &[]
        } else {
            &[("Cookie", &cookie)]
        };
        Browser::new()
            .forward_auth(
                &format!("{}/auth", gate.url()),
                "GET",
                &self.page,
                false,
                headers,
            )
            .await
    }

    async fn assert_alice(&self, gate: &Gate, value: &str) {
        let answer = self.ask(gate, value).await;
        assert_eq!(
            answer.status,
            200,
            "{}{}",
            answer.describe(),
            self.context()
        );
        assert_eq!(answer.header("x-auth-request-email"), Some(ALICE));
    }

    /// Signs `browser` out at A; B, which has the session cached for 30 s, refuses it within 1 s.
    async fn sign_out_reaches_b(&self, browser: &Browser, value: &str) {
        let out = browser
            .navigate(&format!("{}/oauth2/sign_out", self.a.url()))
            .await;
        assert!(out.status == 200 || out.status == 302, "{}", out.describe());
        let t0 = Instant::now();
        eventually(
            Duration::from_secs(1),
            "replica B to drop the signed-out session",
            async || match self.ask(&self.b, value).await {
                r if r.status == 401 => Ok(()),
                r => Err(r.describe()),
            },
        )
        .await;
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(self.ask(&self.a, value).await.status, 401);
    }
}

/// The Redis key of a session cookie value (`id.tag`): the prefix and the id's store key.
/// Waits until the session `key` has reached the Sentinel set's replica: replication is
/// asynchronous, and a failover keeps only what reached it.
fn wait_replicated(sentinel: &RedisSentinel, key: &str) {
    let old = sentinel.master_port();
    let replica = sentinel
        .nodes
        .iter()
        .find(|n| n.port() != old)
        .expect("replica");
    support::poll_until(
        Duration::from_secs(5),
        "the session on the replica",
        || match replica.cli(&["EXISTS", key]).trim() {
            "1" => Ok(()),
            other => Err(other.to_owned()),
        },
    );
}

fn session_key(value: &str) -> String {
    let id = value.split('.').next().expect("an id");
    format!(
        "jacker-gate:session:{}",
        jacker_gate::session::cookie::store_key(id)
    )
}

/// The test support's own topology: the Sentinels agree on a master, a failover moves it to the
/// replica and they agree again; the Cluster covers every slot with three masters.
#[test]
fn sentinel_and_cluster_start_and_fail_over() {
    let _exclusive = support::exclusive_blocking();
    let sentinel = RedisSentinel::start();
    let first = sentinel.master_port();
    assert_eq!(first, sentinel.nodes[0].port());
    let second = sentinel.failover();
    assert_ne!(first, second);
    assert_eq!(sentinel.master_port(), second);
    let role = sentinel.node(second).cli(&["ROLE"]);
    assert_eq!(role.lines().next(), Some("master"));

    let cluster = RedisCluster::start();
    let info = cluster.nodes[0].cli(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");
}

/// On a Cluster: a login passes both replicas; the session lives on the node that owns its
/// slot (the gate follows the slot map, keys keep the `jacker-gate:` prefix); a sign-out at A
/// reaches B within 1 s, whichever node each replica subscribed through.
#[tokio::test]
async fn cluster_sessions_pass_every_replica_and_sign_out_reaches_them() {
    let _exclusive = support::exclusive().await;
    let cluster = RedisCluster::start();
    let r = Replicas::start(&cluster.url());
    let (browser, value) = r.log_in().await;
    r.assert_alice(&r.a, &value).await;
    r.assert_alice(&r.b, &value).await;

    let key = session_key(&value);
    let owner = cluster.node_for(&key);
    assert!(
        owner.cli(&["GET", &key]).contains(ALICE),
        "{key} on its slot's node"
    );
    let ttl: i64 = owner.cli(&["TTL", &key]).trim().parse().expect("a TTL");
    assert!(ttl > 0, "{key} expires (TTL {ttl})");
    // Another login lands wherever its own id hashes; both work.
    let (second_browser, second) = r.log_in().await;
    r.assert_alice(&r.b, &second).await;

    r.sign_out_reaches_b(&browser, &value).await;
    // The other session is untouched.
    r.assert_alice(&r.b, &second).await;
    r.sign_out_reaches_b(&second_browser, &second).await;
    assert_eq!(owner.cli(&["EXISTS", &key]).trim(), "0");
}

/// On Sentinel: a login passes both replicas and a sign-out reaches B within 1 s; then a
/// failover while another session is open: requests without a session never get a 2xx during
/// it, the session passes again within a bounded time after it (read from the new master: the
/// failover cut the pub/sub connections, which empties every cache), and a sign-out still
/// reaches B (each replica subscribed again, on the new master).
#[tokio::test]
async fn sentinel_sessions_survive_a_failover_and_sign_out_reaches_every_replica() {
    let _exclusive = support::exclusive().await;
    let sentinel = RedisSentinel::start();
    let r = Arc::new(Replicas::start(&sentinel.url()));
    let (browser, value) = r.log_in().await;
    r.assert_alice(&r.a, &value).await;
    r.assert_alice(&r.b, &value).await;
    r.sign_out_reaches_b(&browser, &value).await;

    let (browser, value) = r.log_in().await;
    r.assert_alice(&r.b, &value).await;
    // Replication is asynchronous: a failover keeps what reached the replica, so wait for it.
    let old = sentinel.master_port();
    wait_replicated(&sentinel, &session_key(&value));

    // Requests without a session, at both replicas, for the whole failover.
    let stop = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (r, stop) = (Arc::clone(&r), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut asked = 0usize;
            while stop.load(Ordering::SeqCst) == 0 {
                for gate in [&r.a, &r.b] {
                    let answer = r.ask(gate, "").await;
                    assert!(
                        !(200..300).contains(&answer.status),
                        "a 2xx without a session during the failover: {}",
                        answer.describe()
                    );
                    asked += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            asked
        })
    };
    let t0 = Instant::now();
    let (sentinel, new) = tokio::task::spawn_blocking(move || {
        let new = sentinel.failover();
        (sentinel, new)
    })
    .await
    .expect("failover");
    assert_ne!(new, old);
    for gate in [&r.a, &r.b] {
        eventually(
            Duration::from_secs(10),
            "the session to pass again after the failover",
            async || match r.ask(gate, &value).await {
                a if a.status == 200 => Ok(()),
                a => Err(a.describe()),
            },
        )
        .await;
    }
    let failover_took = t0.elapsed();
    stop.store(1, Ordering::SeqCst);
    let asked = watcher.await.expect("no 2xx without a session");
    assert!(asked > 10, "only {asked} requests during {failover_took:?}");
    r.assert_alice(&r.a, &value).await;

    // A new login works on the new master, and sign-out reaches B again.
    let (second_browser, second) = r.log_in().await;
    let on_new = sentinel.node(new).cli(&["EXISTS", &session_key(&second)]);
    assert_eq!(on_new.trim(), "1", "the new session is on the new master");
    r.sign_out_reaches_b(&browser, &value).await;
    r.sign_out_reaches_b(&second_browser, &second).await;
}

/// On Sentinel, a master that hangs rather than fails (frozen: nothing closes the connections
/// to it): once the Sentinels promote the replica, both replicas answer from the new master,
/// and a sign-out at A still reaches B within 1 s, so B's subscriber left the frozen master.
#[tokio::test]
async fn sentinel_frozen_master_is_left_for_the_new_one() {
    let _exclusive = support::exclusive().await;
    let sentinel = RedisSentinel::start();
    let r = Replicas::start(&sentinel.url());
    let (browser, value) = r.log_in().await;
    r.assert_alice(&r.b, &value).await;
    let old = sentinel.master_port();
    wait_replicated(&sentinel, &session_key(&value));

    let sentinel = tokio::task::spawn_blocking(move || {
        sentinel.freeze_master();
        sentinel
    })
    .await
    .expect("failover");
    // Each replica's store answers again once it has left the frozen master (`/readyz` pings).
    for gate in [&r.a, &r.b] {
        eventually(
            Duration::from_secs(10),
            "the store to answer after the failover",
            async || {
                let answer = Browser::new()
                    .get(&format!("{}/readyz", gate.url()), &[])
                    .await;
                match answer.status {
                    200 => Ok(()),
                    _ => Err(answer.describe()),
                }
            },
        )
        .await;
    }
    // The subscriber notices the move by asking the Sentinels (every second, each lookup bounded);
    // the 1 s bound on sign-out holds from then on.
    for gate in [&r.a, &r.b] {
        eventually(
            Duration::from_secs(10),
            "the sign-out subscriber to leave the frozen master",
            async || match gate.logs().contains("Redis master moved") {
                true => Ok(()),
                false => Err(gate.logs()),
            },
        )
        .await;
    }
    r.assert_alice(&r.a, &value).await;
    r.sign_out_reaches_b(&browser, &value).await;
    sentinel.node(old).resume();
}
