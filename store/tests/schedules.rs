//! Schedules and their occurrences: behaviour every `Store` backend must have
//! (each check takes `&dyn Store`), run here against redb.

use std::sync::{Arc, Barrier};

use rakkr_protocol::job::{AutonomousStart, JobSpec, JobUpdate, RecordingReport};
use rakkr_protocol::payload::{HealthChange, HealthCondition};
use rakkr_protocol::schedule::{
    Occurrence, Recurrence, ScheduleSpec, Timing, Window, first_job_id, occurrence_job_id,
};
use rakkr_protocol::state::JobState;
use rakkr_protocol::{NodeId, ScheduleId};
use rakkr_store::*;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn spec(n: &str) -> ScheduleSpec {
    ScheduleSpec {
        name: "Morning show".into(),
        enabled: true,
        node: node(n),
        job: serde_json::from_str("{}").unwrap(),
        timing: Timing {
            recurrence: Recurrence::Daily,
            time_zone: "UTC".into(),
            window: Some(Window {
                start: "06:00".parse().unwrap(),
                end: "09:00".parse().unwrap(),
            }),
            start_early_s: 0,
            stop_late_s: 0,
            skip: vec![],
            pauses: vec![],
        },
        tags: vec!["show".into()],
        profile: None,
        watchdog: None,
        delivery: None,
        name_template: None,
        folder_template: None,
    }
}

fn create(store: &dyn Store, n: &str, now_ms: u64) -> ScheduleRecord {
    let record = ScheduleRecord {
        id: ScheduleId::new(now_ms),
        spec: spec(n),
        created_ms: now_ms,
        updated_ms: now_ms,
        revision: 1,
    };
    store.create_schedule(record.clone()).unwrap();
    record
}

fn occurrence(key: &str, start_ms: u64, end_ms: u64) -> Occurrence {
    Occurrence {
        key: key.into(),
        window_start_ms: start_ms,
        window_end_ms: end_ms,
        start_ms,
        end_ms,
        exception: None,
    }
}

fn job_for(s: &ScheduleRecord, o: &Occurrence, channels: &[u16]) -> OccurrenceJob {
    OccurrenceJob::Ready(Box::new(NewJob {
        node: s.spec.node.clone(),
        spec: JobSpec {
            duration_s: Some(60),
            ..s.spec.job.clone()
        },
        sources: channels.to_vec(),
        scheduled: Some(ScheduledBy {
            schedule: s.id,
            occurrence: o.key.clone(),
        }),
        tags: s.spec.tags.clone(),
        title: None,
        folder: None,
        not_after_ms: Some(o.end_ms),
    }))
}

const ONCE: RestartPolicy = RestartPolicy {
    after_failure_ms: 10_000,
    after_any_end: false,
};

fn events(store: &dyn Store, n: &str) -> Vec<(HealthCondition, HealthChange)> {
    store
        .health_events(&node(n), 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.event.condition, e.event.change))
        .collect()
}

/// Drive a queued job to a final state through a lease, as a node would.
fn finish(store: &dyn Store, job: &JobRecord, state: JobState, now_ms: u64) {
    finish_with(store, job, state, None, now_ms)
}

/// [`finish`] with what the node recorded.
fn finish_with(
    store: &dyn Store,
    job: &JobRecord,
    state: JobState,
    recording: Option<RecordingReport>,
    now_ms: u64,
) {
    let leased = store.claim_jobs(&job.node, 1, &[], now_ms, 60_000).unwrap();
    let lease_id = leased[0].lease.unwrap().id;
    let up = |s: JobState| JobUpdate {
        job_id: job.id,
        lease_id,
        state: s,
        at_ms: now_ms,
        detail: String::new(),
        recording: None,
        autonomous: None,
    };
    let msg = |i: u64| rakkr_protocol::MessageId::new(now_ms + i);
    store
        .apply_job_update(&job.node, msg(0), &up(JobState::Running), now_ms)
        .unwrap();
    let end = JobUpdate {
        recording,
        ..up(state)
    };
    store
        .apply_job_update(&job.node, msg(1), &end, now_ms)
        .unwrap();
}

