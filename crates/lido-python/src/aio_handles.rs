//! What an `AsyncPool` holds while Python awaits a driver call outside a checkout: a
//! returned connection being cleaned ([`AsyncReturn`]), a retired one being closed
//! ([`AsyncClose`]), an open permit of maintenance ([`AsyncPermit`]). Each gives its slot
//! back when dropped unfinished (the awaiting task cancelled): the sync driver hooks close
//! what must be closed, which for psycopg's `AsyncConnection` is the same non-blocking
//! `PQfinish` its `close()` does.

use crate::aio::entry;
use crate::exit::Active;
use crate::inner::Inner;
use crate::leases::{attach_leak_watch, Held, PyConn};
use crate::maintainer::{next_run_in, Maintainer};
use crate::permit::{InUseGuard, PermitGuard};
use lido_core::{OpenPermit, Pooled, Retired};
use pyo3::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A retired connection while Python awaits its close; `done()` frees its slot.
#[pyclass(module = "django_lido._lido")]
pub struct AsyncClose {
    inner: Arc<Inner>,
    retired: Option<Retired<PyConn>>,
}

impl AsyncClose {
    /// `None`: nothing to await (a fork parent's connection, set aside).
    pub(crate) fn new(
        py: Python<'_>,
        inner: &Arc<Inner>,
        retired: Retired<PyConn>,
    ) -> Option<Self> {
        if retired.foreign {
            inner.retire(py, retired);
            return None;
        }
        Some(AsyncClose {
            inner: Arc::clone(inner),
            retired: Some(retired),
        })
    }

    pub(crate) fn new_py(
        py: Python<'_>,
        inner: &Arc<Inner>,
        retired: Retired<PyConn>,
    ) -> PyResult<Option<Py<Self>>> {
        AsyncClose::new(py, inner, retired)
            .map(|c| Py::new(py, c))
            .transpose()
    }
}

#[pymethods]
impl AsyncClose {
    /// The connection to close.
    #[getter]
    fn conn(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.retired
            .as_ref()
            .map(|r| r.conn.payload.obj.clone_ref(py))
    }

    /// The close was awaited (whatever it raised): the slot is free again, and goes to the
    /// first waiter (whose wake runs Python: hence a section).
    fn done(&mut self, py: Python<'_>) -> PyResult<()> {
        entry(py, "AsyncClose.done", || {
            if let Some(r) = self.retired.take() {
                drop(self.inner.engine.retire_done(r));
            }
            Ok(())
        })
    }

    /// The awaited close was cut short: closes it now, through the driver's sync hook.
    fn abandon(&mut self, py: Python<'_>) -> PyResult<()> {
        entry(py, "AsyncClose.abandon", || {
            if let Some(r) = self.retired.take() {
                self.inner.retire(py, r);
            }
            Ok(())
        })
    }
}

impl Drop for AsyncClose {
    fn drop(&mut self) {
        if let Some(r) = self.retired.take() {
            Python::attach(|py| {
                let _active = Active::enter(py);
                self.inner.retire(py, r);
            });
        }
    }
}

/// A returned connection while Python awaits its rollback and reset.
#[pyclass(module = "django_lido._lido")]
pub struct AsyncReturn {
    inner: Arc<Inner>,
    obj: Py<PyAny>,
    held: Option<Pooled<Held>>,
    rollback: Option<bool>,
}

impl AsyncReturn {
    /// Ends the lease. Returns `None` when nothing is left to await, an `AsyncClose` when
    /// the engine retired the connection, else an `AsyncReturn` to clean it.
    pub(crate) fn begin(
        py: Python<'_>,
        inner: &Arc<Inner>,
        conn: Bound<'_, PyAny>,
        always_clean: bool,
    ) -> PyResult<Option<Py<PyAny>>> {
        let Some(held) = inner.end_lease(&conn)? else {
            return Ok(None); // the parent's, after a fork: left alone
        };
        if held.meta.long_hold_reported {
            inner.long_hold_ended(py, &held);
        }
        let held = InUseGuard::new(&inner.engine, held);
        let rollback = inner
            .driver(py)
            .and_then(|d| d.needs_rollback(py, &conn, held.get().payload.status_source.as_ref()));
        if rollback == Some(false) && !always_clean {
            let pooled = Held::rejoin(held.take(), conn.unbind());
            return match inner.engine.release(pooled, true, Instant::now()) {
                None => Ok(None),
                Some(r) => Ok(AsyncClose::new_py(py, inner, r)?.map(Py::into_any)),
            };
        }
        let ret = AsyncReturn {
            inner: Arc::clone(inner),
            obj: conn.unbind(),
            held: Some(held.take()),
            rollback,
        };
        Ok(Some(Py::new(py, ret)?.into_any()))
    }
}

#[pymethods]
impl AsyncReturn {
    /// True: roll back first; False: nothing open; None: it cannot be cleaned (a query
    /// still running, or broken) and is closed.
    #[getter]
    fn rollback(&self) -> Option<bool> {
        self.rollback
    }

    /// The rollback and reset were awaited; `ok`: both succeeded. The connection goes back
    /// to the engine; an `AsyncClose` if it retired it.
    fn cleaned(&mut self, py: Python<'_>, ok: bool) -> PyResult<Option<Py<AsyncClose>>> {
        entry(py, "AsyncReturn.cleaned", || {
            let Some(held) = self.held.take() else {
                return Ok(None);
            };
            let healthy = ok && self.rollback.is_some();
            if healthy
                && self.rollback == Some(true)
                && self.inner.driver(py).is_some_and(|d| d.knows_status())
            {
                self.inner
                    .engine
                    .stats()
                    .returns_rolled_back
                    .fetch_add(1, Relaxed);
            }
            let pooled = Held::rejoin(held, self.obj.clone_ref(py));
            match self.inner.engine.release(pooled, healthy, Instant::now()) {
                None => Ok(None),
                Some(r) => AsyncClose::new_py(py, &self.inner, r),
            }
        })
    }

