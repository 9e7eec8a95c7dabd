//! Exponential back-off with jitter for failed host operations: short enough that a BMC outage
//! of half a minute heals within seconds of the BMC coming back, long enough not to hammer it.

use std::time::Duration;

/// Delay before retry number `error_count` (1-based): `base * 2^(n-1)`, capped, minus up to
/// half of it at random so hosts that failed together do not retry together.
pub fn delay(error_count: i32, base: Duration, cap: Duration) -> Duration {
    let full = full_delay(error_count, base, cap);
    let jitter = full.mul_f64(random_unit() * 0.5);
    full.saturating_sub(jitter).max(Duration::from_millis(100))
}

/// The back-off before jitter: `base * 2^(n-1)`, capped (n clamped to 1..=20).
pub fn full_delay(error_count: i32, base: Duration, cap: Duration) -> Duration {
    let n = error_count.clamp(1, 20) as u32 - 1;
    base.saturating_mul(1u32 << n.min(16)).min(cap)
}

/// A random number in [0, 1).
pub fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` plus up to `fraction` of it at random.
pub fn jittered(d: Duration, fraction: f64) -> Duration {
    d + d.mul_f64(random_unit() * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(300);
        for _ in 0..50 {
            let d1 = delay(1, base, cap);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d4 = delay(4, base, cap);
            assert!(
                d4 >= Duration::from_secs(8) && d4 <= Duration::from_secs(16),
                "{d4:?}"
            );
            let d30 = delay(30, base, cap);
            assert!(d30 >= Duration::from_secs(150) && d30 <= cap, "{d30:?}");
        }
    }
}
