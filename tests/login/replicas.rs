//! Sessions and the shared rate limit on Redis Sentinel and Redis Cluster (README: `[session]`,
//! "The rate limit"): real logins through three gate replicas whose store is a Sentinel set or a
//! 3-master Cluster on 127.0.0.1, sign-out reaching the other replicas within 1 s, and Sentinel
//! failovers while a user is logged in (one the Sentinels are asked for, under load; one after
//! the master froze).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::gate::Gate;
use crate::support::login::{walk_to_callback, LoginGate, Store, COOKIE_NAME};
use crate::support::oidc::{OidcProvider, ALICE};
use crate::support::redis_ha::{RedisCluster, RedisSentinel, GATE_PASSWORD};
use crate::support::web::{Browser, Response};
use crate::support::{eventually, metric_sum, reserve_port};

/// Three gates (A, B and C) on one store, behind A's public URL as behind a load balancer, with
/// a 30 s session cache, so that only the sign-out broadcast can make B and C refuse a session
/// soon, and the rate limit shared through the same Redis (set high: nothing is limited, but
/// every replica draws on Redis for it).
struct Replicas {
    idp: OidcProvider,
    gates: Vec<Gate>,
    page: String,
}

impl Replicas {
    fn start(url: &str) -> Replicas {
        let ports: Vec<u16> = (0..3).map(|_| reserve_port()).collect();
        let app_port = reserve_port();
        let public = format!("http://127.0.0.1:{}", ports[0]);
        let idp = OidcProvider::setup()
            .redirect_uri(&format!("{public}/oauth2/callback"))
            .start();
        let gates = ports
            .iter()
            .map(|&port| {
                LoginGate::new(&idp, port)
                    .public_url(&public)
                    .store(Store::Redis(url.to_owned()))
                    .redis_password(GATE_PASSWORD)
                    .cache_ttl("30s")
                    .rate_limit(10_000, 20_000)
                    .rate_limit_store("redis")
                    .redirect_domains(&[
                        &format!("127.0.0.1:{app_port}"),
                        &format!("127.0.0.1:{}", ports[0]),
                    ])
                    .start()
            })
            .collect();
        let page = format!("http://127.0.0.1:{app_port}/shared");
        Replicas { idp, gates, page }
    }

    /// A, where logins finish and sign-outs are sent.
    fn a(&self) -> &Gate {
        &self.gates[0]
    }

    /// B and C.
    fn others(&self) -> &[Gate] {
        &self.gates[1..]
    }

    fn context(&self) -> String {
        let mut out = String::new();
        for (name, gate) in ["A", "B", "C"].iter().zip(&self.gates) {
            out.push_str(&format!("\ngate {name}:\n{}", gate.logs()));
        }
        out + &format!("\nprovider:\n{}", self.idp.log())
    }

