//! The invariants of the protocol decoders, written once and used twice: by
//! the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) on every generated input,
//! and by `protocol/tests/fuzz_corpus.rs`, which replays the kept corpus
//! (`fuzz/corpus/<target>/`) on every `cargo test`.
//!
//! Each check takes the raw bytes exactly as the fuzzer feeds them, panics
//! when an invariant breaks, and otherwise returns what the input was accepted
//! as (`None`: rejected with a typed error), so the replay can tell that the
//! corpus still reaches the accepting paths.
//!
//! Included with `#[path = "…/checks.rs"] mod checks;`; it may use only `std`
//! and `rakkr_protocol`.

#![allow(dead_code)]

use std::fmt::Debug;

use rakkr_protocol::channel_map::{ChannelMap, MAX_OUTPUTS};
use rakkr_protocol::envelope::Payload;
use rakkr_protocol::job::{JobCommand, JobReport};
use rakkr_protocol::payload::{
    Ack, HealthEvent, LiveRequest, MeterFrame, NodeStatus, ServerStatus,
};
use rakkr_protocol::topic::MAX_TOPIC_LEN;
use rakkr_protocol::{DecodeError, Envelope, MAX_PAYLOAD_BYTES, SCHEMA_VERSION, Topic, TopicError};

/// What a check returns: the name of what the input was accepted as.
pub type Accepted = Option<&'static str>;

/// A fuzz target's check.
pub type Check = fn(&[u8]) -> Accepted;

/// Every fuzz target, by the name of its binary and corpus directory.
pub const TARGETS: [(&str, Check); 3] = [
    ("envelope", envelope),
    ("topic", topic),
    ("channel_map", channel_map),
];

/// The payload decoders of the `envelope` target, in selector order: an
/// input whose first byte is `b'0' + i` goes to `PAYLOADS[i]` (any other
/// byte picks `(byte - b'0') mod 8`), so hand-written seeds stay readable.
pub const PAYLOADS: [&str; 8] = [
    "node_status",
    "server_status",
    "meter_frame",
    "health_event",
    "ack",
    "job_report",
    "job_command",
    "live_request",
];

/// `Envelope::<T>::decode` for the payload type the first byte picks.
pub fn envelope(data: &[u8]) -> Accepted {
    let (&selector, bytes) = data.split_first()?;
    let index = usize::from(selector.wrapping_sub(b'0')) % PAYLOADS.len();
    let accepted = match index {
        0 => decoder::<NodeStatus>(bytes),
        1 => decoder::<ServerStatus>(bytes),
        2 => decoder::<MeterFrame>(bytes),
        3 => decoder::<HealthEvent>(bytes),
        4 => decoder::<Ack>(bytes),
        5 => decoder::<JobReport>(bytes),
        6 => decoder::<JobCommand>(bytes),
        _ => decoder::<LiveRequest>(bytes),
    };
    accepted.then_some(PAYLOADS[index])
}

