//! Maintenance windows: when the devices of a deployment may start
//! installing. A window opens at a local time of day (every day, or on
//! the weekdays named) in an IANA time zone and stays open for a duration
//! of up to a day; DST is the zone's (an opening in a spring-forward gap
//! is an hour later, an ambiguous one at its first occurrence).
//!
//! Where it counts (see docs/ddi.md and README): a hawkBit DDI device sees
//! its `deploymentBase` link only while the window is open (swupdate
//! installs as it downloads and ignores `maintenanceWindow`), and the
//! deployment answers `maintenanceWindow: available | unavailable`; a
//! `/device/v1` device is told the window in its poll and may start
//! installing (INSTALLING, or INSTALLED_VERSION from DOWNLOADED) only while
//! it is open. Downloads are never held, and an install under way when the
//! window closes finishes. EnOS devices are not held: their protocol has no
//! step at which to hold them.

use chrono::{DateTime, Datelike, NaiveTime, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A deployment's maintenance window, as stored (JSON on the deployment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// ISO weekdays, 1 (Monday) to 7 (Sunday), in order; empty: every day.
    pub days: Vec<u8>,
    /// When it opens, "HH:MM" local time.
    pub start: String,
    /// 1 to 1,440.
    pub duration_minutes: u32,
    /// An IANA zone name ("Europe/Berlin", "UTC").
    pub timezone: String,
}

/// Whether the window is open at a moment, and its next change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowState {
    pub open: bool,
    /// While closed: when it opens next.
    pub opens_at: Option<DateTime<Utc>>,
    /// While open: when it closes.
    pub closes_at: Option<DateTime<Utc>>,
}

impl WindowState {
    /// The next moment the window opens or closes.
    pub fn changes_at(&self) -> Option<DateTime<Utc>> {
        if self.open { self.closes_at } else { self.opens_at }
    }
}

impl MaintenanceWindow {
    /// A window from its parts, not checked yet ([`Self::validate`]).
    pub fn new(days: Vec<u8>, start: &str, duration_minutes: u32, timezone: &str) -> Self {
        Self { days, start: start.to_owned(), duration_minutes, timezone: timezone.to_owned() }
    }

    /// Check it (days sorted, once each); BAD_USER_INPUT on
    /// `policy.maintenanceWindow.<field>`.
    pub fn validate(&mut self) -> Result<()> {
        let field = |name: &str| format!("policy.maintenanceWindow.{name}");
        self.days.sort_unstable();
        self.days.dedup();
        if self.days.iter().any(|d| !(1..=7).contains(d)) {
            return Err(Error::invalid(field("days"), "weekdays, MONDAY to SUNDAY"));
        }
        if parse_start(&self.start).is_none() {
            return Err(Error::invalid(field("start"), format!("{:?}: \"HH:MM\", 00:00 to 23:59", self.start)));
        }
        if !(1..=1440).contains(&self.duration_minutes) {
            return Err(Error::invalid(field("durationMinutes"), "from 1 to 1440 (a day)"));
        }
        if self.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(Error::invalid(
                field("timezone"),
                format!("{:?}: an IANA time zone, as \"Europe/Berlin\"", self.timezone),
            ));
        }
        Ok(())
    }

    /// Whether the window is open at `now`, and when that changes.
    pub fn state_at(&self, now: DateTime<Utc>) -> Result<WindowState> {
        let corrupt = || Error::internal(anyhow::anyhow!("a stored maintenance window does not parse: {self:?}"));
        let zone: chrono_tz::Tz = self.timezone.parse().map_err(|_| corrupt())?;
        let start = parse_start(&self.start).ok_or_else(corrupt)?;
        let duration = TimeDelta::minutes(i64::from(self.duration_minutes));
        let today = now.with_timezone(&zone).date_naive();
        let mut opens_at = None;
        // A window is at most a day long: the day before's may still be
        // open (two days back covers one that spans a DST change); a week
        // ahead holds the next opening of any schedule.
        for offset in -2..=8 {
            let Some(date) = today.checked_add_signed(TimeDelta::days(offset)) else { continue };
            let weekday = u8::try_from(date.weekday().number_from_monday()).unwrap_or_default();
            if !self.days.is_empty() && !self.days.contains(&weekday) {
                continue;
            }
            let local = date.and_time(start);
            let open = match zone.from_local_datetime(&local) {
                chrono::LocalResult::Single(at) | chrono::LocalResult::Ambiguous(at, _) => at.with_timezone(&Utc),
                // In a spring-forward gap: an hour later, what the
                // clock shows then (the gaps of the zones we know are an
                // hour; a zone with a 30-minute gap opens 30 minutes late).
                chrono::LocalResult::None => {
                    match zone.from_local_datetime(&(local + TimeDelta::hours(1))).earliest() {
                        Some(at) => at.with_timezone(&Utc),
                        None => continue,
                    }
                }
            };
            let close = open + duration;
            if open <= now && now < close {
                return Ok(WindowState { open: true, opens_at: None, closes_at: Some(close) });
            }
            if open > now && opens_at.is_none_or(|at| open < at) {
                opens_at = Some(open);
            }
        }
        Ok(WindowState { open: false, opens_at, closes_at: None })
    }

    /// The state at `now` of a deployment's window, as stored on its row
    /// (None: it has none).
    pub fn state_of(deployment: &entity::deployment::Model, now: DateTime<Utc>) -> Result<Option<WindowState>> {
        Self::from_stored(deployment.maintenance_window.as_deref())?.map(|w| w.state_at(now)).transpose()
    }

    /// From the stored JSON (None: no window).
    pub fn from_stored(stored: Option<&str>) -> Result<Option<Self>> {
        stored
            .map(|text| {
                serde_json::from_str(text).map_err(|e| Error::internal(anyhow::anyhow!("maintenance window: {e}")))
            })
            .transpose()
    }
}