fn schedules_are_kept_with_revisions(store: &dyn Store) {
    let g0 = store.schedules_generation().unwrap();
    let a = create(store, "s1", 1_000);
    let b = create(store, "s2", 2_000);
    assert!(store.schedules_generation().unwrap() > g0);
    assert_eq!(
        store
            .schedules()
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        [a.id, b.id]
    );
    assert!(matches!(
        store.create_schedule(a.clone()),
        Err(StoreError::Refused(_))
    ));
    let g1 = store.schedules_generation().unwrap();
    let mut changed = a.spec.clone();
    changed.name = "Evening show".into();
    let (before, after) = store.update_schedule(a.id, changed, 3_000).unwrap();
    assert_eq!(before, a);
    assert_eq!(
        (after.revision, after.updated_ms, after.created_ms),
        (2, 3_000, 1_000)
    );
    assert_eq!(
        store.schedule(a.id).unwrap().unwrap().spec.name,
        "Evening show"
    );
    assert!(store.schedules_generation().unwrap() > g1);
    let gone = store.delete_schedule(b.id, 4_000).unwrap();
    assert_eq!(gone.id, b.id);
    assert!(store.schedule(b.id).unwrap().is_none());
    assert!(matches!(
        store.delete_schedule(b.id, 4_000),
        Err(StoreError::NoSuchSchedule(_))
    ));
    assert!(matches!(
        store.update_schedule(b.id, spec("s2"), 4_000),
        Err(StoreError::NoSuchSchedule(_))
    ));
}

fn an_occurrence_starts_exactly_one_job(store: &dyn Store) {
    let s = create(store, "once", 1_000);
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let started = store
        .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 10_000)
        .unwrap();
    let OccurrenceStart::Started(job) = started else {
        panic!("{started:?}")
    };
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.tags, ["show"]);
    assert_eq!(
        job.scheduled,
        Some(ScheduledBy {
            schedule: s.id,
            occurrence: o.key.clone()
        })
    );
    // Asked again (the next tick, a restarted server, another replica).
    for now in [10_500, 11_000, 50_000] {
        assert_eq!(
            store
                .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, now)
                .unwrap(),
            OccurrenceStart::Handled(Some(job.id))
        );
    }
    // It completes: the occurrence is done, also with time left in the window.
    finish(store, &job, JobState::Completed, 60_000);
    assert_eq!(
        store
            .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 80_000)
            .unwrap(),
        OccurrenceStart::Handled(Some(job.id))
    );
    let records = store.occurrence_records(s.id, 10).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].jobs, [job.id]);
    assert_eq!(store.jobs(Some(&node("once")), 10).unwrap().len(), 1);

    // A runner holding an older revision, or a disabled schedule, starts nothing.
    let o2 = occurrence("2026-11-30", 200_000, 300_000);
    let mut disabled = s.spec.clone();
    disabled.enabled = false;
    store.update_schedule(s.id, disabled, 150_000).unwrap();
    for revision in [1, 2] {
        assert_eq!(
            store
                .start_occurrence(s.id, revision, &o2, job_for(&s, &o2, &[0]), ONCE, 200_000)
                .unwrap(),
            OccurrenceStart::Stale
        );
    }
    assert_eq!(
        store
            .start_occurrence(
                ScheduleId::new(9),
                1,
                &o2,
                job_for(&s, &o2, &[0]),
                ONCE,
                200_000
            )
            .unwrap(),
        OccurrenceStart::Stale,
        "an unknown schedule"
    );
}

fn racing_runners_start_one_job(store: Arc<dyn Store>) {
    let s = create(&*store, "race", 1_000);
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (store, barrier, s, o) = (store.clone(), barrier.clone(), s.clone(), o.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 10_000 + i)
                    .unwrap()
            })
        })
        .collect();
    let outcomes: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let started = outcomes
        .iter()
        .filter(|o| matches!(o, OccurrenceStart::Started(_)))
        .count();
    assert_eq!(started, 1, "{outcomes:?}");
    assert_eq!(store.jobs(Some(&node("race")), 10).unwrap().len(), 1);
}

