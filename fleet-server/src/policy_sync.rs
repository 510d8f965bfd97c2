//! Keep every node's retained policy rules equal to those of the policies
//! operators chose for it (`Store::node_policies`), else the defaults: its
//! watchdog policy's appliance rules on `nodes/{node}/cmd/watchdog`, its
//! retention policy's on `nodes/{node}/cmd/retention`.
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
use rakkr_store::{NodePolicyKind, Store};
use tokio_util::sync::CancellationToken;

use crate::fleet::LiveFleet;
use crate::jobs::{Commands, Outbound};
use crate::policies::{NodePolicies, RetentionPolicies, WatchdogPolicies};

/// How often the runner compares.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// What each of `nodes` should have, given the operators' `chosen` policies.
pub fn wanted<P: NodePolicies>(
    policies: &P,
    nodes: &[NodeId],
    chosen: &std::collections::BTreeMap<NodeId, String>,
) -> Vec<(NodeId, P::Message)> {
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

/// One kind of policy kept in step: what was last sent to each node.
struct Follower<P: NodePolicies> {
    kind: NodePolicyKind,
    policies: Arc<P>,
    message: fn(NodeId, P::Message) -> Outbound,
    sent: HashMap<NodeId, P::Message>,
}

impl<P: NodePolicies> Follower<P> {
    fn new(
        kind: NodePolicyKind,
        policies: Arc<P>,
        message: fn(NodeId, P::Message) -> Outbound,
    ) -> Self {
        Follower {
            kind,
            policies,
            message,
            sent: HashMap::new(),
        }
    }

    async fn tick(&mut self, store: &Arc<dyn Store>, nodes: &[NodeId], commands: &Commands) {
        let (store, kind) = (store.clone(), self.kind);
        let chosen = match tokio::task::spawn_blocking(move || store.node_policies(kind)).await {
            Ok(Ok(chosen)) => chosen,
            Ok(Err(e)) => {
                tracing::error!(kind = kind.as_str(), error = %e, "policy sync: store error");
                return;
            }
            Err(e) => {
                tracing::error!(kind = kind.as_str(), error = %e, "policy sync task failed");
                return;
            }
        };
        for (node, rules) in wanted(&*self.policies, nodes, &chosen) {
            if self.sent.get(&node) == Some(&rules) {
                continue;
            }
            if commands.try_send((self.message)(node.clone(), rules.clone())) {
                tracing::info!(node = %node, kind = kind.as_str(), rules = ?rules, "policy rules sent");
                self.sent.insert(node, rules);
            }
        }
    }
}

pub async fn run(
    watchdog: Arc<WatchdogPolicies>,
    retention: Arc<RetentionPolicies>,
    fleet: Arc<LiveFleet>,
    store: Arc<dyn Store>,
    commands: Commands,
    shutdown: CancellationToken,
) {
    let mut watchdog = Follower::new(NodePolicyKind::Watchdog, watchdog, Outbound::Watchdog);
    let mut retention = Follower::new(NodePolicyKind::Retention, retention, Outbound::Retention);
    let mut ticks = crate::clock::Ticks::every(SYNC_EVERY, shutdown);
    while ticks.next().await {
        let mut nodes = Vec::new();
        fleet.visit(|n| nodes.push(n.record.id.clone()));
        watchdog.tick(&store, &nodes, &commands).await;
        retention.tick(&store, &nodes, &commands).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_gets_its_chosen_retention_policy_or_the_default() {
        let policies = RetentionPolicies::builtin();
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let chosen = [(b.clone(), "keep-30-days".to_owned())]
            .into_iter()
            .collect();
        let w = wanted(&policies, &[a, b], &chosen);
        assert_eq!(w[0].1.policy, "standard");
        assert_eq!(w[1].1.policy, "keep-30-days");
        assert_eq!(w[1].1.rules.max_age_days, Some(30));
    }

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
