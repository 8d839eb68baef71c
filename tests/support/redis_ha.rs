//! Redis for several replicas, on 127.0.0.1: a Sentinel set (one master, one replica, three
//! Sentinels) and a 3-master Cluster. Every node runs through its own `Peer` (stopped by PID when
//! dropped) and has the gate's ACL user, as in the compose stack, with only what the topology
//! adds: `ROLE` (the client checks the master Sentinel names), `CLUSTER SLOTS`, `ASKING` and
//! `READONLY` (the cluster client's slot map and redirects). The harness itself uses the `default`
//! user with an admin password, like the stack's admin account.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::peer::{retry_on_taken_port, Peer};
use super::redis::ping;
use super::{require_binary, reserve_port};

const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the Sentinels get to agree on a topology: discovering each other over the hello
/// channel takes a few seconds, a failover a few more.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
const ADMIN_PASSWORD: &str = "ha-admin-password";
/// The gate's ACL user, as in `compose/config/redis/users.acl.template`.
pub(crate) const GATE_USER: &str = "jacker-gate";
pub(crate) const GATE_PASSWORD: &str = "ha-gate-password";
/// The service name the Sentinels monitor.
pub(crate) const SERVICE: &str = "gate-main";

/// The gate's commands on a data node: the compose stack's list, plus `extra`.
fn gate_user_rule(extra: &str) -> String {
    format!(
        "{GATE_USER} on >{GATE_PASSWORD} ~jacker-gate:* &jacker-gate:* -@all +auth +hello +ping \
         +select +quit +reset +client|setname +client|getname +client|id +get +set +setex +getdel \
         +del +publish +subscribe +unsubscribe +evalsha +eval +time {extra}"
    )
}

/// One `redis-server` (data node or Sentinel) of a set.
pub(crate) struct Node {
    peer: Peer,
    port: u16,
    dir: PathBuf,
}

impl Node {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.peer.pid()
    }

    /// Runs one command as the admin and returns its raw output (one reply element per line).
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Kills the node (by PID) and waits for it.
    pub(crate) fn stop(&mut self) {
        self.peer.stop();
    }

    pub(crate) fn log(&self) -> String {
        self.peer.logs()
    }

    /// Freezes the node (SIGSTOP): its connections hang instead of closing.
    pub(crate) fn pause(&self) {
        self.peer.pause();
    }

    /// Thaws a frozen node (SIGCONT).
    pub(crate) fn resume(&self) {
        self.peer.resume();
    }

    /// Starts `redis-server` with `args` on a fresh port (another when the port was taken),
    /// waiting until it answers as itself. `args` gets the port and the directory.
    fn start(
        name: &str,
        root: &Path,
        sentinel: bool,
        args: impl Fn(u16, &Path) -> Vec<String>,
    ) -> Node {
        let server = require_binary("redis-server");
        let mut node = Node {
            peer: Peer::new(name),
            port: 0,
            dir: PathBuf::new(),
        };
        retry_on_taken_port(name, || {
            node.port = reserve_port();
            node.dir = root.join(format!("{name}-{}", node.port));
            std::fs::create_dir_all(&node.dir).expect("create node dir");
            let mut command = Command::new(&server);
            let args = args(node.port, &node.dir);
            if sentinel {
                // Sentinel needs a config file it can rewrite; everything else is on the line.
                let conf = node.dir.join("sentinel.conf");
                std::fs::write(&conf, args.join("\n") + "\n").expect("write sentinel.conf");
                command.arg(&conf).arg("--sentinel");
            } else {
                command.args(args);
            }
            command.current_dir(&node.dir);
            node.peer.spawn(command);
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], node.port));
            node.peer.wait_ready(START_TIMEOUT, |peer| {
                let pid = ping(addr, Some(ADMIN_PASSWORD)).map_err(|e| e.to_string())?;
                if Some(pid) == peer.pid() {
                    Ok(())
                } else {
                    Err(format!("a Redis with PID {pid} answers on {addr}"))
                }
            })
        });
        node
    }
}

/// `redis-cli` signed in as the admin (the password stays out of its warnings).
fn admin_cli() -> Command {
    let mut command = Command::new(require_binary("redis-cli"));
    command.args([
        "--no-auth-warning",
        "--user",
        "default",
        "--pass",
        ADMIN_PASSWORD,
    ]);
    command
}

