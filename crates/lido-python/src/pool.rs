//! `PoolCore`: the Python class. Each method converts its arguments and delegates to
//! `Inner`; PyO3 allows one `#[pymethods]` block per class.

use crate::driver::Hooks;
use crate::errors::guarded;
use crate::exit::Active;
use crate::green::{current_greenlet, GreenletWait};
use crate::holders::Lease;
use crate::inner::Inner;
use crate::maintainer::Maintainer;
use crate::options::{size_arg, timeout_arg, PoolOptions};
use crate::wait::ParkThread;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::Arc;
use std::time::Duration;

/// The Rust half of `django_lido.Pool`. Not meant to be used directly.
#[pyclass(module = "django_lido._lido", subclass, frozen)]
pub struct PoolCore {
    pub(crate) inner: Arc<Inner>,
}

#[pymethods]
impl PoolCore {
    #[new]
    #[pyo3(signature = (
        connect, driver_for, *, name, options,
        check=None, reset=None, on_report=None, on_error=None, transient=None,
    ))]
    #[allow(clippy::too_many_arguments)] // the Python signature: one argument per hook
    fn new(
        py: Python<'_>,
        connect: Py<PyAny>,
        driver_for: Py<PyAny>,
        name: String,
        options: PyRef<'_, PoolOptions>,
        check: Option<Py<PyAny>>,
        reset: Option<Py<PyAny>>,
        on_report: Option<Py<PyAny>>,
        on_error: Option<Py<PyAny>>,
        transient: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        guarded(py, "PoolCore()", || {
            let hooks = Hooks {
                connect,
                driver_for,
                check,
                transient,
                reset,
                on_report,
                on_error,
            };
            let inner = Arc::new(Inner::new(name, options.config.clone(), hooks));
            crate::fork::register(&inner);
            Ok(PoolCore { inner })
        })
    }

    /// Takes a connection, waiting up to `timeout` seconds (default: the pool's).
    #[pyo3(signature = (timeout=None))]
    fn getconn(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.getconn", || {
            let timeout = timeout
                .filter(|t| !t.is_none())
                .map(timeout_arg)
                .transpose()?;
            if self.inner.mode.green(py)? {
                return self.getconn_green(py, timeout);
            }
            self.inner.getconn(py, timeout, &ParkThread, 0)
        })
    }

    /// Gives a connection back: rolled back, reset, then kept, handed on, or closed.
    fn putconn(&self, py: Python<'_>, conn: Bound<'_, PyAny>) -> PyResult<()> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.putconn", || self.inner.putconn(py, conn))
    }

    /// Closes the pool. Idle connections close now, those in use when they come back.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.close", || {
            self.inner.close(py);
            Ok(())
        })
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> PyResult<bool> {
        guarded(py, "PoolCore.closed", || {
            Ok(self.inner.engine.status().closed)
        })
    }

    #[getter]
    fn name(&self, py: Python<'_>) -> PyResult<&str> {
        guarded(py, "PoolCore.name", || Ok(self.inner.engine.name()))
    }

    /// Changes min_size and max_size at run time.
    fn resize(
        &self,
        py: Python<'_>,
        min_size: &Bound<'_, PyAny>,
        max_size: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.resize", || {
            let (min, max) = (
                size_arg("min_size", min_size)?,
                size_arg("max_size", max_size)?,
            );
            self.inner.resize(py, min, max)
        })
    }

    /// Replaces every connection without closing the pool: idle ones close now, those in
    /// use when they come back; maintenance then refills min_size.
    fn drain(&self, py: Python<'_>) -> PyResult<()> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.drain", || {
            self.inner.drain(py);
            Ok(())
        })
    }

    /// A handle for the maintenance thread; it does not keep the pool alive.
    fn _maintainer(&self, py: Python<'_>) -> PyResult<Maintainer> {
        guarded(py, "PoolCore._maintainer", || {
            Ok(Maintainer {
                inner: Arc::clone(&self.inner),
            })
        })
    }

    /// Statistics, with names from psycopg_pool and HikariCP.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.stats", || self.inner.stats_dict(py))
    }

    /// One dict per connection lent out: holder, ages, transaction, last statement, stacks.
    fn connections<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.connections", || self.inner.connections(py))
    }

    /// The `top` statement shapes by `order` ("total", "count", "mean" or "p99").
    #[pyo3(signature = (top=20, order="total"))]
    fn query_stats<'py>(
        &self,
        py: Python<'py>,
        top: usize,
        order: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore.query_stats", || {
            self.inner.query_stats_list(py, top, order)
        })
    }

    fn reset_query_stats(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, "PoolCore.reset_query_stats", || {
            self.inner.reset_query_stats();
            Ok(())
        })
    }

    /// The statement hook's handle on `conn`, if this pool lent it.
    fn _lease(
        &self,
        py: Python<'_>,
        conn: Bound<'_, PyAny>,
        vendor: &str,
    ) -> PyResult<Option<Lease>> {
        guarded(py, "PoolCore._lease", || self.inner.lease_of(&conn, vendor))
    }

    /// In the forked child, after the fork handlers (fork.rs): the parent's connections in
    /// use are kept alive and untouched.
    fn _after_fork_in_child(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, "PoolCore._after_fork_in_child", || {
            self.inner.keep_parents_leases(py);
            // The parent's statements are the parent's to report.
            self.inner.reset_query_stats();
            Ok(())
        })
    }

    /// In the parent after a fork: keeps no idle connections (fork.rs).
    fn _after_fork_in_parent(&self, py: Python<'_>) -> PyResult<()> {
        let _active = Active::enter(py);
        guarded(py, "PoolCore._after_fork_in_parent", || {
            self.inner.keep_no_idle(py);
            Ok(())
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        guarded(py, "PoolCore.__repr__", || Ok(self.inner.describe()))
    }

    /// For tests only: panics inside the guard every method of the binding runs in.
    fn _panic_for_test(&self, py: Python<'_>, message: String) -> PyResult<()> {
        guarded(py, "PoolCore._panic_for_test", || panic!("{message}"))
    }
}

impl PoolCore {
    /// `getconn` of a greenlet (see green.rs), off the plain threads' path.
    #[inline(never)]
    fn getconn_green(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Py<PyAny>> {
        let how = GreenletWait::new();
        let r = self.inner.getconn(py, timeout, &how, current_greenlet(py));
        how.finish(py);
        r
    }
}

impl Drop for PoolCore {
    /// A pool dropped without close(): close it, so the maintenance thread ends and idle
    /// connections are closed through the driver.
    fn drop(&mut self) {
        if !self.inner.engine.status().closed {
            Python::attach(|py| {
                let _active = Active::enter(py);
                self.inner.close(py);
            });
        }
    }
}
