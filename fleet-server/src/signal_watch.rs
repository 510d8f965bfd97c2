//! The scheduled low-signal rule, a server-side sustained rule: during a
//! scheduled take, after its policy's grace period, a channel whose level
//! stays below the policy's threshold for a cumulative duration raises
//! `low_signal` for that channel of that occurrence.
//!
//! The appliance's own rules see continuous conditions (60 s of low signal
//! without a break); this one adds up the seconds, so a channel that is
//! mostly dead but wakes now and then (a loose cable, a mute switch flipped
//! during a lecture) is still caught. It reads the nodes' 1 Hz telemetry
//! frames from the live fleet.
//!
//! Invariants:
//! - Only a job in `running` that a schedule made is watched; the channels
//!   watched are the device channels the job reads (`JobRecord::sources`).
//! - Each telemetry frame counts once, for the time since the frame before
//!   (at most [`MAX_STEP_MS`], the first one its own window), from the end of
//!   the grace period on.
//! - One issue per (occurrence, channel): subject
//!   `schedule:{id}/{occurrence}/channel:{n}` (1-based).
//! - It resolves after `clear_s` above the threshold without a break, and the
//!   total starts again from zero. When the take ends first the issue stays
//!   open: nothing recovered, the recording has the gap in its signal.
//! - After a server restart the totals start from zero; issues still open
//!   are taken as raised, so recovery resolves them and nothing is raised twice.
//! - Frames are stamped by the node's clock, the take's start by the
//!   server's. The grace period's end is moved onto the node's clock by the
//!   node's offset, estimated as the largest `captured − received` of the
//!   take's last [`OFFSET_FRAMES`] frames (the frame that travelled fastest),
//!   so a node whose clock is off by an hour still gets its grace period,
//!   no more and no less, to within the fastest frame's latency.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rakkr_protocol::payload::{HealthChange, HealthCondition, HealthEvent, Severity};
use rakkr_protocol::state::JobState;
use rakkr_protocol::{JobId, NodeId, ScheduleId};
use rakkr_store::Store;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::fleet::{LiveFleet, LiveMeters};
use crate::policies::{WatchdogPolicies, WatchdogPolicy};

/// How often the rule looks (telemetry arrives once a second).
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// The most one frame counts for when frames were missed (a late tick, a
/// frame lost on the way): a longer hole is not assumed to be low signal.
/// Telemetry slower than one frame in 2.5 s may step two windows.
pub const MAX_STEP_MS: u64 = 5_000;

/// Frames the clock-offset estimate looks back over: long enough to meet a
/// fast one, short enough to follow a node whose clock was just set.
pub const OFFSET_FRAMES: usize = 30;

/// A running scheduled take as the rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedTake {
    pub job: JobId,
    pub node: NodeId,
    pub schedule: ScheduleId,
    pub schedule_name: String,
    pub occurrence: String,
    /// Device channels the take reads, 0-based.
    pub sources: Vec<u16>,
    /// When the job was made (the occurrence's start, or the take's start
    /// for one an appliance began on its own): the grace period starts then.
    pub running_since_ms: u64,
    pub policy_name: String,
    pub policy: WatchdogPolicy,
}

impl WatchedTake {
    fn subject(&self, channel: u16) -> String {
        format!(
            "schedule:{}/{}/channel:{}",
            self.schedule,
            self.occurrence,
            channel + 1
        )
    }
}

#[derive(Debug, Default)]
struct ChannelTotals {
    low_ms: u64,
    /// Above the threshold without a break, since the last low frame.
    clean_ms: u64,
    raised: bool,
}

#[derive(Debug, Default)]
struct TakeTotals {
    last_frame_ms: Option<u64>,
    /// `captured − received` of the last frames, newest last.
    node_ahead_ms: std::collections::VecDeque<i64>,
    channels: BTreeMap<u16, ChannelTotals>,
}

/// The rule's state: totals per running take.
#[derive(Debug, Default)]
pub struct ScheduledSignalRule {
    takes: HashMap<JobId, TakeTotals>,
    /// Subjects with an open issue from before this server started.
    open_before: HashSet<(NodeId, String)>,
}

