//! gevent: how a greenlet waits for a grant, and how a pool learns that it must.
//!
//! Under `gevent.monkey.patch_all()` every "thread" is a greenlet on one OS thread: parking
//! that thread ([`ParkThread`](crate::wait::ParkThread)) would stop them all. A pool asks
//! `django_lido._green.mode()` once, at its first checkout (one atomic load afterwards);
//! under gevent, checkouts wait with [`GreenletWait`] and turns are kept per greenlet.

use crate::exit::outside_section;
use crate::leases::PyConn;
use crate::wait::WaitStrategy;
use lido_core::{Grant, Waiter, Wake};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// Not asked yet.
const UNKNOWN: u8 = u8::MAX;
/// What `_green.mode()` answers under gevent (0: threads).
const GEVENT: u8 = 1;

/// How a pool's checkouts wait, learned at its first checkout.
pub(crate) struct Mode(AtomicU8);

impl Mode {
    pub(crate) fn new() -> Self {
        Mode(AtomicU8::new(UNKNOWN))
    }

    /// Whether checkouts must wait as greenlets. Raises if the process is patched in a way
    /// the pool cannot serve (eventlet); asks again at the next checkout then.
    #[inline]
    pub(crate) fn green(&self, py: Python<'_>) -> PyResult<bool> {
        match self.0.load(Relaxed) {
            UNKNOWN => self.learn(py),
            m => Ok(m == GEVENT),
        }
    }

    #[cold]
    #[inline(never)]
    fn learn(&self, py: Python<'_>) -> PyResult<bool> {
        let m: u8 = helper(py, "mode")?.call0()?.extract()?;
        self.0.store(m, Relaxed);
        Ok(m == GEVENT)
    }

    /// Known gevent (for putconn, which never asks).
    #[inline]
    pub(crate) fn known_green(&self) -> bool {
        self.0.load(Relaxed) == GEVENT
    }

    /// After a fork the child asks again.
    pub(crate) fn forget(&self) {
        self.0.store(UNKNOWN, Relaxed);
    }
}

fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    static MODULE: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let m = MODULE.get_or_try_init(py, || {
        PyModule::import(py, "django_lido._green").map(Bound::unbind)
    })?;
    m.bind(py).getattr(name)
}

/// The running greenlet's key for its turns (0 if it cannot be told).
pub(crate) fn current_greenlet(py: Python<'_>) -> usize {
    helper(py, "current_greenlet")
        .and_then(|f| f.call0())
        .and_then(|k| k.extract())
        .unwrap_or(0)
}

/// Wakes a waiting greenlet through its hub's async watcher; `send()` is thread-safe.
struct GreenWake(Arc<Py<PyAny>>);

impl Wake for GreenWake {
    fn wake(&self) {
        Python::attach(|py| {
            if let Err(e) = self.0.call_method0(py, "send") {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// Waits by switching to the gevent hub until the grant or the deadline: the other
/// greenlets run meanwhile. One per `getconn` call; [`GreenletWait::finish`] stops its
/// watchers.
///
/// The engine asks for a waker under its lock, where no Python may run (another OS thread
/// holding the GIL may be waiting for that lock), so the watcher is made ahead: at the start
/// of the call and after each wait, and `waker()` only hands it over.
pub(crate) struct GreenletWait {
    /// Made ahead, for the next queued waiter.
    spare: RefCell<Option<Arc<Py<PyAny>>>>,
    /// The current waiter's, once handed over.
    current: RefCell<Option<Arc<Py<PyAny>>>>,
    /// What interrupted a wait (a kill, a caller's `gevent.Timeout`), to raise.
    interrupted: RefCell<Option<PyErr>>,
    /// Every one made by this call, to stop at the end.
    made: RefCell<Vec<Py<PyAny>>>,
}

impl GreenletWait {
    pub(crate) fn new(py: Python<'_>) -> PyResult<Self> {
        let w = GreenletWait {
            spare: RefCell::new(None),
            current: RefCell::new(None),
            interrupted: RefCell::new(None),
            made: RefCell::new(Vec::new()),
        };
        w.make_spare(py)?;
        Ok(w)
    }

    fn make_spare(&self, py: Python<'_>) -> PyResult<()> {
        if self.spare.borrow().is_none() {
            let w = helper(py, "GreenWake")?.call0()?.unbind();
            self.made.borrow_mut().push(w.clone_ref(py));
            *self.spare.borrow_mut() = Some(Arc::new(w));
        }
        Ok(())
    }

    /// Stops the watchers this call started.
    pub(crate) fn finish(&self, py: Python<'_>) {
        for w in self.made.borrow_mut().drain(..) {
            if let Err(e) = w.call_method0(py, "close") {
                e.write_unraisable(py, None);
            }
        }
    }
}

/// A waker for a waiter whose watcher could not be made ahead: the greenlet polls.
struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// How often a greenlet without a watcher looks for its grant.
const POLL: f64 = 0.005;

impl WaitStrategy for GreenletWait {
    fn waker(&self) -> Box<dyn Wake> {
        let spare = self.spare.borrow_mut().take();
        match spare {
            Some(w) => {
                // Sharing a reference runs no Python.
                let wake = GreenWake(Arc::clone(&w));
                *self.current.borrow_mut() = Some(w);
                Box::new(wake)
            }
            None => {
                *self.current.borrow_mut() = None;
                Box::new(NoWake)
            }
        }
    }

    fn wait(
        &self,
        py: Python<'_>,
        waiter: &Arc<Waiter<PyConn>>,
        deadline: Instant,
    ) -> Option<Grant<PyConn>> {
        let wake = self.current.borrow().clone();
        let got = outside_section(|| loop {
            if let Some(g) = waiter.try_take() {
                return Some(g);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let seconds = (deadline - now).as_secs_f64().min(3600.0);
            let waited = match &wake {
                Some(w) => w
                    .call_method1(py, "wait", (seconds,))
                    .and_then(|_| w.call_method0(py, "clear"))
                    .map(|_| ()),
                None => helper(py, "sleep")
                    .and_then(|s| s.call1((seconds.min(POLL),)))
                    .map(|_| ()),
            };
            if let Err(e) = waited {
                // A greenlet killed while waiting (GreenletExit, a gevent.Timeout of the
                // caller's): give up the wait; the caller cancels the waiter, then raises.
                *self.interrupted.borrow_mut() = Some(e);
                return None;
            }
        });
        if let Err(e) = self.make_spare(py) {
            e.write_unraisable(py, None);
        }
        got
    }

    fn interrupted(&self) -> Option<PyErr> {
        self.interrupted.borrow_mut().take()
    }
}