    /// The cleaning was cut short (the task cancelled): the connection is closed now.
    fn abandon(&mut self, py: Python<'_>) -> PyResult<()> {
        entry(py, "AsyncReturn.abandon", || {
            self.settle(py);
            Ok(())
        })
    }
}

impl AsyncReturn {
    /// Gives the connection back as broken (its cleaning was cut short): closed now.
    fn settle(&mut self, py: Python<'_>) {
        if let Some(held) = self.held.take() {
            let pooled = Held::rejoin(held, self.obj.clone_ref(py));
            if let Some(r) = self.inner.engine.release(pooled, false, Instant::now()) {
                self.inner.retire(py, r);
            }
        }
    }
}

impl Drop for AsyncReturn {
    fn drop(&mut self) {
        if self.held.is_some() {
            Python::attach(|py| {
                let _active = Active::enter(py);
                self.settle(py);
            });
        }
    }
}

/// A maintenance open permit while Python awaits the connect.
#[pyclass(module = "django_lido._lido")]
pub struct AsyncPermit {
    inner: Arc<Inner>,
    permit: Option<OpenPermit>,
}

impl AsyncPermit {
    pub(crate) fn new(inner: &Arc<Inner>, permit: OpenPermit) -> Self {
        AsyncPermit {
            inner: Arc::clone(inner),
            permit: Some(permit),
        }
    }
}

#[pymethods]
impl AsyncPermit {
    /// The connect returned `conn` after `took` seconds: it goes to the first waiter, or
    /// idle; an `AsyncClose` if the pool closed meanwhile.
    fn opened(
        &mut self,
        py: Python<'_>,
        conn: Py<PyAny>,
        took: f64,
    ) -> PyResult<Option<Py<AsyncClose>>> {
        entry(py, "AsyncPermit.opened", || {
            let Some(permit) = self.permit.take() else {
                return Ok(None);
            };
            let inner = &self.inner;
            let slot = PermitGuard::new(&inner.engine, permit);
            let conn = attach_leak_watch(inner, py, inner.adopt(py, conn)?)?;
            let took = Duration::try_from_secs_f64(took).unwrap_or_default();
            inner.open_failures.store(0, Relaxed);
            match inner
                .engine
                .opened_idle(slot.spend(), conn, Instant::now(), took)
            {
                None => Ok(None),
                Some(r) => AsyncClose::new_py(py, inner, r),
            }
        })
    }

    /// The connect raised `error`: the slot is freed, and the engine told whether the
    /// server seems down.
    fn failed(&mut self, py: Python<'_>, error: Bound<'_, PyAny>) -> PyResult<()> {
        entry(py, "AsyncPermit.failed", || {
            if let Some(permit) = self.permit.take() {
                let e = PyErr::from_value(error);
                self.inner
                    .connect_failed(py, PermitGuard::new(&self.inner.engine, permit), &e);
            }
            Ok(())
        })
    }
}

impl Drop for AsyncPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            Python::attach(|py| {
                let _active = Active::enter(py);
                self.inner.engine.open_unused(permit);
            });
        }
    }
}

/// A maintenance round's work for an `AsyncPool`, whose driver calls are awaited on its
/// loop: connections to close, permits to open connections with, and in how many seconds
/// the next idle connection is due. `None` once the pool is closed.
#[pyfunction]
#[allow(clippy::type_complexity)] // the Python tuple it returns
pub(crate) fn _aio_maintain(
    py: Python<'_>,
    m: &Bound<'_, Maintainer>,
) -> PyResult<Option<(Vec<Py<AsyncClose>>, Vec<AsyncPermit>, Option<f64>)>> {
    entry(py, "_aio_maintain", || {
        let inner = &m.get().inner;
        let now = Instant::now();
        let Some(plan) = inner.engine.maintain(now) else {
            return Ok(None);
        };
        let permits = plan
            .open
            .into_iter()
            .map(|p| AsyncPermit::new(inner, p))
            .collect();
        let mut closes = Vec::new();
        for r in plan.retire {
            closes.extend(AsyncClose::new_py(py, inner, r)?);
        }
        let due = plan
            .next_due
            .map(|t| t.saturating_duration_since(now).as_secs_f64());
        Ok(Some((closes, permits, due)))
    })
}

/// After a round: reports long holds, and returns the seconds until the next round (a
/// back-off if an open `failed`).
#[pyfunction]
#[pyo3(signature = (m, failed, next_due))]
pub(crate) fn _aio_next_round(
    py: Python<'_>,
    m: &Bound<'_, Maintainer>,
    failed: bool,
    next_due: Option<f64>,
) -> PyResult<f64> {
    entry(py, "_aio_next_round", || {
        let inner = &m.get().inner;
        let now = Instant::now();
        let due = next_due.map(|s| now + Duration::from_secs_f64(s.clamp(0.0, 3600.0)));
        let hold_due = inner.review_holds(py, now);
        Ok(next_run_in(
            inner,
            failed,
            due.into_iter().chain(hold_due).min(),
        ))
    })
}
