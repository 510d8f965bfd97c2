//! The MQTT contract as an AsyncAPI 3.0 document, generated from this crate's
//! topic tree ([`crate::topic`]) and payload types ([`crate::payload`]), for MQTT
//! dashboards (Node-RED, Grafana's MQTT source, Home Assistant) and other
//! clients. docs/mqtt.md holds the document; a test keeps it equal to
//! [`document`], and `cargo xtask asyncapi` rewrites it after a change here.
//!
//! Schemas are JSON Schema draft 07 (AsyncAPI's default schema format), one
//! per payload, each including the envelope fields (`v`, `msg_id`,
//! `sent_at_ms`) beside the payload's own.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

use crate::envelope::{Envelope, MAX_PAYLOAD_BYTES, SCHEMA_VERSION};
use crate::ids::MAX_NODE_ID_LEN;
use crate::job::{JobCommand, JobReport};
use crate::payload::{Ack, HealthEvent, LiveRequest, MeterFrame, NodeStatus, ServerStatus};
use crate::topic::{Command, NodeChannel, ROOT};

/// Who publishes on a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    Node,
    Server,
}

/// One channel of the tree, as the document describes it.
struct ChannelDoc {
    id: &'static str,
    address: String,
    sender: Sender,
    qos: u8,
    retained: bool,
    summary: &'static str,
    /// The payload's message name and schema; `None` for channels whose payloads
    /// are not defined yet.
    message: Option<(&'static str, Value)>,
}

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<Envelope<T>>().to_value()
}

