//! Every payload round-trips; every bad input is a typed error, never a panic.

use proptest::prelude::*;
use rakkr_protocol::payload::*;
use rakkr_protocol::{DecodeError, Envelope, MAX_PAYLOAD_BYTES, MessageId, SCHEMA_VERSION};

fn status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        (
            "[ -~]{0,40}",
            prop::sample::select(vec![BootSlot::A, BootSlot::B, BootSlot::None]),
            1u16..=512,
            prop::collection::vec(8000u32..=192_000, 0..8),
            0u16..16,
        )
            .prop_map(|(agent_version, slot, channels, sample_rates, max_jobs)| {
                NodeStatus::Online {
                    agent_version,
                    slot,
                    capabilities: Capabilities {
                        sources: vec!["synthetic".into()],
                        channels,
                        sample_rates,
                        codecs: vec!["flac".into()],
                        max_jobs,
                        devices: vec![rakkr_protocol::payload::CaptureDevice {
                            name: "hw:CARD=USB,DEV=0".into(),
                            description: "USB Audio — 8 in".into(),
                            in_use: true,
                        }],
                    },
                    realtime: Default::default(),
                }
            }),
        prop::sample::select(vec![OfflineReason::ConnectionLost, OfflineReason::Shutdown])
            .prop_map(|reason| NodeStatus::Offline { reason }),
    ]
}

fn level() -> impl Strategy<Value = f32> {
    prop_oneof![Just(DBFS_FLOOR), DBFS_FLOOR..=DBFS_CEILING]
}

fn meter_frame() -> impl Strategy<Value = MeterFrame> {
    (
        any::<u64>(),
        1u32..60_000,
        8000u32..=192_000,
        prop::collection::vec(
            (
                level(),
                level(),
                any::<u32>(),
                -1.0f32..=1.0,
                any::<u32>(),
                proptest::option::of(-1.0f32..=1.0),
                proptest::collection::vec(proptest::sample::select(MeterFlag::ALL.to_vec()), 0..4),
            )
                .prop_map(
                    |(
                        peak_dbfs,
                        rms_dbfs,
                        clipped,
                        dc_offset,
                        stuck_frames,
                        correlation_next,
                        flags,
                    )| {
                        ChannelMeter {
                            peak_dbfs,
                            rms_dbfs,
                            clipped,
                            dc_offset,
                            stuck_frames,
                            correlation_next,
                            flags: flags.into_iter().collect(),
                        }
                    },
                ),
            0..64,
        ),
    )
        .prop_map(
            |(captured_at_ms, window_ms, sample_rate, channels)| MeterFrame {
                captured_at_ms,
                window_ms,
                sample_rate,
                channels,
                counters: None,
            },
        )
}

