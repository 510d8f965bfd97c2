//! Recurrence against a table of cases: several time zones, both daylight-
//! saving changes of Europe/Berlin, America/New_York and Australia/Sydney,
//! leap days and month ends. Expected instants are worked out by hand from the
//! zones' rules (UTC offsets before and after each change), not by the code
//! under test.

use jiff::Timestamp;
use rakkr_protocol::schedule::{
    ALWAYS_ON_KEY, CivilDate, Exception, Pause, Recurrence, ScheduleSpec, TimeOfDay, Timing,
    Weekday, Window,
};

fn date(s: &str) -> CivilDate {
    s.parse().unwrap()
}

fn window(start: &str, end: &str) -> Option<Window> {
    Some(Window {
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    })
}

fn timing(zone: &str, recurrence: Recurrence, w: Option<Window>) -> Timing {
    Timing {
        recurrence,
        time_zone: zone.into(),
        window: w,
        start_early_s: 0,
        stop_late_s: 0,
        skip: vec![],
        pauses: vec![],
    }
}

fn utc(ms: u64) -> String {
    Timestamp::from_millisecond(ms as i64).unwrap().to_string()
}

fn ms(s: &str) -> u64 {
    s.parse::<Timestamp>().unwrap().as_millisecond() as u64
}

/// The recorded window of a daily schedule on `day`, as UTC instants.
fn daily_window(zone: &str, start: &str, end: &str, day: &str) -> Option<(String, String)> {
    let cal = timing(zone, Recurrence::Daily, window(start, end))
        .calendar()
        .unwrap();
    cal.occurrence_on(date(day).as_jiff()).map(|o| {
        assert_eq!(o.key, day);
        assert_eq!((o.start_ms, o.end_ms), (o.window_start_ms, o.window_end_ms));
        (utc(o.start_ms), utc(o.end_ms))
    })
}

/// Zone, start, end, local date, the expected UTC start and end (none: no
/// occurrence that day), and why.
type WindowCase<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    Option<(&'a str, &'a str)>,
    &'a str,
);

