//! os.fork(): the child starts with an empty pool and leaves the parent's connections alone.

use crate::inner::Inner;
use crate::leases::Held;
use lido_core::Pooled;
use pyo3::prelude::*;
use std::sync::atomic::Ordering::SeqCst;

impl Inner {
    /// Before os.fork(): hold the locks so the child never inherits one mid-update.
    pub(crate) fn before_fork(&self) {
        self.forking.store(true, SeqCst);
        std::mem::forget(self.leases.lock());
        std::mem::forget(self.foreign.lock());
        self.engine.before_fork();
    }

    pub(crate) fn after_fork_in_parent(&self) {
        self.engine.after_fork_in_parent();
        // SAFETY: both locked in `before_fork` by this thread, guards forgotten.
        unsafe {
            self.foreign.force_unlock();
            self.leases.force_unlock();
        }
        self.forking.store(false, SeqCst);
    }

    /// In the child: start empty, and keep every connection of the parent alive and
    /// untouched, idle or in use, so that no close (and no libpq Terminate) ends the
    /// parent's sessions.
    pub(crate) fn after_fork_in_child(&self, py: Python<'_>) {
        let idle = self.engine.after_fork_in_child();
        // A gevent worker patches after the fork (gunicorn -k gevent): ask again.
        self.mode.forget();
        // SAFETY: both locked in `before_fork` by this thread, guards forgotten.
        unsafe {
            self.foreign.force_unlock();
            self.leases.force_unlock();
        }
        self.forking.store(false, SeqCst);
        for conn in idle {
            self.keep_foreign(conn.payload.obj, conn.payload.watch);
        }
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
