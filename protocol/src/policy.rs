//! A node's policy of some kind (watchdog, retention) as the server sends
//! it, retained on the node's command topic for that kind: the policy's name
//! and its appliance rules. The server keeps the named policies; the node
//! applies the rules and keeps them for restarts without the server.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The appliance rules of a policy of some kind.
pub trait PolicyRules {
    /// What the message is called in errors and logs.
    const KIND: &'static str;
    fn validate(&self) -> Result<(), String>;
}

/// A node's policy of one kind as the server sends it (retained on its
/// command topic): the policy's name and its appliance rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodePolicy<R> {
    /// The policy's name, for the node's status page and logs.
    pub policy: String,
    pub rules: R,
}

impl<R: PolicyRules + Serialize + serde::de::DeserializeOwned> crate::envelope::Payload
    for NodePolicy<R>
{
    const KIND: &'static str = R::KIND;
    fn validate(&self) -> Result<(), String> {
        crate::schedule::check_policy_name(&self.policy)?;
        self.rules.validate()
    }
}
