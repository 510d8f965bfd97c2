//! The watchdog: sustained quality rules over the node's telemetry meter
//! frames, raising and clearing health events.
//!
//! The meter flags each window (`crate::meter`); a flag in one window is not
//! yet a problem. Each rule here watches one thing on one subject and raises
//! its condition when the thing has held for the rule's time, and clears it
//! when it has been gone for [`WatchdogRules::clear_s`]:
//!
//! | condition | subject | a bad window | raised after (default) | severity |
//! |---|---|---|---|---|
//! | `silence` | `channel:N` | flagged silence | 10 s | critical |
//! | `low_signal` | `channel:N` | flagged low signal | 60 s | warning |
//! | `flatline` | `channel:N` | flagged flatline | 2 s | critical |
//! | `clipping` | `channel:N` | any clipped sample | 3 s of such windows, none 10 s apart | warning |
//! | `correlation` | `channels:N+M` | flagged correlated | 10 s | warning |
//! | `xruns` | (the node) | overruns counted | `xruns` overruns within 60 s | warning |
//!
//! A take whose schedule names a watchdog policy brings that policy's rules
//! for the channels it records, while it records ([`TakeRules`]); the rest
//! follow the node's rules, as do `xruns` and disk pressure. A correlated
//! pair follows its first channel's rules.
//!
//! Time is the frames' own (their window lengths), so a rule behaves the
//! same live and in a test that feeds ten minutes of frames in a second.
//! Invariant: a condition is raised at most once until it is cleared, and
//! cleared only after it was raised; a watchdog that restarts learns what
//! was open ([`Watchdog::assume_raised`]) so it can clear it.

use std::collections::{HashMap, VecDeque};

use rakkr_protocol::payload::{
    HealthChange, HealthCondition, HealthEvent, MeterFlag, MeterFrame, Severity,
};
pub use rakkr_protocol::watchdog::WatchdogRules;

/// One rule on one subject: bad time gathered, good time since the last bad
/// window, and whether it is raised.
#[derive(Debug, Clone, Copy, Default)]
struct Sustain {
    bad_ms: u64,
    good_ms: u64,
    raised: bool,
}

impl Sustain {
    /// Feed one window. Bad time is forgotten after `forget_ms` of good time
    /// (0: at the first good window).
    fn feed(
        &mut self,
        bad: bool,
        window_ms: u64,
        raise_ms: u64,
        forget_ms: u64,
        clear_ms: u64,
    ) -> Option<HealthChange> {
        if bad {
            self.bad_ms += window_ms;
            self.good_ms = 0;
            if !self.raised && self.bad_ms >= raise_ms {
                self.raised = true;
                return Some(HealthChange::Raised);
            }
        } else {
            self.good_ms += window_ms;
            if self.good_ms > forget_ms {
                self.bad_ms = 0;
            }
            if self.raised && self.good_ms >= clear_ms {
                self.raised = false;
                return Some(HealthChange::Cleared);
            }
        }
        None
    }
}

/// The appliance rules of the takes that bring their own (their schedule's
/// watchdog policy), by job: the device channels each take records
/// (0-based) and its rules. Kept by the job runner, read by the watchdog.
pub type TakeRules = std::collections::BTreeMap<rakkr_protocol::JobId, (Vec<usize>, WatchdogRules)>;

/// The rules of one node.
#[derive(Debug, Default)]
pub struct Watchdog {
    policy: WatchdogRules,
    /// Rules for single channels (1-based), while a take with its own rules
    /// records them; the node's `policy` for the rest.
    channel_rules: HashMap<usize, WatchdogRules>,
    /// The meter's correlation threshold (`MeterPolicy::correlation`).
    correlation: f32,
    rules: HashMap<(HealthCondition, String), Sustain>,
    /// The last overrun total seen, and overruns by frame time in the last minute.
    xruns_total: Option<u64>,
    xruns: VecDeque<(u64, u64)>,
    xruns_raised: bool,
    last_xrun_ms: u64,
}

