//! `django_lido._lido`: the thin PyO3 layer over `lido-core`.
//!
//! The engine decides; this layer turns its answers into calls of the Python hooks that
//! do driver I/O (connect, probe, check, rollback, reset, close) and maps errors to Python
//! exceptions. Checkout and return are Rust methods that the Python `Pool` class inherits,
//! so the hot path runs no Python frame of ours.

mod checkout;
mod driver;
mod errors;
mod exit;
mod fork;
mod inner;
mod leases;
mod maintainer;
mod options;
mod permit;
mod pool;
mod stats;
mod turns;
mod wait;

use pyo3::prelude::*;

#[pymodule]
fn _lido(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<pool::PoolCore>()?;
    m.add_class::<leases::LeakWatch>()?;
    m.add_class::<maintainer::Maintainer>()?;
    m.add_function(wrap_pyfunction!(exit::_interpreter_exiting, m)?)?;
    m.add_function(wrap_pyfunction!(options::validate_options, m)?)?;
    m.add("PoolError", py.get_type::<errors::PoolError>())?;
    m.add("PoolTimeout", py.get_type::<errors::PoolTimeout>())?;
    m.add("PoolClosed", py.get_type::<errors::PoolClosed>())?;
    m.add("TooManyWaiters", py.get_type::<errors::TooManyWaiters>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
