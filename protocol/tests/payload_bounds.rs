//! Every payload a valid sender can build fits the wire bound: a message that
//! passes its own `validate()` must never be refused (or drop the sender's
//! connection) for its size.

use rakkr_protocol::job::{
    AutonomousStart, JobReport, JobSpec, JobUpdate, MAX_REPORTED_FILES, RecordedFile,
    RecordingReport,
};
use rakkr_protocol::payload::{
    ChannelMeter, DBFS_FLOOR, MAX_CHANNELS, MAX_SHORT_TEXT, MeterFlag, MeterFrame,
};
use rakkr_protocol::state::JobState;
use rakkr_protocol::{Envelope, JobId, MAX_PAYLOAD_BYTES};

#[test]
fn the_widest_valid_meter_frame_fits() {
    // Every field at its longest printed form: nine-digit floats, the largest
    // counters, every flag.
    let widest = ChannelMeter {
        peak_dbfs: DBFS_FLOOR + 0.000_015_258_789,
        rms_dbfs: -123.456_79,
        clipped: u32::MAX,
        dc_offset: -0.999_999_94,
        stuck_frames: u32::MAX,
        correlation_next: Some(-0.999_999_94),
        flags: MeterFlag::ALL.into_iter().collect(),
    };
    let frame = MeterFrame {
        captured_at_ms: u64::MAX,
        window_ms: u32::MAX,
        sample_rate: u32::MAX,
        channels: vec![widest; MAX_CHANNELS],
        counters: None,
    };
    let bytes = Envelope::stamped(u64::MAX / 2, frame).encode();
    assert!(
        bytes.len() <= MAX_PAYLOAD_BYTES,
        "{} bytes for {MAX_CHANNELS} channels; the bound is {MAX_PAYLOAD_BYTES}",
        bytes.len()
    );
    assert!(Envelope::<MeterFrame>::decode(&bytes).is_ok());
}

#[test]
fn the_widest_valid_job_report_fits() {
    // The longest plain names that need the most escaping JSON allows them
    // (non-ASCII is written as UTF-8, not escaped).
    let name = "é".repeat(MAX_SHORT_TEXT / 2);
    let file = RecordedFile {
        name,
        frames: u64::MAX,
        bytes: u64::MAX,
    };
    let report = JobReport::Update(JobUpdate {
        job_id: JobId::new(1),
        lease_id: u64::MAX,
        state: JobState::Completed,
        at_ms: u64::MAX,
        detail: "\u{1}".repeat(rakkr_protocol::payload::MAX_DETAIL_TEXT),
        recording: Some(RecordingReport {
            files: vec![file; MAX_REPORTED_FILES],
            file_count: u32::MAX,
            frames: u64::MAX,
            sample_rate: u32::MAX,
            channels: u16::MAX,
            bits: 32,
            start_unix_ms: u64::MAX,
            gaps: u32::MAX,
            recovered: true,
        }),
        autonomous: None,
    });
    // The same from a job the node started by itself: lease 0, and what
    // the server needs to reconcile it, at its widest.
    let JobReport::Update(mut update) = report.clone() else {
        unreachable!()
    };
    update.lease_id = 0;
    update.autonomous = Some(Box::new(AutonomousStart {
        schedule: rakkr_protocol::ScheduleId::new(1),
        revision: u64::MAX,
        occurrence: "é".repeat(MAX_SHORT_TEXT / 2),
        spec: JobSpec {
            device: "é".repeat(MAX_SHORT_TEXT / 2),
            channels: Some("é".repeat(MAX_SHORT_TEXT / 2)),
            profile: Default::default(),
            duration_s: Some(rakkr_protocol::job::MAX_DURATION_S),
            watchdog: Some(rakkr_protocol::watchdog::WatchdogRules {
                silence_s: 86_400,
                low_signal_s: 86_400,
                flatline_s: 86_400,
                clipping_s: 86_400,
                clipping_forget_s: 86_400,
                correlation_s: 86_400,
                xruns: u32::MAX,
                clear_s: 86_400,
                disk_min_free_mb: u64::MAX,
            }),
        },
        tags: (0..16)
            .map(|i| format!("{i:02}{}", "é".repeat(19)))
            .collect(),
    }));
    for report in [report, JobReport::Update(update)] {
        let bytes = Envelope::stamped(1, report).encode();
        assert!(
            bytes.len() <= MAX_PAYLOAD_BYTES,
            "{} bytes; the bound is {MAX_PAYLOAD_BYTES}",
            bytes.len()
        );
        assert!(Envelope::<JobReport>::decode(&bytes).is_ok());
    }
}
