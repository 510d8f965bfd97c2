//! The schedules pages: the list with a week or month calendar
//! (`/schedules`, `schedules.read`), one schedule with its upcoming
//! occurrences and what became of past ones, and the editor
//! (`schedules.manage`; run-now needs `jobs.manage`).
//!
//! Forms post plain fields (no JavaScript needed); [`ScheduleForm::spec`]
//! turns them into a [`ScheduleSpec`] through the same JSON the API takes, so
//! the console and the API refuse the same things with the same words. Every
//! change goes through [`crate::schedules::ops`] and is audited there.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use maud::{Markup, html};
use rakkr_protocol::access::Permission;
use rakkr_protocol::schedule::{
    CivilDate, Exception, Occurrence, Recurrence, ScheduleSpec, Weekday, Zone,
};
use rakkr_store::{OccurrenceRecord, ScheduleRecord};
use serde::Deserialize;

use crate::auth::SignedIn;
use crate::console::{console_page, csrf_field, utc_seconds};
use crate::http::{AppState, Problem};
use crate::policies::{DeliveryPolicies, RecordingProfiles, WatchdogPolicies, describe_profile};

/// The configured lists the editor offers.
pub struct Lists<'a> {
    pub watchdog: &'a WatchdogPolicies,
    pub profiles: &'a RecordingProfiles,
    pub delivery: &'a DeliveryPolicies,
}

impl Lists<'_> {
    fn of(state: &AppState) -> Lists<'_> {
        Lists {
            watchdog: &state.watchdog_policies,
            profiles: &state.profiles,
            delivery: &state.delivery_policies,
        }
    }
}
use crate::schedules::{ScheduleDetail, ops, schedule_id};

pub const SCHEDULES_PATH: &str = "/schedules";
pub const NEW_SCHEDULE_PATH: &str = "/schedules/new";

/// Most occurrences one calendar shows.
const CALENDAR_LIMIT: usize = 2000;

const DAY_MS: u64 = 86_400_000;

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const WEEKDAYS: [(Weekday, &str); 7] = [
    (Weekday::Monday, "Mon"),
    (Weekday::Tuesday, "Tue"),
    (Weekday::Wednesday, "Wed"),
    (Weekday::Thursday, "Thu"),
    (Weekday::Friday, "Fri"),
    (Weekday::Saturday, "Sat"),
    (Weekday::Sunday, "Sun"),
];

/// "Weekly on Mon, Fri, 19:00–20:15 Europe/Berlin".
pub fn describe(spec: &ScheduleSpec) -> String {
    let t = &spec.timing;
    let when = match &t.recurrence {
        Recurrence::Manual => "Manual (run-now)".to_owned(),
        Recurrence::Once { date } => format!("Once, on {date}"),
        Recurrence::Daily => "Daily".to_owned(),
        Recurrence::Weekly { days } => {
            let names: Vec<&str> = WEEKDAYS
                .iter()
                .filter(|(d, _)| days.contains(d))
                .map(|(_, n)| *n)
                .collect();
            format!("Weekly on {}", names.join(", "))
        }
        Recurrence::Monthly { day } => format!("Monthly on day {day}"),
        Recurrence::AlwaysOn => "Always on".to_owned(),
    };
    match &t.window {
        Some(w) => format!("{when}, {}–{} {}", w.start, w.end, t.time_zone),
        None => format!("{when} ({})", t.time_zone),
    }
}

/// An occurrence's window in `zone`: "19:00–20:15".
fn window_text(zone: &Zone, o: &Occurrence) -> String {
    if o.end_ms == u64::MAX {
        return "all the time".into();
    }
    format!(
        "{}–{}",
        zone.time_of(o.window_start_ms),
        zone.time_of(o.window_end_ms)
    )
}

fn exception_text(e: Option<Exception>) -> &'static str {
    match e {
        Some(Exception::Skipped) => "skipped",
        Some(Exception::Paused) => "paused",
        None => "",
    }
}

/// The list page's query: which calendar.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarQuery {
    /// `week` (default) or `month`.
    #[serde(default)]
    pub view: String,
    /// A day in the period to show (`YYYY-MM-DD`); default today.
    #[serde(default)]
    pub from: String,
    /// The zone the calendar's days are in; default UTC.
    #[serde(default)]
    pub tz: String,
}

/// One calendar entry.
struct Entry<'a> {
    schedule: &'a ScheduleRecord,
    occurrence: Occurrence,
}

struct CalendarView<'a> {
    zone_name: String,
    month: bool,
    first: CivilDate,
    days: usize,
    /// Entries per day, by start.
    by_day: Vec<Vec<Entry<'a>>>,
    previous: CivilDate,
    next: CivilDate,
}