#[test]
fn windows_across_daylight_saving_changes() {
    #[rustfmt::skip]
    let table: &[WindowCase] = &[
        ("UTC", "19:00", "21:00", "2026-03-29", Some(("2026-03-29T19:00:00Z", "2026-03-29T21:00:00Z")), "UTC has no changes"),
        // Europe/Berlin: CET +01, CEST +02. 2026-03-29 02:00 CET jumps to 03:00
        // CEST (01:00Z); 2026-10-25 03:00 CEST falls back to 02:00 CET (01:00Z).
        ("Europe/Berlin", "19:00", "21:00", "2026-01-15", Some(("2026-01-15T18:00:00Z", "2026-01-15T20:00:00Z")), "winter"),
        ("Europe/Berlin", "19:00", "21:00", "2026-07-15", Some(("2026-07-15T17:00:00Z", "2026-07-15T19:00:00Z")), "summer"),
        ("Europe/Berlin", "02:30", "03:30", "2026-03-29", Some(("2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z")), "start skipped: records from the jump"),
        ("Europe/Berlin", "02:15", "02:45", "2026-03-29", None, "window wholly in the skipped hour"),
        ("Europe/Berlin", "01:30", "02:30", "2026-03-29", Some(("2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z")), "end skipped: stops at the jump"),
        ("Europe/Berlin", "01:00", "04:00", "2026-03-29", Some(("2026-03-29T00:00:00Z", "2026-03-29T02:00:00Z")), "three wall-clock hours last two"),
        ("Europe/Berlin", "22:00", "06:00", "2026-03-28", Some(("2026-03-28T21:00:00Z", "2026-03-29T04:00:00Z")), "overnight into the change: seven hours"),
        ("Europe/Berlin", "02:30", "03:30", "2026-10-25", Some(("2026-10-25T00:30:00Z", "2026-10-25T02:30:00Z")), "start twice: first 02:30 to 03:30 CET"),
        ("Europe/Berlin", "02:10", "02:40", "2026-10-25", Some(("2026-10-25T00:10:00Z", "2026-10-25T01:40:00Z")), "window wholly in the repeated hour: both passes"),
        ("Europe/Berlin", "01:00", "04:00", "2026-10-25", Some(("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z")), "three wall-clock hours last four"),
        ("Europe/Berlin", "22:00", "06:00", "2026-10-24", Some(("2026-10-24T20:00:00Z", "2026-10-25T05:00:00Z")), "overnight over the change: nine hours"),
        ("Europe/Berlin", "00:00", "00:00", "2026-10-25", Some(("2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z")), "24-hour window on a 25-hour day"),
        ("Europe/Berlin", "00:00", "00:00", "2026-03-29", Some(("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")), "24-hour window on a 23-hour day"),
        // America/New_York: EST -05, EDT -04. 2026-03-08 02:00 EST jumps to
        // 03:00 EDT (07:00Z); 2026-11-01 02:00 EDT falls back to 01:00 EST (06:00Z).
        ("America/New_York", "09:00", "10:00", "2026-07-04", Some(("2026-07-04T13:00:00Z", "2026-07-04T14:00:00Z")), "summer"),
        ("America/New_York", "09:00", "10:00", "2026-12-04", Some(("2026-12-04T14:00:00Z", "2026-12-04T15:00:00Z")), "winter"),
        ("America/New_York", "02:30", "03:30", "2026-03-08", Some(("2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z")), "start skipped"),
        ("America/New_York", "02:00", "03:00", "2026-03-08", None, "the skipped hour itself"),
        ("America/New_York", "01:30", "02:30", "2026-11-01", Some(("2026-11-01T05:30:00Z", "2026-11-01T07:30:00Z")), "01:30 twice: from the first"),
        ("America/New_York", "00:30", "01:30", "2026-11-01", Some(("2026-11-01T04:30:00Z", "2026-11-01T06:30:00Z")), "end twice: to the second"),
        ("America/New_York", "23:00", "01:00", "2026-03-07", Some(("2026-03-08T04:00:00Z", "2026-03-08T06:00:00Z")), "overnight the night before the change"),
        // Australia/Sydney: AEST +10, AEDT +11. 2026-04-05 03:00 AEDT falls back
        // to 02:00 AEST (16:00Z on the 4th); 2026-10-04 02:00 AEST jumps to 03:00
        // AEDT (16:00Z on the 3rd).
        ("Australia/Sydney", "08:00", "09:00", "2026-06-01", Some(("2026-05-31T22:00:00Z", "2026-05-31T23:00:00Z")), "southern winter"),
        ("Australia/Sydney", "08:00", "09:00", "2026-12-01", Some(("2026-11-30T21:00:00Z", "2026-11-30T22:00:00Z")), "southern summer"),
        ("Australia/Sydney", "02:30", "03:30", "2026-04-05", Some(("2026-04-04T15:30:00Z", "2026-04-04T17:30:00Z")), "fall back in April"),
        ("Australia/Sydney", "02:30", "03:30", "2026-10-04", Some(("2026-10-03T16:00:00Z", "2026-10-03T16:30:00Z")), "spring forward in October"),
        ("Australia/Sydney", "02:15", "02:45", "2026-10-04", None, "wholly skipped"),
        ("Australia/Sydney", "23:00", "07:00", "2026-10-03", Some(("2026-10-03T13:00:00Z", "2026-10-03T20:00:00Z")), "overnight over the change: seven hours"),
        // Zones with odd offsets and none.
        ("Asia/Kolkata", "06:00", "07:00", "2026-03-29", Some(("2026-03-29T00:30:00Z", "2026-03-29T01:30:00Z")), "half-hour offset"),
        ("Asia/Kathmandu", "06:00", "07:00", "2026-03-29", Some(("2026-03-29T00:15:00Z", "2026-03-29T01:15:00Z")), "quarter-hour offset"),
    ];
    for (zone, start, end, day, expected, why) in table {
        let got = daily_window(zone, start, end, day);
        let expected = expected.map(|(s, e)| (s.to_string(), e.to_string()));
        assert_eq!(got, expected, "{zone} {start}–{end} on {day}: {why}");
    }
}

/// The dates in `[from, to]` on which `recurrence` has an occurrence.
fn dates_of(recurrence: Recurrence, from: &str, to: &str) -> Vec<String> {
    let cal = timing("Europe/Berlin", recurrence, window("12:00", "13:00"))
        .calendar()
        .unwrap();
    cal.occurrences(
        ms(&format!("{from}T00:00:00Z")),
        ms(&format!("{to}T23:00:00Z")),
        1000,
    )
    .into_iter()
    .map(|o| o.key)
    .collect()
}

