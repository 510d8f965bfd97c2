//! Small pieces of markup used on several pages.

use maud::{Markup, html};
use rakkr_protocol::payload::{ChannelMeter, DBFS_FLOOR, MeterFlag};
use rakkr_protocol::state::Presence;

/// Lowest level a meter bar shows; anything below reads as an empty bar.
pub const METER_RANGE_DB: f32 = 60.0;

/// A presence badge ("online"/"offline") with a colour class.
pub fn presence_badge(presence: Presence) -> Markup {
    html! {
        span class={ "badge " (presence.as_str()) } { (presence.as_str()) }
    }
}

/// Fraction of a meter bar to fill for `dbfs`: 0 at −60 dBFS and below, 1 at 0 dBFS.
pub fn meter_fill(dbfs: f32) -> f32 {
    ((dbfs + METER_RANGE_DB) / METER_RANGE_DB).clamp(0.0, 1.0)
}

/// Format a level for people: one decimal, "−∞" at the floor.
pub fn format_dbfs(dbfs: f32) -> String {
    if dbfs <= DBFS_FLOOR {
        "−∞".to_owned()
    } else {
        format!("{dbfs:.1}")
    }
}

/// Horizontal meter bars, one per channel: RMS filled, peak as a tick, clip marker.
///
/// Bars are SVG rectangles sized by attributes, not inline styles, so pages work
/// under a Content-Security-Policy without `'unsafe-inline'` styles.
/// `stale` greys the bars out: the frame is too old to show as live.
pub fn meter_bars(channels: &[ChannelMeter], stale: bool) -> Markup {
    html! {
        div class={ "meters" @if stale { " stale" } } {
            @for (i, ch) in channels.iter().enumerate() {
                @let rms = format!("{:.1}", meter_fill(ch.rms_dbfs) * 100.0);
                @let peak = format!("{:.1}", (meter_fill(ch.peak_dbfs) * 100.0 - 1.0).max(0.0));
                div.meter title={ "ch " (i + 1) ": peak " (format_dbfs(ch.peak_dbfs))
                                  " dBFS, RMS " (format_dbfs(ch.rms_dbfs)) " dBFS" } {
                    span.label { (i + 1) }
                    svg.track viewBox="0 0 100 6" preserveAspectRatio="none" aria-hidden="true" {
                        rect.bg x="0" y="0" width="100" height="6" {}
                        rect.rms x="0" y="0" width=(rms) height="6" {}
                        rect.peak x=(peak) y="0" width="1" height="6" {}
                    }
                    span.value { (format_dbfs(ch.peak_dbfs)) }
                    span.tags {
                        @if ch.clipped > 0 { span.clip title="clipped samples" { "CLIP " (ch.clipped) } }
                        @for flag in ch.flags.iter().filter(|f| *f != MeterFlag::Clipping) {
                            span.flag title=(flag_help(flag)) { (flag_label(flag)) }
                        }
                    }
                }
            }
        }
    }
}

pub fn flag_label(flag: MeterFlag) -> &'static str {
    match flag {
        MeterFlag::Clipping => "CLIP",
        MeterFlag::LowSignal => "LOW",
        MeterFlag::Silence => "SILENT",
        MeterFlag::Flatline => "STUCK",
        MeterFlag::Correlated => "DOUBLED",
    }
}

pub fn flag_help(flag: MeterFlag) -> &'static str {
    match flag {
        MeterFlag::Clipping => "samples reached full scale",
        MeterFlag::LowSignal => "signal below the low-signal threshold",
        MeterFlag::Silence => "no signal",
        MeterFlag::Flatline => "identical samples for a long run: stuck converter or cable",
        MeterFlag::Correlated => "same (or inverted) signal as the next channel",
    }
}

/// "3 s ago", "5 min ago": how long ago `then_ms` was, seen from `now_ms`.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// One stretch of a waveform lane: where it starts and how much of the lane
/// it covers (fractions, 0…1), and its `(min, max)` columns at −127…127 of
/// full scale (left to right, evenly spread over the stretch).
#[derive(Debug, Clone, Copy)]
pub struct WaveformStretch<'a> {
    pub start: f64,
    pub width: f64,
    pub peaks: &'a [(i8, i8)],
}

/// Lane width in SVG units: the lane stretches to the page's width, so this
/// is only the resolution of the coordinates.
const LANE_UNITS: f64 = 1000.0;

