//! gevent: how a greenlet waits for a grant, and how a pool learns that it must.
//!
//! Under `gevent.monkey.patch_all()` every "thread" is a greenlet on one OS thread: parking
//! that thread ([`ParkThread`](crate::wait::ParkThread)) would stop them all. A pool asks
//! `django_lido._green.mode()` once, at its first checkout (one atomic load afterwards);
//! under gevent, checkouts wait with [`GreenletWait`] and turns are kept per greenlet.

use crate::exit::{outside_section, unraisable};
use crate::leases::PyConn;
use crate::leases::Within;
use crate::wait::WaitStrategy;
use lido_core::{Grant, Waiter, Wake};
use parking_lot::Mutex;
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

    /// What a thread's checkout runs within: a greenlet under gevent.
    pub(crate) fn within(&self) -> Within {
        if self.known_green() {
            Within::Greenlet
        } else {
            Within::Thread
        }
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

/// The running greenlet's key for its turns (0 if it cannot be told): its address, which
/// stays its own while it runs.
pub(crate) fn current_greenlet(py: Python<'_>) -> usize {
    running_greenlet(py).map_or(0, |g| g.as_ptr() as usize)
}

/// The running greenlet, if greenlet can tell.
pub(crate) fn running_greenlet(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    static GETCURRENT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    GETCURRENT
        .get_or_try_init(py, || {
            PyModule::import(py, "greenlet")?
                .getattr("getcurrent")
                .map(Bound::unbind)
        })
        .and_then(|f| f.bind(py).call0())
        .ok()
}

/// Where a queued greenlet's `_green.GreenWake` goes once its wait has made it. The engine
/// asks for a waker under its lock, where no Python may run (another OS thread holding the
/// GIL may be waiting for that lock), and most checkouts never wait: so the `GreenWake` is made
/// by the wait, outside the lock. A wake that comes before finds the slot empty and need
/// not send: the grant is already in the waiter, which the wait looks at after filling it.
#[derive(Default)]
struct Slot(Mutex<Option<Py<PyAny>>>);

/// Wakes a waiting greenlet; `GreenWake.send()` works from any OS thread.
struct GreenWake(Arc<Slot>);

impl Wake for GreenWake {
    fn wake(&self) {
        Python::attach(|py| {
            let wake = self.0 .0.lock().as_ref().map(|w| w.clone_ref(py));
            if let Some(w) = wake {
                if let Err(e) = w.call_method0(py, "send") {
                    unraisable(py, e);
                }
            }
        });
    }
}

/// Waits by switching to the gevent hub until the grant or the deadline: the other
/// greenlets run meanwhile. One per `getconn` call; [`GreenletWait::finish`] drops the
/// `GreenWake`s its waits made.
pub(crate) struct GreenletWait {
    /// The slot of each waiter this call queued; the last is the current one.
    slots: RefCell<Vec<Arc<Slot>>>,
    /// What interrupted a wait (a kill, a caller's `gevent.Timeout`), to raise.
    interrupted: RefCell<Option<PyErr>>,
}

impl GreenletWait {
    pub(crate) fn new() -> Self {
        GreenletWait {
            slots: RefCell::new(Vec::new()),
            interrupted: RefCell::new(None),
        }
    }

    /// Drops the `GreenWake`s this call's waits made: a late wake finds its slot empty.
    pub(crate) fn finish(&self, _py: Python<'_>) {
        for slot in self.slots.borrow_mut().drain(..) {
            drop(slot.0.lock().take());
        }
    }

    /// The current waiter's `GreenWake`, made and put in its slot on the first wait.
    fn green_wake(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let slots = self.slots.borrow();
        let slot = slots.last().expect("a waiter was queued");
        if let Some(w) = slot.0.lock().as_ref() {
            return Ok(w.clone_ref(py));
        }
        let w = helper(py, "GreenWake")?.call0()?.unbind();
        *slot.0.lock() = Some(w.clone_ref(py));
        Ok(w)
    }
}

impl WaitStrategy for GreenletWait {
    fn waker(&self) -> Box<dyn Wake> {
        let slot = Arc::new(Slot::default());
        self.slots.borrow_mut().push(Arc::clone(&slot));
        Box::new(GreenWake(slot))
    }

    fn wait(
        &self,
        py: Python<'_>,
        waiter: &Arc<Waiter<PyConn>>,
        deadline: Instant,
    ) -> Option<Grant<PyConn>> {
        let wake = match self.green_wake(py) {
            Ok(w) => w,
            Err(e) => {
                *self.interrupted.borrow_mut() = Some(e);
                return None;
            }
        };
        outside_section(|| loop {
            // After the `GreenWake` is in its slot: a grant given before is seen here, one
            // given after sends.
            if let Some(g) = waiter.try_take() {
                return Some(g);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let seconds = (deadline - now).as_secs_f64().min(3600.0);
            if let Err(e) = wake.call_method1(py, "wait", (seconds,)) {
                // A greenlet killed while waiting (GreenletExit, a gevent.Timeout of the
                // caller's): give up the wait; the caller cancels the waiter, then raises.
                *self.interrupted.borrow_mut() = Some(e);
                return None;
            }
        })
    }

    fn interrupted(&self) -> Option<PyErr> {
        self.interrupted.borrow_mut().take()
    }
}
