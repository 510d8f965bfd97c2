//! Behaviour every `Store` backend must have. Each check takes `&dyn Store`, so a
//! new backend runs the same suite by adding one line per test.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rakkr_protocol::NodeId;
use rakkr_protocol::job::{JobSpec, JobUpdate, RecordedFile, RecordingReport};
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
            devices: Vec::new(),
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

fn new_job(n: &NodeId, channels: &[u16], duration_s: Option<u32>) -> NewJob {
    NewJob::unscheduled(
        n.clone(),
        JobSpec {
            duration_s,
            ..serde_json::from_str("{}").unwrap()
        },
        channels.to_vec(),
    )
}

fn update(job: &JobRecord, state: JobState) -> JobUpdate {
    JobUpdate {
        job_id: job.id,
        lease_id: job.lease.unwrap().id,
        state,
        at_ms: 0,
        detail: String::new(),
        recording: None,
        autonomous: None,
    }
}

fn jobs_are_claimed_oldest_first_with_increasing_leases(store: &dyn Store) {
    let n = node("rec-1");
    let other = node("rec-2");
    assert!(store.claim_jobs(&n, 1, &[], 0, 1000).unwrap().is_empty());
    let first = store
        .enqueue_job(new_job(&n, &[0], Some(60)), 1_000)
        .unwrap();
    let second = store.enqueue_job(new_job(&n, &[1], None), 2_000).unwrap();
    let third = store.enqueue_job(new_job(&n, &[2], None), 2_500).unwrap();
    assert_eq!(first.state, JobState::Queued);

    assert!(
        store
            .claim_jobs(&other, 4, &[], 3_000, 1000)
            .unwrap()
            .is_empty(),
        "jobs are per node"
    );
    assert!(
        store
            .claim_jobs(&n, 0, &[], 3_000, 1000)
            .unwrap()
            .is_empty()
    );
    let c = store.claim_jobs(&n, 2, &[], 3_000, 10_000).unwrap();
    assert_eq!(
        c.iter().map(|j| j.id).collect::<Vec<_>>(),
        [first.id, second.id]
    );
    assert_eq!(c[0].state, JobState::Leased);
    assert_eq!(c[0].lease.unwrap().expires_ms, 13_000);
    assert!(c[1].lease.unwrap().id > c[0].lease.unwrap().id);
    assert_eq!(
        store.job(first.id).unwrap().unwrap(),
        c[0],
        "the claim is stored"
    );

    // The node holds the first; the second's offer was lost: it comes back
    // with the same lease before anything new is leased.
    let again = store.claim_jobs(&n, 2, &[first.id], 4_000, 10_000).unwrap();
    assert_eq!(
        again.iter().map(|j| j.id).collect::<Vec<_>>(),
        [second.id, third.id]
    );
    assert_eq!(again[0].lease, c[1].lease);
    assert!(again[1].lease.unwrap().id > c[1].lease.unwrap().id);
    assert!(
        store
            .claim_jobs(&n, 3, &[first.id, second.id, third.id], 5_000, 1000)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.job(JobId::new(5)).unwrap(), None);
    let listed: Vec<_> = store
        .jobs(Some(&n), 10)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(listed, [third.id, second.id, first.id], "newest first");
    assert_eq!(store.jobs(None, 1).unwrap()[0].id, third.id);
    assert!(store.jobs(Some(&other), 10).unwrap().is_empty());
}

/// Listings page through jobs newest first, per node or for all, with
/// `jobs_before` going on exactly where the previous page ended.
fn jobs_are_listed_newest_first_page_by_page(store: &dyn Store) {
    let (a, b) = (node("list-a"), node("list-b"));
    let mut ids = Vec::new();
    for i in 0..7u64 {
        let n = if i % 2 == 0 { &a } else { &b };
        ids.push(
            store
                .enqueue_job(new_job(n, &[i as u16], None), 1_000 + i)
                .unwrap()
                .id,
        );
    }
    let listed = |node: Option<&NodeId>, before: Option<JobId>, limit| -> Vec<JobId> {
        store
            .jobs_before(node, before, limit)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect()
    };
    let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
    assert_eq!(listed(None, None, 100), newest_first);
    assert_eq!(store.jobs(None, 3).unwrap().len(), 3);
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = listed(None, before, 3);
        if page.is_empty() {
            break;
        }
        before = page.last().copied();
        paged.extend(page);
    }
    assert_eq!(paged, newest_first, "pages of three, no gaps, no repeats");
    assert_eq!(
        listed(Some(&a), Some(ids[4]), 100),
        vec![ids[2], ids[0]],
        "one node's, older than a job of its own"
    );
    assert_eq!(
        listed(Some(&b), Some(ids[4]), 100),
        vec![ids[3], ids[1]],
        "or older than another node's"
    );
    assert!(listed(Some(&a), Some(ids[0]), 100).is_empty());
}

fn overlapping_channels_are_refused(store: &dyn Store) {
    let n = node("ov");
    let a = store.enqueue_job(new_job(&n, &[0, 1], None), 1).unwrap();
    let e = store
        .enqueue_job(new_job(&n, &[1, 2], None), 2)
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Refused(_)), "{e}");
    assert!(
        text.contains("channel 2 ") && text.contains(&a.id.to_string()),
        "{text}"
    );
    // Other channels, another device, another node: fine.
    store.enqueue_job(new_job(&n, &[2, 3], None), 3).unwrap();
    let mut other_device = new_job(&n, &[0, 1], None);
    other_device.spec.device = "hw:2".into();
    store.enqueue_job(other_device, 4).unwrap();
    store
        .enqueue_job(new_job(&node("ov2"), &[0, 1], None), 5)
        .unwrap();
    // Once the job ends, its channels are free.
    store.request_stop(a.id, true, 6).unwrap();
    assert_eq!(store.job(a.id).unwrap().unwrap().state, JobState::Cancelled);
    store.enqueue_job(new_job(&n, &[1], None), 7).unwrap();
}

