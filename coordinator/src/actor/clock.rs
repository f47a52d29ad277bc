//! The coordinator's clock for heartbeat deadlines: wall time minus the time the coordinator
//! itself was not running.
//!
//! Why: the actor handles a message at least every tick (100 ms). A longer gap means the
//! coordinator was stopped (SIGSTOP, a suspended VM, swapping) or stuck in a handler; the
//! workers' heartbeats of that time are still queued. Judged by wall time, every worker would
//! look silent for the whole gap and be removed, killing a healthy job for the coordinator's
//! own absence. Skipping the gap judges each worker only by time the coordinator was
//! listening.

use std::time::{Duration, Instant};

/// Gaps between handled messages longer than this count as the coordinator's absence (ten
/// ticks: normal scheduling jitter stays far below it).
pub const ABSENCE: Duration = Duration::from_secs(1);

/// Milliseconds of the coordinator's presence since it started.
#[derive(Debug, Clone)]
pub struct PresenceClock {
    t0: Instant,
    last: Instant,
    absent: Duration,
}

impl PresenceClock {
    /// A clock starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self { t0: now, last: now, absent: Duration::ZERO }
    }

    /// Notes that a message is being handled at `now`; returns the gap since the last one when
    /// it was long enough to be an absence (that much, less one allowed gap, is skipped).
    pub fn observe(&mut self, now: Instant) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        if gap > ABSENCE {
            self.absent += gap - ABSENCE;
            Some(gap)
        } else {
            None
        }
    }

    /// Milliseconds since the start, without the absences observed so far.
    pub fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.t0).saturating_sub(self.absent).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_longer_than_the_absence_threshold_are_skipped() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = PresenceClock::new(t0);
        // Ticks every 100 ms: nothing skipped.
        for ms in (100..=2000).step_by(100) {
            assert_eq!(c.observe(at(ms)), None);
        }
        assert_eq!(c.now_ms(at(2000)), 2000);
        // Stopped for 6 s: 5 s of it (beyond the 1 s allowed) does not count.
        assert_eq!(c.observe(at(8000)), Some(Duration::from_secs(6)));
        assert_eq!(c.now_ms(at(8000)), 3000);
        assert_eq!(c.now_ms(at(9500)), 4500);
        // An instant before the last one is no gap; a gap of exactly the threshold is normal.
        assert_eq!(c.observe(at(7000)), None);
        assert_eq!(c.observe(at(8500)), None);
        assert_eq!(c.observe(at(8500) + ABSENCE), None);
        assert_eq!(c.now_ms(at(10_000)), 5000);
    }
}