fn calendar<'a>(
    all: &'a [ScheduleRecord],
    q: &CalendarQuery,
    now_ms: u64,
) -> Result<CalendarView<'a>, String> {
    let zone_name = match q.tz.trim() {
        "" => "UTC".to_owned(),
        z => z.to_owned(),
    };
    let zone = Zone::get(&zone_name)?;
    let anchor = match q.from.trim() {
        "" => zone.date_of(now_ms),
        d => d.parse::<CivilDate>()?,
    };
    let month = q.view == "month";
    let (first, days, previous, next) = if month {
        let first_of_month = anchor.first_of_month();
        let first = first_of_month.monday();
        (
            first,
            42,
            first_of_month.add_days(-1).first_of_month(),
            first_of_month.add_days(40).first_of_month(),
        )
    } else {
        let first = anchor.monday();
        (first, 7, first.add_days(-7), first.add_days(7))
    };
    let (from_ms, to_ms) = (
        zone.start_of(first),
        zone.start_of(first.add_days(days as i64)),
    );
    let mut by_day: Vec<Vec<Entry>> = (0..days).map(|_| Vec::new()).collect();
    let mut shown = 0;
    for schedule in all.iter().filter(|s| s.spec.enabled) {
        let Ok(cal) = schedule.spec.timing.calendar() else {
            continue;
        };
        for o in cal.occurrences(from_ms, to_ms, CALENDAR_LIMIT) {
            let start = o.start_ms.max(from_ms);
            let day = zone.date_of(start);
            let index = (zone.start_of(day).saturating_sub(from_ms) + DAY_MS / 2) / DAY_MS;
            if let Some(slot) = by_day.get_mut(index as usize)
                && shown < CALENDAR_LIMIT
            {
                slot.push(Entry {
                    schedule,
                    occurrence: o,
                });
                shown += 1;
            }
        }
    }
    for day in &mut by_day {
        day.sort_by_key(|e| e.occurrence.start_ms);
    }
    Ok(CalendarView {
        zone_name,
        month,
        first,
        days,
        by_day,
        previous,
        next,
    })
}