fn a_job_runs_under_its_lease_and_finishes_once(store: &dyn Store) {
    use rakkr_protocol::MessageId;
    // The metrics' gauges follow the job through every state that is not final.
    let gauges = |queued, leased, running, stop_requested| {
        assert_eq!(
            store.job_gauges().unwrap(),
            JobGauges {
                queued,
                leased,
                running,
                stop_requested
            }
        );
    };
    let n = node("run");
    store.enqueue_job(new_job(&n, &[0], Some(10)), 1).unwrap();
    gauges(1, 0, 0, 0);
    let job = store.claim_jobs(&n, 1, &[], 10, 1_000).unwrap().remove(0);
    gauges(0, 1, 0, 0);
    let running = MessageId::new(20);
    let r = store
        .apply_job_update(&n, running, &update(&job, JobState::Running), 20)
        .unwrap();
    assert!(matches!(&r, UpdateOutcome::Applied(j) if j.state == JobState::Running));
    gauges(0, 0, 1, 0);
    // Redelivered: applied once.
    assert!(matches!(
        store
            .apply_job_update(&n, running, &update(&job, JobState::Running), 21)
            .unwrap(),
        UpdateOutcome::Duplicate(_)
    ));
    // Another node's update, a stale lease, an unknown job: refused.
    assert!(matches!(
        store.apply_job_update(
            &node("thief"),
            MessageId::new(22),
            &update(&job, JobState::Completed),
            22
        ),
        Err(StoreError::WrongNode { .. })
    ));
    let mut stale = update(&job, JobState::Completed);
    stale.lease_id += 1000;
    assert!(matches!(
        store.apply_job_update(&n, MessageId::new(23), &stale, 23),
        Err(StoreError::StaleLease { .. })
    ));
    let mut unknown = update(&job, JobState::Completed);
    unknown.job_id = JobId::new(1);
    assert!(matches!(
        store.apply_job_update(&n, MessageId::new(24), &unknown, 24),
        Err(StoreError::NoSuchJob(_))
    ));
    // Heartbeats move the expiry; an illegal transition is refused.
    let renewed = store
        .renew_lease(&n, job.id, job.lease.unwrap().id, 500, 1_000)
        .unwrap();
    assert_eq!(renewed.lease.unwrap().expires_ms, 1_500);
    assert!(
        store.expire_leases(1_400).unwrap().is_empty(),
        "renewed in time"
    );
    assert!(matches!(
        store.apply_job_update(&n, MessageId::new(25), &update(&job, JobState::Running), 25),
        Err(StoreError::Transition(_))
    ));
    // Stop, then a late `running`, then completed with the take.
    let stopped = store.request_stop(job.id, false, 600).unwrap();
    assert_eq!(
        (stopped.state, stopped.cancel_requested),
        (JobState::StopRequested, false)
    );
    gauges(0, 0, 0, 1);
    let mut done = update(&job, JobState::Completed);
    done.recording = Some(report(false));
    let fin = store
        .apply_job_update(&n, MessageId::new(700), &done, 700)
        .unwrap();
    assert_eq!(fin.job().state, JobState::Completed);
    assert_eq!(fin.job().recording, Some(report(false)));
    gauges(0, 0, 0, 0);
    assert!(
        store.expire_leases(u64::MAX / 2).unwrap().is_empty(),
        "a finished job has no lease"
    );
    assert!(matches!(
        store.renew_lease(&n, job.id, job.lease.unwrap().id, 800, 1_000),
        Err(StoreError::StaleLease { .. })
    ));
    assert!(
        store.request_stop(job.id, true, 900).is_err(),
        "finished is final"
    );
}

fn report(recovered: bool) -> RecordingReport {
    RecordingReport {
        files: vec![RecordedFile {
            name: "take.flac".into(),
            frames: 480_000,
            bytes: 1_000_000,
        }],
        file_count: 1,
        frames: 480_000,
        sample_rate: 48_000,
        channels: 1,
        bits: 24,
        start_unix_ms: 10,
        gaps: 0,
        recovered,
    }
}

fn expired_leases_lose_jobs_and_returned_takes_are_attached(store: &dyn Store) {
    use rakkr_protocol::MessageId;
    use rakkr_protocol::payload::{HealthChange, HealthCondition};
    let n = node("lost");
    store.enqueue_job(new_job(&n, &[0], Some(10)), 1).unwrap();
    store.enqueue_job(new_job(&n, &[1], Some(10)), 2).unwrap();
    let jobs = store.claim_jobs(&n, 2, &[], 10, 1_000).unwrap();
    store
        .apply_job_update(
            &n,
            MessageId::new(20),
            &update(&jobs[0], JobState::Running),
            20,
        )
        .unwrap();
    assert!(store.expire_leases(1_009).unwrap().is_empty());
    let lost = store.expire_leases(1_011).unwrap();
    assert_eq!(lost.len(), 2);
    assert!(lost.iter().all(|j| j.state == JobState::Lost));
    assert!(store.expire_leases(5_000).unwrap().is_empty(), "lost once");
    let events = store.health_events(&n, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.event.condition == HealthCondition::JobLost
                && e.event.change == HealthChange::Raised)
    );
    // Lost jobs no longer hold their channels.
    store.enqueue_job(new_job(&n, &[0], None), 3_000).unwrap();

    // The partitioned node returns the finished take under its old lease.
    let mut done = update(&jobs[0], JobState::Completed);
    done.recording = Some(report(true));
    let back = store
        .apply_job_update(&n, MessageId::new(6_000), &done, 6_000)
        .unwrap();
    assert_eq!(back.job().state, JobState::Completed);
    assert!(back.job().recording.as_ref().unwrap().recovered);
    // The other one renews its lease: it runs again.
    let renewed = store
        .renew_lease(&n, jobs[1].id, jobs[1].lease.unwrap().id, 6_100, 1_000)
        .unwrap();
    assert_eq!(renewed.state, JobState::Running);
    let events = store.health_events(&n, 10).unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.change == HealthChange::Cleared)
            .count(),
        2
    );
    assert_eq!(
        store.expire_leases(7_101).unwrap().len(),
        1,
        "and can be lost again"
    );
}

fn racing_claims_never_share_a_job(store: Arc<dyn Store>) {
    const NODES: usize = 4;
    const JOBS_PER_NODE: usize = 50;
    const CLAIMERS_PER_NODE: usize = 6;
    let nodes: Vec<NodeId> = (0..NODES).map(|i| node(&format!("race-{i}"))).collect();
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..JOBS_PER_NODE {
            store
                .enqueue_job(new_job(n, &[j as u16], Some(1)), (i * 1000 + j) as u64)
                .unwrap();
        }
    }
    // Claimers of one node share what they hold, as one agent would; a job
    // leased by one and not yet in the shared list may be offered to another
    // again, but only ever under the same lease.
    let claimed = Arc::new(Mutex::new(Vec::<JobRecord>::new()));
    std::thread::scope(|s| {
        for n in &nodes {
            for _ in 0..CLAIMERS_PER_NODE {
                let store = store.clone();
                let claimed = claimed.clone();
                s.spawn(move || {
                    loop {
                        let held: Vec<JobId> = claimed
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|j| &j.node == n)
                            .map(|j| j.id)
                            .collect();
                        let got = store.claim_jobs(n, 2, &held, 10, 100_000).unwrap();
                        if got.is_empty() {
                            break;
                        }
                        claimed.lock().unwrap().extend(got);
                    }
                });
            }
        }
    });
    let claimed = claimed.lock().unwrap();
    let mut lease_of: std::collections::HashMap<JobId, u64> = Default::default();
    for j in claimed.iter() {
        assert_eq!(j.state, JobState::Leased);
        let lease = j.lease.unwrap().id;
        assert_eq!(
            *lease_of.entry(j.id).or_insert(lease),
            lease,
            "job {} leased twice",
            j.id
        );
    }
    assert_eq!(lease_of.len(), NODES * JOBS_PER_NODE, "every job claimed");
    let leases: HashSet<_> = lease_of.values().collect();
    assert_eq!(
        leases.len(),
        lease_of.len(),
        "a lease id was handed out for two jobs"
    );
}

fn token(id: &str, node: Option<&str>, expires_ms: u64) -> EnrollTokenRecord {
    EnrollTokenRecord {
        id: id.into(),
        secret_sha256: format!("hash-of-{id}"),
        node: node.map(|n| NodeId::new(n).unwrap()),
        created_ms: 0,
        expires_ms,
        used: None,
    }
}

