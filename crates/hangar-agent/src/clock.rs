//! The agent's clock for what runs on a calendar: machine schedules and
//! volume upkeep (daily backups, retention). Production runs on the
//! system's clock; tests inject a faster one, so an "hour" can pass in a
//! second without a time-scale setting anywhere in the configuration.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock: what time it is, and how long to wait for a time to come.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Now, in Unix milliseconds of this clock.
    fn now_ms(&self) -> i64;

    /// How long (in real, or tokio's, time) until this clock reads `at_ms`.
    fn until(&self, at_ms: i64) -> Duration;
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        wall_ms()
    }

    fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis((at_ms - wall_ms()).max(0) as u64)
    }
}

/// A clock that runs `scale` times faster than the system's from `origin_ms`
/// (Unix milliseconds) on. Every process given the same origin and scale
/// reads the same time, so what one `hangard` stored is due on time for the
/// next. For tests.
#[derive(Debug, Clone, Copy)]
pub struct ScaledClock {
    /// Where both clocks agree.
    pub origin_ms: i64,
    /// How much faster this one runs.
    pub scale: u32,
}

impl ScaledClock {
    /// A clock `scale` times faster than the system's, from now on.
    pub fn from_now(scale: u32) -> ScaledClock {
        ScaledClock {
            origin_ms: wall_ms(),
            scale: scale.max(1),
        }
    }

    /// Parses `SCALE@ORIGIN_MS` (or `SCALE`, from now on).
    pub fn parse(s: &str) -> Option<ScaledClock> {
        let (scale, origin) = match s.split_once('@') {
            Some((sc, o)) => (sc.parse().ok()?, o.parse().ok()?),
            None => (s.parse().ok()?, wall_ms()),
        };
        (scale >= 1).then_some(ScaledClock {
            origin_ms: origin,
            scale,
        })
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> i64 {
        let elapsed = (wall_ms() - self.origin_ms).max(0);
        self.origin_ms
            .saturating_add(elapsed.saturating_mul(i64::from(self.scale)))
    }

    fn until(&self, at_ms: i64) -> Duration {
        let ahead = (at_ms - self.now_ms()).max(0) as u64;
        Duration::from_micros(ahead.saturating_mul(1000) / u64::from(self.scale.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_runs_faster_and_waits_shorter() {
        let c = ScaledClock {
            origin_ms: wall_ms() - 10,
            scale: 1000,
        };
        let now = c.now_ms();
        assert!(now >= c.origin_ms + 10_000, "{now}");
        let wait = c.until(now + 3_600_000);
        assert!(
            wait <= Duration::from_millis(3600) && wait >= Duration::from_millis(3500),
            "{wait:?}"
        );
        assert_eq!(ScaledClock::parse("3600@1000").unwrap().origin_ms, 1000);
        assert!(ScaledClock::parse("0@1").is_none());
        assert!(SystemClock.until(SystemClock.now_ms() - 5).is_zero());
    }
}
