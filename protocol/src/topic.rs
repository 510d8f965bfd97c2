//! The MQTT topic tree.
//!
//! ```text
//! rakkr/v1/server/status                 retained, QoS 1   server presence
//! rakkr/v1/nodes/{node}/status           retained, QoS 1   node presence (Last Will: offline)
//! rakkr/v1/nodes/{node}/meters           QoS 0             meter frames (1 Hz)
//! rakkr/v1/nodes/{node}/live             QoS 0             meter frames (5 Hz) while someone watches
//! rakkr/v1/nodes/{node}/events           QoS 1             health events
//! rakkr/v1/nodes/{node}/jobs             QoS 1             job claims and updates from the node
//! rakkr/v1/nodes/{node}/update           retained, QoS 1   the node's latest A/B update step
//! rakkr/v1/nodes/{node}/cmd/{command}    QoS 1             server → node commands
//! ```
//!
//! Invariant: a node publishes only below `rakkr/v1/nodes/{its id}/` (except
//! `cmd/`) and subscribes only to its own `cmd/#`. Brokers enforce this; see the
//! fleet-link decision records.

use std::fmt;

use crate::ids::{IdError, NodeId};

/// Every topic starts with this prefix; the version changes only when the tree does.
pub const ROOT: &str = "rakkr/v1";

/// Longest topic this crate parses. Anything longer is refused before it is split.
pub const MAX_TOPIC_LEN: usize = 256;

/// Server → node command channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Job offers, stop and cancel requests.
    Jobs,
    /// Application-level acknowledgements of messages the node sent.
    Ack,
    /// Requests for live meters (someone is watching the node's page).
    Live,
    /// The schedules the node keeps and runs by itself while the server is
    /// unreachable (retained).
    Schedules,
    /// The rules of the node's watchdog policy (retained).
    Watchdog,
    /// The rules of the node's retention policy (retained).
    Retention,
    /// An A/B image update to install (retained).
    Update,
}

