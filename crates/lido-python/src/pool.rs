//! `PoolCore`: the Python class. Each method converts its arguments and delegates to
//! `Inner`; PyO3 allows one `#[pymethods]` block per class.

use crate::driver::Hooks;
use crate::exit::Active;
use crate::inner::Inner;
use crate::maintainer::Maintainer;
use crate::options::{size_arg, timeout_arg, PoolOptions};
use crate::wait::ParkThread;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

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
        check=None, reset=None, on_leak=None, on_error=None, transient=None,
    ))]
    #[allow(clippy::too_many_arguments)] // the Python signature: one argument per hook
    fn new(
        connect: Py<PyAny>,
        driver_for: Py<PyAny>,
        name: String,
        options: PyRef<'_, PoolOptions>,
        check: Option<Py<PyAny>>,
        reset: Option<Py<PyAny>>,
        on_leak: Option<Py<PyAny>>,
        on_error: Option<Py<PyAny>>,
        transient: Option<Py<PyAny>>,
    ) -> Self {
        let hooks = Hooks {
            connect,
            driver_for,
            check,
            transient,
            reset,
            on_leak,
            on_error,
        };
        let inner = Inner::new(name, options.config.clone(), hooks);
        PoolCore {
            inner: Arc::new(inner),
        }
    }

    /// Takes a connection, waiting up to `timeout` seconds (default: the pool's).
    #[pyo3(signature = (timeout=None))]
    fn getconn(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let _active = Active::enter(py);
        let timeout = timeout
            .filter(|t| !t.is_none())
            .map(timeout_arg)
            .transpose()?;
        self.inner.getconn(py, timeout, &ParkThread)
    }

    /// Gives a connection back: rolled back, reset, then kept, handed on, or closed.
    fn putconn(&self, py: Python<'_>, conn: Bound<'_, PyAny>) -> PyResult<()> {
        let _active = Active::enter(py);
        self.inner.putconn(py, conn)
    }

    /// Closes the pool. Idle connections close now, those in use when they come back.
    fn close(&self, py: Python<'_>) {
        let _active = Active::enter(py);
        self.inner.close(py);
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
    fn resize(
        &self,
        py: Python<'_>,
        min_size: &Bound<'_, PyAny>,
        max_size: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let _active = Active::enter(py);
        let (min, max) = (
            size_arg("min_size", min_size)?,
            size_arg("max_size", max_size)?,
        );
        self.inner.resize(py, min, max)
    }

    /// A handle for the maintenance thread; it does not keep the pool alive.
    fn _maintainer(&self) -> Maintainer {
        Maintainer {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Statistics, with names from psycopg_pool and HikariCP.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let _active = Active::enter(py);
        self.inner.stats_dict(py)
    }

    /// Before os.fork(): hold the locks so the child never inherits one mid-update.
    fn _before_fork(&self) {
        self.inner.before_fork();
    }

    fn _after_fork_in_parent(&self) {
        self.inner.after_fork_in_parent();
    }

    /// In the child: start empty; the parent's connections are kept, never closed.
    fn _after_fork_in_child(&self, py: Python<'_>) {
        self.inner.after_fork_in_child(py);
    }

    fn __repr__(&self) -> String {
        self.inner.describe()
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