    /// A login started at C and finished at A; returns the browser and its session cookie.
    async fn log_in(&self) -> (Browser, String) {
        let browser = Browser::new();
        let first = browser
            .forward_auth(
                &format!("{}/auth", self.gates[2].url()),
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

    /// The session passes at every replica.
    async fn assert_alice_everywhere(&self, value: &str) {
        for gate in &self.gates {
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
    }

    /// Signs `browser` out at A; B and C, which have the session cached for 30 s, refuse it
    /// within 1 s.
    async fn sign_out_reaches_every_replica(&self, browser: &Browser, value: &str) {
        let out = browser
            .navigate(&format!("{}/oauth2/sign_out", self.a().url()))
            .await;
        assert!(out.status == 200 || out.status == 302, "{}", out.describe());
        let t0 = Instant::now();
        for gate in self.others() {
            eventually(
                Duration::from_secs(1),
                "every other replica to drop the signed-out session",
                async || match self.ask(gate, value).await {
                    r if r.status == 401 => Ok(()),
                    r => Err(r.describe()),
                },
            )
            .await;
        }
        assert!(
            t0.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(self.ask(self.a(), value).await.status, 401);
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

/// On a Cluster: a login passes all three replicas; the session lives on the node that owns
/// its slot (the gate follows the slot map, keys keep the `jacker-gate:` prefix); a sign-out at
/// A reaches B and C within 1 s, whichever node each replica subscribed through.
#[tokio::test]
async fn cluster_sessions_pass_every_replica_and_sign_out_reaches_them() {
    let _exclusive = support::exclusive().await;
    let cluster = RedisCluster::start();
    let r = Replicas::start(&cluster.url());
    let (browser, value) = r.log_in().await;
    r.assert_alice_everywhere(&value).await;

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
    r.assert_alice_everywhere(&second).await;

    r.sign_out_reaches_every_replica(&browser, &value).await;
    // The other session is untouched.
    r.assert_alice_everywhere(&second).await;
    r.sign_out_reaches_every_replica(&second_browser, &second)
        .await;
    assert_eq!(owner.cli(&["EXISTS", &key]).trim(), "0");
    for gate in &r.gates {
        let m = gate.metrics().await;
        assert_eq!(
            metric_sum(&m, "jacker_gate_ratelimit_store_errors_total", &[]),
            Some(0.0),
            "the shared limit on the Cluster: no failed call"
        );
    }
}

/// On Sentinel: a login passes all three replicas and a sign-out reaches B and C within 1 s;
/// then a failover under load while another session is open. Four callers keep asking every
/// replica, half without a session and half with it: none without a session ever gets a 2xx,
/// and the session is never refused (it passes, or the store is unreachable: 503), so no
/// session is lost. After the failover the session passes everywhere within a bounded time
/// (read from the new master: the failover cut the pub/sub connections, which empties every
/// cache), and a sign-out still reaches B and C (each replica subscribed again, on the new
/// master).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_sessions_survive_a_failover_under_load_and_sign_out_reaches_every_replica() {
    let _exclusive = support::exclusive().await;
    let sentinel = RedisSentinel::start();
    let r = Arc::new(Replicas::start(&sentinel.url()));
    let (browser, value) = r.log_in().await;
    r.assert_alice_everywhere(&value).await;
    r.sign_out_reaches_every_replica(&browser, &value).await;

    let (browser, value) = r.log_in().await;
    r.assert_alice_everywhere(&value).await;
    // Replication is asynchronous: a failover keeps what reached the replica, so wait for it.
    let old = sentinel.master_port();
    wait_replicated(&sentinel, &session_key(&value));

    let stop = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..4)
        .map(|n| {
            let (r, stop, value) = (Arc::clone(&r), Arc::clone(&stop), value.clone());
            tokio::spawn(async move {
                let with_session = n % 2 == 1;
                let (mut asked, mut unavailable) = (0usize, 0usize);
                while stop.load(Ordering::SeqCst) == 0 {
                    for gate in &r.gates {
                        if with_session {
                            let answer = r.ask(gate, &value).await;
                            match answer.status {
                                200 => {}
                                503 => unavailable += 1,
                                _ => panic!(
                                    "the session refused during the failover: {}",
                                    answer.describe()
                                ),
                            }
                        } else {
                            let answer = r.ask(gate, "").await;
                            assert!(
                                !(200..300).contains(&answer.status),
                                "a 2xx without a session during the failover: {}",
                                answer.describe()
                            );
                        }
                        asked += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (asked, unavailable)
            })
        })
        .collect();
    let t0 = Instant::now();
    let (sentinel, new) = tokio::task::spawn_blocking(move || {
        let new = sentinel.failover();
        (sentinel, new)
    })
    .await
    .expect("failover");
    assert_ne!(new, old);
    for gate in &r.gates {
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
    let mut asked = 0;
    for caller in callers {
        let (n, unavailable) = caller
            .await
            .expect("no 2xx without a session, no session lost");
        eprintln!("caller: {n} requests, {unavailable} answered 503");
        asked += n;
    }
    assert!(asked > 40, "only {asked} requests during {failover_took:?}");
    r.assert_alice_everywhere(&value).await;

    // A new login works on the new master, and sign-out reaches B and C again.
    let (second_browser, second) = r.log_in().await;
    let on_new = sentinel.node(new).cli(&["EXISTS", &session_key(&second)]);
    assert_eq!(on_new.trim(), "1", "the new session is on the new master");
    r.sign_out_reaches_every_replica(&browser, &value).await;
    r.sign_out_reaches_every_replica(&second_browser, &second)
        .await;
    // The shared limit is back on Redis (the new master) on every replica: `/readyz` no longer
    // reports the local fallback.
    for gate in &r.gates {
        eventually(
            Duration::from_secs(10),
            "the shared limit back on Redis",
            async || {
                let answer = Browser::new()
                    .get(&format!("{}/readyz", gate.url()), &[])
                    .await;
                match (answer.status, answer.body.as_str()) {
                    (200, "ready\n") => Ok(()),
                    _ => Err(answer.describe()),
                }
            },
        )
        .await;
    }
}

/// On Sentinel, a master that hangs rather than fails (frozen: nothing closes the connections
/// to it): once the Sentinels promote the replica, every replica answers from the new master,
/// and a sign-out at A still reaches B and C within 1 s, so their subscribers left the frozen
/// master.
#[tokio::test]
async fn sentinel_frozen_master_is_left_for_the_new_one() {
    let _exclusive = support::exclusive().await;
    let sentinel = RedisSentinel::start();
    let r = Replicas::start(&sentinel.url());
    let (browser, value) = r.log_in().await;
    r.assert_alice_everywhere(&value).await;
    let old = sentinel.master_port();
    wait_replicated(&sentinel, &session_key(&value));

    let sentinel = tokio::task::spawn_blocking(move || {
        sentinel.freeze_master();
        sentinel
    })
    .await
    .expect("failover");
    // Each replica's store answers again once it has left the frozen master (`/readyz` pings).
    for gate in &r.gates {
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
    for gate in &r.gates {
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
    r.assert_alice_everywhere(&value).await;
    r.sign_out_reaches_every_replica(&browser, &value).await;
    sentinel.node(old).resume();
}