/// Every channel: the match statements are exhaustive, so a new channel or
/// command in the topic tree does not compile until it is described here.
fn channels(generator: &mut SchemaGenerator) -> Vec<ChannelDoc> {
    let mut out = vec![ChannelDoc {
        id: "serverStatus",
        address: format!("{ROOT}/server/status"),
        sender: Sender::Server,
        qos: 1,
        retained: true,
        summary: "Server presence: online with its version, or offline (also its Last Will).",
        message: Some(("serverStatus", schema_of::<ServerStatus>(generator))),
    }];
    for channel in NodeChannel::ALL {
        let address = format!("{ROOT}/nodes/{{node}}/{}", channel.as_str());
        let retained = channel.retained();
        out.push(match channel {
            NodeChannel::Status => ChannelDoc {
                id: "nodeStatus",
                address,
                sender: Sender::Node,
                qos: 1,
                retained,
                summary: "Node presence. Online with version, boot slot, capabilities and real-time \
                          status on every connection; offline with reason `shutdown` on an orderly \
                          stop, or `connection_lost` published by the broker as the node's Last Will.",
                message: Some(("nodeStatus", schema_of::<NodeStatus>(generator))),
            },
            NodeChannel::Meters => ChannelDoc {
                id: "nodeMeters",
                address,
                sender: Sender::Node,
                qos: 0,
                retained,
                summary: "Meter frames, one per telemetry window (1 s by default), only while \
                          connected. `captured_at_ms` is the capture time of the window's last \
                          sample: a frame older than a few seconds is stale, not live.",
                message: Some(("meterFrame", schema_of::<MeterFrame>(generator))),
            },
            NodeChannel::Events => ChannelDoc {
                id: "nodeEvents",
                address,
                sender: Sender::Node,
                qos: 1,
                retained,
                summary: "Health events: a condition raised or cleared, in order.",
                message: Some(("healthEvent", schema_of::<HealthEvent>(generator))),
            },
            NodeChannel::Jobs => ChannelDoc {
                id: "nodeJobs",
                address,
                sender: Sender::Node,
                qos: 1,
                retained,
                summary: "Recording jobs from the node (`type`): `claim` asks for work; \
                          `heartbeat` renews a lease; `update` reports `running`, then \
                          `completed`, `failed` or `cancelled` with a recording report. Updates \
                          come from the node's durable outbox: de-duplicate on `msg_id`.",
                message: Some(("jobReport", schema_of::<JobReport>(generator))),
            },
            NodeChannel::Live => ChannelDoc {
                id: "nodeLive",
                address,
                sender: Sender::Node,
                qos: 0,
                retained,
                summary: "Meter frames at the live rate (one per 200 ms, each covering its whole \
                          window), only while a request on `cmd/live` holds: someone is watching \
                          the node. The 1 Hz `meters` telemetry continues unchanged meanwhile.",
                message: Some(("liveMeterFrame", schema_of::<MeterFrame>(generator))),
            },
            NodeChannel::Update => ChannelDoc {
                id: "nodeUpdate",
                address,
                sender: Sender::Node,
                qos: 1,
                retained,
                summary: "The node's latest A/B image update step (`phase`): `installing` and \
                          `checking` with bytes done, `rebooting`, `trial` (running the new \
                          image, not committed), then `committed`, `failed` or `rolled_back` \
                          (decision 0019). The console shows a node whose last step is not \
                          final as `updating`.",
                message: Some((
                    "updateReport",
                    schema_of::<crate::update::UpdateReport>(generator),
                )),
            },
        });
    }
    for command in Command::ALL {
        let address = format!("{ROOT}/nodes/{{node}}/cmd/{}", command.as_str());
        out.push(match command {
            Command::Jobs => ChannelDoc {
                id: "nodeCommandJobs",
                address,
                sender: Sender::Server,
                qos: 1,
                retained: false,
                summary: "Recording jobs for the node (`type`): `offer` (a job under a lease), \
                          `lease` (renewed), `stop` (finalize and keep; `cancel` ends the job \
                          cancelled), `revoked` (the lease is no longer current), `wake` (work is \
                          waiting: claim).",
                message: Some(("jobCommand", schema_of::<JobCommand>(generator))),
            },
            Command::Ack => ChannelDoc {
                id: "nodeCommandAck",
                address,
                sender: Sender::Server,
                qos: 1,
                retained: false,
                summary: "Application-level acknowledgements: the node's messages (health events, \
                          job updates) with these ids are durably stored by the server; the node \
                          removes them from its outbox.",
                message: Some(("ack", schema_of::<Ack>(generator))),
            },
            Command::Live => ChannelDoc {
                id: "nodeCommandLive",
                address,
                sender: Sender::Server,
                qos: 0,
                retained: false,
                summary: "Publish live meter frames on `nodes/{node}/live` for `for_ms` from now \
                          (at most 60 s). The server repeats the request while someone watches; \
                          when the requests stop, so do the live frames.",
                message: Some(("liveRequest", schema_of::<LiveRequest>(generator))),
            },
            Command::Schedules => ChannelDoc {
                id: "nodeCommandSchedules",
                address,
                sender: Sender::Server,
                qos: 1,
                retained: true,
                summary: "Every schedule of the node, sent again whenever one changes. The node \
                          keeps them and, while the server is unreachable, starts their due \
                          occurrences itself under the occurrence's own job id; the server \
                          reconciles those jobs when it hears of them (decision 0014).",
                message: Some((
                    "nodeSchedules",
                    schema_of::<crate::schedule::NodeSchedules>(generator),
                )),
            },
            Command::Watchdog => ChannelDoc {
                id: "nodeCommandWatchdog",
                address,
                sender: Sender::Server,
                qos: 1,
                retained: true,
                summary: "The rules of the node's watchdog policy (how long each quality rule \
                          waits), sent again whenever the policy or the node's choice of it \
                          changes. The node applies them at once and keeps them; without one it \
                          uses its own configuration's `[watchdog]`.",
                message: Some((
                    "nodeWatchdog",
                    schema_of::<crate::watchdog::NodeWatchdog>(generator),
                )),
            },
            Command::Retention => ChannelDoc {
                id: "nodeCommandRetention",
                address,
                sender: Sender::Server,
                qos: 1,
                retained: true,
                summary: "The appliance rules of the node's retention policy (which uploaded \
                          takes it deletes, and when), sent again whenever the policy or the \
                          node's choice of it changes. The node applies them at once and keeps \
                          them; without one it uses its own configuration's `[retention]` and \
                          `[upload] delete_confirmed`. Whatever the rules, only files the server \
                          confirmed are ever deleted.",
                message: Some((
                    "nodeRetention",
                    schema_of::<crate::retention::NodeRetention>(generator),
                )),
            },
            Command::Update => ChannelDoc {
                id: "nodeCommandUpdate",
                address,
                sender: Sender::Server,
                qos: 1,
                retained: true,
                summary: "Install this A/B image: the node fetches it from the server \
                          (`/api/v1/node/images/{image}`, with its credential), checks its \
                          minisign signature against its own release key, writes it into the \
                          slot it is not running, reboots into it once and commits it after it \
                          reached the broker again. Acted on once per `update_id`.",
                message: Some((
                    "updateOrder",
                    schema_of::<crate::update::UpdateOrder>(generator),
                )),
            },
        });
    }
    out
}

