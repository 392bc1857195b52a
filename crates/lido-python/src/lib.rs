//! `django_lido._lido`: the thin PyO3 layer over `lido-core`.
//!
//! The engine decides; this layer turns its answers into calls of the Python hooks that
//! do driver I/O (connect, probe, check, rollback, reset, close) and maps errors to Python
//! exceptions. Checkout and return are Rust methods that the Python `Pool` class inherits,
//! so the hot path runs no Python frame of ours.

// The Python class and what it exports.
mod errors; // Python exceptions for the engine's errors
mod pool; // PoolCore: the #[pymethods], each delegating to Inner
mod stats; // PoolCore.stats(): the dict and its keys

// Checking connections out and back in.
mod checkout; // getconn as a chain of steps; putconn
mod deadline; // a round-trip check's bounded wait: the socket shut down at the deadline
mod green; // gevent: GreenletWait, and learning how the process is patched
mod inner; // Inner: shared state; open, verify, lend, clean, retire
mod permit; // PermitGuard: an open permit's slot is freed on failure
mod turns; // each thread's (or greenlet's) turn at each pool
mod wait; // WaitStrategy: how a checkout waits (ParkThread)

// What Python gives the pool: callbacks and options.
mod driver; // the Python callbacks, learned driver hooks, transaction status
mod options; // PoolOptions (checked by the engine's option table) and OPTIONS

// Connections and the process around them.
mod exit; // interpreter exit: woken threads stay parked
mod fork; // os.fork(): the child leaves the parent's connections alone
mod leases; // connections in use, LeakWatch, a fork parent's connections
mod maintainer; // Maintainer: the maintenance thread's handle

// asyncio: AsyncPool's steps between awaited driver calls.
mod aio; // AsyncWake (a queued task's future), the entry points
mod aio_checkout; // AsyncCheckout: one async getconn, step by step
mod aio_handles; // AsyncReturn, AsyncClose, AsyncPermit; async maintenance rounds

// What the Django backends ask of the engine.
mod statement; // changes_session: the statement hook's classifier

// Observability: who holds what, their stacks, idle transactions, reports, query stats.
mod holders; // Lent: each connection lent out; Lease: the statement hook's handle; connections()
mod idle; // idle in transaction: reported, and ended by shutting the socket down
mod queries; // query statistics by statement shape: query_stats(), reset_query_stats()
mod reports; // the dicts given to on_report: long holds, leaks, idle transactions
mod stack; // cheap stacks: (code, offset) pairs at checkout, formatted when shown

use pyo3::prelude::*;

#[pymodule]
fn _lido(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<pool::PoolCore>()?;
    m.add_class::<leases::LeakWatch>()?;
    m.add_class::<holders::Lease>()?;
    m.add_class::<maintainer::Maintainer>()?;
    m.add_function(wrap_pyfunction!(exit::_interpreter_exiting, m)?)?;
    m.add_class::<aio_checkout::AsyncCheckout>()?;
    m.add_class::<aio_handles::AsyncClose>()?;
    m.add_class::<aio_handles::AsyncReturn>()?;
    m.add_class::<aio_handles::AsyncPermit>()?;
    m.add_function(wrap_pyfunction!(aio::_aio_checkout, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_aio_putconn, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_aio_close, m)?)?;
    m.add_function(wrap_pyfunction!(aio::_aio_drain, m)?)?;
    m.add_function(wrap_pyfunction!(aio_handles::_aio_maintain, m)?)?;
    m.add_function(wrap_pyfunction!(aio_handles::_aio_next_round, m)?)?;
    m.add_function(wrap_pyfunction!(statement::changes_session, m)?)?;
    m.add_class::<options::PoolOptions>()?;
    m.add("OPTIONS", options::option_table(py)?)?;
    m.add("PoolError", py.get_type::<errors::PoolError>())?;
    m.add("PoolTimeout", py.get_type::<errors::PoolTimeout>())?;
    m.add("PoolClosed", py.get_type::<errors::PoolClosed>())?;
    m.add("TooManyWaiters", py.get_type::<errors::TooManyWaiters>())?;
    m.add(
        "PoolInternalError",
        py.get_type::<errors::PoolInternalError>(),
    )?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