impl ScheduledSignalRule {
    pub fn new() -> ScheduledSignalRule {
        ScheduledSignalRule::default()
    }

    /// An issue still open from before this server started.
    pub fn assume_raised(&mut self, node: NodeId, subject: String) {
        self.open_before.insert((node, subject));
    }

    /// Count each take's node's newest telemetry frame (with when the server
    /// received it) for every running take; takes not listed have ended and
    /// are forgotten.
    pub fn evaluate(
        &mut self,
        takes: &[(WatchedTake, Option<&LiveMeters>)],
    ) -> Vec<(NodeId, HealthEvent)> {
        let running: HashSet<JobId> = takes.iter().map(|(t, _)| t.job).collect();
        self.takes.retain(|job, _| running.contains(job));
        let mut out = Vec::new();
        for (take, meters) in takes {
            let Some(LiveMeters { frame, received_ms }) = meters else {
                continue;
            };
            let totals = self.takes.entry(take.job).or_default();
            let at = frame.captured_at_ms;
            if totals.last_frame_ms.is_some_and(|last| at <= last) {
                continue;
            }
            let previous = totals
                .last_frame_ms
                .unwrap_or(at.saturating_sub(u64::from(frame.window_ms)));
            totals.last_frame_ms = Some(at);
            if totals.node_ahead_ms.len() == OFFSET_FRAMES {
                totals.node_ahead_ms.pop_front();
            }
            totals
                .node_ahead_ms
                .push_back(at as i64 - *received_ms as i64);
            let node_ahead = totals.node_ahead_ms.iter().copied().max().unwrap_or(0);
            let p = &take.policy;
            let grace_end = (take.running_since_ms as i64 + node_ahead).max(0) as u64
                + u64::from(p.grace_s) * 1000;
            if at <= grace_end {
                continue;
            }
            // Slower telemetry (a longer window) may step further.
            let max_step = MAX_STEP_MS.max(2 * u64::from(frame.window_ms));
            let step = at.saturating_sub(previous.max(grace_end)).min(max_step);
            for &channel in &take.sources {
                let Some(meter) = frame.channels.get(usize::from(channel)) else {
                    continue;
                };
                let c = totals.channels.entry(channel).or_insert_with(|| {
                    let subject = take.subject(channel);
                    let raised = self.open_before.remove(&(take.node.clone(), subject));
                    ChannelTotals {
                        raised,
                        ..ChannelTotals::default()
                    }
                });
                let low = meter.rms_dbfs < p.low_signal_dbfs;
                if low {
                    c.low_ms += step;
                    c.clean_ms = 0;
                } else {
                    c.clean_ms += step;
                }
                let (change, detail) = if !c.raised && c.low_ms >= u64::from(p.cumulative_s) * 1000
                {
                    (
                        HealthChange::Raised,
                        format!(
                            "channel {} of schedule {:?}, occurrence {}: below {} dBFS for {} s in \
                             total since the {} s grace period ended (policy {:?}, limit {} s); \
                             last level {:.1} dBFS",
                            channel + 1,
                            take.schedule_name,
                            take.occurrence,
                            p.low_signal_dbfs,
                            c.low_ms / 1000,
                            p.grace_s,
                            take.policy_name,
                            p.cumulative_s,
                            meter.rms_dbfs
                        ),
                    )
                } else if c.raised && c.clean_ms >= u64::from(p.clear_s) * 1000 {
                    (
                        HealthChange::Cleared,
                        format!(
                            "channel {} back above {} dBFS for {} s (now {:.1} dBFS)",
                            channel + 1,
                            p.low_signal_dbfs,
                            c.clean_ms / 1000,
                            meter.rms_dbfs
                        ),
                    )
                } else {
                    continue;
                };
                match change {
                    HealthChange::Raised => c.raised = true,
                    HealthChange::Cleared => *c = ChannelTotals::default(),
                }
                out.push((
                    take.node.clone(),
                    HealthEvent {
                        condition: HealthCondition::LowSignal,
                        change,
                        severity: match change {
                            HealthChange::Raised => Severity::Warning,
                            HealthChange::Cleared => Severity::Info,
                        },
                        at_ms: at,
                        detail,
                        subject: take.subject(channel),
                    },
                ));
            }
        }
        out
    }
}

