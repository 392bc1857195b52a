//! `PoolCore`: checkout, return, maintenance and statistics for Python connections.

use crate::driver::Hooks;
use crate::errors::{acquire_error, config_error, PoolClosed};
use crate::exit::park_forever_if_exiting;
use crate::inner::Inner;
use crate::leases::{attach_leak_watch, ByAddress, Held, PyConn};
use crate::maintainer::Maintainer;
use crate::options::{count, secs, EngineOptions};
use crate::stats::summary_dict;
use crate::turns::{thread_turn, turn_of};
use lido_core::{Checkout, CloseReason, Engine, Grant, OpenPermit, Pooled, ThreadWake};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// The Rust half of `django_lido.Pool`. Not meant to be used directly.
#[pyclass(module = "django_lido._lido", subclass, frozen)]
pub struct PoolCore {
    pub(crate) inner: Arc<Inner>,
}

impl PoolCore {
    /// Opens a connection for the caller with `permit`; `queued_at` as for `lend` (the
    /// connect time itself is not acquire wait: it has its own histogram).
    fn open_for_caller(
        &self,
        py: Python<'_>,
        permit: OpenPermit,
        queued_at: Option<Instant>,
    ) -> PyResult<Py<PyAny>> {
        let inner = &*self.inner;
        let (conn, took, permit) = inner.open(py, permit)?;
        let conn = match attach_leak_watch(&self.inner, py, conn) {
            Ok(c) => c,
            Err(e) => {
                inner.engine.open_failed(permit);
                return Err(e);
            }
        };
        match inner.engine.opened(permit, conn, Instant::now(), took) {
            Ok(pooled) => Ok(inner.lend(pooled, queued_at)),
            Err(retired) => {
                inner.retire(py, retired);
                Err(PoolClosed::new_err(format!(
                    "pool '{}' is closed",
                    inner.engine.name()
                )))
            }
        }
    }
}

