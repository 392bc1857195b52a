//! `PoolCore.stats()`: the pool's statistics as a dict, with names from psycopg_pool and
//! HikariCP. The keys are Python API: `django_lido` and its users read them.

use crate::inner::Inner;
use lido_core::{CloseReason, HistogramSummary};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Keys of the stats dict.
mod key {
    pub const NAME: &str = "name";
    pub const POOL_MIN: &str = "pool_min";
    pub const POOL_MAX: &str = "pool_max";
    pub const POOL_SIZE: &str = "pool_size";
    pub const POOL_AVAILABLE: &str = "pool_available";
    pub const IDLE: &str = "idle";
    pub const IN_USE: &str = "in_use";
    pub const OPENING: &str = "opening";
    pub const REQUESTS_WAITING: &str = "requests_waiting";
    pub const REQUESTS_NUM: &str = "requests_num";
    pub const REQUESTS_QUEUED: &str = "requests_queued";
    pub const REQUESTS_TIMEOUTS: &str = "requests_timeouts";
    pub const REQUESTS_REJECTED: &str = "requests_rejected";
    pub const REQUESTS_WAIT_MS: &str = "requests_wait_ms";
    pub const USAGE_MS: &str = "usage_ms";
    pub const CONNECTIONS_NUM: &str = "connections_num";
    pub const CONNECTIONS_MS: &str = "connections_ms";
    pub const CONNECTIONS_ERRORS: &str = "connections_errors";
    pub const CONNECTIONS_LOST: &str = "connections_lost";
    pub const CONNECTIONS_LEAKED: &str = "connections_leaked";
    pub const RETURNS_BAD: &str = "returns_bad";
    pub const RETURNS_ROLLED_BACK: &str = "returns_rolled_back";
    /// Followed by a `CloseReason` name: one key per reason.
    pub const CLOSES_PREFIX: &str = "closes_";
    pub const ACQUIRE_WAIT: &str = "acquire_wait";
    pub const USAGE: &str = "usage";
    pub const CONNECTION_OPEN: &str = "connection_open";
}

/// Keys of each histogram's summary dict.
mod summary_key {
    pub const COUNT: &str = "count";
    pub const SUM_MS: &str = "sum_ms";
    pub const P50_MS: &str = "p50_ms";
    pub const P90_MS: &str = "p90_ms";
    pub const P99_MS: &str = "p99_ms";
    pub const MAX_MS: &str = "max_ms";
    /// Cumulative: (bound in seconds, how many were below it), bounds from 16 µs to 69 s
    /// in powers of two (`lido_core::BOUNDS_LOG2_NS`).
    pub const BUCKETS: &str = "buckets";
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Inner {
    pub(crate) fn stats_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.engine.status();
        let st = self.engine.stats();
        let d = PyDict::new(py);
        d.set_item(key::NAME, self.engine.name())?;
        d.set_item(key::POOL_MIN, s.min_size)?;
        d.set_item(key::POOL_MAX, s.max_size)?;
        d.set_item(key::POOL_SIZE, s.size)?;
        d.set_item(key::POOL_AVAILABLE, s.idle)?;
        d.set_item(key::IDLE, s.idle)?;
        d.set_item(key::IN_USE, s.in_use)?;
        d.set_item(key::OPENING, s.opening)?;
        d.set_item(key::REQUESTS_WAITING, s.waiting)?;
        // One read of the buckets: requests_num and the wait quantiles agree.
        let wait = st.acquire_wait.summary();
        d.set_item(key::REQUESTS_NUM, wait.count)?;
        d.set_item(key::REQUESTS_QUEUED, st.requests_queued.load(Relaxed))?;
        d.set_item(key::REQUESTS_TIMEOUTS, st.timeouts.load(Relaxed))?;
        d.set_item(key::REQUESTS_REJECTED, st.rejected.load(Relaxed))?;
        let usage = st.usage.summary();
        let open = st.open_time.summary();
        d.set_item(key::REQUESTS_WAIT_MS, ms(wait.sum))?;
        d.set_item(key::USAGE_MS, ms(usage.sum))?;
        d.set_item(key::CONNECTIONS_NUM, st.opens.load(Relaxed))?;
        d.set_item(key::CONNECTIONS_MS, ms(open.sum))?;
        d.set_item(key::CONNECTIONS_ERRORS, st.open_errors.load(Relaxed))?;
        d.set_item(key::CONNECTIONS_LOST, st.leaked.load(Relaxed))?;
        d.set_item(key::CONNECTIONS_LEAKED, st.leaked.load(Relaxed))?;
        d.set_item(key::RETURNS_BAD, st.closes_for(CloseReason::Broken))?;
        d.set_item(
            key::RETURNS_ROLLED_BACK,
            st.returns_rolled_back.load(Relaxed),
        )?;
        for reason in CloseReason::ALL {
            let name = format!("{}{}", key::CLOSES_PREFIX, reason.name());
            d.set_item(name, st.closes_for(reason))?;
        }
        d.set_item(key::ACQUIRE_WAIT, summary_dict(py, &wait)?)?;
        d.set_item(key::USAGE, summary_dict(py, &usage)?)?;
        d.set_item(key::CONNECTION_OPEN, summary_dict(py, &open)?)?;
        Ok(d)
    }
}

fn summary_dict<'py>(py: Python<'py>, h: &HistogramSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(summary_key::COUNT, h.count)?;
    d.set_item(summary_key::SUM_MS, ms(h.sum))?;
    d.set_item(summary_key::P50_MS, ms(h.p50))?;
    d.set_item(summary_key::P90_MS, ms(h.p90))?;
    d.set_item(summary_key::P99_MS, ms(h.p99))?;
    d.set_item(summary_key::MAX_MS, ms(h.max))?;
    let buckets: Vec<(f64, u64)> = h.below.iter().map(|(b, n)| (b.as_secs_f64(), *n)).collect();
    d.set_item(summary_key::BUCKETS, buckets)?;
    Ok(d)
}