#[test]
fn month_ends_and_leap_days() {
    let monthly = |day| Recurrence::Monthly { day };
    // (recurrence, from, to, expected dates, why)
    #[rustfmt::skip]
    let table: Vec<(Recurrence, &str, &str, Vec<&str>, &str)> = vec![
        (monthly(31), "2027-01-01", "2027-05-31", vec!["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31"], "31st clamps to short months"),
        (monthly(29), "2028-01-01", "2028-03-31", vec!["2028-01-29", "2028-02-29", "2028-03-29"], "leap year has 29 February"),
        (monthly(29), "2027-02-01", "2027-03-31", vec!["2027-02-28", "2027-03-29"], "common year: last of February"),
        (monthly(30), "2028-02-01", "2028-02-29", vec!["2028-02-29"], "30th in a leap February: the 29th"),
        (monthly(1), "2026-11-15", "2027-01-15", vec!["2026-12-01", "2027-01-01"], "first of the month over a year end"),
        (Recurrence::Daily, "2028-02-27", "2028-03-01", vec!["2028-02-27", "2028-02-28", "2028-02-29", "2028-03-01"], "daily over a leap day"),
        (Recurrence::Once { date: date("2028-02-29") }, "2028-01-01", "2028-12-31", vec!["2028-02-29"], "once on a leap day"),
        (Recurrence::Once { date: date("2028-02-29") }, "2028-03-01", "2028-12-31", vec![], "once, in the past"),
        (Recurrence::Weekly { days: vec![Weekday::Monday, Weekday::Friday] }, "2026-11-23", "2026-12-06", vec!["2026-11-23", "2026-11-27", "2026-11-30", "2026-12-04"], "weekly"),
        (Recurrence::Weekly { days: vec![Weekday::Sunday] }, "2026-03-22", "2026-04-05", vec!["2026-03-22", "2026-03-29", "2026-04-05"], "weekly across a change"),
        (Recurrence::Manual, "2026-01-01", "2026-12-31", vec![], "manual has none"),
    ];
    for (recurrence, from, to, expected, why) in table {
        let got = dates_of(recurrence.clone(), from, to);
        assert_eq!(got, expected, "{recurrence:?} {from}..{to}: {why}");
    }
    assert_eq!(date("2028-02-29").weekday(), Weekday::Tuesday);
}

#[test]
fn buffers_widen_the_window_in_elapsed_time() {
    let mut t = timing("Europe/Berlin", Recurrence::Daily, window("19:00", "21:00"));
    t.start_early_s = 300;
    t.stop_late_s = 600;
    let o = t
        .calendar()
        .unwrap()
        .occurrence_on(date("2026-03-29").as_jiff())
        .unwrap();
    assert_eq!(utc(o.window_start_ms), "2026-03-29T17:00:00Z");
    assert_eq!(utc(o.start_ms), "2026-03-29T16:55:00Z");
    assert_eq!(utc(o.window_end_ms), "2026-03-29T19:00:00Z");
    assert_eq!(utc(o.end_ms), "2026-03-29T19:10:00Z");
}

#[test]
fn the_due_occurrence_of_an_overnight_window_is_the_one_that_began_yesterday() {
    let cal = timing("Europe/Berlin", Recurrence::Daily, window("22:00", "06:00"))
        .calendar()
        .unwrap();
    let due = cal.due_at(ms("2026-11-29T01:00:00Z")).unwrap();
    assert_eq!(due.key, "2026-11-28");
    assert!(cal.due_at(ms("2026-11-29T12:00:00Z")).is_none());
    let next = cal.next_after(ms("2026-11-29T12:00:00Z")).unwrap();
    assert_eq!(next.key, "2026-11-29");
    assert_eq!(utc(next.start_ms), "2026-11-29T21:00:00Z");
}

