//! Sessions on Redis Sentinel and Redis Cluster (README: `[session]`): a real login through
//! gates whose store is a Sentinel set or a 3-master Cluster on 127.0.0.1, sign-out across two
//! replicas, and a Sentinel failover while a user is logged in.

use crate::support;
use crate::support::redis_ha::{RedisCluster, RedisSentinel};

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
    assert_eq!(
        sentinel.node(second).cli(&["ROLE"]).lines().next(),
        Some("master")
    );

    let cluster = RedisCluster::start();
    let info = cluster.nodes[0].cli(&["CLUSTER", "INFO"]);
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");
}
