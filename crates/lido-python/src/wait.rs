//! How a checkout waits for the engine's grant: the seam between the engine's decisions
//! and the caller's concurrency model.
//!
//! The engine queues a `Waiter`, later fills in its `Grant` and calls the `Wake` it was
//! given; it never knows how the caller waits. [`ParkThread`] parks the OS thread without
//! the GIL. Under gevent, [`GreenletWait`](crate::green::GreenletWait) hands the engine a
//! `Wake` that wakes the waiting greenlet through the hub, and waits by switching to the
//! hub. Under asyncio, [`AsyncWake`](crate::aio::AsyncWake) resolves the future a task
//! awaits; since that wait is an await, a coroutine drives getconn's steps
//! ([`AsyncCheckout`](crate::aio_checkout::AsyncCheckout)) in place of its loop.

use crate::exit::outside_section;
use crate::leases::PyConn;
use lido_core::{Grant, ThreadWake, Waiter, Wake};
use pyo3::prelude::*;
use std::sync::Arc;
use std::time::Instant;

/// A way of waiting for a grant.
pub(crate) trait WaitStrategy {
    /// What the engine calls, with no lock held, once the grant is in the waiter. Asked
    /// for only when a checkout has to queue.
    fn waker(&self) -> Box<dyn Wake>;

    /// Waits until `waiter` holds its grant or `deadline` passes. `None`: the deadline
    /// passed; the caller then cancels the waiter with the engine, which settles a grant
    /// given at the last moment.
    fn wait(
        &self,
        py: Python<'_>,
        waiter: &Arc<Waiter<PyConn>>,
        deadline: Instant,
    ) -> Option<Grant<PyConn>>;

    /// Asked when `wait` returned `None` before the deadline: an error that ended the wait
    /// (a greenlet killed while waiting), which the checkout raises after leaving the queue.
    fn interrupted(&self) -> Option<PyErr> {
        None
    }
}

/// Parks the calling OS thread, without the GIL, until the grant or the deadline.
pub(crate) struct ParkThread;

impl WaitStrategy for ParkThread {
    fn waker(&self) -> Box<dyn Wake> {
        Box::new(ThreadWake::current())
    }

    fn wait(
        &self,
        py: Python<'_>,
        waiter: &Arc<Waiter<PyConn>>,
        deadline: Instant,
    ) -> Option<Grant<PyConn>> {
        let w = Arc::clone(waiter);
        py.detach(move || outside_section(|| w.park_until(deadline)))
    }
}