fn enrollment_tokens_are_single_use_expiring_and_bound(store: &dyn Store) {
    // A fresh store reads as empty, not as an error.
    assert!(store.node_credentials().unwrap().is_empty());
    assert!(store.enroll_tokens(0).unwrap().is_empty());
    let refused = |r: Result<NodeCredentialRecord>, expect: &str| match r {
        Err(StoreError::Refused(why)) => assert!(why.contains(expect), "{why}"),
        other => panic!("expected a refusal ({expect}), got {other:?}"),
    };
    store.create_enroll_token(token("t1", None, 1_000)).unwrap();
    store.create_enroll_token(token("t2", None, 1_000)).unwrap();
    store
        .create_enroll_token(token("t3", Some("bound"), 1_000))
        .unwrap();
    assert!(
        store.create_enroll_token(token("t1", None, 9)).is_err(),
        "ids are unique"
    );
    assert_eq!(store.enroll_tokens(0).unwrap().len(), 3);

    let a = node("enr-a");
    refused(
        store.enroll_node("nope", "hash-of-nope", &a, "c", 10),
        "unknown",
    );
    refused(store.enroll_node("t1", "wrong", &a, "c", 10), "unknown");
    refused(
        store.enroll_node("t1", "hash-of-t1", &a, "c", 1_000),
        "expired",
    );
    let c = store
        .enroll_node("t1", "hash-of-t1", &a, "cred-a", 10)
        .unwrap();
    assert_eq!(
        (c.secret_sha256.as_str(), c.generation, c.is_active()),
        ("cred-a", 0, true)
    );
    refused(
        store.enroll_node("t1", "hash-of-t1", &node("enr-b"), "c", 11),
        "already used",
    );
    // An enrolled node is not enrolled again by just any token …
    refused(
        store.enroll_node("t2", "hash-of-t2", &a, "c", 12),
        "enrolled already",
    );
    // … and a token made for a node enrolls only that node.
    refused(
        store.enroll_node("t3", "hash-of-t3", &a, "c", 13),
        "is for node bound",
    );
    assert_eq!(store.enroll_tokens(14).unwrap().len(), 2, "t1 is used");

    // Rotation: both secrets work until the next is used.
    let r = store.set_next_node_credential(&a, "cred-a2", 20).unwrap();
    assert_eq!(
        (r.secret_sha256.as_str(), r.next_sha256.as_deref()),
        ("cred-a", Some("cred-a2"))
    );
    let p = store.promote_node_credential(&a, 21).unwrap();
    assert_eq!(
        (p.secret_sha256.as_str(), p.next_sha256, p.generation),
        ("cred-a2", None, 1)
    );

    // Revocation sticks; a token made for the node enrolls it again.
    let rv = store.revoke_node_credential(&a, 30).unwrap();
    assert_eq!(rv.revoked_ms, Some(30));
    assert!(store.set_next_node_credential(&a, "x", 31).is_err());
    store
        .create_enroll_token(token("t4", Some("enr-a"), 1_000))
        .unwrap();
    let again = store
        .enroll_node("t4", "hash-of-t4", &a, "cred-a3", 40)
        .unwrap();
    assert_eq!((again.is_active(), again.generation), (true, 2));
    let all = store.node_credentials().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].secret_sha256, "cred-a3");
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
            subject: String::new(),
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
    assert_eq!(store.health_events_pruned_until(&node("a")).unwrap(), None);
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
        store.health_events_pruned_until(&node("a")).unwrap(),
        Some(10_004),
        "the newest pruned event's time"
    );
    assert_eq!(store.health_events_pruned_until(&node("b")).unwrap(), None);
    assert_eq!(
        store.health_events(&node("b"), 10).unwrap().len(),
        1,
        "other nodes untouched"
    );
}

fn node_policies_are_chosen_and_reset_per_kind(store: &dyn Store) {
    use rakkr_store::NodePolicyKind::{Retention, Watchdog};
    assert!(store.node_policies(Watchdog).unwrap().is_empty());
    assert_eq!(
        store
            .set_node_policy(Watchdog, &node("a"), Some("lecture"))
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .set_node_policy(Watchdog, &node("a"), Some("strict"))
            .unwrap(),
        Some("lecture".into())
    );
    store
        .set_node_policy(Watchdog, &node("b"), Some("lecture"))
        .unwrap();
    let all = store.node_policies(Watchdog).unwrap();
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        [(node("a"), "strict".into()), (node("b"), "lecture".into())]
    );
    // Each kind is its own choice.
    assert!(store.node_policies(Retention).unwrap().is_empty());
    store
        .set_node_policy(Retention, &node("a"), Some("keep-30-days"))
        .unwrap();
    assert_eq!(
        store.set_node_policy(Watchdog, &node("a"), None).unwrap(),
        Some("strict".into())
    );
    assert_eq!(store.node_policies(Watchdog).unwrap().len(), 1);
    assert_eq!(
        store.node_policies(Retention).unwrap()[&node("a")],
        "keep-30-days"
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

fn user(name: &str, role: rakkr_protocol::access::Role) -> UserRecord {
    UserRecord {
        name: name.into(),
        role,
        password_phc: format!("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$hash-of-{name}"),
        must_change_password: true,
        disabled: false,
        created_ms: 1,
        password_changed_ms: 1,
        sessions_valid_after_ms: 0,
    }
}

fn accounts_are_unique_and_the_last_owner_stays(store: &dyn Store) {
    use rakkr_protocol::access::Role;
    // First start: one owner, once.
    assert!(store.create_first_user(user("owner", Role::Owner)).unwrap());
    assert!(
        !store
            .create_first_user(user("owner2", Role::Owner))
            .unwrap()
    );
    assert!(store.user("owner2").unwrap().is_none());

    store.create_user(user("ann", Role::Viewer)).unwrap();
    let e = store.create_user(user("ann", Role::Admin)).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(
        store.user("ann").unwrap().unwrap().role,
        Role::Viewer,
        "not overwritten"
    );
    for bad in ["", "Ann", "-ann", "a b", "ann/..", &"x".repeat(65)] {
        let e = store.create_user(user(bad, Role::Viewer)).unwrap_err();
        assert!(
            e.to_string().contains("not a valid user name"),
            "{bad:?}: {e}"
        );
    }
    let names: Vec<String> = store.users().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["ann", "owner"]);

    // A new password ends sessions started before it.
    let changed = store
        .change_user(
            "ann",
            UserChange::Password {
                phc: "$argon2id$new".into(),
                must_change: false,
            },
            50,
        )
        .unwrap();
    assert_eq!(
        (
            changed.password_phc.as_str(),
            changed.must_change_password,
            changed.sessions_valid_after_ms,
            changed.password_changed_ms
        ),
        ("$argon2id$new", false, 50, 50)
    );
    let disabled = store
        .change_user("ann", UserChange::Disabled(true), 60)
        .unwrap();
    assert!(disabled.disabled);
    assert_eq!(disabled.sessions_valid_after_ms, 60);
    let enabled = store
        .change_user("ann", UserChange::Disabled(false), 70)
        .unwrap();
    assert!(!enabled.disabled);
    assert_eq!(
        enabled.sessions_valid_after_ms, 60,
        "enabling does not revive sessions"
    );
    let ended = store
        .change_user("ann", UserChange::EndSessions, 75)
        .unwrap();
    assert_eq!(
        (ended.sessions_valid_after_ms, ended.disabled, ended.role),
        (76, false, enabled.role),
        "sessions of the very millisecond end too; nothing else changes"
    );

    // The last enabled owner can be neither disabled nor demoted.
    for change in [UserChange::Disabled(true), UserChange::Role(Role::Admin)] {
        let e = store.change_user("owner", change, 80).unwrap_err();
        assert!(e.to_string().contains("last enabled owner"), "{e}");
    }
    // A disabled owner does not count as the one left.
    store
        .change_user("ann", UserChange::Role(Role::Owner), 85)
        .unwrap();
    store
        .change_user("ann", UserChange::Disabled(true), 86)
        .unwrap();
    let e = store
        .change_user("owner", UserChange::Disabled(true), 87)
        .unwrap_err();
    assert!(e.to_string().contains("last enabled owner"), "{e}");
    store
        .change_user("ann", UserChange::Disabled(false), 88)
        .unwrap();
    let shown = format!("{:?}", store.user("ann").unwrap().unwrap());
    assert!(!shown.contains("argon2"), "Debug hides the hash: {shown}");
    store
        .change_user("owner", UserChange::Role(Role::Admin), 91)
        .unwrap();
    assert_eq!(store.user("owner").unwrap().unwrap().role, Role::Admin);
    let e = store
        .change_user("nobody", UserChange::Disabled(true), 92)
        .unwrap_err();
    assert!(e.to_string().contains("no user"), "{e}");
}

