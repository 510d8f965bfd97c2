//! The server's own node rules: a node offline for too long raises
//! `node_offline`; an online node whose telemetry stopped raises
//! `telemetry_stale` (a hung agent that still holds its connection). Both
//! clear when the node is back, and become health issues like any other
//! event (stored through [`Store::record_health_events`]).
//!
//! [`NodeRules`] is the pure part: it is shown the fleet at a time and says
//! what changed. [`run`] looks every [`CHECK_EVERY`] and starts from the
//! issues still open in the store, so a restarted server clears what it
//! raised before rather than raising it twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rakkr_protocol::payload::{HealthChange, HealthCondition, HealthEvent, Severity};
use rakkr_protocol::state::{HealthState, Presence};
use rakkr_protocol::{MessageId, NodeId};
use rakkr_store::{HealthEventRecord, HealthIssue, IssueQuery, Store};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::fleet::{LiveFleet, LiveNode};

/// How often the rules look at the fleet.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRulesPolicy {
    pub offline_after_ms: u64,
    pub stale_after_ms: u64,
}

/// What the rules see of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub presence: Presence,
    pub presence_since_ms: u64,
    /// When its last meter frame arrived, if one did since this server started.
    pub last_frame_ms: Option<u64>,
}

impl NodeView {
    pub fn of(node: &LiveNode) -> NodeView {
        NodeView {
            id: node.record.id.clone(),
            presence: node.record.presence,
            presence_since_ms: node.record.presence_since_ms,
            last_frame_ms: node.meters.as_ref().map(|m| m.received_ms),
        }
    }
}

/// The conditions raised, by node.
#[derive(Debug)]
pub struct NodeRules {
    policy: NodeRulesPolicy,
    raised: HashSet<(NodeId, HealthCondition)>,
    /// When this server started looking: a node's telemetry cannot be
    /// called stale before it had the time to send any.
    started_ms: u64,
}

impl NodeRules {
    pub fn new(policy: NodeRulesPolicy, started_ms: u64) -> NodeRules {
        NodeRules {
            policy,
            raised: HashSet::new(),
            started_ms,
        }
    }

    /// A condition raised before this server started (an open issue).
    pub fn assume_raised(&mut self, node: NodeId, condition: HealthCondition) {
        self.raised.insert((node, condition));
    }

    /// The events for the fleet as it is at `now_ms`.
    pub fn evaluate(&mut self, nodes: &[NodeView], now_ms: u64) -> Vec<(NodeId, HealthEvent)> {
        let p = self.policy;
        let mut out = Vec::new();
        for n in nodes {
            let offline_for = now_ms.saturating_sub(n.presence_since_ms);
            let offline = n.presence == Presence::Offline && offline_for >= p.offline_after_ms;
            let online = n.presence == Presence::Online;
            let silent_since = n
                .last_frame_ms
                .unwrap_or(self.started_ms)
                .max(n.presence_since_ms);
            let silent_for = now_ms.saturating_sub(silent_since);
            let stale = online && silent_for >= p.stale_after_ms;
            for (condition, bad, raise, clear) in [
                (
                    HealthCondition::NodeOffline,
                    offline,
                    format!("offline for {} s", offline_for / 1000),
                    "back online".to_owned(),
                ),
                (
                    HealthCondition::TelemetryStale,
                    stale,
                    format!(
                        "online, but no meter frame for {} s: the agent may be hung",
                        silent_for / 1000
                    ),
                    if online {
                        "meter frames arrive again".to_owned()
                    } else {
                        "the node went offline".to_owned()
                    },
                ),
            ] {
                let key = (n.id.clone(), condition);
                let was = self.raised.contains(&key);
                let (change, detail) = match (was, bad) {
                    (false, true) => (HealthChange::Raised, raise),
                    (true, false) if condition != HealthCondition::NodeOffline || online => {
                        (HealthChange::Cleared, clear)
                    }
                    _ => continue,
                };
                match change {
                    HealthChange::Raised => self.raised.insert(key),
                    HealthChange::Cleared => self.raised.remove(&key),
                };
                out.push((
                    n.id.clone(),
                    HealthEvent {
                        condition,
                        change,
                        severity: match (change, condition) {
                            (HealthChange::Cleared, _) => Severity::Info,
                            (_, HealthCondition::NodeOffline) => Severity::Critical,
                            _ => Severity::Warning,
                        },
                        at_ms: now_ms,
                        detail,
                        subject: String::new(),
                    },
                ));
            }
        }
        out
    }
}

/// The rules' loop: every [`CHECK_EVERY`] until shutdown.
pub async fn run(
    policy: NodeRulesPolicy,
    fleet: Arc<LiveFleet>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut rules = NodeRules::new(policy, clock.unix_ms());
    for issue in open_issues(
        "node rules",
        &store,
        &[
            HealthCondition::NodeOffline,
            HealthCondition::TelemetryStale,
        ],
    )
    .await
    {
        rules.assume_raised(issue.node, issue.condition);
    }
    let mut ticks = crate::clock::Ticks::every(CHECK_EVERY, shutdown.clone());
    loop {
        if !ticks.next().await {
            return;
        }
        let mut nodes = Vec::new();
        fleet.visit(|n| nodes.push(NodeView::of(n)));
        let now = clock.unix_ms();
        let events = rules.evaluate(&nodes, now);
        store_server_events("node rules", &fleet, &store, events, now).await;
    }
}

