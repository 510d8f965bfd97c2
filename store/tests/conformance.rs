//! Behaviour every `Store` backend must have. Each check takes `&dyn Store`, so a
//! new backend runs the same suite by adding one line per test.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rakkr_protocol::NodeId;
use rakkr_protocol::payload::{BootSlot, Capabilities};
use rakkr_protocol::state::{JobState, Presence};
use rakkr_store::*;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn details(version: &str) -> NodeDetails {
    NodeDetails {
        agent_version: version.into(),
        slot: BootSlot::A,
        capabilities: Capabilities {
            sources: vec!["synthetic".into()],
            channels: 2,
            sample_rates: vec![48000],
            codecs: vec![],
            max_jobs: 1,
        },
        realtime: Default::default(),
    }
}

fn online(n: &str, version: &str, at: u64) -> NodeStatusUpdate {
    NodeStatusUpdate {
        node: node(n),
        presence: Presence::Online,
        details: Some(details(version)),
        received_ms: at,
    }
}

fn offline(n: &str, at: u64) -> NodeStatusUpdate {
    NodeStatusUpdate {
        node: node(n),
        presence: Presence::Offline,
        details: None,
        received_ms: at,
    }
}

fn node_presence_is_tracked(store: &dyn Store) {
    store
        .record_node_statuses(&[online("b", "1.0", 100), online("a", "1.0", 100)])
        .unwrap();
    store.record_node_statuses(&[offline("a", 200)]).unwrap();
    let a = store.node(&node("a")).unwrap().unwrap();
    assert_eq!(a.presence, Presence::Offline);
    assert_eq!(a.presence_since_ms, 200);
    assert_eq!(a.first_seen_ms, 100);
    assert_eq!(
        a.details,
        Some(details("1.0")),
        "details survive going offline"
    );

    // Same presence again: the 'since' time stays, details update.
    store
        .record_node_statuses(&[online("b", "1.1", 300)])
        .unwrap();
    let b = store.node(&node("b")).unwrap().unwrap();
    assert_eq!((b.presence_since_ms, b.last_seen_ms), (100, 300));
    assert_eq!(b.details.unwrap().agent_version, "1.1");

    // Last writer wins within a batch.
    store
        .record_node_statuses(&[online("c", "1", 400), offline("c", 401)])
        .unwrap();
    assert_eq!(
        store.node(&node("c")).unwrap().unwrap().presence,
        Presence::Offline
    );

    let ids: Vec<_> = store
        .nodes()
        .unwrap()
        .into_iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(store.node(&node("zz")).unwrap(), None);
}

fn jobs_are_claimed_oldest_first_with_increasing_leases(store: &dyn Store) {
    let n = node("rec-1");
    let other = node("rec-2");
    assert_eq!(store.claim_next_job(&n, 0, 1000).unwrap(), None);
    let first = store
        .enqueue_job(
            JobSpec {
                node: n.clone(),
                duration_s: Some(60),
            },
            1_000,
        )
        .unwrap();
    let second = store
        .enqueue_job(
            JobSpec {
                node: n.clone(),
                duration_s: None,
            },
            2_000,
        )
        .unwrap();
    assert_eq!(first.state, JobState::Queued);

    assert_eq!(
        store.claim_next_job(&other, 3_000, 1000).unwrap(),
        None,
        "jobs are per node"
    );
    let c1 = store.claim_next_job(&n, 3_000, 10_000).unwrap().unwrap();
    let c2 = store.claim_next_job(&n, 3_001, 10_000).unwrap().unwrap();
    assert_eq!((c1.id, c2.id), (first.id, second.id));
    assert_eq!(c1.state, JobState::Leased);
    assert_eq!(c1.lease.unwrap().expires_ms, 13_000);
    assert!(c2.lease.unwrap().id > c1.lease.unwrap().id);
    assert_eq!(store.claim_next_job(&n, 4_000, 1000).unwrap(), None);
    assert_eq!(
        store.job(first.id).unwrap().unwrap(),
        c1,
        "the claim is stored"
    );
    assert_eq!(store.job(JobId::new(5)).unwrap(), None);
}