#[test]
fn redb_accounts_are_unique_and_the_last_owner_stays() {
    let (_d, s) = redb();
    accounts_are_unique_and_the_last_owner_stays(&s);
}

fn session(id: &str, user: &str, created: u64) -> SessionRecord {
    SessionRecord {
        id_sha256: id.into(),
        user: user.into(),
        created_ms: created,
        last_seen_ms: created,
        csrf_token: format!("csrf-{id}"),
    }
}

fn sessions_are_bounded_touched_and_pruned(store: &dyn Store) {
    for i in 0..5u64 {
        store
            .create_session(session(&format!("a{i}"), "ann", 100 + i), 3)
            .unwrap();
    }
    store.create_session(session("b0", "bob", 100), 3).unwrap();
    let kept: Vec<bool> = (0..5)
        .map(|i| store.session(&format!("a{i}")).unwrap().is_some())
        .collect();
    assert_eq!(kept, [false, false, true, true, true], "ann's oldest went");
    assert!(store.session("b0").unwrap().is_some(), "bob's are his own");

    store.touch_session("a2", 500).unwrap();
    assert_eq!(store.session("a2").unwrap().unwrap().last_seen_ms, 500);
    store.touch_session("a2", 400).unwrap();
    assert_eq!(
        store.session("a2").unwrap().unwrap().last_seen_ms,
        500,
        "never back"
    );
    store.touch_session("gone", 500).unwrap();

    // Idle before 200 (a3, a4, b0: last seen 103-104, 100) or created before 101 (b0).
    assert_eq!(store.prune_sessions(200, 101).unwrap(), 3);
    assert!(store.session("a2").unwrap().is_some());
    // Created before 103: a2 (created 102) goes although it was seen at 500.
    assert_eq!(store.prune_sessions(0, 103).unwrap(), 1);
    store.create_session(session("c0", "cy", 1000), 3).unwrap();
    store.delete_session("c0").unwrap();
    assert!(store.session("c0").unwrap().is_none());
}

#[test]
fn redb_sessions_are_bounded_touched_and_pruned() {
    let (_d, s) = redb();
    sessions_are_bounded_touched_and_pruned(&s);
}

fn the_audit_log_is_a_gapless_hash_chain(store: &dyn Store) {
    let entry = |i: u64| AuditEntry {
        at_ms: 1000 + i,
        actor: format!("user:u{i}"),
        permission: Some("jobs.manage".into()),
        action: "POST /api/v1/jobs".into(),
        target: Some(format!("job-{i}")),
        outcome: if i.is_multiple_of(2) {
            "allowed"
        } else {
            "denied"
        }
        .into(),
        reason: None,
        ..Default::default()
    };
    for i in 1..=5 {
        let r = store.append_audit(entry(i)).unwrap();
        assert_eq!(r.seq, i);
    }
    let all = store.audit_records(0, 100).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(all[0].prev_sha256, AUDIT_GENESIS);
    assert_eq!(verify_audit_chain(AUDIT_GENESIS, &all), Ok(()));
    // A page continues the chain from the record before it.
    let page = store.audit_records(2, 2).unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(verify_audit_chain(&all[1].sha256, &page), Ok(()));

    // Editing a record, dropping one or reordering is detected where it happens.
    let mut edited = all.clone();
    edited[2].entry.outcome = "allowed".into();
    assert_eq!(verify_audit_chain(AUDIT_GENESIS, &edited), Err(3));
    let mut dropped = all.clone();
    dropped.remove(1);
    assert_eq!(verify_audit_chain(AUDIT_GENESIS, &dropped), Err(3));
    let mut rehashed = all.clone();
    rehashed[1].entry.actor = "user:mallory".into();
    rehashed[1].sha256 = audit_hash(2, &rehashed[0].sha256, &rehashed[1].entry);
    assert_eq!(
        verify_audit_chain(AUDIT_GENESIS, &rehashed),
        Err(3),
        "re-hashing one breaks the next"
    );
}

/// 300 records: actors cycle over 3 users, every 5th denied, times 10 s
/// apart; the first 150 appended one by one, the rest in one batch.
fn audit_fixture(store: &dyn Store) {
    let entry = |i: u64| AuditEntry {
        at_ms: i * 10_000,
        actor: format!("user:u{}", i % 3),
        permission: Some("jobs.manage".into()),
        action: if i.is_multiple_of(7) {
            "user disable".into()
        } else {
            "POST /api/v1/jobs".into()
        },
        target: Some(format!("job-{i}")),
        outcome: if i.is_multiple_of(5) {
            "denied"
        } else {
            "allowed"
        }
        .into(),
        reason: (i == 150).then(|| "Needle in the haystack".into()),
        before: (i.is_multiple_of(7)).then(|| serde_json::json!({ "disabled": false })),
        after: (i.is_multiple_of(7)).then(|| serde_json::json!({ "disabled": true })),
    };
    for i in 1..=150u64 {
        store.append_audit(entry(i)).unwrap();
    }
    assert_eq!(
        store
            .append_audit_many((151..=300).map(entry).collect())
            .unwrap(),
        300
    );
}

fn seqs(page: &AuditPage) -> Vec<u64> {
    page.records.iter().map(|r| r.seq).collect()
}

