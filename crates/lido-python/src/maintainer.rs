//! `Maintainer`: the maintenance thread's handle on a pool.

use crate::exit::park_forever_if_exiting;
use crate::inner::Inner;
use crate::leases::attach_leak_watch;
use pyo3::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The maintenance thread's view of a pool.
#[pyclass(module = "django_lido._lido", frozen)]
pub struct Maintainer {
    pub(crate) inner: Arc<Inner>,
}

#[pymethods]
impl Maintainer {
    /// Blocks (without the GIL) until maintenance is due, at most `seconds`. With `pause`,
    /// waits the full time unless the pool closes (for back-off after failures).
    /// Returns False once the pool is closed.
    #[pyo3(signature = (seconds, pause=false))]
    fn wait(&self, py: Python<'_>, seconds: f64, pause: bool) -> bool {
        let inner = Arc::clone(&self.inner);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
        py.detach(move || {
            let open = inner.engine.wait_for_maintenance(deadline, pause);
            // Closed: the exit handler is joining this thread before finalization; go on.
            if open {
                park_forever_if_exiting();
            }
            open
        })
    }

    /// Does one round of maintenance: closes expired and stale idle connections and opens
    /// connections up to min_size. Returns (seconds until next due, opens failed), or None
    /// once the pool is closed.
    fn run(&self, py: Python<'_>) -> Option<(f64, bool)> {
        let inner = &*self.inner;
        let m = inner.engine.maintain(Instant::now())?;
        for r in m.retire {
            inner.retire(py, r);
        }
        let mut failed = false;
        for permit in m.open {
            if failed {
                inner.engine.open_unused(permit);
                continue;
            }
            match inner.open(py, permit) {
                Ok((conn, took, permit)) => match attach_leak_watch(&self.inner, py, conn) {
                    Ok(conn) => {
                        if let Some(r) =
                            inner.engine.opened_idle(permit, conn, Instant::now(), took)
                        {
                            inner.retire(py, r);
                        }
                        inner.open_failures.store(0, Relaxed);
                    }
                    Err(e) => {
                        inner.engine.open_failed(permit);
                        inner.report(py, "registering a new connection", e);
                        failed = true;
                    }
                },
                Err(e) => {
                    inner.report(py, "opening a connection to keep min_size", e);
                    failed = true;
                }
            }
        }
        let next = if failed {
            // Exponential back-off, 0.1 s doubling up to 10 s.
            let n = inner.open_failures.fetch_add(1, Relaxed).min(7);
            (0.1 * f64::from(1u32 << n)).min(10.0)
        } else {
            m.next_due
                .map_or(60.0, |t| {
                    t.saturating_duration_since(Instant::now()).as_secs_f64()
                })
                .clamp(0.01, 60.0)
        };
        Some((next, failed))
    }
}
