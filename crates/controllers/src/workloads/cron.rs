//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day
//! of week) with `*`, lists, ranges, steps and month and day names, or an `@` macro; evaluated
//! in the CronJob's `timeZone` (UTC when it names none). Day of month and day of week combine
//! as cron does: when both are restricted, either may match.

use std::time::{Duration, SystemTime};

use jiff::tz::TimeZone;

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether day of month / day of week were `*` (then only the other one restricts).
    any_day: bool,
    any_weekday: bool,
    /// `@every 5m`: a fixed interval instead of fields.
    every: Option<Duration>,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, names: &[&str], offset: u32) -> Option<u32> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(text)) {
        return Some(i as u32 + offset);
    }
    text.parse().ok()
}

/// One field as a bit set over `min..=max`.
fn field(text: &str, min: u32, max: u32, names: &[&str], offset: u32) -> Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("a zero step in {part:?}"));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, names, offset).ok_or_else(|| format!("bad value in {part:?}"))?;
            let b = value(b, names, offset).ok_or_else(|| format!("bad value in {part:?}"))?;
            (a, b)
        } else {
            let v = value(range, names, offset).ok_or_else(|| format!("bad value in {part:?}"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is out of range {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        if let Some(d) = expanded.strip_prefix("@every ") {
            let every = humantime_like(d.trim())
                .filter(|e| !e.is_zero())
                .ok_or_else(|| {
                    format!("bad interval {d:?}: expected a whole number of s, m or h, above zero")
                })?;
            return Ok(Schedule {
                minutes: 0,
                hours: 0,
                days: 0,
                months: 0,
                weekdays: 0,
                any_day: true,
                any_weekday: true,
                every: Some(every),
            });
        }
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {text:?}",
                f.len()
            ));
        }
        let mut weekdays = field(f[4], 0, 7, &WEEKDAYS, 0)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes: field(f[0], 0, 59, &[], 0)?,
            hours: field(f[1], 0, 23, &[], 0)?,
            days: field(f[2], 1, 31, &[], 0)?,
            months: field(f[3], 1, 12, &MONTHS, 1)?,
            weekdays,
            any_day: f[2] == "*" || f[2] == "?",
            any_weekday: f[4] == "*" || f[4] == "?",
            every: None,
        })
    }

    fn day_ok(&self, at: &jiff::Zoned) -> bool {
        let bit = |set: u64, v: i8| set & (1 << v as u32) != 0;
        let day = bit(self.days, at.day());
        let weekday = bit(self.weekdays, at.weekday().to_sunday_zero_offset());
        let day_ok = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => weekday,
            (false, true) => day,
            (false, false) => day || weekday,
        };
        day_ok && bit(self.months, at.month())
    }

    /// `None` when `at` (a whole minute) matches, else how far to move in the given direction
    /// to skip what cannot match: the rest of the day, of the hour, or one minute.
    fn skip(&self, at: &jiff::Zoned, forward: bool) -> Option<u64> {
        let bit = |set: u64, v: i8| set & (1 << v as u32) != 0;
        let (h, m) = (u64::from(at.hour() as u8), u64::from(at.minute() as u8));
        if !self.day_ok(at) {
            return Some(if forward {
                (24 * 60 - (h * 60 + m)) * 60
            } else {
                (h * 60 + m + 1) * 60
            });
        }
        if !bit(self.hours, at.hour()) {
            return Some(if forward { (60 - m) * 60 } else { (m + 1) * 60 });
        }
        (!bit(self.minutes, at.minute())).then_some(60)
    }

    /// The latest scheduled time in `(after, now]`, if any (looking back five years at most).
    pub fn last_between(
        &self,
        after: SystemTime,
        now: SystemTime,
        tz: &TimeZone,
    ) -> Option<SystemTime> {
        if let Some(every) = self.every {
            let elapsed = now.duration_since(after).ok()?;
            let n = elapsed.as_secs() / every.as_secs().max(1);
            return (n > 0).then(|| after + every * n as u32);
        }
        let start = minute_floor(after);
        let limit = now
            .checked_sub(HORIZON)
            .unwrap_or(SystemTime::UNIX_EPOCH)
            .max(start);
        let mut t = minute_floor(now);
        while t > limit {
            match self.skip(&zoned(t, tz), false) {
                None => return Some(t),
                Some(back) => {
                    t = minute_floor(t.checked_sub(Duration::from_secs(back))?.max(limit))
                }
            }
        }
        None
    }

    /// The first scheduled time after `now` (within five years: `0 0 29 2 *` waits for a leap
    /// year).
    pub fn next_after(&self, now: SystemTime, tz: &TimeZone) -> Option<SystemTime> {
        if let Some(every) = self.every {
            return Some(now + every);
        }
        let mut t = minute_floor(now) + Duration::from_secs(60);
        let limit = now + HORIZON;
        while t <= limit {
            match self.skip(&zoned(t, tz), true) {
                None => return Some(t),
                // Whole minutes in the zone's local time: re-aligned after a DST shift.
                Some(ahead) => t = minute_floor(t + Duration::from_secs(ahead)),
            }
        }
        None
    }
}