fn racing_claims_never_share_a_job(store: Arc<dyn Store>) {
    const NODES: usize = 4;
    const JOBS_PER_NODE: usize = 50;
    const CLAIMERS_PER_NODE: usize = 6;
    let nodes: Vec<NodeId> = (0..NODES).map(|i| node(&format!("race-{i}"))).collect();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..JOBS_PER_NODE {
            store
                .enqueue_job(
                    JobSpec {
                        node: n.clone(),
                        duration_s: Some(1),
                    },
                    (i * 1000 + j) as u64,
                )
                .unwrap();
        }
    }
    let claimed = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for n in &nodes {
            for _ in 0..CLAIMERS_PER_NODE {
                let store = store.clone();
                let claimed = claimed.clone();
                s.spawn(move || {
                    while let Some(job) = store.claim_next_job(n, 10, 1000).unwrap() {
                        claimed.lock().unwrap().push(job);
                    }
                });
            }
        }
    });
    let claimed = claimed.lock().unwrap();
    assert_eq!(claimed.len(), NODES * JOBS_PER_NODE);
    let ids: HashSet<_> = claimed.iter().map(|j| j.id).collect();
    assert_eq!(ids.len(), claimed.len(), "a job was claimed twice");
    let leases: HashSet<_> = claimed.iter().map(|j| j.lease.unwrap().id).collect();
    assert_eq!(
        leases.len(),
        claimed.len(),
        "a lease id was handed out twice"
    );
    for j in claimed.iter() {
        assert_eq!(j.state, JobState::Leased);
    }
}

fn health_events_are_stored_once_per_message(store: &dyn Store) {
    use rakkr_protocol::MessageId;
    use rakkr_protocol::payload::{HealthChange, HealthCondition, HealthEvent, Severity};
    let event = |n: &str, ms: u64, change| HealthEventRecord {
        node: node(n),
        msg_id: MessageId::new(ms),
        event: HealthEvent {
            condition: HealthCondition::DeviceLost,
            change,
            severity: Severity::Critical,
            at_ms: ms,
            detail: format!("at {ms}"),
        },
        received_ms: ms + 1,
    };
    let raised = event("a", 1_000, HealthChange::Raised);
    let cleared = event("a", 2_000, HealthChange::Cleared);
    let other = event("b", 1_500, HealthChange::Raised);
    assert_eq!(
        store
            .record_health_events(&[raised.clone(), other.clone()])
            .unwrap(),
        2
    );
    // A redelivery (the ack was lost) and a new one in the same batch.
    assert_eq!(
        store
            .record_health_events(&[raised.clone(), cleared.clone()])
            .unwrap(),
        1
    );
    assert_eq!(
        store.health_events(&node("a"), 10).unwrap(),
        vec![raised.clone(), cleared.clone()]
    );
    assert_eq!(store.health_events(&node("a"), 1).unwrap(), vec![cleared]);
    assert_eq!(store.health_events(&node("b"), 10).unwrap(), vec![other]);
    assert!(store.health_events(&node("c"), 10).unwrap().is_empty());

    // Bounded per node: the oldest go first.
    let flood: Vec<HealthEventRecord> = (0..MAX_HEALTH_EVENTS_PER_NODE as u64 + 5)
        .map(|i| event("a", 10_000 + i, HealthChange::Raised))
        .collect();
    store.record_health_events(&flood).unwrap();
    let kept = store
        .health_events(&node("a"), MAX_HEALTH_EVENTS_PER_NODE + 10)
        .unwrap();
    assert_eq!(kept.len(), MAX_HEALTH_EVENTS_PER_NODE);
    assert_eq!(kept.last().unwrap(), flood.last().unwrap());
    assert_eq!(
        kept[0], flood[5],
        "the two older events and the first five flood ones went"
    );
    assert_eq!(
        store.health_events(&node("b"), 10).unwrap().len(),
        1,
        "other nodes untouched"
    );
}

fn redb() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("rakkr.redb")).unwrap();
    (dir, store)
}

#[test]
fn redb_node_presence_is_tracked() {
    let (_d, s) = redb();
    node_presence_is_tracked(&s);
}

#[test]
fn redb_jobs_are_claimed_oldest_first() {
    let (_d, s) = redb();
    jobs_are_claimed_oldest_first_with_increasing_leases(&s);
}

#[test]
fn redb_racing_claims_never_share_a_job() {
    let (_d, s) = redb();
    racing_claims_never_share_a_job(Arc::new(s));
}

#[test]
fn redb_state_survives_reopen_and_refuses_a_second_opener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        s.record_node_statuses(&[online("keep", "2.0", 5)]).unwrap();
        let e = RedbStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("already open"), "{e}");
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(
        s.node(&node("keep"))
            .unwrap()
            .unwrap()
            .details
            .unwrap()
            .agent_version,
        "2.0"
    );
}

#[test]
fn redb_refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema_version", 99).unwrap();
        }
        tx.commit().unwrap();
    }
    let e = RedbStore::open(&path).unwrap_err();
    assert!(
        matches!(e, StoreError::NewerSchema { found: 99, .. }),
        "{e}"
    );
}

#[test]
fn redb_reports_a_corrupt_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    drop(RedbStore::open(&path).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut nodes = tx
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("nodes"))
                .unwrap();
            nodes.insert("bad", b"{not json".as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    assert!(matches!(s.nodes(), Err(StoreError::Corrupt(_))));
}

#[test]
fn redb_health_events_are_stored_once_per_message() {
    let (_d, s) = redb();
    health_events_are_stored_once_per_message(&s);
}
