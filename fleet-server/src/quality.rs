//! A recording's quality timeline: the health conditions that held while it
//! was recorded, as spans on the take's own time axis, so an operator sees
//! at a glance which minutes of a take are suspect and why.
//!
//! Built from the node's stored health events (appliance rules and the
//! server's own), replayed from [`LOOKBACK_MS`] before the take so a
//! condition that began earlier and still held is shown from the take's
//! start. Only what concerns the take is kept: node-wide and device
//! conditions, the channels the take records (`channel:N`, `channels:N+M`),
//! the job itself (`job:…`) and its schedule occurrence (`schedule:…`).
//! A span still open at the end of the take (or now, while it records) runs
//! to the end and says so.

use std::collections::HashMap;

use maud::{Markup, html};
use rakkr_protocol::payload::{HealthChange, HealthCondition, Severity};
use rakkr_store::{HealthEventRecord, JobRecord};
use serde::Serialize;

/// How far before a take events are replayed to know what already held.
pub const LOOKBACK_MS: u64 = 24 * 3600 * 1000;

/// Most events one timeline reads.
pub const MAX_EVENTS: usize = 20_000;

/// One stretch of one condition.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct QualitySpan {
    /// Milliseconds from the take's start (clipped to the take).
    pub from_ms: u64,
    pub to_ms: u64,
    /// The worst severity raised within the span.
    pub severity: Severity,
    /// The evidence of the last raise.
    pub detail: String,
    /// Still raised when the take ended (or now, while it records).
    pub open_at_end: bool,
}

/// One condition of one subject, with its spans.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct QualityLane {
    pub condition: HealthCondition,
    pub subject: String,
    pub spans: Vec<QualitySpan>,
}

/// A take's quality timeline.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct QualityTimeline {
    /// The take's start and end (now, while it records), ms since the epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// One lane per condition and subject that held at some point, in order
    /// of their first span.
    pub lanes: Vec<QualityLane>,
    /// The node's events up to this time (ms since the epoch) may have been
    /// pruned (the store keeps each node's newest
    /// [`rakkr_store::MAX_HEALTH_EVENTS_PER_NODE`]): a condition raised
    /// before then may be missing or start late here. Absent when nothing
    /// the timeline reads was pruned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete_until_ms: Option<u64>,
}

/// The take's time: from its report, or, while it records, from when the
/// job was made until `now_ms`. None before it ran.
pub fn take_span(job: &JobRecord, now_ms: u64) -> Option<(u64, u64)> {
    use rakkr_protocol::state::JobState;
    match &job.recording {
        Some(r) if r.sample_rate > 0 => {
            let length = r.frames * 1000 / u64::from(r.sample_rate);
            Some((r.start_unix_ms, r.start_unix_ms + length))
        }
        _ if matches!(job.state, JobState::Running | JobState::StopRequested) => {
            Some((job.created_ms, now_ms.max(job.created_ms)))
        }
        _ => None,
    }
}

/// Whether an event's subject concerns `job`.
fn concerns(job: &JobRecord, subject: &str) -> bool {
    let records = |n: &str| {
        n.parse::<u16>()
            .ok()
            .is_some_and(|n| n >= 1 && job.sources.contains(&(n - 1)))
    };
    if subject.is_empty() || subject.starts_with("device:") {
        return true;
    }
    if let Some(n) = subject.strip_prefix("channel:") {
        return records(n);
    }
    if let Some(pair) = subject.strip_prefix("channels:") {
        return pair.split('+').any(records);
    }
    if let Some(id) = subject.strip_prefix("job:") {
        return id == job.id.to_string();
    }
    if let Some(rest) = subject.strip_prefix("schedule:") {
        let Some(by) = &job.scheduled else {
            return false;
        };
        let occurrence = format!("{}/{}", by.schedule, by.occurrence);
        return match rest.strip_prefix(occurrence.as_str()) {
            Some("") => true,
            Some(tail) => tail.strip_prefix("/channel:").is_some_and(records),
            None => false,
        };
    }
    // A subject this server does not know yet: shown rather than hidden.
    true
}

