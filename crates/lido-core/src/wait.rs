//! Waiting for a connection, with the way of waiting left to the caller.
//!
//! The engine queues a [`Waiter`] and later fills in its [`Grant`] under its own lock, then
//! calls [`Wake::wake`] after releasing it. Threads park ([`ThreadWake`]); a binding for
//! greenlets or asyncio supplies its own `Wake` and never changes the engine's decisions.

use crate::conn::{Check, OpenPermit, Pooled};
use parking_lot::Mutex;
use std::sync::atomic::AtomicBool;
use std::thread::{self, Thread};
use std::time::Instant;

/// How a waiter is told that its grant is ready. Called without any engine lock held.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// Wakes a parked thread.
pub struct ThreadWake(Thread);

impl ThreadWake {
    /// A waker for the calling thread.
    pub fn current() -> Self {
        ThreadWake(thread::current())
    }
}

impl Wake for ThreadWake {
    fn wake(&self) {
        self.0.unpark();
    }
}

/// What a waiter is given.
#[derive(Debug)]
pub enum Grant<C> {
    /// A connection handed over directly by the one who returned it.
    Conn(Pooled<C>, Check),
    /// A free slot: the waiter opens a connection itself with this permit.
    Open(OpenPermit),
    /// The pool closed while waiting.
    Closed,
    /// A connection went idle: ask again with [`crate::Engine::retry`]. The waiter keeps
    /// its place in the queue until it is served.
    Retry,
}

/// One queued checkout.
pub struct Waiter<C> {
    grant: Mutex<Option<Grant<C>>>,
    wake: Box<dyn Wake>,
    /// Holds an unanswered [`Grant::Retry`]; read and written under the engine's lock only.
    pub(crate) retry_sent: AtomicBool,
}

impl<C> Waiter<C> {
    pub(crate) fn new(wake: Box<dyn Wake>) -> Self {
        Waiter {
            grant: Mutex::new(None),
            wake,
            retry_sent: AtomicBool::new(false),
        }
    }

    /// Stores the grant; the engine calls [`Waiter::notify`] once its lock is released.
    pub(crate) fn give(&self, grant: Grant<C>) {
        *self.grant.lock() = Some(grant);
    }

    pub(crate) fn notify(&self) {
        self.wake.wake();
    }

    /// Takes the grant if it has arrived.
    pub fn try_take(&self) -> Option<Grant<C>> {
        self.grant.lock().take()
    }

    /// Parks the calling thread until the grant arrives or `deadline` passes. Only for
    /// waiters made with [`ThreadWake::current`] on this thread. `None` means the deadline
    /// passed: the caller must then call [`crate::Engine::cancel`], which settles the race
    /// with a grant given at the last moment.
    pub fn park_until(&self, deadline: Instant) -> Option<Grant<C>> {
        loop {
            if let Some(g) = self.try_take() {
                return Some(g);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            thread::park_timeout(deadline - now);
        }
    }
}