/// The decoder's invariants for one payload type; true if `bytes` decoded.
///
/// - it never panics, and every error is typed and prints;
/// - more than [`MAX_PAYLOAD_BYTES`] is always `TooLarge`, and nothing else is;
/// - what decodes carries [`SCHEMA_VERSION`] and passes its own validation;
/// - what decodes re-encodes to bytes that decode to an equal value, and
///   encoding that again gives the same bytes (the encoding is canonical);
/// - the same message padded to exactly the limit still decodes; one byte more
///   is refused as too large;
/// - the same message under any other version, or with none, is refused as
///   such (before its body is read); field order does not matter.
pub fn decoder<T: Payload + Clone + Debug + PartialEq>(bytes: &[u8]) -> bool {
    let kind = T::KIND;
    let result = Envelope::<T>::decode(bytes);
    if let Err(e) = &result {
        assert!(!e.to_string().is_empty());
    }
    if bytes.len() > MAX_PAYLOAD_BYTES {
        assert_eq!(
            result,
            Err(DecodeError::TooLarge {
                kind,
                len: bytes.len()
            }),
            "a {kind} over the limit was not refused as too large"
        );
        return false;
    }
    let decoded = match result {
        Ok(decoded) => decoded,
        Err(DecodeError::TooLarge { len, .. }) => {
            panic!("a {len}-byte {kind} (within the limit) was refused as too large")
        }
        Err(_) => return false,
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(
        decoded.v, SCHEMA_VERSION,
        "{kind} decoded with another version"
    );
    if let Err(e) = decoded.body.validate() {
        panic!("a decoded {kind} fails its own validation: {e}");
    }

    // Round trip.
    let encoded = decoded.encode();
    let again = Envelope::<T>::decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "a {kind} that decoded re-encodes to something that does not: {e}\n\
             input:      {}\nre-encoded: {}",
            text(bytes),
            text(&encoded)
        )
    });
    assert_eq!(
        again,
        decoded,
        "a {kind} changed in a round trip\ninput:      {}\nre-encoded: {}",
        text(bytes),
        text(&encoded)
    );
    assert_eq!(
        text(&again.encode()),
        text(&encoded),
        "the encoding of a {kind} is not canonical"
    );

    // Size limit, at the boundary: trailing whitespace is valid JSON.
    let mut padded = bytes.to_vec();
    padded.resize(MAX_PAYLOAD_BYTES, b' ');
    assert_eq!(
        Envelope::<T>::decode(&padded).as_ref(),
        Ok(&decoded),
        "a {kind} padded to exactly the limit was not accepted"
    );
    padded.push(b' ');
    assert_eq!(
        Envelope::<T>::decode(&padded),
        Err(DecodeError::TooLarge {
            kind,
            len: MAX_PAYLOAD_BYTES + 1
        }),
        "a {kind} one byte over the limit was not refused as too large"
    );

    // Versions: the encoder writes "v" first, so it can be swapped out.
    let prefix = format!("{{\"v\":{SCHEMA_VERSION},");
    let fields = encoded.strip_prefix(prefix.as_bytes()).unwrap_or_else(|| {
        panic!(
            "an encoded {kind} does not start with {prefix}: {}",
            text(&encoded)
        )
    });
    let with_version = |v: &str| [format!("{{\"v\":{v},").as_bytes(), fields].concat();
    for found in [
        0,
        u64::from(SCHEMA_VERSION) + 1,
        u64::from(u16::MAX) + 1,
        u64::MAX,
    ] {
        assert_eq!(
            Envelope::<T>::decode(&with_version(&found.to_string())),
            Err(DecodeError::UnsupportedVersion { kind, found }),
            "a {kind} under version {found} was not refused as such"
        );
    }
    assert_eq!(
        Envelope::<T>::decode(&with_version("null")),
        Err(DecodeError::MissingVersion { kind })
    );
    let without_version = [b"{", fields].concat();
    assert_eq!(
        Envelope::<T>::decode(&without_version),
        Err(DecodeError::MissingVersion { kind }),
        "a {kind} without \"v\" was not refused as such"
    );
    let version_last = match fields.strip_suffix(b"}") {
        Some(body) => [b"{", body, format!(",\"v\":{SCHEMA_VERSION}}}").as_bytes()].concat(),
        None => panic!("an encoded {kind} is not an object: {}", text(&encoded)),
    };
    assert_eq!(
        Envelope::<T>::decode(&version_last).as_ref(),
        Ok(&decoded),
        "a {kind} with \"v\" last decoded differently: {}",
        text(&version_last)
    );
    true
}

/// `Topic::parse`: never panics; what parses prints back as exactly the input
/// (so a topic has one spelling, which broker ACLs rely on), parses back equal,
/// and is within the length limit with no wildcard in it.
pub fn topic(data: &[u8]) -> Accepted {
    let text = String::from_utf8_lossy(data);
    match Topic::parse(&text) {
        Ok(topic) => {
            let shown = topic.to_string();
            assert_eq!(shown, text, "topic {topic:?} prints differently");
            assert_eq!(Topic::parse(&shown).as_ref(), Ok(&topic));
            assert!(shown.len() <= MAX_TOPIC_LEN);
            assert!(!shown.contains(['+', '#']), "{shown:?} has a wildcard");
            if let Some(node) = topic.node_id() {
                assert!(shown.contains(&format!("/nodes/{node}/")));
            }
            Some("topic")
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if text.len() > MAX_TOPIC_LEN {
                assert_eq!(e, TopicError::TooLong { len: text.len() });
            }
            None
        }
    }
}

/// `ChannelMap::parse`, with the first byte as the device's channel count:
/// never panics; what parses reads only existing channels, has 1 to
/// [`MAX_OUTPUTS`] outputs, prints as text that parses back equal for the
/// same channel count (and prints the same again); mapping frames of
/// extreme samples gives one sample per output, and a mix of equal samples
/// is that sample (no overflow, no rounding drift).
pub fn channel_map(data: &[u8]) -> Accepted {
    let (&inputs, text) = data.split_first()?;
    let inputs = usize::from(inputs);
    let text = String::from_utf8_lossy(text);
    let map = match ChannelMap::parse(&text, inputs) {
        Ok(map) => map,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return None;
        }
    };
    assert_eq!(map.inputs(), inputs);
    assert!(
        (1..=MAX_OUTPUTS).contains(&map.outputs()),
        "{text:?} gave {} outputs",
        map.outputs()
    );
    assert!(
        map.sources().all(|c| c < inputs),
        "{text:?} reads past {inputs}"
    );
    let shown = map.to_string();
    let reparsed = ChannelMap::parse(&shown, inputs)
        .unwrap_or_else(|e| panic!("{text:?} prints as {shown:?}, which does not parse: {e}"));
    assert_eq!(
        reparsed, map,
        "{text:?} prints as {shown:?}, which parses differently"
    );
    assert_eq!(reparsed.to_string(), shown);

    for sample in [i32::MIN, i32::MAX, -1, 0, 1] {
        let frames = vec![sample; inputs * 2];
        for shift in [0, 8, 16] {
            let out: Vec<i32> = map.map_frames(&frames, shift).collect();
            assert_eq!(out.len(), map.outputs() * 2, "{shown:?}");
            assert!(
                out.iter().all(|&s| s == sample >> shift),
                "{shown:?} maps {sample} >> {shift} to {out:?}"
            );
        }
    }
    Some("channel_map")
}