/// How far ahead (and back) a schedule is searched.
const HORIZON: Duration = Duration::from_secs(5 * 366 * 24 * 3600);

fn humantime_like(text: &str) -> Option<Duration> {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    }))
}

fn minute_floor(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs - secs % 60)
}

fn zoned(t: SystemTime, tz: &TimeZone) -> jiff::Zoned {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    jiff::Timestamp::from_second(secs as i64)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(tz.clone())
}

/// The time zone a CronJob names, UTC when it names none; an unknown name is an error.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None | Some("") => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| format!("unknown time zone {n:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        let ts: jiff::Timestamp = text.parse().unwrap();
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts.as_second() as u64)
    }

    #[test]
    fn every_minute_and_steps() {
        let s = Schedule::parse("*/1 * * * *").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            s.last_between(at("2027-01-15T08:00:30Z"), at("2027-01-15T08:02:10Z"), &utc),
            Some(at("2027-01-15T08:02:00Z"))
        );
        assert_eq!(
            s.next_after(at("2027-01-15T08:02:10Z"), &utc),
            Some(at("2027-01-15T08:03:00Z"))
        );
        let q = Schedule::parse("15,45 9-17/4 * * mon-fri").unwrap();
        // 2027-01-15 is a Friday.
        assert_eq!(
            q.next_after(at("2027-01-15T13:50:00Z"), &utc),
            Some(at("2027-01-15T17:15:00Z"))
        );
        assert_eq!(
            q.next_after(at("2027-01-15T17:50:00Z"), &utc),
            Some(at("2027-01-18T09:15:00Z"))
        );
    }

    #[test]
    fn time_zones_shift_the_hour() {
        let s = Schedule::parse("0 9 * * *").unwrap();
        let paris = time_zone(Some("Europe/Paris")).unwrap();
        // 09:00 in Paris in January is 08:00 UTC.
        assert_eq!(
            s.next_after(at("2027-01-15T07:00:00Z"), &paris),
            Some(at("2027-01-15T08:00:00Z"))
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn day_fields_combine_as_cron_does() {
        // The 1st of the month or any Monday.
        let s = Schedule::parse("0 0 1 * 1").unwrap();
        let utc = TimeZone::UTC;
        assert_eq!(
            s.next_after(at("2027-01-15T00:00:00Z"), &utc),
            Some(at("2027-01-18T00:00:00Z"))
        );
        let yearly = Schedule::parse("@yearly").unwrap();
        assert_eq!(
            yearly.next_after(at("2027-01-15T00:00:00Z"), &utc),
            Some(at("2028-01-01T00:00:00Z"))
        );
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("@every 0s").is_err());
        // A leap day: the next is in 2028.
        let leap = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.next_after(at("2027-01-15T00:00:00Z"), &utc),
            Some(at("2028-02-29T00:00:00Z"))
        );
        assert_eq!(
            leap.last_between(at("2020-01-01T00:00:00Z"), at("2027-01-15T00:00:00Z"), &utc),
            Some(at("2024-02-29T00:00:00Z"))
        );
        assert!(Schedule::parse("* * * *").is_err());
        assert_eq!(Schedule::parse("0 0 * JAN-MAR sun").unwrap().months, 0b1110);
    }
}