fn the_audit_log_is_searchable(store: &dyn Store) {
    audit_fixture(store);
    let search = |s: AuditSearch| {
        store
            .search_audit(&AuditSearch { limit: 1000, ..s })
            .unwrap()
    };
    // Everything, newest first.
    let all = search(AuditSearch::default());
    assert_eq!(all.records.len(), 300);
    assert_eq!(all.records[0].seq, 300);
    assert_eq!(all.next_before, None);
    // By actor (the index), outcome and text, alone and together.
    let u1 = search(AuditSearch {
        actor: Some("user:u1".into()),
        ..Default::default()
    });
    assert_eq!(u1.records.len(), 100);
    assert!(u1.records.iter().all(|r| r.entry.actor == "user:u1"));
    assert_eq!(
        u1.scanned, 100,
        "the actor index examines only that actor's records"
    );
    let denied_u1 = search(AuditSearch {
        actor: Some("user:u1".into()),
        outcome: Some("denied".into()),
        ..Default::default()
    });
    let expected: Vec<u64> = (1..=300)
        .rev()
        .filter(|i| i % 3 == 1 && i % 5 == 0)
        .collect();
    assert_eq!(seqs(&denied_u1), expected);
    assert_eq!(
        denied_u1.scanned,
        expected.len(),
        "actor and outcome together read only records matching both"
    );
    assert_eq!(
        seqs(&search(AuditSearch {
            text: Some("needle".into()),
            ..Default::default()
        })),
        vec![150],
        "text matches the reason, case-insensitively"
    );
    assert_eq!(
        search(AuditSearch {
            text: Some("USER DISABLE".into()),
            ..Default::default()
        })
        .records
        .len(),
        42
    );
    // Text in one field only (target), never in fields text does not cover
    // (actor, hashes); a needle with a quote takes the decoding path.
    assert_eq!(
        search(AuditSearch {
            text: Some("JOB-15".into()),
            ..Default::default()
        })
        .records
        .len(),
        11,
        "job-15 and job-150..=159"
    );
    assert!(
        search(AuditSearch {
            text: Some("user:u1".into()),
            ..Default::default()
        })
        .records
        .is_empty()
    );
    assert!(
        search(AuditSearch {
            text: Some("say \"hi\"".into()),
            ..Default::default()
        })
        .records
        .is_empty()
    );
    assert!(
        search(AuditSearch {
            actor: Some("user:nobody".into()),
            ..Default::default()
        })
        .records
        .is_empty()
    );
    // Before and after values come back as stored.
    let r = &search(AuditSearch {
        text: Some("user disable".into()),
        ..Default::default()
    })
    .records[0];
    assert_eq!(r.entry.after, Some(serde_json::json!({ "disabled": true })));
    // Time range: inclusive at both ends.
    let window = search(AuditSearch {
        from_ms: Some(1_000_000),
        to_ms: Some(1_050_000),
        ..Default::default()
    });
    assert_eq!(seqs(&window), vec![105, 104, 103, 102, 101, 100]);
    let window_u0 = search(AuditSearch {
        actor: Some("user:u0".into()),
        from_ms: Some(1_000_000),
        to_ms: Some(1_050_000),
        ..Default::default()
    });
    assert_eq!(seqs(&window_u0), vec![105, 102]);
    // Paging: `next_before` goes on exactly where the page stopped.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .search_audit(&AuditSearch {
                before,
                outcome: Some("denied".into()),
                limit: 7,
                ..Default::default()
            })
            .unwrap();
        pages.extend(seqs(&page));
        match page.next_before {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let denied: Vec<u64> = (1..=300).rev().filter(|i| i % 5 == 0).collect();
    assert_eq!(pages, denied);
    let by_outcome = search(AuditSearch {
        outcome: Some("denied".into()),
        ..Default::default()
    });
    assert_eq!(by_outcome.records.len(), 60);
    assert_eq!(
        by_outcome.scanned, 60,
        "the outcome index examines only matches"
    );
    // The chain is untouched by the index.
    let oldest_first = store.audit_records(0, 1000).unwrap();
    assert_eq!(verify_audit_chain(AUDIT_GENESIS, &oldest_first), Ok(()));
}