/// The issues of `conditions` not resolved: what a server rule raised before
/// this server started, so it clears them rather than raising them twice.
/// Empty (and logged) when the store cannot be read.
pub async fn open_issues(
    rule: &'static str,
    store: &Arc<dyn Store>,
    conditions: &[HealthCondition],
) -> Vec<HealthIssue> {
    let (store, conditions) = (store.clone(), conditions.to_vec());
    let read = tokio::task::spawn_blocking(move || {
        let mut open = Vec::new();
        for condition in conditions {
            let query = IssueQuery {
                condition: Some(condition),
                limit: 100_000,
                ..Default::default()
            };
            open.extend(
                store
                    .health_issues(&query)?
                    .into_iter()
                    .filter(|i| i.state != HealthState::Resolved),
            );
        }
        Ok::<_, rakkr_store::StoreError>(open)
    })
    .await;
    match read {
        Ok(Ok(open)) => open,
        Ok(Err(e)) => {
            tracing::error!(rule, error = %e, "open issues not read");
            Vec::new()
        }
        Err(e) => {
            tracing::error!(rule, error = %e, "task failed");
            Vec::new()
        }
    }
}

/// Keep the events one of the server's own rules raised or cleared: shown on
/// the live fleet at once, stored (and so opened, de-duplicated and resolved
/// as health issues) on a blocking thread.
pub async fn store_server_events(
    rule: &'static str,
    fleet: &LiveFleet,
    store: &Arc<dyn Store>,
    events: Vec<(NodeId, HealthEvent)>,
    now: u64,
) {
    if events.is_empty() {
        return;
    }
    let records: Vec<HealthEventRecord> = events
        .into_iter()
        .map(|(node, event)| {
            fleet.apply_health(&node, &event);
            tracing::info!(rule, node = %node, condition = event.condition.as_str(), change = ?event.change, subject = %event.subject, detail = %event.detail, "server rule");
            HealthEventRecord {
                node,
                msg_id: MessageId::new(now),
                event,
                received_ms: now,
            }
        })
        .collect();
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.record_health_events(&records)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(rule, error = %e, "events not stored"),
        Err(e) => tracing::error!(rule, error = %e, "task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: NodeRulesPolicy = NodeRulesPolicy {
        offline_after_ms: 60_000,
        stale_after_ms: 30_000,
    };

    fn view(presence: Presence, since: u64, frame: Option<u64>) -> NodeView {
        NodeView {
            id: NodeId::new("n").unwrap(),
            presence,
            presence_since_ms: since,
            last_frame_ms: frame,
        }
    }

    fn changes(
        rules: &mut NodeRules,
        v: NodeView,
        now: u64,
    ) -> Vec<(HealthCondition, HealthChange)> {
        rules
            .evaluate(&[v], now)
            .into_iter()
            .map(|(_, e)| (e.condition, e.change))
            .collect()
    }

    #[test]
    fn offline_for_long_raises_once_and_back_online_clears() {
        use HealthChange::*;
        let mut rules = NodeRules::new(POLICY, 0);
        let down = view(Presence::Offline, 100_000, Some(99_000));
        assert_eq!(changes(&mut rules, down.clone(), 159_999), []);
        assert_eq!(
            changes(&mut rules, down.clone(), 160_000),
            [(HealthCondition::NodeOffline, Raised)]
        );
        assert_eq!(changes(&mut rules, down, 500_000), [], "once");
        let up = view(Presence::Online, 600_000, Some(600_500));
        assert_eq!(
            changes(&mut rules, up, 601_000),
            [(HealthCondition::NodeOffline, Cleared)]
        );
    }

    #[test]
    fn an_online_node_without_frames_is_stale_until_they_return() {
        use HealthChange::*;
        let mut rules = NodeRules::new(POLICY, 0);
        // Online since 10 s, frames until 20 s, then none.
        let quiet = view(Presence::Online, 10_000, Some(20_000));
        assert_eq!(changes(&mut rules, quiet.clone(), 49_999), []);
        assert_eq!(
            changes(&mut rules, quiet, 50_000),
            [(HealthCondition::TelemetryStale, Raised)]
        );
        let alive = view(Presence::Online, 10_000, Some(60_000));
        assert_eq!(
            changes(&mut rules, alive, 60_100),
            [(HealthCondition::TelemetryStale, Cleared)]
        );
        // A node that never sent a frame since this server started: stale
        // only after the server has waited the whole time.
        let mut fresh = NodeRules::new(POLICY, 1_000_000);
        let never = view(Presence::Online, 0, None);
        assert_eq!(changes(&mut fresh, never.clone(), 1_029_999), []);
        assert_eq!(
            changes(&mut fresh, never, 1_030_000),
            [(HealthCondition::TelemetryStale, Raised)]
        );
    }

    #[test]
    fn what_was_open_before_a_restart_is_cleared_when_it_no_longer_holds() {
        let mut rules = NodeRules::new(POLICY, 0);
        rules.assume_raised(NodeId::new("n").unwrap(), HealthCondition::NodeOffline);
        let up = view(Presence::Online, 5_000, Some(5_500));
        assert_eq!(
            changes(&mut rules, up, 6_000),
            [(HealthCondition::NodeOffline, HealthChange::Cleared)]
        );
        // Going offline ends staleness (offline is the issue then).
        let mut rules = NodeRules::new(POLICY, 0);
        rules.assume_raised(NodeId::new("n").unwrap(), HealthCondition::TelemetryStale);
        let down = view(Presence::Offline, 5_000, None);
        assert_eq!(
            changes(&mut rules, down, 6_000),
            [(HealthCondition::TelemetryStale, HealthChange::Cleared)]
        );
    }
}