fn calendar_markup(view: &CalendarView, today: CivilDate) -> Markup {
    let link = |from: CivilDate| {
        format!(
            "{SCHEDULES_PATH}?view={}&from={from}&tz={}",
            if view.month { "month" } else { "week" },
            view.zone_name
        )
    };
    let month_of_view = view.first.add_days(10).month();
    html! {
        section.panel aria-labelledby="calendar-h" {
            h2 #calendar-h {
                @if view.month {
                    (MONTHS[(month_of_view as usize + 11) % 12]) " " (view.first.add_days(10).year())
                } @else {
                    "Week of " (view.first)
                }
                " (" (view.zone_name) ")"
            }
            nav.pager aria-label="Calendar" {
                a href=(link(view.previous)) { "‹ Earlier" }
                " "
                a href=(format!("{SCHEDULES_PATH}?view=week&tz={}", view.zone_name)) { "This week" }
                " "
                a href=(format!("{SCHEDULES_PATH}?view=month&tz={}", view.zone_name)) { "This month" }
                " "
                a href=(link(view.next)) { "Later ›" }
            }
            div class={ "calendar " @if view.month { "month" } @else { "week" } } role="list" {
                @for (i, entries) in view.by_day.iter().enumerate().take(view.days) {
                    @let day = view.first.add_days(i as i64);
                    div class={ "day" @if day == today { " today" } @if view.month && day.month() != month_of_view { " other-month" } } role="listitem" {
                        div.date { (WEEKDAYS[i % 7].1) " " (day.day()) }
                        @for e in entries {
                            @let zone = Zone::get(&e.schedule.spec.timing.time_zone).ok();
                            a class={ "occ" @if e.occurrence.exception.is_some() { " excepted" } }
                                href={ (SCHEDULES_PATH) "/" (e.schedule.id) }
                                title=(describe(&e.schedule.spec)) {
                                span.when { @if let Some(z) = &zone { (window_text(z, &e.occurrence)) } }
                                " " (e.schedule.spec.name)
                                @if let Some(x) = e.occurrence.exception { " (" (exception_text(Some(x))) ")" }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn list_page(
    all: Result<&[ScheduleRecord], &str>,
    q: &CalendarQuery,
    now_ms: u64,
    signed_in: &SignedIn,
) -> Markup {
    let views: Vec<crate::schedules::ScheduleView> = all
        .map(|a| {
            a.iter()
                .map(|r| crate::schedules::view(r.clone(), now_ms))
                .collect()
        })
        .unwrap_or_default();
    let cal = all
        .map_err(str::to_owned)
        .and_then(|a| calendar(a, q, now_ms));
    console_page(
        "Schedules",
        signed_in,
        html! {},
        html! {
            h1 { "Schedules" }
            @if signed_in.may(Permission::SchedulesManage) {
                p { a.button href=(NEW_SCHEDULE_PATH) { "New schedule" } }
            }
            @if let Err(why) = all { p.error role="alert" { "The store could not be read: " (why) } }
            @if views.is_empty() && all.is_ok() {
                p.muted { "No schedules yet." }
            } @else {
                table.schedules {
                    thead { tr { th { "Name" } th { "Node" } th { "When" } th { "Next (UTC)" } th { "Tags" } } }
                    tbody {
                        @for v in &views {
                            @let s = &v.schedule;
                            tr data-schedule=(s.id) class={ @if !s.spec.enabled { "disabled" } } {
                                td { a href={ (SCHEDULES_PATH) "/" (s.id) } { (s.spec.name) } @if !s.spec.enabled { " " span.badge { "disabled" } } }
                                td { a.node-id href={ "/nodes/" (s.spec.node) } { (s.spec.node) } }
                                td { (describe(&s.spec)) }
                                td.nowrap { @match &v.next { Some(o) if o.start_ms == 0 => { "recording" } Some(o) => { (utc_seconds(o.start_ms)) } None => { span.muted { "none" } } } }
                                td { @for t in &s.spec.tags { span.tag { (t) } " " } }
                            }
                        }
                    }
                }
            }
            form.search method="get" action=(SCHEDULES_PATH) {
                label { "Calendar"
                    select name="view" {
                        option value="week" selected[q.view != "month"] { "week" }
                        option value="month" selected[q.view == "month"] { "month" }
                    }
                }
                label { "From" input type="date" name="from" value=(q.from); }
                label { "Time zone" input type="text" name="tz" value=(q.tz) placeholder="UTC"; }
                button type="submit" { "Show" }
            }
            @match &cal {
                Ok(view) => { (calendar_markup(view, Zone::get(&view.zone_name).map(|z| z.date_of(now_ms)).unwrap_or(view.first))) }
                Err(why) => { p.error role="alert" { (why) } }
            }
        },
    )
}

/// `GET /schedules`
pub async fn list(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    query: Result<Query<CalendarQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|q| q.0).unwrap_or_default();
    let store = state.store.clone();
    let all = tokio::task::spawn_blocking(move || store.schedules())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let now = state.clock.unix_ms();
    let page = list_page(all.as_deref().map_err(String::as_str), &q, now, &signed_in);
    let status = if all.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, page).into_response()
}

/// The editor's fields, as a form posts them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleForm {
    #[allow(dead_code)] // checked by the access layer
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    /// A checkbox: present when ticked.
    #[serde(default)]
    pub enabled: Option<String>,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub channels: String,
    #[serde(default)]
    pub codec: String,
    #[serde(default)]
    pub bits: String,
    #[serde(default)]
    pub flac_level: String,
    #[serde(default)]
    pub segment_s: String,
    /// A watchdog policy's name; empty: the server's default.
    #[serde(default)]
    pub watchdog: String,
    /// An upload policy's name; empty: the server's default.
    #[serde(default)]
    pub delivery: String,
    /// A recording profile's name; empty: codec, bits, level and file length as given.
    #[serde(default)]
    pub profile: String,
    #[serde(default)]
    pub name_template: String,
    #[serde(default)]
    pub folder_template: String,
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub date: String,
    #[serde(default)]
    pub monthly_day: String,
    #[serde(default)]
    pub monday: Option<String>,
    #[serde(default)]
    pub tuesday: Option<String>,
    #[serde(default)]
    pub wednesday: Option<String>,
    #[serde(default)]
    pub thursday: Option<String>,
    #[serde(default)]
    pub friday: Option<String>,
    #[serde(default)]
    pub saturday: Option<String>,
    #[serde(default)]
    pub sunday: Option<String>,
    #[serde(default)]
    pub time_zone: String,
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub end: String,
    #[serde(default)]
    pub start_early_s: String,
    #[serde(default)]
    pub stop_late_s: String,
    /// Dates, separated by commas or spaces.
    #[serde(default)]
    pub skip: String,
    /// One pause a line: `YYYY-MM-DD..YYYY-MM-DD`.
    #[serde(default)]
    pub pauses: String,
    /// Comma-separated.
    #[serde(default)]
    pub tags: String,
}

impl ScheduleForm {
    fn days(&self) -> [(Weekday, &Option<String>); 7] {
        [
            (Weekday::Monday, &self.monday),
            (Weekday::Tuesday, &self.tuesday),
            (Weekday::Wednesday, &self.wednesday),
            (Weekday::Thursday, &self.thursday),
            (Weekday::Friday, &self.friday),
            (Weekday::Saturday, &self.saturday),
            (Weekday::Sunday, &self.sunday),
        ]
    }

    /// The form filled in from `spec`.
    pub fn of(spec: &ScheduleSpec) -> ScheduleForm {
        let t = &spec.timing;
        let on = |b: bool| b.then(|| "on".to_owned());
        let days: &[Weekday] = match &t.recurrence {
            Recurrence::Weekly { days } => days,
            _ => &[],
        };
        ScheduleForm {
            csrf: String::new(),
            name: spec.name.clone(),
            node: spec.node.to_string(),
            enabled: on(spec.enabled),
            device: spec.job.device.clone(),
            channels: spec.job.channels.clone().unwrap_or_default(),
            codec: spec.job.profile.codec.as_str().to_owned(),
            bits: spec.job.profile.bits.to_string(),
            flac_level: spec.job.profile.flac_level.to_string(),
            segment_s: spec
                .job
                .profile
                .segment_s
                .map_or(String::new(), |s| s.to_string()),
            watchdog: spec.watchdog.clone().unwrap_or_default(),
            delivery: spec.delivery.clone().unwrap_or_default(),
            profile: spec.profile.clone().unwrap_or_default(),
            name_template: spec.name_template.clone().unwrap_or_default(),
            folder_template: spec.folder_template.clone().unwrap_or_default(),
            mode: t.recurrence.mode().to_owned(),
            date: match &t.recurrence {
                Recurrence::Once { date } => date.to_string(),
                _ => String::new(),
            },
            monthly_day: match &t.recurrence {
                Recurrence::Monthly { day } => day.to_string(),
                _ => String::new(),
            },
            monday: on(days.contains(&Weekday::Monday)),
            tuesday: on(days.contains(&Weekday::Tuesday)),
            wednesday: on(days.contains(&Weekday::Wednesday)),
            thursday: on(days.contains(&Weekday::Thursday)),
            friday: on(days.contains(&Weekday::Friday)),
            saturday: on(days.contains(&Weekday::Saturday)),
            sunday: on(days.contains(&Weekday::Sunday)),
            time_zone: t.time_zone.clone(),
            start: t.window.map_or(String::new(), |w| w.start.to_string()),
            end: t.window.map_or(String::new(), |w| w.end.to_string()),
            start_early_s: t.start_early_s.to_string(),
            stop_late_s: t.stop_late_s.to_string(),
            skip: t
                .skip
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            pauses: t
                .pauses
                .iter()
                .map(|p| format!("{}..{}", p.from, p.to))
                .collect::<Vec<_>>()
                .join("\n"),
            tags: spec.tags.join(", "),
        }
    }

    /// The schedule the form describes, or what is wrong with it (in the
    /// API's words).
    pub fn spec(&self) -> Result<ScheduleSpec, String> {
        use serde_json::{Value, json};
        let number = |field: &str, text: &str| -> Result<Option<u64>, String> {
            match text.trim() {
                "" => Ok(None),
                t => t
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{field}: {t:?} is not a whole number")),
            }
        };
        let mut recurrence = json!({ "mode": self.mode.trim() });
        match self.mode.trim() {
            "once" => recurrence["date"] = json!(self.date.trim()),
            "weekly" => {
                let days: Vec<&str> = self
                    .days()
                    .iter()
                    .filter(|(_, v)| v.is_some())
                    .map(|(d, _)| d.as_str())
                    .collect();
                recurrence["days"] = json!(days);
            }
            "monthly" => {
                recurrence["day"] = json!(number("day of month", &self.monthly_day)?.unwrap_or(0))
            }
            _ => {}
        }
        let mut timing = json!({
            "recurrence": recurrence,
            "time_zone": self.time_zone.trim(),
            "start_early_s": number("start early", &self.start_early_s)?.unwrap_or(0),
            "stop_late_s": number("stop late", &self.stop_late_s)?.unwrap_or(0),
            "skip": self.skip.split([',', ' ', '\n']).map(str::trim).filter(|d| !d.is_empty()).collect::<Vec<_>>(),
        });
        if !self.start.trim().is_empty() || !self.end.trim().is_empty() {
            timing["window"] = json!({ "start": self.start.trim(), "end": self.end.trim() });
        }
        let mut pauses = Vec::new();
        for line in self.pauses.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (from, to) = line
                .split_once("..")
                .ok_or_else(|| format!("pause {line:?}: write it as YYYY-MM-DD..YYYY-MM-DD"))?;
            pauses.push(json!({ "from": from.trim(), "to": to.trim() }));
        }
        timing["pauses"] = Value::Array(pauses);
        let mut profile = json!({ "codec": match self.codec.trim() { "" => "flac", c => c } });
        if let Some(b) = number("bits", &self.bits)? {
            profile["bits"] = json!(b);
        }
        if let Some(l) = number("FLAC level", &self.flac_level)? {
            profile["flac_level"] = json!(l);
        }
        if let Some(s) = number("file length", &self.segment_s)? {
            profile["segment_s"] = json!(s);
        }
        let mut job = json!({ "profile": profile });
        if !self.device.trim().is_empty() {
            job["device"] = json!(self.device.trim());
        }
        if !self.channels.trim().is_empty() {
            job["channels"] = json!(self.channels.trim());
        }
        let mut spec = json!({
            "name": self.name,
            "node": self.node.trim(),
            "enabled": self.enabled.is_some(),
            "job": job,
            "timing": timing,
            "tags": self.tags.split(',').map(str::trim).filter(|t| !t.is_empty()).collect::<Vec<_>>(),
        });
        if !self.watchdog.trim().is_empty() {
            spec["watchdog"] = json!(self.watchdog.trim());
        }
        if !self.delivery.trim().is_empty() {
            spec["delivery"] = json!(self.delivery.trim());
        }
        if !self.profile.trim().is_empty() {
            spec["profile"] = json!(self.profile.trim());
        }
        for (key, value) in [
            ("name_template", &self.name_template),
            ("folder_template", &self.folder_template),
        ] {
            if !value.trim().is_empty() {
                spec[key] = json!(value.trim());
            }
        }
        serde_json::from_value(spec).map_err(|e| e.to_string())
    }
}

fn editor(form: &ScheduleForm, action: &str, signed_in: &SignedIn, lists: &Lists) -> Markup {
    let modes = [
        ("daily", "Daily"),
        ("weekly", "Weekly"),
        ("monthly", "Monthly"),
        ("once", "Once"),
        ("always_on", "Always on"),
        ("manual", "Manual (run-now only)"),
    ];
    html! {
        form.editor method="post" action=(action) {
            (csrf_field(signed_in))
            fieldset {
                legend { "What" }
                label { "Name" input type="text" name="name" value=(form.name) required maxlength="128"; }
                label { "Node" input type="text" name="node" value=(form.node) required; }
                label { "Device" input type="text" name="device" value=(form.device) placeholder="default"; }
                label { "Channels" input type="text" name="channels" value=(form.channels) placeholder="all (e.g. 1,2 or 3)"; }
                label { "Profile"
                    select name="profile" {
                        option value="" selected[form.profile.is_empty()] { "Custom (the four fields below)" }
                        @for p in lists.profiles.list() {
                            option value=(p.name) selected[form.profile == p.name] { (p.name) " — " (describe_profile(&p.value)) }
                        }
                        @if !form.profile.is_empty() && lists.profiles.get(&form.profile).is_none() {
                            option value=(form.profile) selected { (form.profile) " (not on this server)" }
                        }
                    }
                }
                label { "Codec"
                    select name="codec" {
                        @for c in ["flac", "wav", "rf64"] { option value=(c) selected[form.codec == c] { (c) } }
                    }
                }
                label { "Bits" input type="number" name="bits" value=(form.bits) min="16" max="32" step="8"; }
                label { "FLAC level" input type="number" name="flac_level" value=(form.flac_level) min="0" max="8"; }
                label { "File length (s)" input type="number" name="segment_s" value=(form.segment_s) min="1" placeholder="one file"; }
                label { "Watchdog policy"
                    select name="watchdog" {
                        option value="" selected[form.watchdog.is_empty()] { "Default (" (lists.watchdog.default_name()) ")" }
                        @for p in lists.watchdog.list() {
                            option value=(p.name) selected[form.watchdog == p.name] {
                                (p.name) ": below " (p.value.low_signal_dbfs) " dBFS for " (p.value.cumulative_s) " s"
                            }
                        }
                        // A name this server no longer has stays visible, so saving does not change it silently.
                        @if !form.watchdog.is_empty() && lists.watchdog.get(&form.watchdog).is_none() {
                            option value=(form.watchdog) selected { (form.watchdog) " (not on this server)" }
                        }
                    }
                }
                label { "Upload policy"
                    select name="delivery" {
                        option value="" selected[form.delivery.is_empty()] { "Default (" (lists.delivery.default_name()) ")" }
                        @for p in lists.delivery.list() {
                            option value=(p.name) selected[form.delivery == p.name] {
                                (p.name) ": "
                                @if p.value.destinations.is_empty() { "the server only" } @else { (p.value.destinations.join(", ")) }
                            }
                        }
                        @if !form.delivery.is_empty() && lists.delivery.get(&form.delivery).is_none() {
                            option value=(form.delivery) selected { (form.delivery) " (not on this server)" }
                        }
                    }
                }
                label { "Tags" input type="text" name="tags" value=(form.tags) placeholder="comma-separated"; }
                label { "Recording name" input type="text" name="name_template" value=(form.name_template) maxlength="200" placeholder="{schedule} {date} {time}"; }
                label { "Folder" input type="text" name="folder_template" value=(form.folder_template) maxlength="200" placeholder="{node}/{year}/{month}"; }
                label.check { input type="checkbox" name="enabled" checked[form.enabled.is_some()]; " Enabled" }
            }
            fieldset {
                legend { "When" }
                label { "Repeats"
                    select name="mode" {
                        @for (m, label) in modes { option value=(m) selected[form.mode == m] { (label) } }
                    }
                }
                label { "Time zone" input type="text" name="time_zone" value=(form.time_zone) required placeholder="Europe/Berlin"; }
                label { "Start" input type="time" name="start" value=(form.start) step="1"; }
                label { "End" input type="time" name="end" value=(form.end) step="1"; }
                fieldset.days {
                    legend { "Weekly on" }
                    @for (day, on) in form.days() {
                        label.check { input type="checkbox" name=(day.as_str()) checked[on.is_some()]; " " (day.as_str()) }
                    }
                }
                label { "Monthly on day" input type="number" name="monthly_day" value=(form.monthly_day) min="1" max="31"; }
                label { "Once on" input type="date" name="date" value=(form.date); }
                label { "Start early (s)" input type="number" name="start_early_s" value=(form.start_early_s) min="0" max="3600"; }
                label { "Stop late (s)" input type="number" name="stop_late_s" value=(form.stop_late_s) min="0" max="3600"; }
                label { "Skip dates" input type="text" name="skip" value=(form.skip) placeholder="2026-12-25, 2027-01-01"; }
                label { "Pauses (one a line, from..to)" textarea name="pauses" rows="2" { (form.pauses) } }
            }
            button type="submit" { "Save" }
        }
    }
}

fn new_page(
    form: &ScheduleForm,
    error: Option<&str>,
    signed_in: &SignedIn,
    lists: &Lists,
) -> Markup {
    console_page(
        "New schedule",
        signed_in,
        html! {},
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href=(SCHEDULES_PATH) { "Schedules" } " › " span { "New" } }
            h1 { "New schedule" }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            (editor(form, SCHEDULES_PATH, signed_in, lists))
        },
    )
}

/// `GET /schedules/new`
pub async fn new(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
) -> Response {
    let form = ScheduleForm {
        enabled: Some("on".into()),
        mode: "daily".into(),
        time_zone: "UTC".into(),
        codec: "flac".into(),
        ..Default::default()
    };
    new_page(&form, None, &signed_in, &Lists::of(&state)).into_response()
}

/// `POST /schedules` (form), then to the new schedule.
pub async fn create(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Form(form): Form<ScheduleForm>,
) -> Response {
    let spec = match form.spec() {
        Ok(s) => s,
        Err(why) => {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                new_page(&form, Some(&why), &signed_in, &Lists::of(&state)),
            )
                .into_response();
        }
    };
    match ops::create(&state, spec).await {
        Ok((record, change)) => {
            change.to(Redirect::to(&format!("{SCHEDULES_PATH}/{}", record.id)).into_response())
        }
        Err(Problem { status, detail }) => {
            let page = new_page(&form, Some(&detail), &signed_in, &Lists::of(&state));
            (status, page).into_response()
        }
    }
}

