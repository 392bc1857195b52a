//! Counters and latency histograms, updated without the engine lock.

use crate::conn::CloseReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Buckets per power of two; 4 gives about 19% resolution.
const SUB: usize = 4;
const BUCKETS: usize = 64 * SUB;

/// A log-linear histogram of durations in nanoseconds.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let log = 63 - ns.leading_zeros() as usize; // >= 2
    let sub = ((ns >> (log - 2)) & (SUB as u64 - 1)) as usize;
    (log - 1) * SUB + sub
}

/// Upper bound of a bucket, in nanoseconds.
fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let log = i / SUB + 1;
    let sub = (i % SUB) as u64;
    let upper = ((SUB as u128 + sub as u128 + 1) << (log - 2)) - 1;
    u64::try_from(upper).unwrap_or(u64::MAX)
}

/// The bounds of [`HistogramSummary::below`]: 2^14 ns (16.4 µs) to 2^36 ns (68.7 s), one
/// per power of two. Each is a bucket boundary, so the counts below them are exact, and
/// they add up across processes (unlike quantiles), for Prometheus histograms.
pub const BOUNDS_LOG2_NS: std::ops::RangeInclusive<u32> = 14..=36;

/// A point-in-time summary of a [`Histogram`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSummary {
    pub count: u64,
    pub sum: Duration,
    pub max: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    /// For each bound of [`BOUNDS_LOG2_NS`], in order, how many durations were below it.
    pub below: Vec<(Duration, u64)>,
}

/// The last bucket wholly below 2^`log2` ns (`log2` >= 3): bucket `(log - 1) * SUB + sub`
/// ends at `(SUB + sub + 1) << (log - 2)`, which is 2^`log2` for `log = log2 - 1` and the
/// last `sub`.
fn last_bucket_below(log2: u32) -> usize {
    (log2 as usize - 2) * SUB + SUB - 1
}

impl Histogram {
    /// Records one duration. On the checkout/return path, so it keeps atomic
    /// read-modify-writes to two (the count is the buckets' sum; the maximum rarely moves).
    pub fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(1, Relaxed);
        if ns > 0 {
            self.sum_ns.fetch_add(ns, Relaxed);
            if ns > self.max_ns.load(Relaxed) {
                self.max_ns.fetch_max(ns, Relaxed);
            }
        }
    }

    /// Records a zero duration (a checkout that did not wait): one atomic add.
    pub fn record_zero(&self) {
        self.buckets[0].fetch_add(1, Relaxed);
    }

    /// Count, sum, max and quantiles, from one read of the buckets.
    pub fn summary(&self) -> HistogramSummary {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> Duration {
            if total == 0 {
                return Duration::ZERO;
            }
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_nanos(bucket_upper(i));
                }
            }
            Duration::ZERO
        };
        let max = Duration::from_nanos(self.max_ns.load(Relaxed));
        let mut below = Vec::with_capacity(BOUNDS_LOG2_NS.clone().count());
        let (mut seen, mut next) = (0, 0);
        for log2 in BOUNDS_LOG2_NS {
            let last = last_bucket_below(log2);
            seen += counts[next..=last].iter().sum::<u64>();
            next = last + 1;
            below.push((Duration::from_nanos(1 << log2), seen));
        }
        HistogramSummary {
            below,
            count: total,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
            max,
            p50: quantile(0.5).min(max),
            p90: quantile(0.9).min(max),
            p99: quantile(0.99).min(max),
        }
    }
}

/// Everything counted over a pool's life.
#[derive(Default)]
pub struct Stats {
    /// Checkouts that had to wait.
    pub requests_queued: AtomicU64,
    /// Checkouts that timed out (counted by the caller, who owns the wait).
    pub timeouts: AtomicU64,
    /// Checkouts rejected by `max_waiting`.
    pub rejected: AtomicU64,
    /// Connections opened.
    pub opens: AtomicU64,
    /// Failed connection attempts.
    pub open_errors: AtomicU64,
    /// Connections returned in a state that needed a rollback.
    pub returns_rolled_back: AtomicU64,
    /// Connections whose holder dropped them without returning them.
    pub leaked: AtomicU64,
    /// Connections closed, by reason (index: `CloseReason as usize`).
    pub closes: [AtomicU64; CloseReason::ALL.len()],
    /// Time from checkout request to connection in hand; zero for checkouts that did not
    /// queue. Its count is the number of checkouts served.
    pub acquire_wait: Histogram,
    /// Time a connection was held.
    pub usage: Histogram,
    /// Time to open a connection.
    pub open_time: Histogram,
}

impl Stats {
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closes[reason.index()].fetch_add(1, Relaxed);
    }

    pub fn closes_for(&self, reason: CloseReason) -> u64 {
        self.closes[reason.index()].load(Relaxed)
    }

    pub fn closes_total(&self) -> u64 {
        self.closes.iter().map(|c| c.load(Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_contain_their_values() {
        let mut last = 0;
        // Up to 2^60 ns (36 years); larger buckets saturate.
        for i in 0..59 * SUB {
            let up = bucket_upper(i);
            assert!(up >= last, "bucket {i}");
            assert_eq!(bucket_of(up), i, "upper bound of bucket {i} lands in it");
            last = up;
        }
    }

    #[test]
    fn the_bounds_are_bucket_boundaries() {
        for log2 in BOUNDS_LOG2_NS {
            let last = last_bucket_below(log2);
            assert_eq!(bucket_upper(last), (1u64 << log2) - 1, "2^{log2}");
            assert_eq!(bucket_of(1 << log2), last + 1, "2^{log2}");
        }
    }

    #[test]
    fn counts_below_each_bound_are_exact() {
        let h = Histogram::default();
        h.record_zero();
        for ns in [
            (1 << 14) - 1,
            1 << 14,
            1 << 20,
            (1 << 36) - 1,
            1 << 36,
            u64::MAX,
        ] {
            h.record(Duration::from_nanos(ns));
        }
        let s = h.summary();
        let below = |log2: u32| {
            s.below
                .iter()
                .find(|(d, _)| *d == Duration::from_nanos(1 << log2))
                .map(|(_, n)| *n)
        };
        assert_eq!(s.below.len(), 23);
        assert_eq!(below(14), Some(2)); // 0 and 2^14 - 1
        assert_eq!(below(15), Some(3));
        assert_eq!(below(20), Some(3));
        assert_eq!(below(21), Some(4));
        assert_eq!(below(36), Some(5));
        assert_eq!(s.count, 7);
        assert!(s.below.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn quantiles_are_within_resolution() {
        let h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, Duration::from_micros(1000));
        let p50 = s.p50.as_micros() as f64;
        assert!((500.0..=500.0 * 1.25).contains(&p50), "p50 {p50}");
        let p99 = s.p99.as_micros() as f64;
        assert!((990.0..=1000.0).contains(&p99), "p99 {p99}");
    }
}