fn parse_start(text: &str) -> Option<NaiveTime> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    NaiveTime::from_hms_opt(h.parse().ok()?, m.parse().ok()?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(days: Vec<u8>, start: &str, minutes: u32, zone: &str) -> Result<MaintenanceWindow> {
        let mut window = MaintenanceWindow::new(days, start, minutes, zone);
        window.validate().map(|()| window)
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).expect("time").with_timezone(&Utc)
    }

    #[test]
    fn a_daily_window_across_midnight_is_open_on_both_sides_of_it() {
        let window = checked(vec![], "22:00", 240, "UTC").expect("valid");
        let open = window.state_at(at("2026-12-04T23:30:00Z")).expect("state");
        assert_eq!((open.open, open.closes_at), (true, Some(at("2026-12-05T02:00:00Z"))));
        let after_midnight = window.state_at(at("2026-12-05T01:59:59Z")).expect("state");
        assert!(after_midnight.open, "yesterday's window");
        let closed = window.state_at(at("2026-12-05T02:00:00Z")).expect("state");
        assert_eq!((closed.open, closed.opens_at), (false, Some(at("2026-12-05T22:00:00Z"))));
        assert_eq!(closed.changes_at(), closed.opens_at);
    }

    #[test]
    fn a_weekly_window_in_a_zone_follows_its_days_and_dst() {
        // Saturdays and Sundays 02:30 Berlin time, for an hour.
        let window = checked(vec![7, 6, 6], "02:30", 60, "Europe/Berlin").expect("valid");
        assert_eq!(window.days, [6, 7]);
        // Friday 2026-12-04: next opening Saturday 02:30 CET = 01:30 UTC.
        let friday = window.state_at(at("2026-12-04T12:00:00Z")).expect("state");
        assert_eq!((friday.open, friday.opens_at), (false, Some(at("2026-12-05T01:30:00Z"))));
        assert!(window.state_at(at("2026-12-05T02:00:00Z")).expect("state").open);
        // Summer time: 02:30 CEST = 00:30 UTC.
        let july = window.state_at(at("2026-07-03T12:00:00Z")).expect("state");
        assert_eq!(july.opens_at, Some(at("2026-07-04T00:30:00Z")));
        // 2027-03-28 (a Sunday) springs forward at 02:00: 02:30 does not
        // exist; the window opens at 03:30 CEST = 01:30 UTC.
        let gap = window.state_at(at("2027-03-28T00:45:00Z")).expect("state");
        assert_eq!((gap.open, gap.opens_at), (false, Some(at("2027-03-28T01:30:00Z"))));
    }

    #[test]
    fn bad_windows_are_refused_naming_the_field() {
        for (days, start, minutes, zone, field) in [
            (vec![0], "01:00", 60, "UTC", "days"),
            (vec![8], "01:00", 60, "UTC", "days"),
            (vec![], "1:00", 60, "UTC", "start"),
            (vec![], "24:00", 60, "UTC", "start"),
            (vec![], "01:00", 0u32, "UTC", "durationMinutes"),
            (vec![], "01:00", 1441, "UTC", "durationMinutes"),
            (vec![], "01:00", 60, "Mars/Olympus", "timezone"),
        ] {
            match checked(days, start, minutes, zone) {
                Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, format!("policy.maintenanceWindow.{field}")),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
