//! The same contract for both metadata stores: the embedded one and etcd (a real etcd
//! process, started by the testkit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::SluiceError;
use sluice_meta::embedded::EmbeddedMeta;
use sluice_meta::etcd::EtcdMeta;
use sluice_meta::{MetaError, MetaStore, NewTopic, NodeInfo, PartitionState, TopicLimits};
use sluice_testkit::{Cluster, ClusterSpec};

fn topic(name: &str, partitions: u32) -> NewTopic {
    NewTopic { name: name.into(), partitions, replication_factor: 1, config: BTreeMap::new() }
}

async fn wait_for(meta: &dyn MetaStore, what: &str, pred: impl Fn(&sluice_meta::ClusterView) -> bool) {
    let mut rx = meta.view();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| pred(v)))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap();
}

async fn contract(meta: Arc<dyn MetaStore>) {
    let limits = TopicLimits::default();
    let e = meta.create_topic(topic("t", 2), limits).await.unwrap_err();
    assert!(matches!(e, MetaError::Request(SluiceError::NodeUnavailable(_))), "no node alive yet: {e}");
    meta.register_node(NodeInfo { id: 7, addr: "127.0.0.1:1".into() }).await.unwrap();
    wait_for(&*meta, "node 7", |v| v.nodes.contains_key(&7)).await;
    let t = meta.create_topic(topic("t", 2), limits).await.unwrap();
    assert_eq!(t.partitions.iter().map(|p| p.leader).collect::<Vec<_>>(), vec![7, 7]);
    wait_for(&*meta, "topic t", |v| v.topics.get("t").is_some_and(|x| x.topic_id == t.topic_id)).await;
    let e = meta.create_topic(topic("t", 2), limits).await.unwrap_err();
    assert!(matches!(e, MetaError::Request(SluiceError::TopicExists(_))), "{e}");
    meta.delete_topic("t").await.unwrap();
    wait_for(&*meta, "t deleted", |v| !v.topics.contains_key("t")).await;
    let e = meta.delete_topic("t").await.unwrap_err();
    assert!(matches!(e, MetaError::Request(SluiceError::UnknownTopic(_))), "{e}");
    let again = meta.create_topic(topic("t", 1), limits).await.unwrap();
    assert_ne!(again.topic_id, t.topic_id, "a re-created topic gets a new id");

    // Leadership changes are compare-and-set on the partition's revision.
    let t = meta.view().borrow().topics["t"].clone();
    let a = t.partitions[0].clone();
    assert_eq!((a.leader_epoch, a.isr.clone(), a.revision), (1, vec![7], 0), "initial state");
    let next = PartitionState { topic_id: t.topic_id, leader: 7, leader_epoch: 2, isr: vec![7] };
    let rev = meta.update_partition(&t, 0, &a, next.clone()).await.unwrap().expect("the first change succeeds");
    let seen = meta.view().borrow().topics["t"].partitions[0].clone();
    assert_eq!((seen.leader_epoch, seen.revision), (2, rev), "the store's own view has the change");
    assert!(meta.update_partition(&t, 0, &a, next.clone()).await.unwrap().is_none(), "a stale write is refused");
    assert!(meta.session_valid());
    // A topic deleted and re-created meanwhile refuses writes meant for the old one.
    meta.delete_topic("t").await.unwrap();
    meta.create_topic(topic("t", 1), limits).await.unwrap();
    assert!(meta.update_partition(&t, 0, &seen, next).await.unwrap().is_none());
    let fresh = meta.view().borrow().topics["t"].partitions[0].clone();
    assert_eq!(fresh.leader_epoch, 1, "the new topic starts from its own state");
}

#[tokio::test]
async fn embedded_store_keeps_the_contract_and_persists_topics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meta.json");
    contract(EmbeddedMeta::open(Some(file.clone())).unwrap()).await;
    let reopened = EmbeddedMeta::open(Some(file)).unwrap();
    assert!(reopened.view().borrow().topics.contains_key("t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_keeps_the_contract_and_other_processes_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ClusterSpec { services: false, ..ClusterSpec::new(dir.path().join("etcd")) };
    let etcd = Cluster::start(spec, true).await.unwrap();
    let endpoints = vec![etcd.manifest.etcd.clone()];
    let a = EtcdMeta::connect(&endpoints, "/sluice-test", 2, Duration::from_secs(10)).await.unwrap();
    let b = EtcdMeta::connect(&endpoints, "/sluice-test", 2, Duration::from_secs(10)).await.unwrap();
    contract(a.clone()).await;
    // Another client follows the same metadata through its watch.
    wait_for(&*b, "b to see t and node 7", |v| v.topics.contains_key("t") && v.nodes.contains_key(&7)).await;
    // A node whose process goes away vanishes once its lease expires.
    drop(a);
    wait_for(&*b, "node 7 to expire", |v| !v.nodes.contains_key(&7)).await;
    assert!(b.view().borrow().topics.contains_key("t"), "topics outlive nodes");
    // Nothing is shared between prefixes.
    let c = EtcdMeta::connect(&endpoints, "/other", 2, Duration::from_secs(10)).await.unwrap();
    assert!(c.view().borrow().topics.is_empty());
    let e = EtcdMeta::connect(&["http://127.0.0.1:1".to_string()], "/x", 2, Duration::from_secs(2)).await;
    assert!(e.is_err(), "an unreachable etcd is a clear error, not a hang");
}
