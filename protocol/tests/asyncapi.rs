//! docs/mqtt.md's AsyncAPI document is the one the code generates, covers the
//! whole topic tree, and describes what the code actually puts on the wire.

use rakkr_protocol::asyncapi::{document, embedded};
use rakkr_protocol::payload::*;
use rakkr_protocol::topic::{Command, NodeChannel, ROOT};
use rakkr_protocol::{Envelope, MessageId};
use serde_json::Value;

#[test]
fn the_document_in_the_docs_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/mqtt.md");
    let text = std::fs::read_to_string(path).unwrap();
    let in_docs = embedded(&text).unwrap();
    assert!(
        in_docs == document(),
        "docs/mqtt.md is out of step with rakkr-protocol: run `cargo xtask asyncapi`"
    );
}

#[test]
fn every_topic_of_the_tree_is_a_channel() {
    let doc = document();
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    let mut expected = vec![format!("{ROOT}/server/status")];
    expected.extend(
        NodeChannel::ALL
            .iter()
            .map(|c| format!("{ROOT}/nodes/{{node}}/{}", c.as_str())),
    );
    expected.extend(
        Command::ALL
            .iter()
            .map(|c| format!("{ROOT}/nodes/{{node}}/cmd/{}", c.as_str())),
    );
    for address in &expected {
        assert!(addresses.contains(&address.as_str()), "{address} missing");
    }
    assert_eq!(addresses.len(), expected.len());
}

/// Top-level check of an encoded message against its schema: every field it
/// has is described, every required field is present (for tagged unions, in
/// the branch its tag selects).
fn conforms(schema_name: &str, message: &Value) {
    let doc = document();
    let schema = &doc["components"]["schemas"][schema_name];
    assert!(schema.is_object(), "no schema {schema_name}");
    let fields = message.as_object().unwrap();
    let mut properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    let mut required: Vec<&Value> = schema["required"].as_array().unwrap().iter().collect();
    if let Some(branches) = schema["oneOf"].as_array() {
        let branch = branches
            .iter()
            .find(|b| {
                b["properties"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, p)| p.get("const").is_none_or(|c| fields.get(k) == Some(c)))
            })
            .unwrap_or_else(|| panic!("{schema_name}: no branch matches {message}"));
        properties.extend(branch["properties"].as_object().unwrap().keys());
        required.extend(branch["required"].as_array().unwrap());
    }
    for key in fields.keys() {
        assert!(
            properties.contains(&key),
            "{schema_name}: `{key}` is not described"
        );
    }
    for key in required {
        assert!(
            fields.contains_key(key.as_str().unwrap()),
            "{schema_name}: required {key} missing from {message}"
        );
    }
}

fn wire<T: rakkr_protocol::envelope::Payload>(body: T) -> Value {
    serde_json::from_slice(&Envelope::new(MessageId::new(1), 1, body).encode()).unwrap()
}

#[test]
fn what_the_code_sends_is_what_the_schemas_describe() {
    conforms(
        "NodeStatusMessage",
        &wire(NodeStatus::Online {
            agent_version: "0.1.0".into(),
            slot: BootSlot::A,
            capabilities: Capabilities {
                sources: vec!["alsa".into()],
                channels: 8,
                sample_rates: vec![48_000],
                codecs: vec!["flac".into()],
                max_jobs: 1,
                devices: Vec::new(),
            },
            realtime: RealtimeStatus::default(),
        }),
    );
    conforms(
        "NodeStatusMessage",
        &wire(NodeStatus::Offline {
            reason: OfflineReason::ConnectionLost,
        }),
    );
    conforms(
        "ServerStatusMessage",
        &wire(ServerStatus::Online {
            server_version: "0.1.0".into(),
        }),
    );
    let mut flags = MeterFlags::default();
    flags.insert(MeterFlag::Clipping);
    conforms(
        "MeterFrameMessage",
        &wire(MeterFrame {
            captured_at_ms: 2,
            window_ms: 1000,
            sample_rate: 48_000,
            channels: vec![ChannelMeter {
                peak_dbfs: -1.0,
                rms_dbfs: -10.0,
                clipped: 3,
                dc_offset: 0.01,
                stuck_frames: 7,
                correlation_next: Some(0.5),
                flags,
            }],
            counters: Some(NodeCounters {
                xruns: 2,
                frames_dropped: 0,
                device_returns: 1,
                outbox_bytes: 512,
                upload_files: 1,
                upload_bytes: 4_096,
            }),
        }),
    );
    conforms("LiveRequestMessage", &wire(LiveRequest { for_ms: 30_000 }));
    conforms(
        "HealthEventMessage",
        &wire(HealthEvent {
            condition: HealthCondition::DeviceLost,
            change: HealthChange::Raised,
            severity: Severity::Critical,
            at_ms: 3,
            detail: "gone".into(),
            subject: String::new(),
        }),
    );
}