#[test]
fn skips_and_pauses_are_listed_but_not_due() {
    let mut t = timing("UTC", Recurrence::Daily, window("10:00", "11:00"));
    t.skip = vec![date("2026-12-02")];
    t.pauses = vec![Pause {
        from: date("2026-12-24"),
        to: date("2026-12-26"),
    }];
    let cal = t.calendar().unwrap();
    let listed = cal.occurrences(ms("2026-12-01T00:00:00Z"), ms("2026-12-28T00:00:00Z"), 100);
    let exception = |key: &str| listed.iter().find(|o| o.key == key).unwrap().exception;
    assert_eq!(listed.len(), 27);
    assert_eq!(exception("2026-12-01"), None);
    assert_eq!(exception("2026-12-02"), Some(Exception::Skipped));
    assert_eq!(exception("2026-12-23"), None);
    for d in ["2026-12-24", "2026-12-25", "2026-12-26"] {
        assert_eq!(exception(d), Some(Exception::Paused), "{d}");
    }
    assert_eq!(exception("2026-12-27"), None);
    assert!(cal.due_at(ms("2026-12-02T10:30:00Z")).is_none());
    assert!(cal.due_at(ms("2026-12-25T10:30:00Z")).is_none());
    assert_eq!(
        cal.due_at(ms("2026-12-03T10:30:00Z")).unwrap().key,
        "2026-12-03"
    );
    // Skip-next: the next occurrence after a skipped one is the day after.
    assert_eq!(
        cal.next_after(ms("2026-12-01T12:00:00Z")).unwrap().key,
        "2026-12-03"
    );
    assert_eq!(
        cal.next_after(ms("2026-12-23T12:00:00Z")).unwrap().key,
        "2026-12-27"
    );
}

#[test]
fn always_on_has_one_occurrence_that_never_ends() {
    let cal = timing("UTC", Recurrence::AlwaysOn, None)
        .calendar()
        .unwrap();
    let o = cal.due_at(ms("2026-11-29T12:00:00Z")).unwrap();
    assert_eq!(o.key, ALWAYS_ON_KEY);
    assert_eq!(o.end_ms, u64::MAX);
    assert_eq!(cal.next_after(ms("2026-11-29T12:00:00Z")), None);
}

#[test]
fn bad_timings_are_refused_with_the_reason() {
    #[rustfmt::skip]
    let cases: Vec<(Timing, &str)> = vec![
        (timing("Mars/Olympus", Recurrence::Daily, window("10:00", "11:00")), "unknown time zone"),
        (timing("UTC", Recurrence::Daily, None), "needs a window"),
        (timing("UTC", Recurrence::AlwaysOn, window("10:00", "11:00")), "has no window"),
        (timing("UTC", Recurrence::Weekly { days: vec![] }, window("10:00", "11:00")), "at least one day"),
        (timing("UTC", Recurrence::Monthly { day: 0 }, window("10:00", "11:00")), "not in 1..=31"),
        (timing("UTC", Recurrence::Monthly { day: 32 }, window("10:00", "11:00")), "not in 1..=31"),
        (
            Timing { start_early_s: 3601, ..timing("UTC", Recurrence::Daily, window("10:00", "11:00")) },
            "start_early_s is 3601",
        ),
        (
            Timing { stop_late_s: 60, ..timing("UTC", Recurrence::Daily, window("10:00", "10:00")) },
            "may not overlap",
        ),
        (
            Timing {
                pauses: vec![Pause { from: date("2026-12-02"), to: date("2026-12-01") }],
                ..timing("UTC", Recurrence::Daily, window("10:00", "11:00"))
            },
            "ends (2026-12-01) before it begins",
        ),
    ];
    for (t, why) in cases {
        let err = t.calendar().unwrap_err();
        assert!(err.contains(why), "{t:?}: {err}");
    }
}

#[test]
fn dates_and_times_parse_strictly() {
    for bad in [
        "2026-02-30",
        "2026-2-01",
        "26-02-01",
        "2026-02-01T00:00",
        "1999-01-01",
        "２０２６-01-01",
    ] {
        assert!(bad.parse::<CivilDate>().is_err(), "{bad}");
    }
    for bad in [
        "24:00",
        "1:30",
        "01:60",
        "01:30:60",
        "01",
        "01:30:00:00",
        "+1:30",
    ] {
        assert!(bad.parse::<TimeOfDay>().is_err(), "{bad}");
    }
    assert_eq!("01:30".parse::<TimeOfDay>().unwrap().to_string(), "01:30");
    assert_eq!(
        "01:30:15".parse::<TimeOfDay>().unwrap().to_string(),
        "01:30:15"
    );
    assert_eq!(date("2028-02-29").to_string(), "2028-02-29");
}