/// Every text search, paged in sevens and within time windows that start
/// and end inside the 64-record text blocks, finds exactly what a plain
/// filter over the whole log finds.
fn text_searches_page_like_a_plain_filter(store: &dyn Store) {
    audit_fixture(store);
    let all = store.audit_records(0, 1000).unwrap();
    let windows = [
        (None, None),
        (Some(640_000), Some(1_300_000)),
        (Some(10_000), Some(10_000)),
        (Some(2_990_000), None),
    ];
    for needle in [
        "job-1",
        "needle",
        "USER DISABLE",
        "post",
        "e",
        "zzz",
        "\"job",
    ] {
        for (from_ms, to_ms) in windows {
            let search = AuditSearch {
                text: Some(needle.into()),
                from_ms,
                to_ms,
                limit: 7,
                ..Default::default()
            };
            let expected: Vec<u64> = all
                .iter()
                .rev()
                .filter(|r| search.matches(r))
                .map(|r| r.seq)
                .collect();
            let mut found = Vec::new();
            let mut before = None;
            loop {
                let page = store
                    .search_audit(&AuditSearch {
                        before,
                        ..search.clone()
                    })
                    .unwrap();
                assert!(page.records.len() <= 7);
                found.extend(seqs(&page));
                match page.next_before {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
            assert_eq!(found, expected, "{needle:?} in {from_ms:?}..{to_ms:?}");
        }
    }
}

fn recordings_take_notes_and_tags(store: &dyn Store) {
    let n = node("n1");
    store.record_node_statuses(&[online("n1", "1", 1)]).unwrap();
    let job = store
        .enqueue_job(new_job(&n, &[0], Some(60)), 1_000)
        .unwrap();
    let tags = vec![
        " choir ".to_owned(),
        "live".into(),
        "choir".into(),
        "".into(),
    ];
    let (before, after) = store
        .annotate_job(job.id, "Mic 3 <b>hums</b>\r\nafter the break", &tags)
        .unwrap();
    assert_eq!((before.notes.as_str(), before.tags.len()), ("", 0));
    assert_eq!(
        after.notes, "Mic 3 <b>hums</b>\nafter the break",
        "kept as text"
    );
    assert_eq!(after.tags, ["choir", "live"], "trimmed, sorted, once");
    assert_eq!(after.state, job.state, "notes change nothing else");
    assert_eq!(store.job(job.id).unwrap().unwrap(), after);
    let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
    assert!(matches!(
        store.annotate_job(job.id, "", &many),
        Err(StoreError::Refused(_))
    ));
    let long = "x".repeat(MAX_NOTES_BYTES + 1);
    assert!(matches!(
        store.annotate_job(job.id, &long, &[]),
        Err(StoreError::Refused(_))
    ));
    assert!(matches!(
        store.annotate_job(job.id, "bell\u{7}", &[]),
        Err(StoreError::Refused(_))
    ));
    assert_eq!(
        store.job(job.id).unwrap().unwrap(),
        after,
        "refusals change nothing"
    );
    let unknown = rakkr_protocol::JobId::new(5);
    assert!(matches!(
        store.annotate_job(unknown, "", &[]),
        Err(StoreError::NoSuchJob(_))
    ));
}

#[test]
fn redb_recordings_take_notes_and_tags() {
    let (_d, s) = redb();
    recordings_take_notes_and_tags(&s);
}

#[test]
fn redb_the_audit_log_is_searchable() {
    let (_d, s) = redb();
    the_audit_log_is_searchable(&s);
}

#[test]
fn redb_text_searches_page_like_a_plain_filter() {
    let (_d, s) = redb();
    text_searches_page_like_a_plain_filter(&s);
}

/// A store with [`audit_fixture`] in it, changed behind the store's back by
/// `tamper` (as an older version or a damaged file would leave it), and opened again.
fn audit_fixture_tampered(
    tamper: impl FnOnce(&redb::WriteTransaction),
) -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        audit_fixture(&s);
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tamper(&tx);
        tx.commit().unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    (dir, s)
}

/// The first 1000 matches of `search`.
fn audit_search(s: &RedbStore, search: AuditSearch) -> AuditPage {
    s.search_audit(&AuditSearch {
        limit: 1000,
        ..search
    })
    .unwrap()
}

#[test]
fn redb_the_text_blocks_are_built_for_a_log_from_before_them() {
    let (_d, s) = audit_fixture_tampered(|tx| {
        tx.delete_table(redb::TableDefinition::<u64, &[u8]>::new("audit_text"))
            .unwrap();
    });
    text_search_finds_the_fixture_needle(&s, 300);
    // Appends after the rebuild go on in the last, partial block.
    for i in 0..70 {
        s.append_audit(AuditEntry {
            at_ms: 4_000_000 + i,
            actor: "user:u0".into(),
            permission: None,
            action: format!("late {i}"),
            target: None,
            outcome: "allowed".into(),
            reason: None,
            before: None,
            after: None,
        })
        .unwrap();
    }
    let late = audit_search(
        &s,
        AuditSearch {
            text: Some("LATE".into()),
            ..Default::default()
        },
    );
    assert_eq!(seqs(&late), (301..=370).rev().collect::<Vec<_>>());
    text_search_finds_the_fixture_needle(&s, 370);
}

#[test]
fn redb_audit_text_fields_are_bounded_as_they_are_appended() {
    let (_d, s) = redb();
    let huge = format!("wrong password for {}", "é".repeat(60_000));
    let record = s
        .append_audit(AuditEntry {
            at_ms: 1,
            actor: format!("anonymous@{}", "x".repeat(10_000)),
            action: "mqtt connect".into(),
            target: Some("t".repeat(MAX_AUDIT_FIELD)),
            reason: Some(huge),
            outcome: "denied".into(),
            ..Default::default()
        })
        .unwrap();
    let e = &record.entry;
    assert!(e.actor.len() <= MAX_AUDIT_FIELD && e.actor.ends_with('…'));
    let reason = e.reason.as_deref().unwrap();
    assert!(
        reason.len() <= MAX_AUDIT_FIELD && reason.ends_with('…'),
        "{}",
        reason.len()
    );
    assert!(
        reason.starts_with("wrong password for éé"),
        "cut at a character"
    );
    assert_eq!(
        e.target.as_deref().map(str::len),
        Some(MAX_AUDIT_FIELD),
        "a field at the bound is kept whole"
    );
    assert_eq!(s.audit_records(0, 10).unwrap(), vec![record.clone()]);
    assert_eq!(verify_audit_chain(AUDIT_GENESIS, &[record]), Ok(()));
    let found = audit_search(
        &s,
        AuditSearch {
            text: Some("WRONG PASSWORD".into()),
            ..Default::default()
        },
    );
    assert_eq!(seqs(&found), [1]);
}

#[test]
fn redb_a_well_formed_text_block_is_trusted() {
    // The search reads only what the blocks point at: a block rewritten
    // behind the store's back with 64 empty parts hides record 150's
    // needle from a text search alone (verify_audit_chain is what finds
    // tampering), while a search by actor, which reads records, still sees it.
    let (_d, s) = audit_fixture_tampered(|tx| {
        let mut t = tx
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("audit_text"))
            .unwrap();
        let empty = b"\x1f\x1f\x1f\x1f\x1e".repeat(64);
        t.insert(2, empty.as_slice()).unwrap();
    });
    let text = |actor: Option<&str>| {
        seqs(&audit_search(
            &s,
            AuditSearch {
                text: Some("needle".into()),
                actor: actor.map(Into::into),
                ..Default::default()
            },
        ))
    };
    assert!(text(None).is_empty(), "the filter is in use");
    assert_eq!(text(Some("user:u0")), [150]);
}

#[test]
fn redb_a_damaged_text_block_costs_reads_not_matches() {
    // Record 150 is in block 2 (records 129..=192). Lose that block, and cut
    // block 1 short; the other blocks stay.
    let (_d, s) = audit_fixture_tampered(|tx| {
        let mut t = tx
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("audit_text"))
            .unwrap();
        t.remove(2).unwrap();
        t.insert(1, &b"job-100\x1f\x1f\x1f\x1f\x1e"[..]).unwrap();
    });
    text_search_finds_the_fixture_needle(&s, 300);
    let page = audit_search(
        &s,
        AuditSearch {
            text: Some("job-10".into()),
            ..Default::default()
        },
    );
    assert_eq!(
        seqs(&page),
        [109, 108, 107, 106, 105, 104, 103, 102, 101, 100, 10],
        "block 1 is not trusted"
    );
}

fn text_search_finds_the_fixture_needle(s: &RedbStore, records: usize) {
    let page = audit_search(
        s,
        AuditSearch {
            text: Some("needle".into()),
            ..Default::default()
        },
    );
    assert_eq!((seqs(&page), page.scanned), (vec![150], records));
}

#[test]
fn redb_the_actor_index_is_built_for_a_log_from_before_it() {
    // Drop the index, as a store from before it would be.
    let (_d, s) = audit_fixture_tampered(|tx| {
        tx.delete_table(redb::TableDefinition::<(&str, u64), ()>::new(
            "audit_by_actor",
        ))
        .unwrap();
    });
    let page = audit_search(
        &s,
        AuditSearch {
            actor: Some("user:u2".into()),
            ..Default::default()
        },
    );
    assert_eq!(page.records.len(), 100);
    let page = audit_search(
        &s,
        AuditSearch {
            outcome: Some("denied".into()),
            ..Default::default()
        },
    );
    assert_eq!((page.records.len(), page.scanned), (60, 60));
}

#[test]
fn redb_the_audit_log_is_a_gapless_hash_chain() {
    let (_d, s) = redb();
    the_audit_log_is_a_gapless_hash_chain(&s);
}

#[test]
fn redb_jobs_are_listed_newest_first_page_by_page() {
    let (_d, s) = redb();
    jobs_are_listed_newest_first_page_by_page(&s);
}

#[test]
fn redb_overlapping_channels_are_refused() {
    let (_d, s) = redb();
    overlapping_channels_are_refused(&s);
}

#[test]
fn redb_a_job_runs_under_its_lease_and_finishes_once() {
    let (_d, s) = redb();
    a_job_runs_under_its_lease_and_finishes_once(&s);
}

#[test]
fn redb_expired_leases_lose_jobs_and_returned_takes_are_attached() {
    let (_d, s) = redb();
    expired_leases_lose_jobs_and_returned_takes_are_attached(&s);
}