fn history_row(record: &OccurrenceRecord) -> Markup {
    html! {
        tr {
            td { (record.occurrence.key) }
            td.nowrap { @if record.occurrence.start_ms > 0 { (utc_seconds(record.occurrence.start_ms)) } }
            td {
                @for j in &record.jobs { a href={ "/recordings/" (j) } { code { (j.to_string()[..8]) } } " " }
                @if record.jobs.is_empty() && record.deferred.is_none() { span.warn { "not recorded" } }
            }
            td { @if let Some(d) = &record.deferred { span.warn { "waiting since " (utc_seconds(d.since_ms)) ": " (d.reason) } } }
        }
    }
}

fn detail_page(
    detail: &ScheduleDetail,
    form: &ScheduleForm,
    error: Option<&str>,
    signed_in: &SignedIn,
    lists: &Lists,
) -> Markup {
    let s = &detail.schedule;
    let zone = Zone::get(&s.spec.timing.time_zone).ok();
    let action = |what: &str| format!("{SCHEDULES_PATH}/{}/{what}", s.id);
    console_page(
        &s.spec.name,
        signed_in,
        html! {},
        html! {
            nav.crumbs aria-label="Breadcrumb" { a href=(SCHEDULES_PATH) { "Schedules" } " › " span { (s.spec.name) } }
            h1 { (s.spec.name) @if !s.spec.enabled { " " span.badge { "disabled" } } }
            @if let Some(e) = error { p.error role="alert" { (e) } }
            section.panel {
                dl.facts {
                    dt { "When" } dd { (describe(&s.spec)) }
                    dt { "Node" } dd { a.node-id href={ "/nodes/" (s.spec.node) } { (s.spec.node) } }
                    dt { "Records" } dd {
                        (s.spec.job.channels.as_deref().unwrap_or("every channel")) " of " (s.spec.job.device) ", "
                        (s.spec.job.profile.codec.as_str()) " " (s.spec.job.profile.bits) "-bit"
                        @if let Some(p) = &s.spec.profile { " (profile " (p) ")" }
                    }
                    dt { "Watchdog" } dd {
                        @let (name, p) = lists.watchdog.for_schedule(s.spec.watchdog.as_deref());
                        (name) @if s.spec.watchdog.is_none() { " (the default)" }
                        @if s.spec.watchdog.as_deref().is_some_and(|w| w != name) {
                            " (its policy " (s.spec.watchdog.as_deref().unwrap_or_default()) " is not on this server)"
                        }
                        ": a channel below " (p.low_signal_dbfs) " dBFS for " (p.cumulative_s) " s in total, after the first "
                        (p.grace_s) " s of a take, raises low_signal"
                    }
                    dt { "Revision" } dd { (s.revision) ", changed " (utc_seconds(s.updated_ms)) }
                }
                div.actions {
                    @if signed_in.may(Permission::JobsManage) && s.spec.enabled && !matches!(s.spec.timing.recurrence, Recurrence::AlwaysOn) {
                        form.inline method="post" action=(action("run-now")) { (csrf_field(signed_in)) button type="submit" { "Run now" } }
                    }
                    @if signed_in.may(Permission::SchedulesManage) {
                        form.inline method="post" action=(action("skip-next")) { (csrf_field(signed_in)) button type="submit" { "Skip next" } }
                        form.inline method="post" action=(action("delete")) { (csrf_field(signed_in)) button.danger type="submit" { "Delete" } }
                    }
                }
            }
            section.panel aria-labelledby="upcoming-h" {
                h2 #upcoming-h { "Next 14 days" }
                @if detail.upcoming.is_empty() {
                    p.muted { "No occurrences." }
                } @else {
                    table.occurrences {
                        thead { tr { th { "Date" } th { "Window (" (s.spec.timing.time_zone) ")" } th { "Records (UTC)" } th { "" } } }
                        tbody {
                            @for o in &detail.upcoming {
                                tr class={ @if o.exception.is_some() { "excepted" } } {
                                    td { (o.key) }
                                    td { @if let Some(z) = &zone { (window_text(z, o)) } }
                                    td.nowrap { @if o.end_ms != u64::MAX { (utc_seconds(o.start_ms)) " – " (utc_seconds(o.end_ms)) } }
                                    td { (exception_text(o.exception)) }
                                }
                            }
                        }
                    }
                }
            }
            section.panel aria-labelledby="history-h" {
                h2 #history-h { "Past occurrences" }
                @if detail.history.is_empty() {
                    p.muted { "None yet." }
                } @else {
                    table.occurrences {
                        thead { tr { th { "Occurrence" } th { "Planned start (UTC)" } th { "Recordings" } th { "" } } }
                        tbody { @for r in &detail.history { (history_row(r)) } }
                    }
                }
            }
            @if signed_in.may(Permission::SchedulesManage) {
                section.panel aria-labelledby="edit-h" {
                    h2 #edit-h { "Edit" }
                    (editor(form, &format!("{SCHEDULES_PATH}/{}", s.id), signed_in, lists))
                }
            }
        },
    )
}