/// The running scheduled takes, with their policies. Schedules are read again
/// only when their generation changes.
struct TakeFinder {
    generation: Option<u64>,
    schedules: HashMap<ScheduleId, (String, Option<String>)>,
}

impl TakeFinder {
    fn find(
        &mut self,
        store: &dyn Store,
        policies: &WatchdogPolicies,
    ) -> rakkr_store::Result<Vec<WatchedTake>> {
        let mut takes = Vec::new();
        for job in store.active_jobs()? {
            let Some(by) = job.scheduled else { continue };
            if job.state != JobState::Running {
                continue;
            }
            // Its creation, not its last update: a lease lost and regained
            // mid-take must not start the grace period again.
            takes.push((job.id, job.node, by, job.sources, job.created_ms));
        }
        if takes.is_empty() {
            return Ok(Vec::new());
        }
        let generation = store.schedules_generation()?;
        if self.generation != Some(generation) {
            self.schedules = store
                .schedules()?
                .into_iter()
                .map(|r| (r.id, (r.spec.name, r.spec.watchdog)))
                .collect();
            self.generation = Some(generation);
        }
        Ok(takes
            .into_iter()
            .map(|(job, node, by, sources, since)| {
                let (name, wanted) = self
                    .schedules
                    .get(&by.schedule)
                    .cloned()
                    .unwrap_or_else(|| ("(deleted)".to_owned(), None));
                let (policy_name, policy) = policies.for_schedule(wanted.as_deref());
                WatchedTake {
                    job,
                    node,
                    schedule: by.schedule,
                    schedule_name: name,
                    occurrence: by.occurrence,
                    sources,
                    running_since_ms: since,
                    policy_name: policy_name.to_owned(),
                    policy: *policy,
                }
            })
            .collect())
    }
}

