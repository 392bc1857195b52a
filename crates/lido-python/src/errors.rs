//! Python exceptions for engine errors. Driver errors pass through unchanged.

use lido_core::{AcquireError, ConfigError};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::PyErr;

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