/// The timeline of `job` over `start_ms..end_ms` from the node's `events`
/// (oldest first, from [`LOOKBACK_MS`] before the take) and until when they
/// may have been pruned ([`rakkr_store::Store::health_events_pruned_until`]).
pub fn timeline(
    job: &JobRecord,
    start_ms: u64,
    end_ms: u64,
    events: &[HealthEventRecord],
    pruned_until_ms: Option<u64>,
) -> QualityTimeline {
    struct Open {
        since_ms: u64,
        severity: Severity,
        detail: String,
    }
    let mut lanes: HashMap<(HealthCondition, String), Vec<QualitySpan>> = HashMap::new();
    let mut open: HashMap<(HealthCondition, String), Open> = HashMap::new();
    let mut close = |key: &(HealthCondition, String), o: Open, at_ms: u64, open_at_end: bool| {
        let (from, to) = (o.since_ms.max(start_ms), at_ms.min(end_ms));
        if to < from || o.since_ms > end_ms || at_ms < start_ms {
            return;
        }
        lanes.entry(key.clone()).or_default().push(QualitySpan {
            from_ms: from - start_ms,
            to_ms: to - start_ms,
            severity: o.severity,
            detail: o.detail,
            open_at_end,
        });
    };
    let mut sorted: Vec<&HealthEventRecord> = events
        .iter()
        .filter(|e| concerns(job, &e.event.subject))
        .collect();
    sorted.sort_by_key(|e| e.event.at_ms);
    for e in sorted {
        let ev = &e.event;
        if ev.at_ms > end_ms {
            break;
        }
        let key = (ev.condition, ev.subject.clone());
        match ev.change {
            HealthChange::Raised => match open.get_mut(&key) {
                Some(o) => {
                    o.severity = o.severity.max(ev.severity);
                    o.detail = ev.detail.clone();
                }
                None => {
                    open.insert(
                        key,
                        Open {
                            since_ms: ev.at_ms,
                            severity: ev.severity,
                            detail: ev.detail.clone(),
                        },
                    );
                }
            },
            HealthChange::Cleared => {
                if let Some(o) = open.remove(&key) {
                    close(&key, o, ev.at_ms, false);
                }
            }
        }
    }
    for (key, o) in std::mem::take(&mut open) {
        close(&key, o, end_ms, true);
    }
    let mut lanes: Vec<QualityLane> = lanes
        .into_iter()
        .map(|((condition, subject), mut spans)| {
            spans.sort_by_key(|s| s.from_ms);
            QualityLane {
                condition,
                subject,
                spans,
            }
        })
        .collect();
    lanes.sort_by(|a, b| {
        let key = |l: &QualityLane| (l.spans[0].from_ms, l.condition.as_str(), l.subject.clone());
        key(a).cmp(&key(b))
    });
    QualityTimeline {
        start_ms,
        end_ms,
        lanes,
        incomplete_until_ms: pruned_until_ms
            .filter(|&ms| ms >= start_ms.saturating_sub(LOOKBACK_MS)),
    }
}