#[pymethods]
impl PoolCore {
    #[new]
    #[pyo3(signature = (
        connect, driver_for, *, name, options,
        probe=true, check=None, reset=None, on_leak=None, on_error=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        connect: Py<PyAny>,
        driver_for: Py<PyAny>,
        name: String,
        options: EngineOptions,
        probe: bool,
        check: Option<Py<PyAny>>,
        reset: Option<Py<PyAny>>,
        on_leak: Option<Py<PyAny>>,
        on_error: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let cfg = options.config().map_err(config_error)?;
        let timeout = cfg.timeout;
        let engine = Engine::new(name, cfg).map_err(config_error)?;
        Ok(PoolCore {
            inner: Arc::new(Inner {
                engine,
                timeout,
                probe,
                hooks: Hooks {
                    connect,
                    driver_for,
                    check,
                    reset,
                    on_leak,
                    on_error,
                },
                driver: PyOnceLock::new(),
                leases: Mutex::new(ByAddress::default()),
                foreign: Mutex::new((HashSet::new(), Vec::new())),
                open_failures: AtomicU64::new(0),
            }),
        })
    }

    /// Takes a connection, waiting up to `timeout` seconds (default: the pool's).
    #[pyo3(signature = (timeout=None))]
    fn getconn(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let inner = &*self.inner;
        let start = Instant::now();
        let timeout = match timeout {
            None => inner.timeout,
            Some(t) => secs("timeout", t).map_err(config_error)?,
        };
        let deadline = start + timeout;
        let wake = || -> Box<dyn lido_core::Wake> { Box::new(ThreadWake::current()) };
        let key = Arc::as_ptr(&self.inner) as usize;
        let turn = Some(thread_turn(key, start, false));
        let mut step = inner
            .engine
            .checkout_in_turn(start, turn, wake)
            .map_err(acquire_error)?;
        // Set once the request has to queue, for the acquire-wait histogram.
        let mut queued_at = None;
        loop {
            step = match step {
                Checkout::Ready(conn, check) => {
                    if inner.verify(py, &conn, check) {
                        if queued_at.is_some() {
                            thread_turn(key, Instant::now(), true);
                        }
                        return Ok(inner.lend(conn, queued_at));
                    }
                    let (retired, next) =
                        inner
                            .engine
                            .replace(conn, CloseReason::CheckFailed, Instant::now());
                    inner.retire(py, retired);
                    next.map_err(acquire_error)?
                }
                Checkout::Retire(retired) => {
                    inner.retire(py, retired);
                    inner
                        .engine
                        .checkout_in_turn(Instant::now(), turn, wake)
                        .map_err(acquire_error)?
                }
                Checkout::Open(permit) => {
                    if queued_at.is_some() {
                        thread_turn(key, Instant::now(), true);
                    }
                    return self.open_for_caller(py, permit, queued_at);
                }
                Checkout::Wait(waiter) => {
                    queued_at = Some(start);
                    let w = Arc::clone(&waiter);
                    let grant = match py.detach(move || {
                        let grant = w.park_until(deadline);
                        park_forever_if_exiting();
                        grant
                    }) {
                        Some(g) => g,
                        None => match inner.engine.cancel(&waiter) {
                            Some(g) => g,
                            None => {
                                inner.engine.stats().timeouts.fetch_add(1, Relaxed);
                                return Err(acquire_error(inner.engine.timeout_error(timeout)));
                            }
                        },
                    };
                    match grant {
                        Grant::Conn(conn, check) => Checkout::Ready(conn, check),
                        Grant::Open(permit) => Checkout::Open(permit),
                        Grant::Retry => inner
                            .engine
                            .retry(&waiter, Instant::now())
                            .map_err(acquire_error)?,
                        Grant::Closed => {
                            return Err(PoolClosed::new_err(format!(
                                "pool '{}' was closed while waiting",
                                inner.engine.name()
                            )))
                        }
                    }
                }
            };
        }
    }

    /// Gives a connection back: rolled back, reset, then kept, handed on, or closed.
    fn putconn(&self, py: Python<'_>, conn: Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &*self.inner;
        let key = conn.as_ptr() as usize;
        let Some(held) = inner.leases.lock().remove(&key) else {
            if inner.foreign.lock().0.contains(&key) {
                return Ok(()); // the parent's, after a fork: left alone
            }
            return Err(PyValueError::new_err(format!(
                "pool '{}': this connection is not checked out from it (returned twice, \
                 or from another pool)",
                inner.engine.name()
            )));
        };
        let healthy = inner.clean(py, &conn, held.payload.status_source.as_ref());
        let pooled = Pooled {
            payload: PyConn {
                status_source: held.payload.status_source,
                obj: conn.unbind(),
                fd: held.payload.fd,
                watch: held.payload.watch,
            },
            meta: held.meta,
        };
        let turn = turn_of(Arc::as_ptr(&self.inner) as usize);
        if let Some(retired) = inner
            .engine
            .release_in_turn(pooled, healthy, Instant::now(), turn)
        {
            inner.retire(py, retired);
        }
        Ok(())
    }

    /// Closes the pool. Idle connections close now, those in use when they come back.
    fn close(&self, py: Python<'_>) {
        for retired in self.inner.engine.close() {
            self.inner.retire(py, retired);
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.engine.status().closed
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.engine.name()
    }

    /// Changes min_size and max_size at run time.
    fn resize(&self, py: Python<'_>, min_size: i64, max_size: i64) -> PyResult<()> {
        let min = count("min_size", min_size).map_err(config_error)? as usize;
        let max = count("max_size", max_size).map_err(config_error)? as usize;
        let retired = self.inner.engine.resize(min, max).map_err(config_error)?;
        for r in retired {
            self.inner.retire(py, r);
        }
        Ok(())
    }

    /// A handle for the maintenance thread; it does not keep the pool alive.
    fn _maintainer(&self) -> Maintainer {
        Maintainer {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Statistics, with names from psycopg_pool and HikariCP.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &*self.inner;
        let s = inner.engine.status();
        let st = inner.engine.stats();
        let d = PyDict::new(py);
        d.set_item("name", inner.engine.name())?;
        d.set_item("pool_min", s.min_size)?;
        d.set_item("pool_max", s.max_size)?;
        d.set_item("pool_size", s.size)?;
        d.set_item("pool_available", s.idle)?;
        d.set_item("idle", s.idle)?;
        d.set_item("in_use", s.in_use)?;
        d.set_item("opening", s.opening)?;
        d.set_item("requests_waiting", s.waiting)?;
        // One read of the buckets: requests_num and the wait quantiles agree.
        let wait = st.acquire_wait.summary();
        d.set_item("requests_num", wait.count)?;
        d.set_item("requests_queued", st.requests_queued.load(Relaxed))?;
        d.set_item("requests_timeouts", st.timeouts.load(Relaxed))?;
        d.set_item("requests_rejected", st.rejected.load(Relaxed))?;
        let usage = st.usage.summary();
        let open = st.open_time.summary();
        d.set_item("requests_wait_ms", wait.sum.as_secs_f64() * 1000.0)?;
        d.set_item("usage_ms", usage.sum.as_secs_f64() * 1000.0)?;
        d.set_item("connections_num", st.opens.load(Relaxed))?;
        d.set_item("connections_ms", open.sum.as_secs_f64() * 1000.0)?;
        d.set_item("connections_errors", st.open_errors.load(Relaxed))?;
        d.set_item("connections_lost", st.leaked.load(Relaxed))?;
        d.set_item("connections_leaked", st.leaked.load(Relaxed))?;
        d.set_item("returns_bad", st.closes_for(CloseReason::Broken))?;
        d.set_item("returns_rolled_back", st.returns_rolled_back.load(Relaxed))?;
        for reason in CloseReason::ALL {
            d.set_item(format!("closes_{}", reason.name()), st.closes_for(reason))?;
        }
        d.set_item("acquire_wait", summary_dict(py, &wait)?)?;
        d.set_item("usage", summary_dict(py, &usage)?)?;
        d.set_item("connection_open", summary_dict(py, &open)?)?;
        Ok(d)
    }

    /// Before os.fork(): hold the locks so the child never inherits one mid-update.
    fn _before_fork(&self) {
        std::mem::forget(self.inner.leases.lock());
        std::mem::forget(self.inner.foreign.lock());
        self.inner.engine.before_fork();
    }

    fn _after_fork_in_parent(&self) {
        self.inner.engine.after_fork_in_parent();
        // SAFETY: both locked in `_before_fork` by this thread, guards forgotten.
        unsafe {
            self.inner.foreign.force_unlock();
            self.inner.leases.force_unlock();
        }
    }

    /// In the child: start empty, and keep every connection of the parent alive and
    /// untouched, idle or in use, so that no close (and no libpq Terminate) ends the
    /// parent's sessions.
    fn _after_fork_in_child(&self, py: Python<'_>) {
        let inner = &*self.inner;
        let idle = inner.engine.after_fork_in_child();
        // SAFETY: both locked in `_before_fork` by this thread, guards forgotten.
        unsafe {
            inner.foreign.force_unlock();
            inner.leases.force_unlock();
        }
        for conn in idle {
            inner.keep_foreign(conn.payload.obj, conn.payload.watch);
        }
        let held: Vec<Pooled<Held>> = inner.leases.lock().drain().map(|(_, h)| h).collect();
        for h in held {
            if let Ok(obj) = h.payload.watch.call0(py) {
                if !obj.is_none(py) {
                    inner.keep_foreign(obj, h.payload.watch);
                }
            }
        }
    }

    fn __repr__(&self) -> String {
        let s = self.inner.engine.status();
        format!(
            "<Pool '{}' size={}/{} idle={} in_use={} waiting={}{}>",
            self.inner.engine.name(),
            s.size,
            s.max_size,
            s.idle,
            s.in_use,
            s.waiting,
            if s.closed { " closed" } else { "" }
        )
    }
}

impl Drop for PoolCore {
    /// A pool dropped without close(): close it, so the maintenance thread ends and idle
    /// connections are closed through the driver.
    fn drop(&mut self) {
        if !self.inner.engine.status().closed {
            Python::attach(|py| {
                for retired in self.inner.engine.close() {
                    self.inner.retire(py, retired);
                }
            });
        }
    }
}