async fn detail_of(state: &AppState, id: &str) -> Result<ScheduleDetail, Response> {
    let id = schedule_id(id)
        .map_err(|_| (StatusCode::NOT_FOUND, "no such schedule\n").into_response())?;
    ops::detail(state, id)
        .await
        .map_err(|p| (p.status, format!("{}\n", p.detail)).into_response())
}

/// `GET /schedules/{id}`
pub async fn detail(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
) -> Response {
    match detail_of(&state, &id).await {
        Ok(d) => {
            let form = ScheduleForm::of(&d.schedule.spec);
            detail_page(&d, &form, None, &signed_in, &Lists::of(&state)).into_response()
        }
        Err(r) => r,
    }
}

/// `POST /schedules/{id}` (form): replace it, then back to it.
pub async fn update(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(form): Form<ScheduleForm>,
) -> Response {
    let detail = match detail_of(&state, &id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let id = detail.schedule.id;
    let result = match form.spec() {
        Ok(spec) => ops::replace(&state, id, spec).await,
        Err(why) => Err(Problem {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            detail: why,
        }),
    };
    match result {
        Ok((_, change)) => {
            change.to(Redirect::to(&format!("{SCHEDULES_PATH}/{id}")).into_response())
        }
        Err(p) => (
            p.status,
            detail_page(
                &detail,
                &form,
                Some(&p.detail),
                &signed_in,
                &Lists::of(&state),
            ),
        )
            .into_response(),
    }
}

/// The CSRF field alone: what the action buttons post.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionForm {
    #[allow(dead_code)] // checked by the access layer
    csrf: String,
}