#[test]
fn a_schedule_round_trips_through_json_and_checks_its_parts() {
    let json = r#"{
        "name": "  Evening news  ",
        "node": "studio-a",
        "job": {"device": "default", "channels": "1,2", "profile": {"codec": "flac"}},
        "timing": {
            "recurrence": {"mode": "weekly", "days": ["monday", "friday"]},
            "time_zone": "Europe/Berlin",
            "window": {"start": "19:00", "end": "20:15"},
            "start_early_s": 120,
            "skip": ["2026-12-25"]
        },
        "tags": ["news", " news ", "evening"]
    }"#;
    let mut spec: ScheduleSpec = serde_json::from_str(json).unwrap();
    spec.check().unwrap();
    assert_eq!(spec.name, "Evening news");
    assert!(spec.enabled);
    assert_eq!(spec.tags, ["evening", "news"]);
    let again: ScheduleSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);

    let mut with_duration = spec.clone();
    with_duration.job.duration_s = Some(60);
    assert!(with_duration.check().unwrap_err().contains("duration_s"));
    let mut unnamed = spec.clone();
    unnamed.name = " ".into();
    assert!(unnamed.check().is_err());

    let err = serde_json::from_str::<ScheduleSpec>(&json.replace("19:00", "25:00")).unwrap_err();
    assert!(err.to_string().contains("not a time of day"), "{err}");
    let err = serde_json::from_str::<ScheduleSpec>(&json.replace("\"weekly\"", "\"hourly\""))
        .unwrap_err();
    assert!(err.to_string().contains("unknown variant"), "{err}");
    // A misspelt field in the timing, the recurrence, the window, the schedule.
    for (field, typo) in [
        ("start_early_s", "start_erly_s"),
        ("days", "dayz"),
        ("start", "stat"),
        ("tags", "tgas"),
    ] {
        let bad = json.replace(&format!("\"{field}\""), &format!("\"{typo}\""));
        let err = serde_json::from_str::<ScheduleSpec>(&bad).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{typo}: {err}");
    }
}

#[test]
fn an_occurrence_names_its_first_job_the_same_everywhere() {
    use rakkr_protocol::schedule::first_job_id;
    use rakkr_protocol::{JobId, ScheduleId};
    let s = ScheduleId::new(1_000);
    let cal = timing("UTC", Recurrence::Daily, window("10:00", "11:00"))
        .calendar()
        .unwrap();
    let o = cal.occurrence_on(date("2026-11-29").as_jiff()).unwrap();
    let id = first_job_id(s, 1_000, &o);
    assert_eq!(id, first_job_id(s, 1_000, &o), "deterministic");
    assert_eq!(id, JobId::for_occurrence(s, "2026-11-29", o.start_ms));
    let uuid: uuid::Uuid = id.to_string().parse().unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
    assert_eq!(
        secs * 1000 + u64::from(nanos) / 1_000_000,
        o.start_ms,
        "timed at the start"
    );
    let next = cal.occurrence_on(date("2026-11-30").as_jiff()).unwrap();
    assert_ne!(first_job_id(s, 1_000, &next), id, "per occurrence");
    assert_ne!(
        first_job_id(ScheduleId::new(2_000), 1_000, &o),
        id,
        "per schedule"
    );
    // Always-on starts at the epoch: timed at the schedule's creation instead.
    let on = timing("UTC", Recurrence::AlwaysOn, None)
        .calendar()
        .unwrap();
    let always = on.due_at(5_000_000).unwrap();
    let (secs, _) = uuid::Uuid::parse_str(&first_job_id(s, 1_000_000, &always).to_string())
        .unwrap()
        .get_timestamp()
        .unwrap()
        .to_unix();
    assert_eq!(secs, 1_000);
}

#[test]
fn restarts_of_an_occurrence_have_their_own_ids_in_order() {
    use rakkr_protocol::ScheduleId;
    use rakkr_protocol::schedule::{first_job_id, occurrence_job_id};
    let s = ScheduleId::new(1_000);
    let cal = timing("UTC", Recurrence::Daily, window("10:00", "11:00"))
        .calendar()
        .unwrap();
    let o = cal.occurrence_on(date("2026-11-29").as_jiff()).unwrap();
    let ids: Vec<_> = (0..4).map(|n| occurrence_job_id(s, 1_000, &o, n)).collect();
    assert_eq!(ids[0], first_job_id(s, 1_000, &o));
    assert_eq!(ids[2], occurrence_job_id(s, 1_000, &o, 2), "deterministic");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "distinct, and in the order they start");
    let next = cal.occurrence_on(date("2026-11-30").as_jiff()).unwrap();
    assert_ne!(
        occurrence_job_id(s, 1_000, &next, 1),
        ids[1],
        "per occurrence"
    );
}
