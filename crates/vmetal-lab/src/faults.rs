//! Fault injection for virtual BMCs: latency, a fraction of failed or dropped requests, and
//! "busy" periods, so tests can prove the drivers retry and time out as they should.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a front end should do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Answer normally (after the configured latency).
    Proceed,
    /// Answer with a server error (Redfish 5xx, IPMI "node busy" completion code).
    Fail,
    /// Do not answer at all (IPMI drops the datagram, Redfish holds then closes).
    Drop,
    /// Answer "busy, try later" (Redfish 503, IPMI completion code 0xC0).
    Busy,
}

#[derive(Debug, Clone, Default)]
struct Config {
    latency: Duration,
    fail_fraction: f64,
    drop_fraction: f64,
    busy_until: Option<Instant>,
}

/// Per-server fault configuration, changeable while the BMC serves.
#[derive(Debug, Default)]
pub struct Faults {
    config: Mutex<Config>,
}

impl Faults {
    /// Delay every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Answer this fraction (0.0-1.0) of requests with a server error.
    pub fn set_fail_fraction(&self, fraction: f64) {
        self.lock().fail_fraction = fraction.clamp(0.0, 1.0);
    }

    /// Silently drop this fraction (0.0-1.0) of requests.
    pub fn set_drop_fraction(&self, fraction: f64) {
        self.lock().drop_fraction = fraction.clamp(0.0, 1.0);
    }

    /// Be busy for `period` from now.
    pub fn set_busy_for(&self, period: Duration) {
        self.lock().busy_until = Some(Instant::now() + period);
    }

    /// Remove every fault.
    pub fn clear(&self) {
        *self.lock() = Config::default();
    }

    /// The configured latency.
    pub fn latency(&self) -> Duration {
        self.lock().latency
    }

    /// Decide the fate of one request.
    pub fn decide(&self) -> FaultAction {
        let cfg = self.lock().clone();
        if cfg.busy_until.is_some_and(|t| Instant::now() < t) {
            return FaultAction::Busy;
        }
        let roll: f64 = random_unit();
        if roll < cfg.drop_fraction {
            FaultAction::Drop
        } else if roll < cfg.drop_fraction + cfg.fail_fraction {
            FaultAction::Fail
        } else {
            FaultAction::Proceed
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A uniform number in [0, 1).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 1.0; // no randomness: never inject a fault
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_respected_roughly() {
        let f = Faults::default();
        assert_eq!(f.decide(), FaultAction::Proceed);
        f.set_fail_fraction(0.5);
        let fails = (0..4000)
            .filter(|_| f.decide() == FaultAction::Fail)
            .count();
        assert!((1600..2400).contains(&fails), "{fails}");
        f.set_fail_fraction(0.0);
        f.set_drop_fraction(1.0);
        assert_eq!(f.decide(), FaultAction::Drop);
        f.clear();
        f.set_busy_for(Duration::from_secs(60));
        assert_eq!(f.decide(), FaultAction::Busy);
    }
}
