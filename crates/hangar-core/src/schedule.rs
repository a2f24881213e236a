//! Machine schedules (`config.schedule`): a machine that runs about once
//! per hour, day, week or month. The cycle begins with the machine's first
//! run; each run is due one period after the previous one was due (or after
//! now, when runs were missed), give or take a tenth of the period, so that
//! many machines on one schedule do not all start at the same instant.

use std::time::Duration;

/// How often a scheduled machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// About every hour.
    Hourly,
    /// About every day.
    Daily,
    /// About every week.
    Weekly,
    /// About every 30 days.
    Monthly,
}

impl Schedule {
    /// Every schedule.
    pub const ALL: &'static [Schedule] = &[
        Schedule::Hourly,
        Schedule::Daily,
        Schedule::Weekly,
        Schedule::Monthly,
    ];

    /// Fly's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Schedule::Hourly => "hourly",
            Schedule::Daily => "daily",
            Schedule::Weekly => "weekly",
            Schedule::Monthly => "monthly",
        }
    }

    /// Parses Fly's name.
    pub fn parse(s: &str) -> Option<Schedule> {
        Schedule::ALL.iter().copied().find(|x| x.as_str() == s)
    }

    /// The nominal period.
    pub fn period(self) -> Duration {
        const HOUR: u64 = 3600;
        Duration::from_secs(match self {
            Schedule::Hourly => HOUR,
            Schedule::Daily => 24 * HOUR,
            Schedule::Weekly => 7 * 24 * HOUR,
            Schedule::Monthly => 30 * 24 * HOUR,
        })
    }

    /// When the run after one at `now_ms` is due, in Unix milliseconds:
    /// one period later, shifted by `jitter` (in `[-1, 1]`) tenths of it.
    pub fn next_run_ms(self, now_ms: i64, jitter: f64) -> i64 {
        let period_ms = self.period().as_millis() as f64;
        let jitter = jitter.clamp(-1.0, 1.0);
        now_ms + (period_ms * (1.0 + jitter / 10.0)).round().max(1.0) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Schedule::ALL {
            assert_eq!(Schedule::parse(s.as_str()), Some(*s));
        }
        assert_eq!(Schedule::parse("yearly"), None);
    }

    #[test]
    fn next_run_is_a_period_away_give_or_take_a_tenth() {
        let hour = 3_600_000;
        assert_eq!(Schedule::Hourly.next_run_ms(0, 0.0), hour);
        assert_eq!(Schedule::Hourly.next_run_ms(5, 1.0), 5 + hour * 11 / 10);
        assert_eq!(Schedule::Hourly.next_run_ms(0, -7.0), hour * 9 / 10);
        assert_eq!(Schedule::Daily.next_run_ms(0, 0.0), 24 * hour);
        assert_eq!(Schedule::Monthly.next_run_ms(0, 0.0), 30 * 24 * hour);
    }
}
