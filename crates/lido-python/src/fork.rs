//! fork(): the child starts with an empty pool and leaves the parent's connections alone.
//!
//! Each pool's locks are held across the `fork()` system call, so the child never inherits
//! one mid-update. They are taken and released by `pthread_atfork` handlers, inside
//! `os.fork()`'s own call to `fork()`, while the forking thread holds the GIL and runs no
//! Python: another thread can neither take the GIL and then block on a held lock (which
//! deadlocked when the locks were held from Python's `register_at_fork` hooks, between
//! which other threads run Python) nor hold one of these locks while waiting for the GIL
//! (the pool never does). What needs Python in the child (the parent's connections in use)
//! is done by `PoolCore._after_fork_in_child`, from `os.register_at_fork`.
//!
//! In the parent, `PoolCore._after_fork_in_parent` (from `os.register_at_fork`, since the
//! closes are driver calls) keeps no idle connections: a process that forks is taken for a
//! master that serves nothing itself (gunicorn `--preload`; see `Engine::keep_no_idle`).

use crate::exit;
use crate::inner::Inner;
use crate::leases::Held;
use crate::permit::Leftovers;
use lido_core::{release_in_child, Pooled};
use parking_lot::Mutex;
use pyo3::prelude::*;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Once, Weak};

/// Every live pool.
static POOLS: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
/// The pools whose locks the fork in progress holds (from the prepare handler to the
/// parent's or child's).
static FORKING: Mutex<Vec<Arc<Inner>>> = Mutex::new(Vec::new());

/// Lists a new pool for the fork handlers, installed with the first pool.
pub(crate) fn register(inner: &Arc<Inner>) {
    static HANDLERS: Once = Once::new();
    HANDLERS.call_once(|| {
        // SAFETY: the handlers take and release locks of statics and of live pools only.
        unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    });
    let mut pools = POOLS.lock();
    pools.retain(|p| p.strong_count() > 0);
    pools.push(Arc::downgrade(inner));
}

extern "C" fn prepare() {
    let pools: Vec<Arc<Inner>> = POOLS.lock().iter().filter_map(Weak::upgrade).collect();
    for p in &pools {
        p.before_fork();
    }
    *FORKING.lock() = pools;
    exit::before_fork();
}

extern "C" fn in_parent() {
    exit::after_fork_in_parent();
    for p in std::mem::take(&mut *FORKING.lock()) {
        p.after_fork_in_parent();
    }
}

extern "C" fn in_child() {
    exit::after_fork_in_child();
    for p in std::mem::take(&mut *FORKING.lock()) {
        p.after_fork_in_child();
    }
}

impl Inner {
    /// Holds the locks so the child never inherits one mid-update.
    fn before_fork(&self) {
        self.forking.store(true, SeqCst);
        std::mem::forget(self.leases.lock());
        std::mem::forget(self.foreign.lock());
        self.engine.before_fork();
    }

    fn after_fork_in_parent(&self) {
        self.engine.after_fork_in_parent();
        // SAFETY: both locked in `before_fork` by this thread, guards forgotten.
        unsafe {
            self.foreign.force_unlock();
            self.leases.force_unlock();
        }
        self.forking.store(false, SeqCst);
    }

    /// In the child: start empty, and keep the parent's idle connections alive and
    /// untouched, so that no close (and no libpq Terminate) ends the parent's sessions.
    fn after_fork_in_child(&self) {
        let idle = self.engine.after_fork_in_child();
        // A gevent worker patches after the fork (gunicorn -k gevent): ask again.
        self.mode.forget();
        // SAFETY: in the child, both locked in `before_fork` by this thread, guards forgotten.
        unsafe {
            release_in_child(&self.foreign);
            release_in_child(&self.leases);
        }
        self.forking.store(false, SeqCst);
        for conn in idle {
            self.keep_foreign(conn.payload.obj, conn.payload.watch);
        }
    }

    /// In the parent, from Python: closes the idle connections; `min_size` is 0 from now on,
    /// and connections being opened to be kept idle are closed when they arrive.
    pub(crate) fn keep_no_idle(&self, py: Python<'_>) {
        for r in Leftovers::retired(&self.engine, self.engine.keep_no_idle()) {
            self.retire(py, r);
        }
    }

    /// In the child, from Python: the connections the parent had in use are kept alive and
    /// untouched too (finding them calls their weak references).
    pub(crate) fn keep_parents_leases(&self, py: Python<'_>) {
        let held: Vec<Pooled<Held>> = self.leases.lock().drain().map(|(_, h)| h).collect();
        for h in held {
            if let Ok(obj) = h.payload.watch.call0(py) {
                if !obj.is_none(py) {
                    self.keep_foreign(obj, h.payload.watch);
                }
            }
        }
    }
}