const CHANNEL_RULES: [(HealthCondition, MeterFlag, Severity); 4] = [
    (
        HealthCondition::Silence,
        MeterFlag::Silence,
        Severity::Critical,
    ),
    (
        HealthCondition::LowSignal,
        MeterFlag::LowSignal,
        Severity::Warning,
    ),
    (
        HealthCondition::Flatline,
        MeterFlag::Flatline,
        Severity::Critical,
    ),
    (
        HealthCondition::Correlation,
        MeterFlag::Correlated,
        Severity::Warning,
    ),
];

const XRUN_SPAN_MS: u64 = 60_000;

impl Watchdog {
    pub fn new(policy: WatchdogRules) -> Watchdog {
        Watchdog {
            policy,
            correlation: crate::meter::MeterPolicy::default().correlation,
            ..Default::default()
        }
    }

    /// Wait as `rules` say from now on (the server sent the node's policy).
    /// Time already gathered counts against the new durations.
    pub fn set_rules(&mut self, rules: WatchdogRules) {
        self.policy = rules;
    }

    /// The takes recording now with rules of their own. A channel two such
    /// takes share (a take may read a channel twice only within itself, so
    /// this is not expected) follows the later job.
    pub fn set_take_rules(&mut self, takes: &TakeRules) {
        self.channel_rules = takes
            .values()
            .flat_map(|(sources, rules)| sources.iter().map(move |&c| (c + 1, *rules)))
            .collect();
    }

    /// The rules channel `n` (1-based) follows now.
    fn rules_for(&self, n: usize) -> &WatchdogRules {
        self.channel_rules.get(&n).unwrap_or(&self.policy)
    }

    /// A condition open before a restart: it is cleared once it is gone.
    pub fn assume_raised(&mut self, condition: HealthCondition, subject: &str) {
        if condition == HealthCondition::Xruns {
            self.xruns_raised = true;
            return;
        }
        self.rules
            .entry((condition, subject.to_owned()))
            .or_default()
            .raised = true;
    }

    /// How long `condition` on channel `n` must hold to be raised, and for
    /// clipping how long without it forgets what was gathered.
    fn raise_ms(&self, condition: HealthCondition, n: usize) -> (u64, u64) {
        let s = |v: u32| u64::from(v) * 1000;
        let p = self.rules_for(n);
        match condition {
            HealthCondition::Silence => (s(p.silence_s), 0),
            HealthCondition::LowSignal => (s(p.low_signal_s), 0),
            HealthCondition::Flatline => (s(p.flatline_s), 0),
            HealthCondition::Correlation => (s(p.correlation_s), 0),
            _ => (s(p.clipping_s), s(p.clipping_forget_s)),
        }
    }