/// Run one of the buttons' actions, then back to the schedule (or to the
/// list, after a delete), or the page with what went wrong.
async fn act(state: &AppState, signed_in: &SignedIn, id: &str, what: &str) -> Response {
    let detail = match detail_of(state, id).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let id = detail.schedule.id;
    let back = format!("{SCHEDULES_PATH}/{id}");
    let done = match what {
        "skip-next" => ops::skip_next(state, id).await.map(|(_, c)| (c, back)),
        "delete" => ops::delete(state, id)
            .await
            .map(|(_, c)| (c, SCHEDULES_PATH.to_owned())),
        _ => ops::run_now(state, id)
            .await
            .map(|(job, c)| (c, format!("/nodes/{}", job.node))),
    };
    match done {
        Ok((change, to)) => change.to(Redirect::to(&to).into_response()),
        Err(p) => {
            let form = ScheduleForm::of(&detail.schedule.spec);
            (
                p.status,
                detail_page(
                    &detail,
                    &form,
                    Some(&p.detail),
                    signed_in,
                    &Lists::of(state),
                ),
            )
                .into_response()
        }
    }
}

/// `POST /schedules/{id}/skip-next`
pub async fn skip_next(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(_): Form<ActionForm>,
) -> Response {
    act(&state, &signed_in, &id, "skip-next").await
}