/// Ask `store` to start occurrence `o` of `s` (channel 1, restarts as [`ONCE`]) at a time.
fn starter<'a>(
    store: &'a dyn Store,
    s: &'a ScheduleRecord,
    o: &'a Occurrence,
) -> impl Fn(u64) -> OccurrenceStart + 'a {
    move |now| {
        store
            .start_occurrence(s.id, 1, o, job_for(s, o, &[0]), ONCE, now)
            .unwrap()
    }
}

fn a_failed_job_restarts_within_its_window(store: &dyn Store) {
    let s = create(store, "retry", 1_000);
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let start = starter(store, &s, &o);
    let OccurrenceStart::Started(first) = start(10_000) else {
        panic!()
    };
    finish(store, &first, JobState::Failed, 20_000);
    assert_eq!(
        start(25_000),
        OccurrenceStart::Handled(Some(first.id)),
        "not before the back-off"
    );
    let OccurrenceStart::Started(second) = start(30_000) else {
        panic!("restarts after the back-off")
    };
    assert_ne!(second.id, first.id);
    finish(store, &second, JobState::Failed, 95_000);
    assert_eq!(
        start(105_000),
        OccurrenceStart::Handled(Some(second.id)),
        "not after the window"
    );
    assert_eq!(
        store.occurrence_records(s.id, 1).unwrap()[0].jobs,
        [first.id, second.id]
    );

    // Always-on: starts again after any end.
    let always = RestartPolicy {
        after_failure_ms: 10_000,
        after_any_end: true,
    };
    let on = create(store, "always", 2_000);
    let ao = occurrence("always-on", 0, u64::MAX);
    let OccurrenceStart::Started(j) = store
        .start_occurrence(on.id, 1, &ao, job_for(&on, &ao, &[0]), always, 10_000)
        .unwrap()
    else {
        panic!()
    };
    finish(store, &j, JobState::Completed, 20_000);
    assert!(matches!(
        store
            .start_occurrence(on.id, 1, &ao, job_for(&on, &ao, &[0]), always, 30_000)
            .unwrap(),
        OccurrenceStart::Started(_)
    ));
}

fn a_take_cut_by_a_crash_restarts_at_once_under_the_id_its_node_would_use(store: &dyn Store) {
    let s = create(store, "cut", 1_000);
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let start = starter(store, &s, &o);
    let OccurrenceStart::Started(first) = start(10_000) else {
        panic!()
    };
    let cut = RecordingReport {
        recovered: true,
        ..take(10_000)
    };
    finish_with(store, &first, JobState::Completed, Some(cut), 20_000);
    // No back-off: the node is back and the window goes on.
    let OccurrenceStart::Started(second) = start(20_000) else {
        panic!("a cut take restarts at once")
    };
    assert_eq!(second.id, occurrence_job_id(s.id, s.created_ms, &o, 1));
    // A take that ends as planned ends the occurrence.
    finish_with(
        store,
        &second,
        JobState::Completed,
        Some(take(20_000)),
        50_000,
    );
    assert_eq!(start(60_000), OccurrenceStart::Handled(Some(second.id)));

    // The same while the server was away: the node's restart joins the
    // occurrence, and the runner, back, finds it.
    let n = node("cut");
    let o2 = occurrence("2026-11-30", 200_000, 300_000);
    let msg = |i: u64| rakkr_protocol::MessageId::new(2_000_000 + i);
    let cut = RecordingReport {
        recovered: true,
        ..take(200_000)
    };
    let first = autonomous(&s, &o2, JobState::Completed, Some(cut));
    store
        .adopt_job(&n, msg(1), &first, 230_000, 30_000)
        .unwrap();
    let restart = JobUpdate {
        job_id: occurrence_job_id(s.id, s.created_ms, &o2, 1),
        ..autonomous(&s, &o2, JobState::Running, None)
    };
    store
        .adopt_job(&n, msg(2), &restart, 231_000, 30_000)
        .unwrap();
    let record = store
        .occurrence_records(s.id, 10)
        .unwrap()
        .into_iter()
        .find(|r| r.occurrence.key == o2.key)
        .unwrap();
    assert_eq!(record.jobs, [first.job_id, restart.job_id]);
    assert_eq!(
        store
            .start_occurrence(s.id, 1, &o2, job_for(&s, &o2, &[0]), ONCE, 232_000)
            .unwrap(),
        OccurrenceStart::Handled(Some(restart.job_id))
    );
}