/// A waveform lane for one channel: the band between each column's lowest and
/// highest sample, and a red mark over columns that reach full scale
/// (clipped, or as good as). Like [`meter_bars`], pure SVG shapes sized by
/// attributes, so the CSP needs no inline styles; `label` names the lane for
/// screen readers.
pub fn waveform_lane(label: &str, stretches: &[WaveformStretch<'_>]) -> Markup {
    // y grows downwards: full scale positive at 0, negative at 100.
    let y = |v: i8| 50.0 - f64::from(v) * 50.0 / 127.0;
    let mut band = String::new();
    let mut clips = Vec::new();
    for s in stretches.iter().filter(|s| !s.peaks.is_empty()) {
        let n = s.peaks.len() as f64;
        let x = |j: usize| (s.start + s.width * j as f64 / n) * LANE_UNITS;
        // Upper edge left to right, lower edge back, as steps: each column
        // covers exactly its frames.
        band.push_str(&format!("M{:.1} {:.1}", x(0), y(s.peaks[0].1)));
        for (j, &(_, max)) in s.peaks.iter().enumerate() {
            band.push_str(&format!("H{:.1}V{:.1}H{:.1}", x(j), y(max), x(j + 1)));
        }
        for (j, &(min, _)) in s.peaks.iter().enumerate().rev() {
            band.push_str(&format!("V{:.1}H{:.1}", y(min), x(j)));
        }
        band.push('Z');
        for (j, &(min, max)) in s.peaks.iter().enumerate() {
            if min <= -127 || max == i8::MAX {
                clips.push((x(j), (x(j + 1) - x(j)).max(1.0)));
            }
        }
    }
    html! {
        svg.lane viewBox={ "0 0 " (LANE_UNITS) " 100" } preserveAspectRatio="none" role="img" aria-label=(label) {
            line.axis x1="0" y1="50" x2=(LANE_UNITS) y2="50" {}
            @if !band.is_empty() { path.band d=(band) {} }
            @for (x, w) in &clips { rect.clip x=(format!("{x:.1}")) y="0" width=(format!("{w:.1}")) height="6" {} }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_fill_maps_the_display_range() {
        assert_eq!(meter_fill(0.0), 1.0);
        assert_eq!(meter_fill(6.0), 1.0);
        assert_eq!(meter_fill(-30.0), 0.5);
        assert_eq!(meter_fill(DBFS_FLOOR), 0.0);
    }

    #[test]
    fn meter_bars_escape_nothing_dangerous_and_mark_clipping() {
        let ch = [
            ChannelMeter {
                peak_dbfs: -6.0,
                rms_dbfs: -9.0,
                clipped: 0,
                ..Default::default()
            },
            ChannelMeter {
                peak_dbfs: 0.0,
                rms_dbfs: -3.0,
                clipped: 12,
                ..Default::default()
            },
            ChannelMeter {
                peak_dbfs: DBFS_FLOOR,
                rms_dbfs: DBFS_FLOOR,
                clipped: 0,
                ..Default::default()
            },
        ];
        let html = meter_bars(&ch, false).into_string();
        assert_eq!(html.matches("class=\"meter\"").count(), 3);
        assert!(html.contains("CLIP 12"));
        assert!(html.contains("−∞"));
        assert!(meter_bars(&ch, true).into_string().contains("meters stale"));
        let silent = ChannelMeter {
            flags: [MeterFlag::Silence].into_iter().collect(),
            ..Default::default()
        };
        assert!(
            meter_bars(&[silent], false)
                .into_string()
                .contains(">SILENT<")
        );
    }

    #[test]
    fn ago_reads_naturally() {
        assert_eq!(ago(10_000, 7_000), "3 s ago");
        assert_eq!(ago(200_000, 0), "3 min ago");
        assert_eq!(ago(0, 5_000), "0 s ago");
    }

    #[test]
    fn a_waveform_lane_draws_each_column_over_its_stretch_and_marks_full_scale() {
        let first = [(-64, 64), (0, 127)];
        let second = [(-127, 10)];
        let lane = waveform_lane(
            "Channel 1 <of 2>",
            &[
                WaveformStretch {
                    start: 0.0,
                    width: 0.5,
                    peaks: &first,
                },
                WaveformStretch {
                    start: 0.75,
                    width: 0.25,
                    peaks: &second,
                },
            ],
        )
        .into_string();
        assert!(
            lane.contains(r#"aria-label="Channel 1 &lt;of 2&gt;""#),
            "{lane}"
        );
        // Upper edge of the first stretch: 64 → y 24.8 over 0…250, 127 → 0 over 250…500;
        // lower edge back: 0 → 50, −64 → 75.2.
        assert!(
            lane.contains("M0.0 24.8H0.0V24.8H250.0H250.0V0.0H500.0V50.0H250.0V75.2H0.0Z"),
            "{lane}"
        );
        // The second starts at three quarters, its lowest sample at full scale.
        assert!(lane.contains("M750.0 46.1"), "{lane}");
        assert_eq!(lane.matches("<rect class=\"clip\"").count(), 2, "{lane}");
        assert!(lane.contains(r#"x="250.0" y="0" width="250.0""#), "{lane}");
        assert!(lane.contains(r#"x="750.0" y="0" width="250.0""#), "{lane}");
    }

    #[test]
    fn a_lane_without_audio_has_only_its_axis() {
        let lane = waveform_lane("empty", &[]).into_string();
        assert!(
            lane.contains("class=\"axis\"") && !lane.contains("<path"),
            "{lane}"
        );
    }
}
