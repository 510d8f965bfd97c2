//! The live view of the fleet: presence, details and the latest meter frame of
//! every known node, in memory.
//!
//! This is what the console and API read. The store holds the durable part
//! (presence and details); meter frames are live data and are never written to
//! disk here. Bounded: at most `max_nodes` nodes are tracked; statuses from
//! further unknown nodes are refused and counted.
//!
//! Live meters: whoever shows a node's live levels holds a
//! [`LiveWatch`]; live frames for a node nobody watches are dropped at once.
//! Each watch sees only the newest frame (a slow browser skips frames, it
//! never queues them), and the node's entry goes with its last watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rakkr_protocol::NodeId;
use rakkr_protocol::payload::{MeterFrame, NodeStatus};
use rakkr_protocol::state::Presence;
use rakkr_store::{NodeDetails, NodeRecord, NodeStatusUpdate};

#[derive(Debug, Clone, PartialEq)]
pub struct LiveMeters {
    pub frame: MeterFrame,
    pub received_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveNode {
    pub record: NodeRecord,
    pub meters: Option<LiveMeters>,
    /// Health conditions the node raised and has not cleared (since this
    /// server started: after a restart nodes raise what still holds).
    pub raised: Vec<rakkr_protocol::payload::HealthCondition>,
    /// The node's latest A/B update step (`nodes/{node}/update`), if it reported one
    /// since this server started.
    pub update: Option<rakkr_protocol::update::UpdateReport>,
}

impl LiveNode {
    /// An A/B update is under way: the node's latest step is not final.
    pub fn updating(&self) -> bool {
        self.update.as_ref().is_some_and(|u| u.phase.in_progress())
    }

    /// Something needs attention: a raised health condition, or a quality
    /// flag (clipping, silence, stuck, …) on a channel of a live frame.
    pub fn alerting(&self, now_ms: u64, stale_after: Duration) -> bool {
        !self.raised.is_empty()
            || (!self.meters_stale(now_ms, stale_after)
                && self
                    .meters
                    .as_ref()
                    .is_some_and(|m| m.frame.channels.iter().any(|c| !c.flags.is_empty())))
    }