fn a_busy_occurrence_is_deferred_then_started_or_missed(store: &dyn Store) {
    let n = node("busy");
    let manual = store
        .enqueue_job(
            NewJob::unscheduled(n.clone(), serde_json::from_str("{}").unwrap(), vec![0, 1]),
            5_000,
        )
        .unwrap();
    let s = create(store, "busy", 1_000);
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let start = |now| {
        store
            .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[1]), ONCE, now)
            .unwrap()
    };
    let OccurrenceStart::Deferred(d) = start(10_000) else {
        panic!()
    };
    assert_eq!(d.since_ms, 10_000);
    assert!(d.reason.contains("channel 2"), "{}", d.reason);
    assert!(d.reason.contains(&manual.id.to_string()), "{}", d.reason);
    assert_eq!(start(11_000), OccurrenceStart::Deferred(d.clone()));
    assert_eq!(
        events(store, "busy"),
        [(HealthCondition::ScheduleDeferred, HealthChange::Raised)],
        "raised once"
    );
    // The channels come free: it starts, and the event is cleared.
    store.request_stop(manual.id, true, 20_000).unwrap();
    let OccurrenceStart::Started(job) = start(21_000) else {
        panic!()
    };
    assert_eq!(job.sources, [1]);
    assert_eq!(
        events(store, "busy"),
        [
            (HealthCondition::ScheduleDeferred, HealthChange::Raised),
            (HealthCondition::ScheduleDeferred, HealthChange::Cleared)
        ]
    );
    assert_eq!(store.occurrence_records(s.id, 1).unwrap()[0].deferred, None);
    assert!(store.expire_deferrals(1_000_000).unwrap().is_empty());

    // A node that cannot take the job: deferred until the window closes,
    // then missed.
    let blocked = create(store, "blocked", 2_000);
    let ob = occurrence("2026-11-30", 200_000, 300_000);
    let why = "node blocked has not announced its capture device yet".to_string();
    let outcome = store
        .start_occurrence(
            blocked.id,
            1,
            &ob,
            OccurrenceJob::Blocked(why.clone()),
            ONCE,
            200_000,
        )
        .unwrap();
    assert!(matches!(outcome, OccurrenceStart::Deferred(Deferral { reason, .. }) if reason == why));
    assert!(store.expire_deferrals(299_999).unwrap().is_empty());
    let missed = store.expire_deferrals(300_001).unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].occurrence.key, "2026-11-30");
    assert!(missed[0].jobs.is_empty());
    assert!(store.expire_deferrals(400_000).unwrap().is_empty(), "once");
    assert_eq!(
        events(store, "blocked"),
        [
            (HealthCondition::ScheduleDeferred, HealthChange::Raised),
            (HealthCondition::ScheduleDeferred, HealthChange::Cleared),
            (HealthCondition::ScheduleMissed, HealthChange::Raised)
        ]
    );
    let detail = &store.health_events(&node("blocked"), 10).unwrap()[2]
        .event
        .detail;
    assert!(
        detail.contains("Morning show") && detail.contains("2026-11-30"),
        "{detail}"
    );

    // Deleting a schedule clears its open deferral.
    let third = create(store, "busy", 3_000);
    let o3 = occurrence("2026-12-01", 400_000, 500_000);
    let blocker = store
        .enqueue_job(
            NewJob::unscheduled(n.clone(), serde_json::from_str("{}").unwrap(), vec![3]),
            390_000,
        )
        .unwrap();
    assert!(matches!(
        store
            .start_occurrence(third.id, 1, &o3, job_for(&third, &o3, &[3]), ONCE, 400_000)
            .unwrap(),
        OccurrenceStart::Deferred(_)
    ));
    store.delete_schedule(third.id, 410_000).unwrap();
    assert_eq!(
        events(store, "busy").last(),
        Some(&(HealthCondition::ScheduleDeferred, HealthChange::Cleared))
    );
    assert!(store.occurrence_records(third.id, 10).unwrap().is_empty());
    assert!(store.expire_deferrals(600_000).unwrap().is_empty());
    drop(blocker);
}