/// The whole AsyncAPI 3.0 document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft07()
        .with(|s| s.definitions_path = "/components/schemas/".into())
        .into_generator();
    let channels = channels(&mut generator);
    let (mut channel_map, mut operations, mut messages) = (Map::new(), Map::new(), Map::new());
    for c in &channels {
        let mut channel = json!({
            "address": c.address,
            "description": c.summary,
        });
        if c.address.contains("{node}") {
            channel["parameters"] = json!({"node": {"$ref": "#/components/parameters/node"}});
        }
        if let Some((name, schema)) = &c.message {
            channel["messages"] =
                json!({ *name: {"$ref": format!("#/components/messages/{name}")} });
            messages.insert(
                (*name).to_owned(),
                json!({
                    "name": name,
                    "contentType": "application/json",
                    "payload": schema,
                }),
            );
        }
        channel_map.insert(c.id.to_owned(), channel);
        let mut operation = json!({
            "action": "receive",
            "channel": {"$ref": format!("#/channels/{}", c.id)},
            "summary": format!(
                "Published by the {}; QoS {}{}.",
                match c.sender {
                    Sender::Node => "node",
                    Sender::Server => "server",
                },
                c.qos,
                if c.retained { ", retained" } else { ", not retained" }
            ),
            "bindings": {"mqtt": {"qos": c.qos, "retain": c.retained, "bindingVersion": "0.2.0"}},
        });
        if let Some((name, _)) = &c.message {
            operation["messages"] =
                json!([{"$ref": format!("#/channels/{}/messages/{name}", c.id)}]);
        }
        operations.insert(format!("receive{}", capitalized(c.id)), operation);
    }
    let schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Rakkr MQTT",
            "version": format!("{SCHEMA_VERSION}"),
            "description": format!(
                "Topics and payloads between Rakkr appliances, the fleet server and \
                 dashboards. Every payload is one flat JSON object: the envelope fields \
                 `v` (schema version, {SCHEMA_VERSION}), `msg_id` and `sent_at_ms` beside the \
                 payload's own. At most {MAX_PAYLOAD_BYTES} bytes. Within one version fields \
                 may be added: ignore fields you do not know. Operations are written from a \
                 dashboard's side (it receives)."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channel_map,
        "operations": operations,
        "components": {
            "parameters": {
                "node": {
                    "description": format!(
                        "Node id: 1 to {MAX_NODE_ID_LEN} characters of a-z, 0-9, `-` and `_`, \
                         starting with a letter or digit."
                    )
                }
            },
            "messages": messages,
            "schemas": schemas,
        },
    })
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// Marks the start of the generated block in docs/mqtt.md.
pub const BEGIN: &str =
    "<!-- asyncapi:begin (generated by `cargo xtask asyncapi`; do not edit) -->";
/// Marks its end.
pub const END: &str = "<!-- asyncapi:end -->";

/// `markdown` with the block between [`BEGIN`] and [`END`] replaced by the
/// current document, as a fenced JSON block.
pub fn render_into(markdown: &str) -> Result<String, String> {
    let (start, end) = block_bounds(markdown)?;
    let json = serde_json::to_string_pretty(&document())
        .map_err(|e| format!("cannot serialise the document: {e}"))?;
    Ok(format!(
        "{}\n```json\n{json}\n```\n{}",
        &markdown[..start],
        &markdown[end..]
    ))
}

/// The document embedded in `markdown`, parsed.
pub fn embedded(markdown: &str) -> Result<Value, String> {
    let (start, end) = block_bounds(markdown)?;
    let block = markdown[start..end].trim();
    let json = block
        .strip_prefix("```json")
        .and_then(|b| b.strip_suffix("```"))
        .ok_or("the generated block is not one fenced JSON block")?;
    serde_json::from_str(json).map_err(|e| format!("the embedded document is not JSON: {e}"))
}

/// Byte range strictly between the markers.
fn block_bounds(markdown: &str) -> Result<(usize, usize), String> {
    let start = markdown
        .find(BEGIN)
        .ok_or_else(|| format!("no {BEGIN:?} marker"))?
        + BEGIN.len();
    let end = markdown[start..]
        .find(END)
        .ok_or_else(|| format!("no {END:?} marker after the start"))?
        + start;
    Ok((start, end))
}