#[test]
fn redb_enrollment_tokens_are_single_use_expiring_and_bound() {
    let (_d, s) = redb();
    enrollment_tokens_are_single_use_expiring_and_bound(&s);
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

#[test]
fn redb_upgrades_a_version_1_store_keeping_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        s.record_node_statuses(&[online("old", "0.9", 5)]).unwrap();
    }
    {
        // Version 1's job records had another shape.
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema_version", 1).unwrap();
            let mut jobs = tx
                .open_table(redb::TableDefinition::<u128, &[u8]>::new("jobs"))
                .unwrap();
            jobs.insert(7, br#"{"id":"x","spec":{"node":"old"}}"#.as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    assert!(s.jobs(None, 10).unwrap().is_empty());
    assert!(s.node(&node("old")).unwrap().is_some());
    s.enqueue_job(new_job(&node("old"), &[0], None), 10)
        .unwrap();
}

fn update_orders_are_kept_one_per_node_until_forgotten(store: &dyn Store) {
    use rakkr_protocol::update::UpdateOrder;
    let order = |id: u128, version: &str| UpdateOrder {
        update_id: rakkr_protocol::UpdateId::from_u128(id),
        image: format!("rootfs-{version}.img"),
        version: version.into(),
        size: 10,
        signature: "sig".into(),
    };
    assert!(store.update_orders().unwrap().is_empty());
    store
        .set_update_order(&node("b"), Some(&order(1, "1.0")))
        .unwrap();
    store
        .set_update_order(&node("a"), Some(&order(2, "1.0")))
        .unwrap();
    // A new order replaces the node's old one.
    store
        .set_update_order(&node("b"), Some(&order(3, "2.0")))
        .unwrap();
    assert_eq!(
        store.update_orders().unwrap(),
        [(node("a"), order(2, "1.0")), (node("b"), order(3, "2.0"))]
    );
    store.set_update_order(&node("a"), None).unwrap();
    store.set_update_order(&node("zz"), None).unwrap();
    assert_eq!(
        store.update_orders().unwrap(),
        [(node("b"), order(3, "2.0"))]
    );
}

#[test]
fn redb_update_orders_are_kept_one_per_node_until_forgotten() {
    let (_dir, store) = redb();
    update_orders_are_kept_one_per_node_until_forgotten(&store);
}

#[test]
fn redb_node_policies_are_chosen_and_reset_per_kind() {
    let (_dir, store) = redb();
    node_policies_are_chosen_and_reset_per_kind(&store);
}

fn uploads_are_kept_per_file_and_listed_per_job(store: &dyn Store) {
    let (job, other) = (JobId::new(5_000), JobId::new(6_000));
    let name = |j: JobId, i: u32| format!("{j}.{i:04}.flac");
    assert_eq!(store.upload(job, &name(job, 1)).unwrap(), None);
    let mut first = UploadRecord {
        job,
        name: name(job, 1),
        node: node("a"),
        length: 1_000,
        offset: 0,
        state: UploadState::Receiving,
        sha256: None,
        started_ms: 10,
        updated_ms: 10,
        waveform: None,
        removed_ms: None,
    };
    store.put_upload(&first).unwrap();
    first.offset = 600;
    first.updated_ms = 20;
    store.put_upload(&first).unwrap();
    let second = UploadRecord {
        name: name(job, 2),
        ..first.clone()
    };
    store.put_upload(&second).unwrap();
    let elsewhere = UploadRecord {
        job: other,
        name: name(other, 1),
        ..first.clone()
    };
    store.put_upload(&elsewhere).unwrap();
    assert_eq!(
        store.upload(job, &name(job, 1)).unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.uploads_of_job(job).unwrap(),
        vec![first, second],
        "its files only, by name"
    );
    assert_eq!(store.uploads_of_job(JobId::new(1)).unwrap(), vec![]);
}

#[test]
fn redb_uploads_are_kept_per_file_and_listed_per_job() {
    let (_d, s) = redb();
    uploads_are_kept_per_file_and_listed_per_job(&s);
}

fn destinations_are_kept_replaced_and_deleted(store: &dyn Store) {
    assert!(store.destinations().unwrap().is_empty());
    let mut nas = DestinationRecord {
        name: "nas".into(),
        spec: DestinationSpec::Local {
            path: "/srv/nas".into(),
        },
        sealed_secret: None,
        created_ms: 1,
        updated_ms: 1,
    };
    assert_eq!(store.put_destination(&nas).unwrap(), None);
    let s3 = DestinationRecord {
        name: "archive".into(),
        spec: DestinationSpec::S3 {
            endpoint: Some("https://s3.example:9000".into()),
            region: "eu-1".into(),
            bucket: "takes".into(),
            prefix: "rakkr".into(),
            access_key_id: "AKIA".into(),
            allow_http: false,
        },
        sealed_secret: Some("v1.sealed".into()),
        created_ms: 2,
        updated_ms: 2,
    };
    store.put_destination(&s3).unwrap();
    let office = DestinationRecord {
        name: "office".into(),
        spec: DestinationSpec::Smb {
            server: "nas.local:1445".into(),
            share: "takes".into(),
            prefix: "site-1".into(),
            user: "rakkr".into(),
            domain: "OFFICE".into(),
            require_encryption: true,
        },
        sealed_secret: Some("v1.password".into()),
        created_ms: 4,
        updated_ms: 4,
    };
    store.put_destination(&office).unwrap();
    nas.updated_ms = 3;
    let before = store.put_destination(&nas).unwrap().unwrap();
    assert_eq!(before.updated_ms, 1);
    assert_eq!(
        store.destinations().unwrap(),
        [s3.clone(), nas.clone(), office.clone()]
    );
    assert_eq!(store.delete_destination("nas").unwrap(), Some(nas));
    assert_eq!(store.delete_destination("nas").unwrap(), None);
    assert_eq!(store.destinations().unwrap(), [s3, office]);
}

#[test]
fn redb_destinations_are_kept_replaced_and_deleted() {
    let (_dir, store) = redb();
    destinations_are_kept_replaced_and_deleted(&store);
}

fn deliveries_are_queued_once_and_come_due_in_order(store: &dyn Store) {
    let (a, b) = (JobId::new(7_000), JobId::new(8_000));
    let delivery = |job: JobId, name: &str, destination: &str, at: u64| DeliveryRecord {
        job,
        name: name.into(),
        destination: destination.into(),
        node: node("n"),
        key: format!("n/{name}"),
        bytes: 10,
        state: DeliveryState::Pending,
        attempts: 0,
        give_up_ms: None,
        next_attempt_ms: at,
        last_error: String::new(),
        queued_ms: at,
        delivered_ms: None,
    };
    let first = delivery(a, "a.flac", "nas", 100);
    let second = delivery(a, "a.flac", "s3", 100);
    let third = delivery(b, "b.flac", "nas", 50);
    assert_eq!(
        store
            .queue_deliveries(&[first.clone(), second.clone(), third.clone()])
            .unwrap(),
        3
    );
    // Queued again (a restart's reconciliation): nothing changes.
    let mut changed = first.clone();
    changed.next_attempt_ms = 1;
    assert_eq!(store.queue_deliveries(&[changed]).unwrap(), 0);
    let due = |now| {
        store
            .due_deliveries(now, 10)
            .unwrap()
            .into_iter()
            .map(|d| (d.name, d.destination))
            .collect::<Vec<_>>()
    };
    assert_eq!(due(49), []);
    assert_eq!(due(100).len(), 3);
    assert_eq!(
        due(100)[0],
        ("b.flac".into(), "nas".into()),
        "soonest first"
    );
    // A failed attempt moves it later; delivered and failed ones are not due.
    let mut retry = first.clone();
    retry.attempts = 1;
    retry.next_attempt_ms = 500;
    retry.last_error = "connection refused".into();
    store.put_delivery(&retry).unwrap();
    let mut done = third.clone();
    done.state = DeliveryState::Delivered;
    done.delivered_ms = Some(60);
    store.put_delivery(&done).unwrap();
    let mut gave_up = second.clone();
    gave_up.state = DeliveryState::Failed;
    store.put_delivery(&gave_up).unwrap();
    assert_eq!(due(499), []);
    assert_eq!(due(500), [("a.flac".into(), "nas".into())]);
    assert_eq!(
        store.deliveries_of_job(a).unwrap(),
        [retry.clone(), gave_up.clone()]
    );
    assert_eq!(
        store.deliveries(Some(DeliveryState::Failed), 10).unwrap(),
        [gave_up]
    );
    let all = store.deliveries(None, 10).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].job, b, "newest job first");
    assert_eq!(store.deliveries(None, 1).unwrap().len(), 1);
}