/// What a node sends about an occurrence it started by itself.
fn autonomous(
    s: &ScheduleRecord,
    o: &Occurrence,
    state: JobState,
    recording: Option<RecordingReport>,
) -> JobUpdate {
    JobUpdate {
        job_id: first_job_id(s.id, s.created_ms, o),
        lease_id: 0,
        state,
        at_ms: o.start_ms,
        detail: String::new(),
        recording,
        autonomous: Some(Box::new(AutonomousStart {
            schedule: s.id,
            revision: s.revision,
            occurrence: o.key.clone(),
            spec: JobSpec {
                duration_s: Some(90),
                ..s.spec.job.clone()
            },
            tags: s.spec.tags.clone(),
        })),
    }
}

fn take(start_ms: u64) -> RecordingReport {
    RecordingReport {
        files: vec![],
        file_count: 1,
        frames: 48_000 * 90,
        sample_rate: 48_000,
        channels: 1,
        bits: 24,
        start_unix_ms: start_ms,
        gaps: 0,
        recovered: false,
    }
}

fn a_job_a_node_started_alone_is_reconciled_once(store: &dyn Store) {
    let ids: Vec<_> = (0..6)
        .map(|i| rakkr_protocol::MessageId::new(1_000_000 + i))
        .collect();
    let msg = |i: usize| ids[i];
    let s = create(store, "alone", 1_000);
    let n = node("alone");

    // The server was down for the whole window: the final report creates the job.
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let done = autonomous(&s, &o, JobState::Completed, Some(take(10_000)));
    let UpdateOutcome::Applied(job) = store.adopt_job(&n, msg(1), &done, 200_000, 30_000).unwrap()
    else {
        panic!()
    };
    assert_eq!(job.id, done.job_id);
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.created_ms, 10_000);
    assert_eq!(job.tags, ["show"]);
    assert!(job.recording.is_some());
    assert_eq!(
        job.scheduled,
        Some(ScheduledBy {
            schedule: s.id,
            occurrence: o.key.clone()
        })
    );
    assert!(matches!(
        store.adopt_job(&n, msg(1), &done, 200_001, 30_000).unwrap(),
        UpdateOutcome::Duplicate(_)
    ));
    assert_eq!(
        store.occurrence_records(s.id, 10).unwrap()[0].jobs,
        [job.id]
    );
    // The runner, back, does not start the occurrence again.
    assert_eq!(
        store
            .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 50_000)
            .unwrap(),
        OccurrenceStart::Handled(Some(job.id))
    );

    // The server is back mid-window and made its own job first: the same id,
    // taken over under a lease.
    let o2 = occurrence("2026-11-30", 200_000, 300_000);
    let OccurrenceStart::Started(queued) = store
        .start_occurrence(s.id, 1, &o2, job_for(&s, &o2, &[0]), ONCE, 210_000)
        .unwrap()
    else {
        panic!()
    };
    let running = autonomous(&s, &o2, JobState::Running, None);
    assert_eq!(queued.id, running.job_id, "one id for the occurrence");
    let UpdateOutcome::Applied(taken) = store
        .adopt_job(&n, msg(2), &running, 211_000, 30_000)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(taken.state, JobState::Running);
    let lease = taken.lease.unwrap();
    assert_eq!(lease.expires_ms, 241_000);
    // The node goes on under that lease.
    let mut end = autonomous(&s, &o2, JobState::Completed, Some(take(200_000)));
    end.lease_id = lease.id;
    end.autonomous = None;
    let UpdateOutcome::Applied(ended) = store.apply_job_update(&n, msg(3), &end, 300_000).unwrap()
    else {
        panic!()
    };
    assert_eq!(ended.state, JobState::Completed);
    assert_eq!(
        store.occurrence_records(s.id, 10).unwrap()[0].jobs,
        [queued.id]
    );

    // The node reports running before the server's runner got to it: created
    // running under a new lease; the runner then finds it.
    let o3 = occurrence("2026-12-01", 400_000, 500_000);
    let early = autonomous(&s, &o3, JobState::Running, None);
    let UpdateOutcome::Applied(created) = store
        .adopt_job(&n, msg(4), &early, 401_000, 30_000)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(created.state, JobState::Running);
    assert!(created.lease.is_some());
    assert_eq!(
        store
            .start_occurrence(s.id, 1, &o3, job_for(&s, &o3, &[0]), ONCE, 402_000)
            .unwrap(),
        OccurrenceStart::Handled(Some(created.id))
    );
    // Another node cannot report it.
    assert!(matches!(
        store.adopt_job(&node("other"), msg(5), &early, 403_000, 30_000),
        Err(StoreError::WrongNode { .. })
    ));
    // Exactly one job per occurrence, three in all.
    let jobs = store.jobs(Some(&n), 10).unwrap();
    assert_eq!(jobs.len(), 3, "{jobs:?}");
}