/// The rule's loop: every [`CHECK_EVERY`] until shutdown.
pub async fn run(
    policies: Arc<WatchdogPolicies>,
    fleet: Arc<LiveFleet>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) {
    let mut rule = ScheduledSignalRule::new();
    for issue in crate::node_watch::open_issues(
        "scheduled signal rule",
        &store,
        &[HealthCondition::LowSignal],
    )
    .await
    {
        if issue.subject.starts_with("schedule:") {
            rule.assume_raised(issue.node, issue.subject);
        }
    }
    let finder = Arc::new(std::sync::Mutex::new(TakeFinder {
        generation: None,
        schedules: HashMap::new(),
    }));
    let mut ticks = crate::clock::Ticks::every(CHECK_EVERY, shutdown.clone());
    loop {
        if !ticks.next().await {
            return;
        }
        let found = {
            let (store, policies, finder) = (store.clone(), policies.clone(), finder.clone());
            tokio::task::spawn_blocking(move || {
                let mut finder = finder.lock().expect("take finder lock poisoned");
                finder.find(&*store, &policies)
            })
            .await
        };
        let takes = match found {
            Ok(Ok(takes)) => takes,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "scheduled signal rule: jobs not read");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled signal rule: task failed");
                continue;
            }
        };
        let frames: HashMap<NodeId, LiveMeters> = takes
            .iter()
            .filter_map(|t| Some((t.node.clone(), fleet.node(&t.node)?.meters?)))
            .collect();
        let views: Vec<(WatchedTake, Option<&LiveMeters>)> = takes
            .into_iter()
            .map(|t| {
                let frame = frames.get(&t.node);
                (t, frame)
            })
            .collect();
        let events = rule.evaluate(&views);
        crate::node_watch::store_server_events(
            "scheduled signal rule",
            &fleet,
            &store,
            events,
            clock.unix_ms(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use rakkr_protocol::payload::{ChannelMeter, MeterFrame};

    use super::*;

    const POLICY: WatchdogPolicy = WatchdogPolicy {
        appliance: rakkr_protocol::watchdog::WatchdogRules::DEFAULT,
        low_signal_dbfs: -50.0,
        grace_s: 10,
        cumulative_s: 20,
        clear_s: 5,
    };

    fn take(sources: &[u16]) -> WatchedTake {
        WatchedTake {
            job: JobId::new(1_000),
            node: NodeId::new("n1").unwrap(),
            schedule: ScheduleId::new(1_000),
            schedule_name: "Morning".into(),
            occurrence: "2026-11-30".into(),
            sources: sources.to_vec(),
            running_since_ms: 1_796_000_000_000,
            policy_name: "standard".into(),
            policy: POLICY,
        }
    }

    fn frame(at_ms: u64, levels: &[f32]) -> MeterFrame {
        MeterFrame {
            captured_at_ms: at_ms,
            window_ms: 1000,
            sample_rate: 48_000,
            channels: levels
                .iter()
                .map(|&rms| ChannelMeter {
                    peak_dbfs: rms + 3.0,
                    rms_dbfs: rms,
                    clipped: 0,
                    dc_offset: 0.0,
                    stuck_frames: 0,
                    correlation_next: None,
                    flags: Default::default(),
                })
                .collect(),
            counters: None,
        }
    }

    /// Feed one frame a second from `from_s` (seconds after the take
    /// started) for `count` seconds; the events with their second.
    fn feed(
        rule: &mut ScheduledSignalRule,
        t: &WatchedTake,
        from_s: u64,
        count: u64,
        levels: &[f32],
    ) -> Vec<(u64, HealthEvent)> {
        feed_skewed(rule, t, from_s, count, levels, 0, 0)
    }

    /// As [`feed`], from a node whose clock is `ahead_ms` ahead of the
    /// server's, each frame arriving `latency_ms` after it was captured.
    fn feed_skewed(
        rule: &mut ScheduledSignalRule,
        t: &WatchedTake,
        from_s: u64,
        count: u64,
        levels: &[f32],
        ahead_ms: i64,
        latency_ms: u64,
    ) -> Vec<(u64, HealthEvent)> {
        let mut out = Vec::new();
        for s in from_s..from_s + count {
            let server_ms = t.running_since_ms + s * 1000;
            let meters = LiveMeters {
                frame: frame((server_ms as i64 + ahead_ms) as u64, levels),
                received_ms: server_ms + latency_ms,
            };
            for (_, e) in rule.evaluate(&[(t.clone(), Some(&meters))]) {
                out.push((s, e));
            }
        }
        out
    }

    #[test]
    fn the_grace_period_holds_whatever_the_node_s_clock_says() {
        for ahead_ms in [-3_600_000, -45_000, 45_000, 3_600_000] {
            let mut rule = ScheduledSignalRule::new();
            let t = take(&[0]);
            // Dead from the start; the frames take 150 ms (one took 20).
            let mut events = feed_skewed(&mut rule, &t, 1, 5, &[-90.0], ahead_ms, 150);
            events.extend(feed_skewed(&mut rule, &t, 6, 1, &[-90.0], ahead_ms, 20));
            events.extend(feed_skewed(&mut rule, &t, 7, 40, &[-90.0], ahead_ms, 150));
            assert_eq!(events.len(), 1, "{ahead_ms}: {events:?}");
            assert_eq!(
                events[0].0,
                10 + 20,
                "{ahead_ms}: grace 10 s, then 20 s low"
            );
        }
    }

    #[test]
    fn a_dead_channel_raises_after_grace_plus_the_total_and_recovery_resolves() {
        let mut rule = ScheduledSignalRule::new();
        let t = take(&[0, 1]);
        // Channel 2 is dead from the start; channel 1 carries signal.
        let events = feed(&mut rule, &t, 1, 40, &[-20.0, -90.0]);
        assert_eq!(events.len(), 1, "{events:?}");
        let (second, e) = &events[0];
        assert_eq!(*second, 10 + 20, "grace 10 s, then 20 s low");
        assert_eq!(e.change, HealthChange::Raised);
        assert_eq!(e.condition, HealthCondition::LowSignal);
        assert_eq!(e.severity, Severity::Warning);
        assert_eq!(
            e.subject,
            format!("schedule:{}/2026-11-30/channel:2", t.schedule)
        );
        assert!(
            e.detail.contains("below -50 dBFS for 20 s in total"),
            "{}",
            e.detail
        );
        // Back: resolved after 5 s above, once.
        let events = feed(&mut rule, &t, 41, 20, &[-20.0, -30.0]);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, 45);
        assert_eq!(events[0].1.change, HealthChange::Cleared);
        assert_eq!(events[0].1.severity, Severity::Info);
    }

    #[test]
    fn low_time_adds_up_across_breaks() {
        let mut rule = ScheduledSignalRule::new();
        let t = take(&[0]);
        let mut events = Vec::new();
        // After the grace period: 4 s low, 2 s of signal (shorter than
        // clear_s), again and again: 20 s low in total after 5 rounds.
        let mut s = 11;
        for _ in 0..6 {
            events.extend(feed(&mut rule, &t, s, 4, &[-80.0]));
            events.extend(feed(&mut rule, &t, s + 4, 2, &[-10.0]));
            s += 6;
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].1.change, HealthChange::Raised);
        assert_eq!(events[0].0, 11 + 4 * 6 + 3, "the 20th low second");
    }

    #[test]
    fn a_clean_take_and_the_grace_period_raise_nothing() {
        let mut rule = ScheduledSignalRule::new();
        let t = take(&[0, 1]);
        // Ten minutes of signal.
        assert!(feed(&mut rule, &t, 0, 600, &[-30.0, -35.0]).is_empty());
        // Silence only inside the grace period of another take.
        let mut quiet = take(&[0]);
        quiet.job = JobId::new(2_000);
        assert!(feed(&mut rule, &quiet, 0, 10, &[-120.0]).is_empty());
        assert!(feed(&mut rule, &quiet, 10, 600, &[-20.0]).is_empty());
    }

    #[test]
    fn frames_count_once_and_holes_count_at_most_the_step() {
        let mut rule = ScheduledSignalRule::new();
        let t = take(&[0]);
        let f = LiveMeters {
            frame: frame(t.running_since_ms + 11_000, &[-90.0]),
            received_ms: t.running_since_ms + 11_000,
        };
        for _ in 0..50 {
            assert!(rule.evaluate(&[(t.clone(), Some(&f))]).is_empty());
        }
        // 10 s later (frames lost): counts as 5 s, not 10.
        let f = LiveMeters {
            frame: frame(t.running_since_ms + 21_000, &[-90.0]),
            received_ms: t.running_since_ms + 21_000,
        };
        assert!(rule.evaluate(&[(t.clone(), Some(&f))]).is_empty());
        // 1 + 5 so far; 14 more seconds raise.
        let events = feed(&mut rule, &t, 22, 20, &[-90.0]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, 22 + 13);
    }

    #[test]
    fn only_the_takes_channels_count_and_an_ended_take_is_forgotten() {
        let mut rule = ScheduledSignalRule::new();
        // The take reads channel 3 only; 1 and 2 are another job's.
        let t = take(&[2]);
        let events = feed(&mut rule, &t, 1, 60, &[-120.0, -120.0, -20.0]);
        assert!(events.is_empty(), "{events:?}");
        // Its channel goes dead, then the take ends before the total.
        assert!(feed(&mut rule, &t, 61, 15, &[-120.0, -120.0, -120.0]).is_empty());
        assert!(rule.evaluate(&[]).is_empty());
        assert!(rule.takes.is_empty());
    }

    #[test]
    fn an_issue_open_before_a_restart_is_resolved_by_recovery_not_raised_again() {
        let mut rule = ScheduledSignalRule::new();
        let t = take(&[0]);
        rule.assume_raised(t.node.clone(), t.subject(0));
        // Still low: not raised a second time.
        assert!(feed(&mut rule, &t, 11, 30, &[-90.0]).is_empty());
        let events = feed(&mut rule, &t, 41, 10, &[-20.0]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].1.change, HealthChange::Cleared);
    }
}