#[test]
fn redb_deliveries_are_queued_once_and_come_due_in_order() {
    let (_dir, store) = redb();
    deliveries_are_queued_once_and_come_due_in_order(&store);
}

fn recordings_are_deleted_once_with_an_order_for_their_node(store: &dyn Store) {
    let n = node("del");
    let job = store.enqueue_job(new_job(&n, &[0], Some(10)), 1).unwrap();
    // Not while it may record: the operator stops or cancels it first.
    assert!(matches!(
        store.delete_job(job.id, "user:olga", "", 2),
        Err(StoreError::Refused(why)) if why.contains("queued")
    ));
    let job = store.claim_jobs(&n, 1, &[], 10, 1_000).unwrap().remove(0);
    let mut done = update(&job, JobState::Completed);
    done.recording = Some(report(false));
    store
        .apply_job_update(&n, rakkr_protocol::MessageId::new(30), &done, 30)
        .unwrap();
    let file = |destination: &str, state: DeliveryState| DeliveryRecord {
        job: job.id,
        name: format!("{}.flac", job.id),
        destination: destination.into(),
        node: n.clone(),
        key: "k".into(),
        bytes: 10,
        state,
        attempts: 0,
        give_up_ms: None,
        next_attempt_ms: 40,
        last_error: String::new(),
        queued_ms: 40,
        delivered_ms: (state == DeliveryState::Delivered).then_some(45),
    };
    store
        .queue_deliveries(&[
            file("nas", DeliveryState::Pending),
            file("s3", DeliveryState::Delivered),
            file("smb", DeliveryState::Failed),
        ])
        .unwrap();
    let refused = "x".repeat(MAX_DELETION_REASON + 1);
    assert!(matches!(
        store.delete_job(job.id, "user:olga", &refused, 50),
        Err(StoreError::Refused(_))
    ));

    // A reason that would hide what it says is refused.
    for hidden in ["two\nlines", "one\u{2028}more", "\u{202e}desrever"] {
        assert!(matches!(
            store.delete_job(job.id, "user:olga", hidden, 50),
            Err(StoreError::Refused(_))
        ));
    }
    let d = store
        .delete_job(job.id, "user:olga", " a test take ", 50)
        .unwrap();
    assert!(!d.already);
    assert_eq!(d.before.deleted, None);
    assert_eq!(
        d.after.deleted,
        Some(JobDeletion {
            at_ms: 50,
            by: "user:olga".into(),
            reason: "a test take".into(),
            node_deleted_ms: None,
        })
    );
    assert_eq!(d.after.state, JobState::Completed, "its history stays");
    assert_eq!(store.job(job.id).unwrap().unwrap(), d.after);
    // Deliveries that had not arrived never go; the archived copy stays listed.
    assert_eq!(d.cancelled_deliveries, 2);
    let states: Vec<_> = store
        .deliveries_of_job(job.id)
        .unwrap()
        .into_iter()
        .map(|x| (x.destination, x.state))
        .collect();
    assert_eq!(
        states,
        [
            ("nas".to_owned(), DeliveryState::Cancelled),
            ("s3".to_owned(), DeliveryState::Delivered),
            ("smb".to_owned(), DeliveryState::Cancelled),
        ]
    );
    assert!(store.due_deliveries(u64::MAX, 10).unwrap().is_empty());
    // A file confirmed while its recording was being deleted is sent nowhere.
    let mut late = file("late", DeliveryState::Pending);
    late.name = "late.flac".into();
    assert_eq!(store.queue_deliveries(&[late]).unwrap(), 0);
    assert!(store.due_deliveries(u64::MAX, 10).unwrap().is_empty());
    // An attempt under way when it was cancelled: a failure does not bring
    // it back; an arrival is the truth and is kept.
    store
        .put_delivery(&file("nas", DeliveryState::Pending))
        .unwrap();
    assert!(store.due_deliveries(u64::MAX, 10).unwrap().is_empty());
    store
        .put_delivery(&file("smb", DeliveryState::Delivered))
        .unwrap();
    let smb = store.deliveries_of_job(job.id).unwrap().remove(2);
    assert_eq!(smb.state, DeliveryState::Delivered);

    // The node's order waits until the node says its copy is gone.
    let other = node("other");
    assert_eq!(
        store.deletion_orders(Some(&n), 10).unwrap(),
        [(n.clone(), job.id, 50)]
    );
    assert!(store.deletion_orders(Some(&other), 10).unwrap().is_empty());
    assert_eq!(store.deletion_orders(None, 10).unwrap().len(), 1);

    // A second delete changes nothing and is not recorded again.
    let again = store.delete_job(job.id, "user:vic", "again", 60).unwrap();
    assert!(again.already);
    assert_eq!(again.after, d.after);

    // Another node cannot complete it; its own node can, once.
    assert!(!store.complete_deletion_order(&other, job.id, 70).unwrap());
    assert!(store.complete_deletion_order(&n, job.id, 70).unwrap());
    assert!(!store.complete_deletion_order(&n, job.id, 71).unwrap());
    assert!(store.deletion_orders(None, 10).unwrap().is_empty());
    let after = store.job(job.id).unwrap().unwrap();
    assert_eq!(after.deleted.unwrap().node_deleted_ms, Some(70));
    assert!(matches!(
        store.delete_job(rakkr_protocol::JobId::new(5), "user:olga", "", 80),
        Err(StoreError::NoSuchJob(_))
    ));
}

#[test]
fn redb_recordings_are_deleted_once_with_an_order_for_their_node() {
    let (_d, s) = redb();
    recordings_are_deleted_once_with_an_order_for_their_node(&s);
}

#[test]
fn redb_deletion_orders_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    let n = node("del");
    let id = {
        let store = RedbStore::open(&path).unwrap();
        store.enqueue_job(new_job(&n, &[0], Some(10)), 1).unwrap();
        let job = store.claim_jobs(&n, 1, &[], 10, 1_000).unwrap().remove(0);
        store
            .apply_job_update(
                &n,
                rakkr_protocol::MessageId::new(30),
                &update(&job, JobState::Failed),
                30,
            )
            .unwrap();
        store.delete_job(job.id, "user:olga", "", 50).unwrap();
        job.id
    };
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        store.deletion_orders(Some(&n), 10).unwrap(),
        [(n.clone(), id, 50)]
    );
}
