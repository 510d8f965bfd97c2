//! Health issues: the lifecycle kept from stored health events (open →
//! acknowledged / suppressed → resolved, reopen), one issue per condition and
//! subject, auto-resolved on recovery; behaviour every `Store` backend must
//! have, run here against redb.

use rakkr_protocol::payload::{HealthChange, HealthCondition, HealthEvent, Severity};
use rakkr_protocol::state::HealthState;
use rakkr_protocol::{MessageId, NodeId};
use rakkr_store::*;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn event(n: &str, subject: &str, change: HealthChange, at_ms: u64) -> HealthEventRecord {
    HealthEventRecord {
        node: node(n),
        msg_id: MessageId::new(at_ms),
        event: HealthEvent {
            condition: HealthCondition::DeviceLost,
            change,
            severity: match change {
                HealthChange::Raised => Severity::Critical,
                HealthChange::Cleared => Severity::Info,
            },
            at_ms,
            detail: format!("{change:?} at {at_ms}"),
            subject: subject.into(),
        },
        received_ms: at_ms,
    }
}

fn all(store: &dyn Store) -> Vec<HealthIssue> {
    store
        .health_issues(&IssueQuery {
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
}

fn issues_follow_their_condition(store: &dyn Store) {
    use HealthChange::*;
    let raised = event("a", "", Raised, 1_000);
    store
        .record_health_events(std::slice::from_ref(&raised))
        .unwrap();
    store.record_health_events(&[raised]).unwrap(); // delivered twice
    let issues = all(store);
    assert_eq!(issues.len(), 1);
    let first = &issues[0];
    assert_eq!(
        (first.id, first.state, first.raised, first.opened_ms),
        (1, HealthState::Open, 1, 1_000)
    );
    assert_eq!(first.severity, Severity::Critical);

    // Raised again while open: the same issue, counted, with the new evidence.
    store
        .record_health_events(&[event("a", "", Raised, 2_000)])
        .unwrap();
    let again = &all(store)[0];
    assert_eq!((again.id, again.raised), (1, 2));
    assert_eq!(again.detail, "Raised at 2000");

    // Recovery resolves it.
    store
        .record_health_events(&[event("a", "", Cleared, 3_000)])
        .unwrap();
    let resolved = &all(store)[0];
    assert_eq!(resolved.state, HealthState::Resolved);
    assert_eq!(resolved.by.as_deref(), Some("recovery"));
    assert_eq!(resolved.severity, Severity::Critical, "the worst it was");

    // Back within 15 minutes: reopened, not a new issue.
    store
        .record_health_events(&[event("a", "", Raised, 3_000 + REOPEN_WITHIN_MS)])
        .unwrap();
    let reopened = all(store);
    assert_eq!(reopened.len(), 1);
    assert_eq!(
        (reopened[0].state, reopened[0].raised),
        (HealthState::Open, 3)
    );
    // Resolved, then back much later: a new issue.
    store
        .record_health_events(&[event("a", "", Cleared, 4_000 + REOPEN_WITHIN_MS)])
        .unwrap();
    store
        .record_health_events(&[event("a", "", Raised, 5_000 + 3 * REOPEN_WITHIN_MS)])
        .unwrap();
    let later = all(store);
    assert_eq!(later.len(), 2);
    assert_eq!(
        (later[0].id, later[0].state),
        (2, HealthState::Open),
        "newest first"
    );
    // Another subject, another node: their own issues. A clearing of nothing open changes nothing.
    store
        .record_health_events(&[
            event("a", "channel:3", Raised, 9_000_000),
            event("b", "", Raised, 9_000_001),
            event("c", "", Cleared, 9_000_002),
        ])
        .unwrap();
    assert_eq!(all(store).len(), 4);

    // Filters.
    let q = |node: Option<&str>, state: Option<HealthState>| IssueQuery {
        node: node.map(self::node),
        state,
        condition: None,
        limit: 100,
    };
    assert_eq!(store.health_issues(&q(Some("a"), None)).unwrap().len(), 3);
    assert_eq!(
        store
            .health_issues(&q(None, Some(HealthState::Resolved)))
            .unwrap()
            .iter()
            .map(|i| i.id)
            .collect::<Vec<_>>(),
        [1]
    );
    assert_eq!(
        store
            .health_issues(&q(Some("a"), Some(HealthState::Open)))
            .unwrap()
            .len(),
        2
    );
    let one = IssueQuery {
        limit: 1,
        ..q(None, None)
    };
    assert_eq!(store.health_issues(&one).unwrap()[0].node, node("b"));
}

fn people_acknowledge_suppress_resolve_and_reopen(store: &dyn Store) {
    use HealthChange::*;
    store
        .record_health_events(&[
            event("p", "x", Raised, 1_000),
            event("p", "y", Raised, 1_001),
            event("p", "z", Raised, 1_002),
        ])
        .unwrap();
    let ids: Vec<u64> = all(store).iter().map(|i| i.id).rev().collect();
    let changed = store
        .change_health_issues(&ids[..2], IssueAction::Acknowledge, "user:olga", 2_000)
        .unwrap();
    assert_eq!(changed.len(), 2);
    assert_eq!(changed[0].0.state, HealthState::Open);
    assert_eq!(changed[0].1.state, HealthState::Acknowledged);
    assert_eq!(changed[0].1.by.as_deref(), Some("user:olga"));
    store
        .change_health_issues(&[ids[0]], IssueAction::Suppress, "user:olga", 3_000)
        .unwrap();
    store
        .change_health_issues(&[ids[2]], IssueAction::Resolve, "user:olga", 3_000)
        .unwrap();
    // All or nothing: one resolved issue cannot be acknowledged, so none is.
    let refused = store
        .change_health_issues(&ids, IssueAction::Acknowledge, "user:olga", 4_000)
        .unwrap_err();
    assert!(
        refused.to_string().contains("cannot be acknowledged"),
        "{refused}"
    );
    let states: Vec<HealthState> = all(store).iter().rev().map(|i| i.state).collect();
    assert_eq!(
        states,
        [
            HealthState::Suppressed,
            HealthState::Acknowledged,
            HealthState::Resolved
        ]
    );
    assert!(matches!(
        store.change_health_issues(&[999], IssueAction::Resolve, "user:olga", 4_000),
        Err(StoreError::Refused(_))
    ));
    // A suppressed issue raised again stays suppressed; recovery resolves it.
    store
        .record_health_events(&[event("p", "x", Raised, 5_000)])
        .unwrap();
    assert_eq!(all(store).last().unwrap().state, HealthState::Suppressed);
    store
        .record_health_events(&[event("p", "x", Cleared, 6_000)])
        .unwrap();
    assert_eq!(all(store).last().unwrap().state, HealthState::Resolved);
    // Reopened by hand.
    let reopened = store
        .change_health_issues(&[ids[0]], IssueAction::Reopen, "user:olga", 7_000)
        .unwrap();
    assert_eq!(reopened[0].1.state, HealthState::Open);
    assert_eq!(reopened[0].1.opened_ms, 7_000);
}

fn a_node_keeps_a_bounded_number_of_issues(store: &dyn Store) {
    let mut events = Vec::new();
    for i in 0..(MAX_ISSUES_PER_NODE as u64 + 5) {
        events.push(event(
            "many",
            &format!("channel:{i}"),
            HealthChange::Raised,
            10 * i,
        ));
        events.push(event(
            "many",
            &format!("channel:{i}"),
            HealthChange::Cleared,
            10 * i + 1,
        ));
    }
    events.push(event("many", "still-open", HealthChange::Raised, 1_000_000));
    store.record_health_events(&events).unwrap();
    let kept = store
        .health_issues(&IssueQuery {
            node: Some(node("many")),
            limit: 100_000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(kept.len(), MAX_ISSUES_PER_NODE);
    assert_eq!(kept[0].subject, "still-open", "open issues stay");
    assert!(
        kept.iter().all(|i| i.subject != "channel:0"),
        "the oldest resolved went"
    );
}

fn events_are_found_by_the_time_they_were_made(store: &dyn Store) {
    use HealthChange::*;
    let events: Vec<_> = [1_000, 2_000, 2_999, 3_000, 5_000]
        .into_iter()
        .map(|ms| event("t", "", Raised, ms))
        .chain([event("u", "", Raised, 2_500)])
        .collect();
    store.record_health_events(&events).unwrap();
    let times = |from, to, limit| -> Vec<u64> {
        store
            .health_events_between(&node("t"), from, to, limit)
            .unwrap()
            .iter()
            .map(|e| e.event.at_ms)
            .collect()
    };
    assert_eq!(
        times(2_000, 3_000, 100),
        [2_000, 2_999, 3_000],
        "both ends included, one node"
    );
    assert_eq!(times(0, u64::MAX, 2), [1_000, 2_000], "the oldest kept");
    assert!(times(6_000, 9_000, 100).is_empty());
    assert!(times(3_000, 2_000, 100).is_empty());
}

fn redb() -> (tempfile::TempDir, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(&dir.path().join("rakkr.redb")).unwrap();
    (dir, store)
}

#[test]
fn redb_issues_follow_their_condition() {
    let (_d, s) = redb();
    issues_follow_their_condition(&s);
}

#[test]
fn redb_people_acknowledge_suppress_resolve_and_reopen() {
    let (_d, s) = redb();
    people_acknowledge_suppress_resolve_and_reopen(&s);
}

#[test]
fn redb_a_node_keeps_a_bounded_number_of_issues() {
    let (_d, s) = redb();
    a_node_keeps_a_bounded_number_of_issues(&s);
}

#[test]
fn redb_events_are_found_by_the_time_they_were_made() {
    let (_dir, store) = redb();
    events_are_found_by_the_time_they_were_made(&store);
}