    /// Whether the meter frame is too old to show as live: it arrived long ago,
    /// or it was already old (by its capture timestamp) when it arrived.
    pub fn meters_stale(&self, now_ms: u64, stale_after: Duration) -> bool {
        let limit = stale_after.as_millis() as u64;
        match &self.meters {
            None => true,
            Some(m) => {
                self.record.presence == Presence::Offline
                    || now_ms.saturating_sub(m.received_ms) > limit
                    || m.received_ms.saturating_sub(m.frame.captured_at_ms) > limit
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetCounts {
    pub total: usize,
    pub online: usize,
    pub offline: usize,
    /// Nodes whose latest A/B update step is not final.
    pub updating: usize,
}

#[derive(Debug)]
pub struct LiveFleet {
    /// By id, in order (the console pages through them without sorting).
    nodes: RwLock<std::collections::BTreeMap<NodeId, LiveNode>>,
    max_nodes: usize,
    live: Mutex<HashMap<NodeId, LiveSender>>,
}

type LiveSender = tokio::sync::watch::Sender<Option<Arc<MeterFrame>>>;

/// Someone watching one node's live meters; see [`LiveFleet::watch_live`].
#[derive(Debug)]
pub struct LiveWatch {
    pub frames: tokio::sync::watch::Receiver<Option<Arc<MeterFrame>>>,
    node: NodeId,
    fleet: Arc<LiveFleet>,
}

impl Drop for LiveWatch {
    fn drop(&mut self) {
        let mut live = self.fleet.live.lock().expect("live lock poisoned");
        // This watch's receiver is still alive here: the last one counts 1.
        if live
            .get(&self.node)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            live.remove(&self.node);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("node limit of {0} reached")]
    Full(usize),
    #[error("meters from a node that has not announced itself")]
    UnknownNode,
}

impl LiveFleet {
    /// Start from the store's records. Every node starts offline: after a server
    /// restart, a node is online only once it has announced itself again.
    /// Returns the fleet and the presence changes this implies, for the store.
    pub fn from_records(
        records: Vec<NodeRecord>,
        max_nodes: usize,
        now_ms: u64,
    ) -> (LiveFleet, Vec<NodeStatusUpdate>) {
        let mut changes = Vec::new();
        let nodes = records
            .into_iter()
            .map(|mut record| {
                if record.presence != Presence::Offline {
                    changes.push(NodeStatusUpdate {
                        node: record.id.clone(),
                        presence: Presence::Offline,
                        details: None,
                        received_ms: now_ms,
                    });
                    record.presence = Presence::Offline;
                    record.presence_since_ms = now_ms;
                }
                (
                    record.id.clone(),
                    LiveNode {
                        record,
                        meters: None,
                        raised: Vec::new(),
                        update: None,
                    },
                )
            })
            .collect();
        (
            LiveFleet {
                nodes: RwLock::new(nodes),
                max_nodes,
                live: Mutex::new(HashMap::new()),
            },
            changes,
        )
    }

    /// Apply a status message; returns the update to persist.
    pub fn apply_status(
        &self,
        node: &NodeId,
        status: &NodeStatus,
        now_ms: u64,
    ) -> Result<NodeStatusUpdate, FleetError> {
        let (presence, details) = match status {
            NodeStatus::Online {
                agent_version,
                slot,
                capabilities,
                realtime,
            } => (
                Presence::Online,
                Some(NodeDetails {
                    agent_version: agent_version.clone(),
                    slot: *slot,
                    capabilities: capabilities.clone(),
                    realtime: *realtime,
                }),
            ),
            NodeStatus::Offline { .. } => (Presence::Offline, None),
        };
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        if !nodes.contains_key(node) && nodes.len() >= self.max_nodes {
            return Err(FleetError::Full(self.max_nodes));
        }
        let entry = nodes.entry(node.clone()).or_insert_with(|| LiveNode {
            record: NodeRecord {
                id: node.clone(),
                presence,
                details: None,
                first_seen_ms: now_ms,
                presence_since_ms: now_ms,
                last_seen_ms: now_ms,
            },
            meters: None,
            raised: Vec::new(),
            update: None,
        });
        let r = &mut entry.record;
        if r.presence != presence {
            r.presence = presence;
            r.presence_since_ms = now_ms;
        }
        if details.is_some() {
            r.details = details.clone();
        }
        r.last_seen_ms = now_ms;
        if presence == Presence::Offline {
            entry.meters = None;
        }
        Ok(NodeStatusUpdate {
            node: node.clone(),
            presence,
            details,
            received_ms: now_ms,
        })
    }

    pub fn apply_meters(
        &self,
        node: &NodeId,
        frame: MeterFrame,
        now_ms: u64,
    ) -> Result<(), FleetError> {
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        let entry = nodes.get_mut(node).ok_or(FleetError::UnknownNode)?;
        entry.record.last_seen_ms = now_ms;
        entry.meters = Some(LiveMeters {
            frame,
            received_ms: now_ms,
        });
        Ok(())
    }

    /// Track a health event's condition: raised until cleared.
    pub fn apply_health(&self, node: &NodeId, event: &rakkr_protocol::payload::HealthEvent) {
        use rakkr_protocol::payload::HealthChange;
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        let Some(entry) = nodes.get_mut(node) else {
            return;
        };
        entry.raised.retain(|c| *c != event.condition);
        if event.change == HealthChange::Raised {
            entry.raised.push(event.condition);
        }
    }

    /// Keep `node`'s latest update step; false for a node not known.
    pub fn apply_update(
        &self,
        node: &NodeId,
        report: rakkr_protocol::update::UpdateReport,
    ) -> bool {
        let mut nodes = self.nodes.write().expect("fleet lock poisoned");
        match nodes.get_mut(node) {
            Some(entry) => {
                entry.update = Some(report);
                true
            }
            None => false,
        }
    }

    /// Watch `node`'s live meter frames until the returned watch is dropped.
    pub fn watch_live(self: &Arc<Self>, node: &NodeId) -> LiveWatch {
        let mut live = self.live.lock().expect("live lock poisoned");
        let frames = live
            .entry(node.clone())
            .or_insert_with(|| tokio::sync::watch::Sender::new(None))
            .subscribe();
        LiveWatch {
            frames,
            node: node.clone(),
            fleet: self.clone(),
        }
    }

    /// Hand a live frame to whoever watches `node`; false if nobody does.
    pub fn publish_live(&self, node: &NodeId, frame: MeterFrame) -> bool {
        let live = self.live.lock().expect("live lock poisoned");
        match live.get(node) {
            Some(tx) => {
                tx.send_replace(Some(Arc::new(frame)));
                true
            }
            None => false,
        }
    }

    /// One node, if known.
    pub fn node(&self, id: &NodeId) -> Option<LiveNode> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        nodes.get(id).cloned()
    }

    /// All nodes, ordered by id.
    pub fn snapshot(&self) -> Vec<LiveNode> {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        nodes.values().cloned().collect()
    }

    /// Look at every node in id order, without copying them (under the
    /// read lock: keep `f` short).
    pub fn visit(&self, mut f: impl FnMut(&LiveNode)) {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        nodes.values().for_each(&mut f);
    }

    pub fn counts(&self) -> FleetCounts {
        let nodes = self.nodes.read().expect("fleet lock poisoned");
        let online = nodes
            .values()
            .filter(|n| n.record.presence == Presence::Online)
            .count();
        FleetCounts {
            total: nodes.len(),
            online,
            offline: nodes.len() - online,
            updating: nodes.values().filter(|n| n.updating()).count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rakkr_protocol::payload::{BootSlot, Capabilities, ChannelMeter, OfflineReason};

    fn online() -> NodeStatus {
        NodeStatus::Online {
            agent_version: "1".into(),
            slot: BootSlot::None,
            capabilities: Capabilities {
                sources: vec![],
                channels: 1,
                sample_rates: vec![],
                codecs: vec![],
                max_jobs: 0,
                devices: Vec::new(),
            },
            realtime: Default::default(),
        }
    }

    fn frame(captured_at_ms: u64) -> MeterFrame {
        MeterFrame {
            captured_at_ms,
            window_ms: 1000,
            sample_rate: 48000,
            channels: vec![ChannelMeter {
                peak_dbfs: -6.0,
                rms_dbfs: -9.0,
                clipped: 0,
                ..Default::default()
            }],
            counters: None,
        }
    }

    #[test]
    fn meters_need_an_announced_node_and_go_stale() {
        let (fleet, _) = LiveFleet::from_records(vec![], 10, 0);
        let n = NodeId::new("n").unwrap();
        assert_eq!(
            fleet.apply_meters(&n, frame(0), 0),
            Err(FleetError::UnknownNode)
        );
        fleet.apply_status(&n, &online(), 1_000).unwrap();
        fleet.apply_meters(&n, frame(1_900), 2_000).unwrap();
        let node = &fleet.snapshot()[0];
        let stale_after = Duration::from_secs(5);
        assert!(!node.meters_stale(2_000, stale_after));
        assert!(
            node.meters_stale(7_001, stale_after),
            "arrived too long ago"
        );
        fleet.apply_meters(&n, frame(0), 9_000).unwrap();
        assert!(
            fleet.snapshot()[0].meters_stale(9_000, stale_after),
            "old on arrival"
        );
        fleet
            .apply_status(
                &n,
                &NodeStatus::Offline {
                    reason: OfflineReason::ConnectionLost,
                },
                10_000,
            )
            .unwrap();
        let node = &fleet.snapshot()[0];
        assert_eq!(node.record.presence, Presence::Offline);
        assert!(
            node.meters.is_none(),
            "an offline node shows no live meters"
        );
        assert!(node.record.details.is_some(), "details are kept");
    }

    #[test]
    fn the_node_limit_is_enforced() {
        let (fleet, _) = LiveFleet::from_records(vec![], 2, 0);
        for id in ["a", "b"] {
            fleet
                .apply_status(&NodeId::new(id).unwrap(), &online(), 0)
                .unwrap();
        }
        let c = NodeId::new("c").unwrap();
        assert_eq!(
            fleet.apply_status(&c, &online(), 0),
            Err(FleetError::Full(2))
        );
        fleet
            .apply_status(&NodeId::new("a").unwrap(), &online(), 1)
            .unwrap();
        assert_eq!(
            fleet.counts(),
            FleetCounts {
                total: 2,
                online: 2,
                offline: 0,
                updating: 0,
            }
        );
        let step = |phase| rakkr_protocol::update::UpdateReport {
            update_id: rakkr_protocol::UpdateId::from_u128(7),
            version: "2.0.0".into(),
            phase,
            done_bytes: 0,
            total_bytes: 0,
            detail: String::new(),
        };
        let a = NodeId::new("a").unwrap();
        assert!(fleet.apply_update(&a, step(rakkr_protocol::update::UpdatePhase::Rebooting)));
        assert!(!fleet.apply_update(
            &NodeId::new("unknown").unwrap(),
            step(rakkr_protocol::update::UpdatePhase::Rebooting)
        ));
        assert_eq!(fleet.counts().updating, 1);
        fleet.apply_update(&a, step(rakkr_protocol::update::UpdatePhase::RolledBack));
        assert_eq!(fleet.counts().updating, 0);
    }

    #[test]
    fn after_a_restart_everyone_starts_offline() {
        let record = NodeRecord {
            id: NodeId::new("was-online").unwrap(),
            presence: Presence::Online,
            details: None,
            first_seen_ms: 1,
            presence_since_ms: 1,
            last_seen_ms: 1,
        };
        let (fleet, changes) = LiveFleet::from_records(vec![record], 10, 50);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].presence, Presence::Offline);
        assert_eq!(fleet.counts().offline, 1);
    }

    #[test]
    fn live_frames_reach_only_watchers_and_the_entry_goes_with_the_last() {
        let (fleet, _) = LiveFleet::from_records(vec![], 10, 0);
        let fleet = Arc::new(fleet);
        let a = NodeId::new("a").unwrap();
        assert!(!fleet.publish_live(&a, frame(1)), "nobody watches");
        let first = fleet.watch_live(&a);
        let mut second = fleet.watch_live(&a);
        assert!(fleet.publish_live(&a, frame(2)));
        assert!(fleet.publish_live(&a, frame(3)));
        assert!(second.frames.has_changed().unwrap());
        let newest = second.frames.borrow_and_update().clone().unwrap();
        assert_eq!(
            newest.captured_at_ms, 3,
            "a watcher sees the newest frame only"
        );
        drop(first);
        assert!(fleet.publish_live(&a, frame(4)), "one watcher is left");
        drop(second);
        assert!(!fleet.publish_live(&a, frame(5)));
        assert!(fleet.live.lock().unwrap().is_empty());
    }

    #[test]
    fn a_raised_condition_alerts_until_it_is_cleared() {
        use rakkr_protocol::payload::{HealthChange, HealthCondition, HealthEvent, Severity};
        let (fleet, _) = LiveFleet::from_records(vec![], 10, 0);
        let a = NodeId::new("a").unwrap();
        fleet.apply_status(&a, &online(), 0).unwrap();
        let event = |change| HealthEvent {
            condition: HealthCondition::DeviceLost,
            change,
            severity: Severity::Critical,
            at_ms: 0,
            detail: String::new(),
            subject: String::new(),
        };
        let alerting = || fleet.node(&a).unwrap().alerting(0, Duration::from_secs(5));
        assert!(!alerting());
        fleet.apply_health(&a, &event(HealthChange::Raised));
        fleet.apply_health(&a, &event(HealthChange::Raised));
        assert_eq!(fleet.node(&a).unwrap().raised.len(), 1, "raised once");
        assert!(alerting());
        fleet.apply_health(&a, &event(HealthChange::Cleared));
        assert!(!alerting());
    }
}