/// `POST /schedules/{id}/delete`
pub async fn delete(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(_): Form<ActionForm>,
) -> Response {
    act(&state, &signed_in, &id, "delete").await
}

/// `POST /schedules/{id}/run-now`
pub async fn run_now(
    State(state): State<AppState>,
    Extension(signed_in): Extension<SignedIn>,
    Path(id): Path<String>,
    Form(_): Form<ActionForm>,
) -> Response {
    act(&state, &signed_in, &id, "run-now").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_and_the_spec_say_the_same() {
        let json = serde_json::json!({
            "name": "Evening news",
            "node": "studio-a",
            "enabled": true,
            "job": {"channels": "1,2", "profile": {"codec": "flac", "segment_s": 3600}},
            "timing": {
                "recurrence": {"mode": "weekly", "days": ["monday", "friday"]},
                "time_zone": "Europe/Berlin",
                "window": {"start": "19:00", "end": "20:15"},
                "start_early_s": 120,
                "skip": ["2026-12-25"],
                "pauses": [{"from": "2026-12-24", "to": "2027-01-01"}]
            },
            "tags": ["news", "evening"]
        });
        let spec: ScheduleSpec = serde_json::from_value(json).unwrap();
        let form = ScheduleForm::of(&spec);
        assert_eq!(form.spec().unwrap(), spec);
        assert_eq!(
            describe(&spec),
            "Weekly on Mon, Fri, 19:00–20:15 Europe/Berlin"
        );
        let mut bad = form.clone();
        bad.pauses = "2026-12-24 to 2027-01-01".into();
        assert!(bad.spec().unwrap_err().contains("YYYY-MM-DD..YYYY-MM-DD"));
        bad = form.clone();
        bad.start = "25:00".into();
        assert!(bad.spec().unwrap_err().contains("not a time of day"));
        bad = form;
        bad.start_early_s = "soon".into();
        assert!(bad.spec().unwrap_err().contains("start early"));
    }

    #[test]
    fn the_week_calendar_puts_occurrences_on_their_local_days() {
        let spec: ScheduleSpec = serde_json::from_value(serde_json::json!({
            "name": "Late show",
            "node": "n",
            "job": {},
            "timing": {
                "recurrence": {"mode": "daily"},
                "time_zone": "America/New_York",
                "window": {"start": "23:00", "end": "23:30"}
            }
        }))
        .unwrap();
        let all = [ScheduleRecord {
            id: rakkr_protocol::ScheduleId::new(1),
            spec,
            created_ms: 0,
            updated_ms: 0,
            revision: 1,
        }];
        let q = |tz: &str| CalendarQuery {
            view: "week".into(),
            from: "2026-11-25".into(),
            tz: tz.into(),
        };
        // In New York every day has its 23:00.
        let ny = calendar(&all, &q("America/New_York"), 0).unwrap();
        assert_eq!(ny.first.to_string(), "2026-11-23");
        assert!(ny.by_day.iter().all(|d| d.len() == 1));
        assert_eq!(ny.by_day[0][0].occurrence.key, "2026-11-23");
        // In UTC the same instants fall on the next day (04:00).
        let utc = calendar(&all, &q("UTC"), 0).unwrap();
        assert_eq!(utc.by_day[0][0].occurrence.key, "2026-11-22");
        let month = calendar(
            &all,
            &CalendarQuery {
                view: "month".into(),
                ..q("UTC")
            },
            0,
        )
        .unwrap();
        assert_eq!(month.first.to_string(), "2026-10-26");
        assert_eq!(month.by_day.len(), 42);
        assert!(calendar(&all, &q("Mars/Olympus"), 0).is_err());
    }
}