proptest! {
    #[test]
    fn node_status_round_trips(body in status(), ms in any::<u64>()) {
        let env = Envelope::new(MessageId::new(ms % (1 << 47)), ms, body);
        prop_assert_eq!(Envelope::<NodeStatus>::decode(&env.encode()).unwrap(), env);
    }

    #[test]
    fn meter_frames_round_trip(body in meter_frame(), ms in any::<u64>()) {
        let env = Envelope::new(MessageId::new(ms % (1 << 47)), ms, body);
        prop_assert_eq!(Envelope::<MeterFrame>::decode(&env.encode()).unwrap(), env);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::<NodeStatus>::decode(&bytes);
        let _ = Envelope::<MeterFrame>::decode(&bytes);
        let _ = Envelope::<ServerStatus>::decode(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(text in r#"\{("[a-z_]{1,10}":(-?[0-9]{1,20}|"[ -~]{0,10}"|null|true|\[\]|\{\}),?){0,8}\}"#) {
        let _ = Envelope::<NodeStatus>::decode(text.as_bytes());
        let _ = Envelope::<MeterFrame>::decode(text.as_bytes());
    }

    #[test]
    fn other_schema_versions_are_refused(v in any::<u64>().prop_filter("not ours", |v| *v != u64::from(SCHEMA_VERSION)), body in status()) {
        let mut json = serde_json::to_value(Envelope::new(MessageId::new(1), 1, body)).unwrap();
        json["v"] = v.into();
        let err = Envelope::<NodeStatus>::decode(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        prop_assert_eq!(err, DecodeError::UnsupportedVersion { kind: "node status", found: v });
    }
}

fn sample_online() -> serde_json::Value {
    serde_json::to_value(Envelope::new(
        MessageId::new(1_764_400_000_000),
        1_764_400_000_000,
        NodeStatus::Online {
            agent_version: "0.1.0".into(),
            slot: BootSlot::A,
            capabilities: Capabilities {
                sources: vec!["synthetic".into()],
                channels: 2,
                sample_rates: vec![48000],
                codecs: vec![],
                max_jobs: 1,
                devices: Vec::new(),
            },
            realtime: Default::default(),
        },
    ))
    .unwrap()
}

#[test]
fn the_wire_format_is_flat_and_versioned() {
    let json = sample_online();
    assert_eq!(json["v"], 1);
    assert_eq!(json["state"], "online");
    assert_eq!(json["slot"], "a");
    assert!(json["msg_id"].is_string());
    assert_eq!(json["sent_at_ms"], 1_764_400_000_000u64);
}

#[test]
fn typed_errors_for_each_kind_of_bad_input() {
    let decode = |v: &serde_json::Value| {
        Envelope::<NodeStatus>::decode(&serde_json::to_vec(v).unwrap()).unwrap_err()
    };
    let mut no_version = sample_online();
    no_version.as_object_mut().unwrap().remove("v");
    assert_eq!(
        decode(&no_version),
        DecodeError::MissingVersion {
            kind: "node status"
        }
    );

    let mut bad_state = sample_online();
    bad_state["state"] = "sleeping".into();
    assert!(matches!(decode(&bad_state), DecodeError::Malformed { .. }));

    let mut bad_id = sample_online();
    bad_id["msg_id"] = "not-a-uuid".into();
    assert!(matches!(decode(&bad_id), DecodeError::Malformed { .. }));

    let mut long_version = sample_online();
    long_version["agent_version"] = "x".repeat(MAX_SHORT_TEXT + 1).into();
    assert!(matches!(decode(&long_version), DecodeError::Invalid { .. }));

    let huge = vec![b' '; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        Envelope::<NodeStatus>::decode(&huge),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        Envelope::<NodeStatus>::decode(b"not json"),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn meter_frames_are_bounded() {
    let frame = |channels: usize, level: f32| {
        let out_of_range = level.is_nan();
        let level = if out_of_range { -10.0 } else { level };
        let f = MeterFrame {
            captured_at_ms: 1,
            window_ms: 1000,
            sample_rate: 48000,
            channels: vec![
                ChannelMeter {
                    peak_dbfs: level,
                    rms_dbfs: level,
                    clipped: 0,
                    ..Default::default()
                };
                channels
            ],
            counters: None,
        };
        let mut json = serde_json::to_value(Envelope::new(MessageId::new(1), 1, f)).unwrap();
        if out_of_range {
            json["channels"][0]["peak_dbfs"] = 1e9.into();
        }
        Envelope::<MeterFrame>::decode(&serde_json::to_vec(&json).unwrap())
    };
    assert!(frame(MAX_CHANNELS, -10.0).is_ok());
    assert!(matches!(
        frame(MAX_CHANNELS + 1, -10.0),
        Err(DecodeError::Invalid { .. })
    ));
    assert!(matches!(
        frame(1, f32::NAN),
        Err(DecodeError::Invalid { .. })
    ));
    assert_eq!(clamp_dbfs(f32::NEG_INFINITY), DBFS_FLOOR);
    assert_eq!(clamp_dbfs(f32::NAN), DBFS_FLOOR);
}

#[test]
fn meter_flags_are_a_list_of_names_and_unknown_ones_are_ignored() {
    let c = ChannelMeter {
        flags: [MeterFlag::Clipping, MeterFlag::Correlated]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let json = serde_json::to_value(c).unwrap();
    assert_eq!(json["flags"], serde_json::json!(["clipping", "correlated"]));
    assert!(
        json.get("dc_offset").is_none(),
        "zero values stay off the wire"
    );
    let back: ChannelMeter = serde_json::from_value(serde_json::json!({
        "peak_dbfs": -1.0, "rms_dbfs": -3.0, "clipped": 0, "flags": ["flatline", "from_the_future"]
    }))
    .unwrap();
    assert_eq!(back.flags.iter().collect::<Vec<_>>(), [MeterFlag::Flatline]);
}

#[test]
fn health_events_have_a_flat_wire_form_and_a_bounded_detail() {
    let event = HealthEvent {
        condition: HealthCondition::DeviceLost,
        change: HealthChange::Raised,
        severity: Severity::Critical,
        at_ms: 1_764_400_000_000,
        detail: "capture device hw:1 stopped delivering audio".into(),
        subject: String::new(),
    };
    let env = Envelope::new(MessageId::new(1_764_400_000_000), 1, event.clone());
    let json = serde_json::to_value(&env).unwrap();
    assert_eq!(json["condition"], "device_lost");
    assert_eq!(json["change"], "raised");
    assert_eq!(json["severity"], "critical");
    assert_eq!(Envelope::<HealthEvent>::decode(&env.encode()).unwrap(), env);

    let long = Envelope::new(
        MessageId::new(1),
        1,
        HealthEvent {
            detail: "x".repeat(MAX_DETAIL_TEXT + 1),
            ..event
        },
    );
    assert!(matches!(
        Envelope::<HealthEvent>::decode(&long.encode()),
        Err(DecodeError::Invalid { .. })
    ));
}