    /// Look at one telemetry frame; the events it raises or clears.
    pub fn observe(&mut self, frame: &MeterFrame) -> Vec<HealthEvent> {
        let window = u64::from(frame.window_ms);
        let at = frame.captured_at_ms;
        let mut out = Vec::new();
        let count = frame.channels.len();
        let correlation = self.correlation;
        for (i, ch) in frame.channels.iter().enumerate() {
            let n = i + 1;
            let mut rules: Vec<(HealthCondition, bool, Severity, String, String)> = CHANNEL_RULES
                .iter()
                .filter(|(c, ..)| *c != HealthCondition::Correlation || n < count)
                .map(|&(condition, flag, severity)| {
                    let subject = match condition {
                        HealthCondition::Correlation => format!("channels:{n}+{}", n + 1),
                        _ => format!("channel:{n}"),
                    };
                    let evidence = match condition {
                        HealthCondition::Correlation => format!(
                            "channels {n} and {} carry the same signal{} (r = {:.4})",
                            n + 1,
                            if ch.correlation_next.unwrap_or(0.0) < 0.0 {
                                ", one inverted"
                            } else {
                                ""
                            },
                            ch.correlation_next.unwrap_or(0.0)
                        ),
                        HealthCondition::Flatline => format!(
                            "channel {n} stuck at one value for {} frames",
                            ch.stuck_frames
                        ),
                        _ => format!("channel {n} at {:.1} dBFS RMS", ch.rms_dbfs),
                    };
                    // Both channels of a matching pair carry the flag: the
                    // pair is this channel and the next when their own
                    // coefficient says so.
                    let bad = match condition {
                        HealthCondition::Correlation => {
                            ch.correlation_next.is_some_and(|r| r.abs() >= correlation)
                        }
                        _ => ch.flags.contains(flag),
                    };
                    (condition, bad, severity, subject, evidence)
                })
                .collect();
            rules.push((
                HealthCondition::Clipping,
                ch.clipped > 0,
                Severity::Warning,
                format!("channel:{n}"),
                format!(
                    "channel {n} clipped {} samples in its last second (peak {:.1} dBFS)",
                    ch.clipped, ch.peak_dbfs
                ),
            ));
            let clear = u64::from(self.rules_for(n).clear_s) * 1000;
            for (condition, bad, severity, subject, evidence) in rules {
                let (raise, forget) = self.raise_ms(condition, n);
                let rule = self.rules.entry((condition, subject.clone())).or_default();
                if let Some(change) = rule.feed(bad, window, raise, forget, clear) {
                    let detail = match change {
                        HealthChange::Raised => format!("{evidence} for {} s", raise / 1000),
                        HealthChange::Cleared => format!("{evidence}: back to normal"),
                    };
                    out.push(event(condition, change, severity, at, detail, subject));
                }
            }
        }
        if let Some(total) = frame.counters.map(|c| c.xruns) {
            out.extend(self.observe_xruns(total, at));
        }
        out
    }

    fn observe_xruns(&mut self, total: u64, at: u64) -> Option<HealthEvent> {
        // A restarted agent counts from zero again.
        let new = match self.xruns_total {
            Some(last) if total >= last => total - last,
            _ => 0,
        };
        self.xruns_total = Some(total);
        if new > 0 {
            self.xruns.push_back((at, new));
            self.last_xrun_ms = at;
        }
        while self
            .xruns
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) >= XRUN_SPAN_MS)
        {
            self.xruns.pop_front();
        }
        let in_span: u64 = self.xruns.iter().map(|(_, n)| n).sum();
        if !self.xruns_raised && in_span >= u64::from(self.policy.xruns) {
            self.xruns_raised = true;
            return Some(event(
                HealthCondition::Xruns,
                HealthChange::Raised,
                Severity::Warning,
                at,
                format!("{in_span} capture overruns in the last minute: audio was lost"),
                String::new(),
            ));
        }
        if self.xruns_raised && in_span == 0 && at.saturating_sub(self.last_xrun_ms) >= XRUN_SPAN_MS
        {
            self.xruns_raised = false;
            return Some(event(
                HealthCondition::Xruns,
                HealthChange::Cleared,
                Severity::Info,
                at,
                "no capture overruns for a minute".into(),
                String::new(),
            ));
        }
        None
    }
}

/// The recordings' disk: raised below the policy's free space, cleared
/// above it by a fifth (so a disk hovering at the line does not flap).
#[derive(Debug, Clone, Copy)]
pub struct DiskRule {
    min_free: u64,
    raised: bool,
}

impl DiskRule {
    pub fn new(policy: &WatchdogRules) -> DiskRule {
        DiskRule {
            min_free: policy.disk_min_free_mb.saturating_mul(1 << 20),
            raised: false,
        }
    }

    /// Use the free space `rules` ask for from now on.
    pub fn set_rules(&mut self, rules: &WatchdogRules) {
        self.min_free = rules.disk_min_free_mb.saturating_mul(1 << 20);
    }

    /// A condition open before a restart.
    pub fn assume_raised(&mut self) {
        self.raised = true;
    }