fn a_job_whose_window_passed_is_cancelled_not_offered(store: &dyn Store) {
    let s = create(store, "away", 1_000);
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let OccurrenceStart::Started(job) = store
        .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 10_000)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(job.not_after_ms, Some(100_000));
    // The node was away the whole window and claims afterwards.
    assert!(
        store
            .claim_jobs(&node("away"), 4, &[], 100_000, 30_000)
            .unwrap()
            .is_empty()
    );
    let cancelled = store.job(job.id).unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert!(
        cancelled.detail.contains("window ended"),
        "{}",
        cancelled.detail
    );
    assert_eq!(
        events(store, "away"),
        [(HealthCondition::ScheduleMissed, HealthChange::Raised)]
    );
    // Within its window it is offered as usual.
    let o2 = occurrence("2026-11-30", 200_000, 300_000);
    let OccurrenceStart::Started(next) = store
        .start_occurrence(s.id, 1, &o2, job_for(&s, &o2, &[0]), ONCE, 200_000)
        .unwrap()
    else {
        panic!()
    };
    let offered = store
        .claim_jobs(&node("away"), 4, &[], 250_000, 30_000)
        .unwrap();
    assert_eq!(offered.iter().map(|j| j.id).collect::<Vec<_>>(), [next.id]);
}

fn redb() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("rakkr.redb")).unwrap();
    (dir, store)
}

#[test]
fn redb_schedules_are_kept_with_revisions() {
    let (_d, s) = redb();
    schedules_are_kept_with_revisions(&s);
}

#[test]
fn redb_an_occurrence_starts_exactly_one_job() {
    let (_d, s) = redb();
    an_occurrence_starts_exactly_one_job(&s);
}

#[test]
fn redb_racing_runners_start_one_job() {
    let (_d, s) = redb();
    racing_runners_start_one_job(Arc::new(s));
}

#[test]
fn redb_a_failed_job_restarts_within_its_window() {
    let (_d, s) = redb();
    a_failed_job_restarts_within_its_window(&s);
}

#[test]
fn redb_a_take_cut_by_a_crash_restarts_at_once_under_the_id_its_node_would_use() {
    let (_d, s) = redb();
    a_take_cut_by_a_crash_restarts_at_once_under_the_id_its_node_would_use(&s);
}

#[test]
fn redb_a_busy_occurrence_is_deferred_then_started_or_missed() {
    let (_d, s) = redb();
    a_busy_occurrence_is_deferred_then_started_or_missed(&s);
}

#[test]
fn redb_a_job_a_node_started_alone_is_reconciled_once() {
    let (_d, s) = redb();
    a_job_a_node_started_alone_is_reconciled_once(&s);
}

#[test]
fn redb_a_job_whose_window_passed_is_cancelled_not_offered() {
    let (_d, s) = redb();
    a_job_whose_window_passed_is_cancelled_not_offered(&s);
}

#[test]
fn redb_an_occurrence_stays_started_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rakkr.redb");
    let o = occurrence("2026-11-29", 10_000, 100_000);
    let (s, job) = {
        let store = RedbStore::open(&path).unwrap();
        let s = create(&store, "reopen", 1_000);
        let OccurrenceStart::Started(job) = store
            .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 10_000)
            .unwrap()
        else {
            panic!()
        };
        (s, job)
    };
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        store
            .start_occurrence(s.id, 1, &o, job_for(&s, &o, &[0]), ONCE, 12_000)
            .unwrap(),
        OccurrenceStart::Handled(Some(job.id))
    );
}