/// `redis-cli` as the admin against `port`, raw output; panics when it fails.
fn cli(port: u16, args: &[&str]) -> String {
    try_cli(port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// `redis-cli` as the admin against `port`, raw output, or why it failed: for probes that poll a
/// node while it may be dropping its clients (Sentinel reconfiguring it after a failover).
fn try_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let output = admin_cli()
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "redis-cli -p {port} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `127.0.0.1:P1,127.0.0.1:P2,...`: the host list of a Sentinel or Cluster URL.
fn loopback_hosts(nodes: &[Node]) -> String {
    let hosts: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    hosts.join(",")
}

/// The options every data node shares: loopback, no persistence, the admin and gate users.
fn data_node_args(port: u16, dir: &Path, gate_extra: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.to_string_lossy(),
        "--masterauth",
        ADMIN_PASSWORD,
    ]
    .map(str::to_owned)
    .to_vec();
    // One argument per word: redis-server would read a single argument as one quoted token.
    for rule in [
        format!("default on >{ADMIN_PASSWORD} ~* &* +@all"),
        gate_user_rule(gate_extra),
    ] {
        args.push("--user".to_owned());
        args.extend(rule.split_whitespace().map(str::to_owned));
    }
    args
}

fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("{what} within {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One master, one replica and three Sentinels (quorum 2) watching them as [`SERVICE`].
pub(crate) struct RedisSentinel {
    /// Data nodes: the master at start first, the replica second; which one is master now is
    /// what the Sentinels say ([`RedisSentinel::master_port`]).
    pub(crate) nodes: Vec<Node>,
    pub(crate) sentinels: Vec<Node>,
    /// Last, so that the processes are stopped before their directories are removed.
    _dir: TempDir,
}

impl RedisSentinel {
    pub(crate) fn start() -> RedisSentinel {
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-sentinel-")
            .tempdir()
            .expect("create Sentinel temp dir");
        let gate_extra = "+role";
        let master = Node::start("redis-master", dir.path(), false, |port, d| {
            data_node_args(port, d, gate_extra)
        });
        let master_port = master.port;
        let replica = Node::start("redis-replica", dir.path(), false, |port, d| {
            let mut args = data_node_args(port, d, gate_extra);
            args.extend(["--replicaof", "127.0.0.1", &master_port.to_string()].map(str::to_owned));
            args
        });
        let sentinels = (0..3)
            .map(|i| {
                Node::start(
                    &format!("redis-sentinel-{i}"),
                    dir.path(),
                    true,
                    |port, d| {
                        vec![
                            format!("port {port}"),
                            "bind 127.0.0.1".to_owned(),
                            format!("dir {}", d.display()),
                            format!("user default on >{ADMIN_PASSWORD} ~* &* +@all"),
                            // What the gate asks a Sentinel: where the master is, and ROLE.
                            format!(
                                "user {GATE_USER} on >{GATE_PASSWORD} -@all +auth +hello +ping \
                             +role +client|setname +sentinel|masters \
                             +sentinel|get-master-addr-by-name +sentinel|replicas"
                            ),
                            format!("sentinel sentinel-pass {ADMIN_PASSWORD}"),
                            format!("sentinel monitor {SERVICE} 127.0.0.1 {master_port} 2"),
                            format!("sentinel auth-pass {SERVICE} {ADMIN_PASSWORD}"),
                            format!("sentinel down-after-milliseconds {SERVICE} 1000"),
                            format!("sentinel failover-timeout {SERVICE} 10000"),
                            format!("sentinel parallel-syncs {SERVICE} 1"),
                        ]
                    },
                )
            })
            .collect();
        let set = RedisSentinel {
            nodes: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        set.wait_agreed(master_port);
        set
    }

    /// `redis+sentinel://jacker-gate@127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/gate-main/0`.
    pub(crate) fn url(&self) -> String {
        format!(
            "redis+sentinel://{GATE_USER}@{}/{SERVICE}/0",
            loopback_hosts(&self.sentinels)
        )
    }

    /// The master's port as the first Sentinel that answers names it.
    pub(crate) fn master_port(&self) -> u16 {
        self.sentinels
            .iter()
            .find_map(|s| sentinel_master(s.port).ok())
            .expect("a Sentinel answers")
    }

    /// The data node on `port`.
    pub(crate) fn node(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    /// Fails over to the replica (`SENTINEL FAILOVER`) and waits until every Sentinel names it
    /// master, it says it is master, and the old master replicates from it. Returns the new
    /// master's port.
    pub(crate) fn failover(&self) -> u16 {
        let old = self.master_port();
        let new = self
            .nodes
            .iter()
            .map(|n| n.port)
            .find(|&p| p != old)
            .expect("a replica");
        // Accepted only once a Sentinel knows a healthy replica; it may need a moment.
        poll("SENTINEL FAILOVER accepted", AGREE_TIMEOUT, || {
            let out = admin_cli()
                .args(["-h", "127.0.0.1", "-p", &self.sentinels[0].port.to_string()])
                .args(["SENTINEL", "FAILOVER", SERVICE])
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.trim() == "OK" {
                Ok(())
            } else {
                Err(text)
            }
        });
        self.wait_agreed(new);
        poll("the old master replicating", AGREE_TIMEOUT, || {
            let info = try_cli(old, &["INFO", "replication"])?;
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                Ok(())
            } else {
                Err(info)
            }
        });
        new
    }

    /// Freezes the master (SIGSTOP: clients connected to it hang, nothing closes their
    /// connections) and waits until every Sentinel names the replica master. Returns the new
    /// master's port; the old one stays frozen until [`Node::resume`].
    pub(crate) fn freeze_master(&self) -> u16 {
        let old = self.master_port();
        let new = self
            .nodes
            .iter()
            .map(|n| n.port)
            .find(|&p| p != old)
            .expect("a replica");
        self.node(old).pause();
        self.wait_agreed(new);
        new
    }

    /// Waits until every Sentinel names `master_port`, knows the other two Sentinels and one
    /// replica, and the master says it is master.
    fn wait_agreed(&self, master_port: u16) {
        poll(
            "the Sentinels agreeing on the master",
            AGREE_TIMEOUT,
            || {
                for s in &self.sentinels {
                    let named = sentinel_master(s.port)?;
                    if named != master_port {
                        return Err(format!("Sentinel {} names {named}", s.port));
                    }
                    let fields = try_cli(s.port, &["SENTINEL", "MASTER", SERVICE])?;
                    let field = |name: &str| {
                        let lines: Vec<&str> = fields.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == name)
                            .and_then(|i| lines.get(i + 1))
                            .map(|v| v.to_string())
                            .unwrap_or_default()
                    };
                    if field("num-slaves") != "1" || field("num-other-sentinels") != "2" {
                        return Err(format!("Sentinel {} sees {fields}", s.port));
                    }
                    if field("flags") != "master" {
                        return Err(format!("Sentinel {} flags {}", s.port, field("flags")));
                    }
                }
                let role = cli(master_port, &["ROLE"]);
                if role.lines().next() == Some("master") {
                    Ok(())
                } else {
                    Err(format!("{master_port} says {role}"))
                }
            },
        );
    }
}

/// The master's port as the Sentinel on `port` names it.
fn sentinel_master(port: u16) -> Result<u16, String> {
    let out = admin_cli()
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"])
        .args(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("Sentinel {port} answered {text:?}"))
}

/// Three masters (no replicas) splitting the 16384 slots.
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<Node>,
    _dir: TempDir,
}

impl RedisCluster {
    pub(crate) fn start() -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("jacker-gate-cluster-")
            .tempdir()
            .expect("create Cluster temp dir");
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                Node::start(
                    &format!("redis-cluster-{i}"),
                    dir.path(),
                    false,
                    |port, d| {
                        let mut args = data_node_args(
                            port,
                            d,
                            "+cluster|slots +cluster|shards +asking +readonly",
                        );
                        args.extend(
                            [
                                "--cluster-enabled",
                                "yes",
                                "--cluster-config-file",
                                "nodes.conf",
                                "--cluster-node-timeout",
                                "2000",
                                // The bus port is picked too, since PORT+10000 may be taken.
                                "--cluster-port",
                                &reserve_port().to_string(),
                            ]
                            .map(str::to_owned),
                        );
                        args
                    },
                )
            })
            .collect();
        let mut create = admin_cli();
        create
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null());
        let out = create.output().expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        poll("the cluster converging", AGREE_TIMEOUT, || {
            for n in &cluster.nodes {
                let info = n.cli(&["CLUSTER", "INFO"]);
                if !info.contains("cluster_state:ok") || !info.contains("cluster_known_nodes:3") {
                    return Err(format!("{}: {info}", n.port));
                }
            }
            Ok(())
        });
        cluster
    }

    /// `redis+cluster://jacker-gate@127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`.
    pub(crate) fn url(&self) -> String {
        format!(
            "redis+cluster://{GATE_USER}@{}",
            loopback_hosts(&self.nodes)
        )
    }

    /// The node that holds `key`'s slot.
    pub(crate) fn node_for(&self, key: &str) -> &Node {
        let slot: u16 = self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot");
        self.nodes
            .iter()
            .find(|n| n.cli(&["CLUSTER", "MYID"]).trim() == self.owner_of(slot))
            .expect("a node owns the slot")
    }

    /// The id of the node that owns `slot`, from `CLUSTER NODES` (slot ranges from field 9 on).
    fn owner_of(&self, slot: u16) -> String {
        let nodes = self.nodes[0].cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            for range in fields.iter().skip(8) {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
                    if (lo..=hi).contains(&slot) {
                        return fields[0].to_owned();
                    }
                }
            }
        }
        panic!("no node owns slot {slot}:\n{nodes}");
    }
}