impl Command {
    pub const ALL: [Command; 7] = [
        Command::Jobs,
        Command::Ack,
        Command::Live,
        Command::Schedules,
        Command::Watchdog,
        Command::Retention,
        Command::Update,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Jobs => "jobs",
            Command::Ack => "ack",
            Command::Live => "live",
            Command::Schedules => "schedules",
            Command::Watchdog => "watchdog",
            Command::Retention => "retention",
            Command::Update => "update",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Command::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The kinds of per-node topic a node publishes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeChannel {
    Status,
    Meters,
    Events,
    Jobs,
    /// Meter frames at the live rate, only while a live request holds.
    Live,
    /// The node's latest A/B update step (retained).
    Update,
}

impl NodeChannel {
    pub const ALL: [NodeChannel; 6] = [
        NodeChannel::Status,
        NodeChannel::Meters,
        NodeChannel::Events,
        NodeChannel::Jobs,
        NodeChannel::Live,
        NodeChannel::Update,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeChannel::Status => "status",
            NodeChannel::Meters => "meters",
            NodeChannel::Events => "events",
            NodeChannel::Jobs => "jobs",
            NodeChannel::Live => "live",
            NodeChannel::Update => "update",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        NodeChannel::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The filter that matches this channel for every node, for the server's subscriptions.
    pub fn filter_all_nodes(self) -> String {
        format!("{ROOT}/nodes/+/{}", self.as_str())
    }

    /// Whether messages on this channel are retained by the broker.
    pub fn retained(self) -> bool {
        matches!(self, NodeChannel::Status | NodeChannel::Update)
    }
}

/// A parsed topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    ServerStatus,
    Node { node: NodeId, channel: NodeChannel },
    Command { node: NodeId, command: Command },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is {len} bytes long; the limit is {MAX_TOPIC_LEN}")]
    TooLong { len: usize },
    #[error("topic {0:?} is not under {ROOT}/")]
    ForeignRoot(String),
    #[error("topic {0:?} is not part of the rakkr/v1 tree")]
    Unknown(String),
    #[error("topic has an invalid node id: {0}")]
    BadNodeId(#[from] IdError),
}

impl Topic {
    pub fn node(node: &NodeId, channel: NodeChannel) -> Topic {
        Topic::Node {
            node: node.clone(),
            channel,
        }
    }

    pub fn command(node: &NodeId, command: Command) -> Topic {
        Topic::Command {
            node: node.clone(),
            command,
        }
    }

    /// The filter a node subscribes to for all of its commands.
    pub fn command_filter(node: &NodeId) -> String {
        format!("{ROOT}/nodes/{node}/cmd/#")
    }

    /// The node this topic belongs to, if any.
    pub fn node_id(&self) -> Option<&NodeId> {
        match self {
            Topic::ServerStatus => None,
            Topic::Node { node, .. } | Topic::Command { node, .. } => Some(node),
        }
    }

    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        if topic.len() > MAX_TOPIC_LEN {
            return Err(TopicError::TooLong { len: topic.len() });
        }
        let rest = topic
            .strip_prefix(ROOT)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| TopicError::ForeignRoot(topic.to_owned()))?;
        let unknown = || TopicError::Unknown(topic.to_owned());
        let levels: Vec<&str> = rest.split('/').collect();
        match levels.as_slice() {
            ["server", "status"] => Ok(Topic::ServerStatus),
            ["nodes", node, channel] => {
                let channel = NodeChannel::parse(channel).ok_or_else(unknown)?;
                Ok(Topic::Node {
                    node: NodeId::new(*node)?,
                    channel,
                })
            }
            ["nodes", node, "cmd", command] => {
                let command = Command::parse(command).ok_or_else(unknown)?;
                Ok(Topic::Command {
                    node: NodeId::new(*node)?,
                    command,
                })
            }
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::ServerStatus => write!(f, "{ROOT}/server/status"),
            Topic::Node { node, channel } => write!(f, "{ROOT}/nodes/{node}/{}", channel.as_str()),
            Topic::Command { node, command } => {
                write!(f, "{ROOT}/nodes/{node}/cmd/{}", command.as_str())
            }
        }
    }
}

/// Whether `node` may publish on `topic`: only on its own status, meters,
/// events and jobs topics (the Last Will included).
pub fn node_may_publish(node: &NodeId, topic: &str) -> bool {
    matches!(Topic::parse(topic), Ok(Topic::Node { node: n, .. }) if &n == node)
}

/// Whether `node` may subscribe to `filter`: only its own commands (all of
/// them, or one command topic) and the server's status.
pub fn node_may_subscribe(node: &NodeId, filter: &str) -> bool {
    filter == Topic::command_filter(node)
        || filter == Topic::ServerStatus.to_string()
        || matches!(Topic::parse(filter), Ok(Topic::Command { node: n, .. }) if &n == node)
}

/// Whether a read-only client (a dashboard) may subscribe to `filter`:
/// anything in the tree, nothing outside it.
pub fn reader_may_subscribe(filter: &str) -> bool {
    filter == "rakkr/#"
        || filter
            .strip_prefix(ROOT)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nodes_publish_and_subscribe_only_in_their_own_subtree() {
        let a = NodeId::new("node-a").unwrap();
        for ok in ["rakkr/v1/nodes/node-a/status", "rakkr/v1/nodes/node-a/jobs"] {
            assert!(node_may_publish(&a, ok), "{ok}");
        }
        for bad in [
            "rakkr/v1/nodes/node-b/status",
            "rakkr/v1/nodes/node-a/cmd/jobs",
            "rakkr/v1/server/status",
            "rakkr/v1/nodes/node-a/#",
            "rakkr/v1/nodes/+/status",
            "other/topic",
            "rakkr/v1/nodes/node-a",
        ] {
            assert!(!node_may_publish(&a, bad), "{bad}");
        }
        for ok in [
            "rakkr/v1/nodes/node-a/cmd/#",
            "rakkr/v1/nodes/node-a/cmd/jobs",
            "rakkr/v1/nodes/node-a/cmd/ack",
            "rakkr/v1/server/status",
        ] {
            assert!(node_may_subscribe(&a, ok), "{ok}");
        }
        for bad in [
            "rakkr/v1/nodes/node-b/cmd/#",
            "rakkr/v1/nodes/+/cmd/#",
            "rakkr/v1/#",
            "#",
            "rakkr/v1/nodes/node-a/meters",
            "rakkr/v1/nodes/node-a/cmd/+",
        ] {
            assert!(!node_may_subscribe(&a, bad), "{bad}");
        }
        assert!(reader_may_subscribe("rakkr/v1/#"));
        assert!(reader_may_subscribe("rakkr/v1/nodes/+/meters"));
        assert!(!reader_may_subscribe("#"));
        assert!(!reader_may_subscribe("rakkr/v10/x"));
        assert!(!reader_may_subscribe("$SYS/#"));
    }

    fn node_id() -> impl Strategy<Value = NodeId> {
        "[a-z0-9][a-z0-9_-]{0,63}".prop_map(|s| NodeId::new(s).unwrap())
    }

    fn any_topic() -> impl Strategy<Value = Topic> {
        prop_oneof![
            Just(Topic::ServerStatus),
            (
                node_id(),
                proptest::sample::select(NodeChannel::ALL.to_vec())
            )
                .prop_map(|(node, channel)| Topic::Node { node, channel }),
            (node_id(), proptest::sample::select(Command::ALL.to_vec()))
                .prop_map(|(node, command)| Topic::Command { node, command }),
        ]
    }

    proptest! {
        #[test]
        fn every_topic_builds_and_parses_back(topic in any_topic()) {
            let text = topic.to_string();
            prop_assert!(text.len() <= MAX_TOPIC_LEN);
            prop_assert!(!text.contains('+') && !text.contains('#'));
            prop_assert_eq!(Topic::parse(&text).unwrap(), topic);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = Topic::parse(&text);
        }

        #[test]
        fn parsing_near_misses_never_panics(node in "[ -~]{0,80}", tail in "[a-z/+#]{0,20}") {
            let _ = Topic::parse(&format!("{ROOT}/nodes/{node}/{tail}"));
        }
    }

    #[test]
    fn the_tree_is_as_documented() {
        let n = NodeId::new("studio-a").unwrap();
        assert_eq!(Topic::ServerStatus.to_string(), "rakkr/v1/server/status");
        assert_eq!(
            Topic::node(&n, NodeChannel::Status).to_string(),
            "rakkr/v1/nodes/studio-a/status"
        );
        assert_eq!(
            Topic::command(&n, Command::Jobs).to_string(),
            "rakkr/v1/nodes/studio-a/cmd/jobs"
        );
        assert_eq!(Topic::command_filter(&n), "rakkr/v1/nodes/studio-a/cmd/#");
        assert_eq!(
            NodeChannel::Meters.filter_all_nodes(),
            "rakkr/v1/nodes/+/meters"
        );
    }

    #[test]
    fn bad_topics_give_typed_errors() {
        assert!(matches!(
            Topic::parse("other/v1/x"),
            Err(TopicError::ForeignRoot(_))
        ));
        assert!(matches!(
            Topic::parse("rakkr/v2/server/status"),
            Err(TopicError::ForeignRoot(_))
        ));
        assert!(matches!(
            Topic::parse("rakkr/v1/nodes/a/bogus"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            Topic::parse("rakkr/v1/nodes/a/cmd/x"),
            Err(TopicError::Unknown(_))
        ));
        assert!(matches!(
            Topic::parse("rakkr/v1/nodes/+/status"),
            Err(TopicError::BadNodeId(_))
        ));
        assert!(matches!(
            Topic::parse("rakkr/v1/nodes//status"),
            Err(TopicError::BadNodeId(_))
        ));
        assert!(matches!(
            Topic::parse(&"x".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong { .. })
        ));
    }
}
