//! Keep every node's retained `nodes/{node}/cmd/watchdog` equal to the
//! appliance rules of its watchdog policy: the one operators chose for it
//! (`Store::node_watchdog_policies`), else the default.
//!
//! Every [`SYNC_EVERY`] the runner works out what each node the fleet knows
//! should have and sends what differs from what it last sent: so a server
//! that starts sends every node its rules (a policy changed in the
//! configuration reaches the appliances), a node seen for the first time gets
//! them, and a choice made in the console or the API arrives within a tick.
//! A message the command queue could not take is sent again on the next tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rakkr_protocol::NodeId;
use rakkr_protocol::watchdog::NodeWatchdog;
use rakkr_store::Store;
use tokio_util::sync::CancellationToken;

use crate::fleet::LiveFleet;
use crate::jobs::{Commands, Outbound};
use crate::policies::WatchdogPolicies;

/// How often the runner compares.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// What each of `nodes` should have, given the operators' `chosen` policies.
pub fn wanted(
    policies: &WatchdogPolicies,
    nodes: &[NodeId],
    chosen: &std::collections::BTreeMap<NodeId, String>,
) -> Vec<(NodeId, NodeWatchdog)> {
    nodes
        .iter()
        .map(|n| {
            (
                n.clone(),
                policies.for_node(chosen.get(n).map(String::as_str)),
            )
        })
        .collect()
}

pub async fn run(
    policies: Arc<WatchdogPolicies>,
    fleet: Arc<LiveFleet>,
    store: Arc<dyn Store>,
    commands: Commands,
    shutdown: CancellationToken,
) {
    let mut ticks = crate::clock::Ticks::every(SYNC_EVERY, shutdown);
    let mut sent: HashMap<NodeId, NodeWatchdog> = HashMap::new();
    while ticks.next().await {
        let store = store.clone();
        let chosen = match tokio::task::spawn_blocking(move || store.node_watchdog_policies()).await
        {
            Ok(Ok(chosen)) => chosen,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "watchdog sync: store error");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "watchdog sync task failed");
                continue;
            }
        };
        let mut nodes = Vec::new();
        fleet.visit(|n| nodes.push(n.record.id.clone()));
        for (node, rules) in wanted(&policies, &nodes, &chosen) {
            if sent.get(&node) == Some(&rules) {
                continue;
            }
            if commands.try_send(Outbound::Watchdog(node.clone(), rules.clone())) {
                tracing::info!(node = %node, policy = %rules.policy, "watchdog rules sent");
                sent.insert(node, rules);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_chosen_policy_or_the_default() {
        let policies = WatchdogPolicies::builtin();
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let chosen = [(b.clone(), "lecture".to_owned())].into_iter().collect();
        let w = wanted(&policies, &[a.clone(), b.clone()], &chosen);
        assert_eq!(w[0].0, a);
        assert_eq!(w[0].1.policy, "standard");
        assert_eq!(w[1].1.policy, "lecture");
        assert_eq!(w[1].1.rules.silence_s, 30);
        // A chosen policy the configuration no longer has: the default.
        let gone = [(a.clone(), "gone".to_owned())].into_iter().collect();
        assert_eq!(wanted(&policies, &[a], &gone)[0].1.policy, "standard");
    }
}
