//! Python exceptions for engine errors, and [`guarded`], which turns a panic into one.
//! Driver errors pass through unchanged.

use lido_core::{AcquireError, ConfigError};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::panic::PanicException;
use pyo3::prelude::*;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

create_exception!(
    django_lido,
    PoolError,
    PyException,
    "Base class of the pool's own errors."
);
create_exception!(
    django_lido,
    PoolTimeout,
    PoolError,
    "No connection came free within the timeout."
);
create_exception!(django_lido, PoolClosed, PoolError, "The pool is closed.");
create_exception!(
    django_lido,
    PoolInternalError,
    PoolError,
    "A bug in django-lido: a panic in its engine or binding, raised as a normal exception."
);
create_exception!(
    django_lido,
    TooManyWaiters,
    PoolError,
    "max_waiting requests were already waiting."
);

pub fn acquire_error(e: AcquireError) -> PyErr {
    let msg = e.to_string();
    match e {
        AcquireError::Timeout { .. } => PoolTimeout::new_err(msg),
        AcquireError::Closed { .. } => PoolClosed::new_err(msg),
        AcquireError::TooManyWaiters { .. } => TooManyWaiters::new_err(msg),
    }
}

pub fn config_error(e: ConfigError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Runs the body of a Python entry point (`what`, e.g. "PoolCore.getconn"): a panic in it,
/// or one resumed from a Python callback that raised `PanicException`, becomes a
/// [`PoolInternalError`] (an `Exception`, which `except Exception` catches, unlike PyO3's
/// `PanicException`), with the panic as its cause. The guards on the paths that hold a
/// slot ([`crate::permit`]) have given it back by then.
pub(crate) fn guarded<R>(
    py: Python<'_>,
    what: &str,
    body: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    catch_unwind(AssertUnwindSafe(body))
        .unwrap_or_else(|payload| Err(panic_error(py, what, payload)))
}

fn panic_error(py: Python<'_>, what: &str, payload: Box<dyn Any + Send>) -> PyErr {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("a panic with no message");
    let err = PoolInternalError::new_err(format!(
        "bug in django-lido: {what} panicked ({msg}); please report it"
    ));
    err.set_cause(py, Some(PanicException::new_err(msg.to_owned())));
    err
}
