//! `Maintainer`: the maintenance thread's handle on a pool.

use crate::errors::guarded;
use crate::exit::{check_not_exiting, park_forever_if_exiting, Active};
use crate::inner::Inner;
use crate::leases::attach_leak_watch;
use crate::permit::{Leftovers, PermitGuard};
use lido_core::OpenPermit;
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
    fn wait(&self, py: Python<'_>, seconds: f64, pause: bool) -> PyResult<bool> {
        guarded(py, "Maintainer.wait", || {
            let inner = Arc::clone(&self.inner);
            let deadline = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
            Ok(py.detach(move || {
                let open = inner.engine.wait_for_maintenance(deadline, pause);
                // Closed: the exit handler is joining this thread before finalization; go on.
                if open {
                    park_forever_if_exiting();
                }
                open
            }))
        })
    }

    /// Does one round of maintenance: closes expired and stale idle connections and opens
    /// connections up to min_size. Returns (seconds until next due, opens failed), or None
    /// once the pool is closed.
    fn run(&self, py: Python<'_>) -> PyResult<Option<(f64, bool)>> {
        let _active = Active::enter(py);
        guarded(py, "Maintainer.run", || {
            let Some(plan) = self.inner.engine.maintain(Instant::now()) else {
                return Ok(None);
            };
            for r in Leftovers::retired(&self.inner.engine, plan.retire) {
                self.inner.retire(py, r);
            }
            let failed = open_all(&self.inner, py, plan.open);
            let hold_due = self.inner.review_holds(py, Instant::now());
            let idle_due = self.inner.review_idle_transactions(py, Instant::now());
            let next_due = plan
                .next_due
                .into_iter()
                .chain(hold_due)
                .chain(idle_due)
                .min();
            Ok(Some((next_run_in(&self.inner, failed, next_due), failed)))
        })
    }
}

/// Opens a connection for each permit; after the first failure, gives the rest back
/// untried. Returns whether an open failed.
fn open_all(inner: &Arc<Inner>, py: Python<'_>, permits: Vec<OpenPermit>) -> bool {
    let mut permits = Leftovers::permits(&inner.engine, permits);
    for permit in permits.by_ref() {
        let opened = match check_not_exiting(inner.engine.name()) {
            Ok(()) => open_idle(inner, py, permit),
            Err(e) => {
                inner.engine.open_unused(permit);
                Err(("opening a connection at exit", e))
            }
        };
        if let Err((what, e)) = opened {
            inner.report(py, what, e);
            for untried in permits {
                inner.engine.open_unused(untried);
            }
            return true;
        }
    }
    false
}

/// Opens one connection for the pool: it goes to the first waiter, or idle. The error
/// comes with what was being done, for the report.
fn open_idle(
    inner: &Arc<Inner>,
    py: Python<'_>,
    permit: OpenPermit,
) -> Result<(), (&'static str, PyErr)> {
    let slot = PermitGuard::new(&inner.engine, permit);
    let (conn, took) = match inner.open(py, inner.timeout) {
        Ok(opened) => opened,
        Err(e) => {
            inner.connect_failed(py, slot, &e);
            return Err(("opening a connection to keep min_size", e));
        }
    };
    let conn =
        attach_leak_watch(inner, py, conn).map_err(|e| ("registering a new connection", e))?;
    if let Some(r) = inner
        .engine
        .opened_idle(slot.spend(), conn, Instant::now(), took)
    {
        inner.retire(py, r);
    }
    inner.open_failures.store(0, Relaxed);
    Ok(())
}

/// Seconds until the next round: a back-off after a failed open (the engine's pace while
/// the server is taken to be down), else until the next connection is due for closing (at
/// most a minute).
fn next_run_in(inner: &Inner, failed: bool, next_due: Option<Instant>) -> f64 {
    if failed && inner.engine.server_down() {
        // The engine paces the probes while the server is down (at most one every 0.5 s):
        // look again at that pace, so min_size is refilled soon after the server is back.
        return 0.5;
    }
    if failed {
        // Exponential back-off, 0.1 s doubling up to 10 s.
        let n = inner.open_failures.fetch_add(1, Relaxed).min(7);
        return (0.1 * f64::from(1u32 << n)).min(10.0);
    }
    next_due
        .map_or(60.0, |t| {
            t.saturating_duration_since(Instant::now()).as_secs_f64()
        })
        .clamp(0.01, 60.0)
}
