//! asyncio: how a task waits for a grant, and the entry points of `django_lido.AsyncPool`.
//!
//! An async checkout cannot wait inside Rust: its wait is an `await`. So `getconn` is a
//! Python coroutine (`django_lido/aio.py`) that drives small Rust steps
//! ([`AsyncCheckout`](crate::aio_checkout::AsyncCheckout)): each step decides with the
//! engine and says which awaited driver call (connect, check, close) or wait comes next.
//! A queued task waits on an asyncio future, which the engine's [`AsyncWake`] resolves
//! from whatever thread gave the grant: directly on the loop's thread, else through
//! `loop.call_soon_threadsafe`.

use crate::aio_checkout::AsyncCheckout;
use crate::aio_handles::{AsyncClose, AsyncReturn};
use crate::errors::guarded;
use crate::exit::{unraisable, Active};
use crate::inner::Inner;
use crate::leases::PyConn;
use crate::permit::Leftovers;
use crate::pool::PoolCore;
use lido_core::{Retired, Wake};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::sync::Arc;

/// A future a queued task awaits, with how to resolve it from another thread.
struct Armed {
    fut: Py<PyAny>,
    /// `loop.call_soon_threadsafe`.
    call_soon_threadsafe: Py<PyAny>,
    /// The loop's thread (`pthread_self`), where the future may be resolved directly.
    thread: libc::pthread_t,
}

/// Where a queued task's future goes once the task is about to await it. The engine asks
/// for a waker under its lock, where no Python may run, so the future is made after (as
/// for greenlets, green.rs): a wake that comes before finds the slot empty, and the task
/// finds the grant already in its waiter when it arms the slot.
#[derive(Default)]
pub(crate) struct Slot(Mutex<Option<Armed>>);

impl Slot {
    /// Puts `fut` in the slot, to be resolved by the next wake.
    pub(crate) fn arm(&self, fut: Py<PyAny>, call_soon_threadsafe: Py<PyAny>) {
        // SAFETY: no arguments, no preconditions.
        let thread = unsafe { libc::pthread_self() };
        *self.0.lock() = Some(Armed {
            fut,
            call_soon_threadsafe,
            thread,
        });
    }

    /// Empties the slot (the grant was found without waiting, or the wait is over).
    pub(crate) fn disarm(&self) {
        drop(self.0.lock().take());
    }
}

/// Resolves a queued task's future: what the engine calls once the grant is in the waiter.
pub(crate) struct AsyncWake(pub(crate) Arc<Slot>);

impl Wake for AsyncWake {
    fn wake(&self) {
        Python::attach(|py| {
            let Some(armed) = self.0 .0.lock().take() else {
                return;
            };
            let resolve = match wake_helper(py) {
                Ok(f) => f,
                Err(e) => return unraisable(py, e),
            };
            // SAFETY: as in `Slot::arm`.
            let here = unsafe { libc::pthread_equal(libc::pthread_self(), armed.thread) } != 0;
            let done = if here {
                // On the loop's thread (a return by another task): no self-pipe write.
                resolve.call1(py, (armed.fut,))
            } else {
                armed.call_soon_threadsafe.call1(py, (resolve, armed.fut))
            };
            // A loop closed meanwhile has nobody left waiting on it.
            if let Err(e) = done {
                unraisable(py, e);
            }
        });
    }
}

/// `django_lido.aio._wake`: resolves a future unless the wait already ended.
fn wake_helper(py: Python<'_>) -> PyResult<&Py<PyAny>> {
    static WAKE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    WAKE.get_or_try_init(py, || {
        Ok(PyModule::import(py, "django_lido.aio")?
            .getattr("_wake")?
            .unbind())
    })
}

/// Runs the body of an entry point the way the pool's methods do: as an exit-aware
/// section, with a panic turned into `PoolInternalError`.
pub(crate) fn entry<R>(
    py: Python<'_>,
    what: &str,
    body: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let _active = Active::enter(py);
    guarded(py, what, body)
}

/// Starts an async checkout: the connection if one is ready without any awaited step (the
/// common case), else the [`AsyncCheckout`] whose `pending` step the caller awaits.
#[pyfunction]
#[pyo3(signature = (pool, timeout, event_loop))]
pub(crate) fn _aio_checkout(
    py: Python<'_>,
    pool: &Bound<'_, PoolCore>,
    timeout: Option<&Bound<'_, PyAny>>,
    event_loop: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    entry(py, "_aio_checkout", || {
        AsyncCheckout::begin(py, &pool.get().inner, timeout, event_loop)
    })
}

/// Takes a connection back. `None`: done (the common case); else an
/// [`AsyncReturn`](crate::aio_handles::AsyncReturn) to clean it or an `AsyncClose` to close
/// it, whose awaited steps the caller runs. With `always_clean`
/// (the pool has a reset hook), the caller always gets one.
#[pyfunction]
pub(crate) fn _aio_putconn(
    py: Python<'_>,
    pool: &Bound<'_, PoolCore>,
    conn: Bound<'_, PyAny>,
    always_clean: bool,
) -> PyResult<Option<Py<PyAny>>> {
    entry(py, "_aio_putconn", || {
        AsyncReturn::begin(py, &pool.get().inner, conn, always_clean)
    })
}

/// Closes the pool: waiters get `PoolClosed`; the idle connections are returned as
/// `AsyncClose`s to await, those in use close when they come back.
#[pyfunction]
pub(crate) fn _aio_close(
    py: Python<'_>,
    pool: &Bound<'_, PoolCore>,
) -> PyResult<Vec<Py<AsyncClose>>> {
    entry(py, "_aio_close", || {
        let inner = &pool.get().inner;
        async_closes(py, inner, inner.engine.close())
    })
}

/// Replaces every connection (`Engine::drain`): the idle ones are returned as `AsyncClose`s
/// to await, those in use close when they come back; maintenance refills min_size.
#[pyfunction]
pub(crate) fn _aio_drain(
    py: Python<'_>,
    pool: &Bound<'_, PoolCore>,
) -> PyResult<Vec<Py<AsyncClose>>> {
    entry(py, "_aio_drain", || {
        let inner = &pool.get().inner;
        async_closes(py, inner, inner.engine.drain())
    })
}

/// An `AsyncClose` to await for each retired connection (a fork parent's is set aside).
fn async_closes(
    py: Python<'_>,
    inner: &Arc<Inner>,
    retired: Vec<Retired<PyConn>>,
) -> PyResult<Vec<Py<AsyncClose>>> {
    let mut closes = Vec::new();
    for r in Leftovers::retired(&inner.engine, retired) {
        closes.extend(AsyncClose::new_py(py, inner, r)?);
    }
    Ok(closes)
}