    /// Look at the disk's free and total bytes at `at_ms`.
    pub fn observe(&mut self, free: u64, total: u64, at_ms: u64) -> Option<HealthEvent> {
        let mb = |b: u64| b >> 20;
        let detail = format!(
            "{} MB free of {} MB on the recordings' disk (the limit is {} MB)",
            mb(free),
            mb(total),
            mb(self.min_free)
        );
        if !self.raised && free < self.min_free {
            self.raised = true;
            return Some(event(
                HealthCondition::DiskPressure,
                HealthChange::Raised,
                Severity::Critical,
                at_ms,
                detail,
                String::new(),
            ));
        }
        if self.raised && free >= self.min_free + self.min_free / 5 {
            self.raised = false;
            return Some(event(
                HealthCondition::DiskPressure,
                HealthChange::Cleared,
                Severity::Info,
                at_ms,
                detail,
                String::new(),
            ));
        }
        None
    }
}

/// Free and total bytes of the file system holding `path` (statvfs).
pub fn disk_space(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// The event for a take that failed while recording job `job`.
pub fn take_failed(job: rakkr_protocol::JobId, at_ms: u64, why: &str) -> HealthEvent {
    event(
        HealthCondition::EncoderFailure,
        HealthChange::Raised,
        Severity::Critical,
        at_ms,
        format!("the take of job {job} failed: {why}; its files keep what was written"),
        format!("job:{job}"),
    )
}

fn event(
    condition: HealthCondition,
    change: HealthChange,
    severity: Severity,
    at_ms: u64,
    detail: String,
    subject: String,
) -> HealthEvent {
    HealthEvent {
        condition,
        change,
        severity: match change {
            HealthChange::Raised => severity,
            HealthChange::Cleared => Severity::Info,
        },
        at_ms,
        detail: crate::run::bounded_detail(detail),
        subject,
    }
}

#[cfg(test)]
mod tests {
    //! Real samples through the real meter, one-second windows at 8 kHz, into
    //! the watchdog: each fault raises exactly its event within the policy's
    //! time and clears on recovery; a clean signal raises nothing in ten
    //! minutes.

    use super::*;
    use crate::meter::MeterAccumulator;

    const RATE: usize = 8000;

    /// What a channel carries in one second.
    #[derive(Clone, Copy, Debug)]
    enum Feed {
        Tone(f64),
        Quiet,
        Silent,
        Clipped,
        Stuck,
        /// The previous channel, inverted.
        InvertedCopy,
    }

    fn sample(feed: Feed, channel: usize, t: usize, prev: i32) -> i32 {
        let full = i32::MAX as f64;
        let phase = t as f64 / RATE as f64;
        // Each channel its own frequency, so neighbours do not correlate.
        let freq = 220.0 + 97.0 * channel as f64;
        let sine = (2.0 * std::f64::consts::PI * freq * phase).sin();
        match feed {
            Feed::Tone(dbfs) => (sine * full * 10f64.powf(dbfs / 20.0)) as i32,
            Feed::Quiet => (sine * full * 10f64.powf(-70.0 / 20.0)) as i32,
            Feed::Silent => 0,
            Feed::Clipped => ((sine * 2.0).clamp(-1.0, 1.0) * full) as i32 & !0xff,
            Feed::Stuck => 0x1234_5600,
            Feed::InvertedCopy => prev.saturating_neg(),
        }
    }

    /// One second's frame of `feeds`, ending at `at_ms`.
    fn frame(feeds: &[Feed], at_ms: u64, xruns: u64) -> MeterFrame {
        let mut acc = MeterAccumulator::new(feeds.len(), 24);
        let mut buf = Vec::with_capacity(RATE * feeds.len());
        for t in 0..RATE {
            let mut prev = 0;
            for (c, f) in feeds.iter().enumerate() {
                let s = sample(*f, c, t, prev);
                buf.push(s);
                prev = s;
            }
        }
        acc.push_interleaved(&buf);
        MeterFrame {
            captured_at_ms: at_ms,
            window_ms: 1000,
            sample_rate: RATE as u32,
            channels: acc.take(),
            counters: Some(rakkr_protocol::payload::NodeCounters {
                xruns,
                frames_dropped: 0,
                device_returns: 0,
                outbox_bytes: 0,
                upload_files: 0,
                upload_bytes: 0,
            }),
        }
    }

    /// Feed `seconds` of `feeds` from second `from`; the events with the
    /// second they came in.
    fn run(
        dog: &mut Watchdog,
        feeds: &[Feed],
        from: u64,
        seconds: u64,
    ) -> Vec<(u64, HealthCondition, HealthChange, String)> {
        let mut out = Vec::new();
        for s in from..from + seconds {
            for e in dog.observe(&frame(feeds, (s + 1) * 1000, 0)) {
                out.push((s + 1, e.condition, e.change, e.subject));
            }
        }
        out
    }

    const GOOD: Feed = Feed::Tone(-18.0);

    #[test]
    fn a_clean_signal_raises_nothing_in_ten_minutes() {
        let mut dog = Watchdog::new(WatchdogRules::default());
        assert_eq!(run(&mut dog, &[GOOD, GOOD, GOOD, GOOD], 0, 600), []);
    }

    #[test]
    fn each_fault_raises_its_own_event_in_time_and_clears_on_recovery() {
        use HealthChange::*;
        use HealthCondition::*;
        let p = WatchdogRules::default();
        // (fault on channel 2, the events expected by second, why)
        // The fault on channel 2, how long it takes, what it raises.
        let cases = [
            (Feed::Silent, p.silence_s, Silence),
            (Feed::Quiet, p.low_signal_s, LowSignal),
            (Feed::Stuck, p.flatline_s, Flatline),
            (Feed::Clipped, p.clipping_s, Clipping),
            (Feed::InvertedCopy, p.correlation_s, Correlation),
        ];
        for (fault, after_s, condition) in cases {
            let mut dog = Watchdog::new(p);
            // Clean for a minute, the fault for two, clean again for a minute.
            let mut got = run(&mut dog, &[GOOD, GOOD, GOOD], 0, 60);
            got.extend(run(&mut dog, &[GOOD, fault, GOOD], 60, 120));
            got.extend(run(&mut dog, &[GOOD, GOOD, GOOD], 180, 60));
            let subject = |c: HealthCondition| match c {
                // The inverted copy sits on channel 2: channels 1 and 2 match.
                Correlation => "channels:1+2".to_owned(),
                _ => "channel:2".to_owned(),
            };
            let want = vec![
                (
                    60 + u64::from(after_s),
                    condition,
                    Raised,
                    subject(condition),
                ),
                (
                    180 + u64::from(p.clear_s),
                    condition,
                    Cleared,
                    subject(condition),
                ),
            ];
            assert_eq!(got, want, "{fault:?}");
        }
    }

    #[test]
    fn occasional_clips_are_forgotten_and_overruns_need_several() {
        let p = WatchdogRules::default();
        let mut dog = Watchdog::new(p);
        // One clipped second every 15 s for ten minutes: never three close together.
        let mut got = Vec::new();
        for s in 0..600u64 {
            let feed = if s % 15 == 0 { Feed::Clipped } else { GOOD };
            for e in dog.observe(&frame(&[feed], (s + 1) * 1000, 0)) {
                got.push((s, e.condition));
            }
        }
        assert_eq!(got, []);

        // Overruns: two in a minute are tolerated, a third raises; a quiet minute clears.
        let mut dog = Watchdog::new(p);
        let mut events = Vec::new();
        for (s, total) in [
            (1u64, 0u64),
            (2, 1),
            (30, 2),
            (100, 2),
            (120, 3),
            (130, 4),
            (140, 5),
        ] {
            events.extend(
                dog.observe(&frame(&[GOOD], s * 1000, total))
                    .into_iter()
                    .map(|e| (s, e.change)),
            );
        }
        for s in 141..=201 {
            events.extend(
                dog.observe(&frame(&[GOOD], s * 1000, 5))
                    .into_iter()
                    .map(|e| (s, e.change)),
            );
        }
        assert_eq!(
            events,
            [(140, HealthChange::Raised), (200, HealthChange::Cleared)]
        );
    }

    #[test]
    fn a_condition_open_before_a_restart_is_cleared_when_gone() {
        let mut dog = Watchdog::new(WatchdogRules::default());
        dog.assume_raised(HealthCondition::Silence, "channel:1");
        let got = run(&mut dog, &[GOOD], 0, 10);
        assert_eq!(
            got,
            [(
                5,
                HealthCondition::Silence,
                HealthChange::Cleared,
                "channel:1".into()
            )]
        );
    }

    #[test]
    fn a_full_disk_raises_once_and_clears_with_room_to_spare() {
        let policy = WatchdogRules {
            disk_min_free_mb: 100,
            ..Default::default()
        };
        let mut disk = DiskRule::new(&policy);
        let mb = |n: u64| n << 20;
        let total = mb(10_000);
        assert!(disk.observe(mb(500), total, 1).is_none());
        let raised = disk.observe(mb(99), total, 2).unwrap();
        assert_eq!(raised.condition, HealthCondition::DiskPressure);
        assert_eq!(raised.change, HealthChange::Raised);
        assert!(
            raised.detail.contains("99 MB free of 10000 MB"),
            "{}",
            raised.detail
        );
        assert!(disk.observe(mb(50), total, 3).is_none(), "once");
        assert!(disk.observe(mb(110), total, 4).is_none(), "not at the line");
        let cleared = disk.observe(mb(120), total, 5).unwrap();
        assert_eq!(cleared.change, HealthChange::Cleared);
        // The real call answers for a real directory.
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = disk_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
        assert!(disk_space(std::path::Path::new("/no/such/dir")).is_err());
    }

    #[test]
    fn a_failed_take_is_a_critical_event_about_its_job() {
        let job = rakkr_protocol::JobId::new(7);
        let e = take_failed(job, 9, "write: No space left on device");
        assert_eq!(
            (e.condition, e.change, e.severity),
            (
                HealthCondition::EncoderFailure,
                HealthChange::Raised,
                Severity::Critical
            )
        );
        assert_eq!(e.subject, format!("job:{job}"));
        assert!(e.detail.contains("No space left"), "{}", e.detail);
    }

    #[test]
    fn bad_policies_are_refused() {
        let zero = WatchdogRules {
            silence_s: 0,
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("silence_s"));
        assert!(WatchdogRules::default().validate().is_ok());
    }

    #[test]
    fn a_take_with_its_own_rules_watches_its_channels_by_them_while_it_records() {
        use HealthChange::*;
        use HealthCondition::*;
        // The node waits 10 s for silence; a take on channel 2 brings 3 s.
        let mut dog = Watchdog::new(WatchdogRules::DEFAULT);
        let take_rules = WatchdogRules {
            silence_s: 3,
            clear_s: 2,
            ..WatchdogRules::DEFAULT
        };
        let job = rakkr_protocol::JobId::new(1);
        dog.set_take_rules(&TakeRules::from([(job, (vec![1], take_rules))]));
        let dead = [Feed::Silent, Feed::Silent];
        assert_eq!(
            run(&mut dog, &dead, 0, 10),
            [
                (3, Silence, Raised, "channel:2".into()),
                (10, Silence, Raised, "channel:1".into())
            ],
            "channel 2 by the take's rules, channel 1 by the node's"
        );
        // It clears by the take's rules too.
        let back = [Feed::Silent, Feed::Tone(-20.0)];
        assert_eq!(
            run(&mut dog, &back, 10, 2),
            [(12, Silence, Cleared, "channel:2".into())]
        );
        // The take ended: the node's rules again.
        dog.set_take_rules(&TakeRules::new());
        assert!(run(&mut dog, &dead, 12, 9).is_empty(), "waits 10 s again");
        assert_eq!(
            run(&mut dog, &dead, 21, 1),
            [(22, Silence, Raised, "channel:2".into())]
        );
    }
}