fn clock(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The timeline as bars on the take's time axis (SVG sized by attributes,
/// so it works under the console's CSP) and the same as a table for
/// keyboards, screen readers and copying.
pub fn timeline_markup(t: &QualityTimeline) -> Markup {
    let length = t.end_ms.saturating_sub(t.start_ms).max(1);
    let x = |ms: u64| format!("{:.2}", ms as f64 * 1000.0 / length as f64);
    let w = |s: &QualitySpan| {
        format!(
            "{:.2}",
            ((s.to_ms - s.from_ms) as f64 * 1000.0 / length as f64).max(3.0)
        )
    };
    html! {
        @if let Some(until) = t.incomplete_until_ms {
            p.warn role="note" {
                "This node's health events up to " (crate::console::utc_seconds(until))
                " UTC were pruned (the server keeps each node's newest "
                (rakkr_store::MAX_HEALTH_EVENTS_PER_NODE) "): a condition raised before then may be missing"
                @if until >= t.start_ms { " or start late" }
                "."
            }
        }
        @if t.lanes.is_empty() {
            p.muted { "No health conditions while this was recorded." }
        } @else {
            div.quality-timeline aria-hidden="true" {
                @for lane in &t.lanes {
                    div.quality-lane {
                        span.label { (lane.condition.as_str()) @if !lane.subject.is_empty() { " " span.muted { (lane.subject) } } }
                        svg.quality-track viewBox="0 0 1000 10" preserveAspectRatio="none" {
                            rect.bg x="0" y="0" width="1000" height="10" {}
                            @for s in &lane.spans {
                                rect class={ "span " (s.severity.as_str()) } x=(x(s.from_ms)) y="0" width=(w(s)) height="10" {
                                    title { (clock(s.from_ms)) "–" (clock(s.to_ms)) ": " (s.detail) }
                                }
                            }
                        }
                    }
                }
                div.quality-lane {
                    span.label {}
                    div.quality-axis { span { "0:00" } span { (clock(length)) } }
                }
            }
            table.quality {
                caption.muted { "Times from the start of the take" }
                thead { tr { th { "Condition" } th { "Subject" } th { "From" } th { "To" } th { "Severity" } th { "Evidence" } } }
                tbody {
                    @for lane in &t.lanes {
                        @for s in &lane.spans {
                            tr {
                                td { (lane.condition.as_str()) }
                                td { code { (lane.subject) } }
                                td { (clock(s.from_ms)) }
                                td { (clock(s.to_ms)) @if s.open_at_end { " (still raised)" } }
                                td { span class={ "badge severity " (s.severity.as_str()) } { (s.severity.as_str()) } }
                                td { (s.detail) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rakkr_protocol::job::{JobSpec, RecordingReport};
    use rakkr_protocol::payload::HealthEvent;
    use rakkr_protocol::state::JobState;
    use rakkr_protocol::{JobId, MessageId, NodeId, ScheduleId};
    use rakkr_store::ScheduledBy;

    use super::*;

    const START: u64 = 1_000_000;

    fn job() -> JobRecord {
        JobRecord {
            id: JobId::new(START),
            node: NodeId::new("n1").unwrap(),
            spec: serde_json::from_str::<JobSpec>("{}").unwrap(),
            sources: vec![2, 3],
            state: JobState::Completed,
            created_ms: START,
            updated_ms: START,
            lease: None,
            cancel_requested: false,
            detail: String::new(),
            recording: Some(RecordingReport {
                files: vec![],
                file_count: 1,
                frames: 60 * 48_000,
                sample_rate: 48_000,
                channels: 2,
                bits: 24,
                start_unix_ms: START,
                gaps: 0,
                recovered: false,
            }),
            applied: vec![],
            notes: String::new(),
            tags: vec![],
            scheduled: None,
            title: None,
            folder: None,
            not_after_ms: None,
            deleted: None,
        }
    }

    fn ev(
        condition: HealthCondition,
        subject: &str,
        change: HealthChange,
        at_s: i64,
    ) -> HealthEventRecord {
        let at_ms = (START as i64 + at_s * 1000) as u64;
        HealthEventRecord {
            node: NodeId::new("n1").unwrap(),
            msg_id: MessageId::new(at_ms),
            event: HealthEvent {
                condition,
                change,
                severity: match change {
                    HealthChange::Raised => Severity::Warning,
                    HealthChange::Cleared => Severity::Info,
                },
                at_ms,
                detail: format!("{change:?} at {at_s}"),
                subject: subject.into(),
            },
            received_ms: at_ms,
        }
    }

    #[test]
    fn spans_are_clipped_to_the_take_and_only_its_channels_count() {
        use HealthChange::*;
        use HealthCondition::*;
        let job = job();
        let (start, end) = take_span(&job, 0).unwrap();
        assert_eq!((start, end), (START, START + 60_000));
        let events = [
            // Began before the take, ended 10 s in.
            ev(DeviceLost, "", Raised, -30),
            ev(DeviceLost, "", Cleared, 10),
            // Channel 3 is the take's (source 2); channel 1 is not.
            ev(Silence, "channel:3", Raised, 20),
            ev(Silence, "channel:3", Cleared, 25),
            ev(Silence, "channel:3", Raised, 50),
            ev(Silence, "channel:1", Raised, 5),
            // Before the take, over before it: not shown.
            ev(Clipping, "channel:4", Raised, -20),
            ev(Clipping, "channel:4", Cleared, -10),
            // A pair with one of the take's channels; another job.
            ev(Correlation, "channels:1+3", Raised, 30),
            ev(
                EncoderFailure,
                "job:0192a000-0000-7000-8000-000000000000",
                Raised,
                30,
            ),
            // After the take.
            ev(Xruns, "", Raised, 70),
        ];
        let t = timeline(&job, start, end, &events, None);
        type Spans = Vec<(u64, u64, bool)>;
        let lanes: Vec<(&str, &str, Spans)> = t
            .lanes
            .iter()
            .map(|l| {
                (
                    l.condition.as_str(),
                    l.subject.as_str(),
                    l.spans
                        .iter()
                        .map(|s| (s.from_ms / 1000, s.to_ms / 1000, s.open_at_end))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            lanes,
            [
                ("device_lost", "", vec![(0, 10, false)]),
                (
                    "silence",
                    "channel:3",
                    vec![(20, 25, false), (50, 60, true)]
                ),
                ("correlation", "channels:1+3", vec![(30, 60, true)]),
            ]
        );
        let html = timeline_markup(&t).into_string();
        assert!(
            html.contains("0:50") && html.contains("(still raised)"),
            "{html}"
        );
    }

    #[test]
    fn a_scheduled_take_shows_its_occurrence_and_a_running_take_runs_to_now() {
        use HealthChange::*;
        let mut job = job();
        let schedule = ScheduleId::new(START);
        job.scheduled = Some(ScheduledBy {
            schedule,
            occurrence: "2026-11-30".into(),
        });
        job.recording = None;
        job.state = JobState::Running;
        job.state = JobState::Queued;
        assert!(
            take_span(&job, START + 40_000).is_none(),
            "not before it runs"
        );
        job.state = JobState::Running;
        let (start, end) = take_span(&job, START + 40_000).unwrap();
        assert_eq!(end - start, 40_000);
        let events = [
            ev(
                HealthCondition::LowSignal,
                &format!("schedule:{schedule}/2026-11-30/channel:4"),
                Raised,
                12,
            ),
            ev(
                HealthCondition::LowSignal,
                &format!("schedule:{schedule}/2026-11-30/channel:1"),
                Raised,
                12,
            ),
            ev(
                HealthCondition::ScheduleDeferred,
                &format!("schedule:{schedule}/2026-11-29"),
                Raised,
                1,
            ),
        ];
        let t = timeline(&job, start, end, &events, None);
        assert_eq!(t.lanes.len(), 1, "{t:?}");
        assert!(t.lanes[0].subject.ends_with("/channel:4"));
        assert_eq!(t.lanes[0].spans[0].to_ms, 40_000);
        assert!(timeline(&job, start, end, &[], None).lanes.is_empty());
        assert!(
            timeline_markup(&timeline(&job, start, end, &[], None))
                .into_string()
                .contains("No health conditions")
        );
    }

    #[test]
    fn a_timeline_says_when_the_events_it_reads_were_pruned() {
        let mut j = job();
        if let Some(r) = j.recording.as_mut() {
            r.start_unix_ms = 3 * LOOKBACK_MS;
        }
        let (start, end) = take_span(&j, 3 * LOOKBACK_MS).unwrap();
        // Pruned long before the look-back: nothing missing.
        let long_ago = start - LOOKBACK_MS - 1;
        assert_eq!(
            timeline(&j, start, end, &[], Some(long_ago)).incomplete_until_ms,
            None
        );
        assert!(
            !timeline_markup(&timeline(&j, start, end, &[], Some(long_ago)))
                .into_string()
                .contains("pruned")
        );
        // Pruned inside the look-back: what began before may be missing.
        let before = timeline(&j, start, end, &[], Some(start - 1000));
        assert_eq!(before.incomplete_until_ms, Some(start - 1000));
        let html = timeline_markup(&before).into_string();
        assert!(
            html.contains("were pruned") && html.contains("may be missing."),
            "{html}"
        );
        // Pruned inside the take: spans may also start late.
        let inside = timeline_markup(&timeline(&j, start, end, &[], Some(start + 1000)));
        assert!(
            inside
                .into_string()
                .contains("may be missing or start late.")
        );
    }
}
