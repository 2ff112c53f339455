//! One warning of a kind at most once a period, however hard a flood
//! pushes (a full connection table, EMFILE on accept, a misconfigured
//! client retrying): the first is logged at once, then one per period with
//! how many were held back.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Throttle {
    period_ms: u64,
    started: Instant,
    /// Milliseconds after `started` of the last report, plus one (0: never).
    last: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            started: Instant::now(),
            last: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this one may be reported, `n` being how many were held
    /// back since the last report; `None` (and one more held back) otherwise.
    pub fn ready(&self) -> Option<u64> {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now - last >= self.period_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::Relaxed));
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_reported_then_one_per_period_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.ready(), Some(0));
        assert_eq!(throttle.ready(), None);
        assert_eq!(throttle.ready(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.ready(), Some(2));
        assert_eq!(throttle.ready(), None);
    }
}
