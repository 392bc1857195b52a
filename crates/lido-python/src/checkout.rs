//! Checkout and return. `getconn` is a chain of small steps: the engine decides under its
//! lock with no I/O, then each step acts on its answer without the lock, until the answer
//! is a connection for the caller.

use crate::errors::{acquire_error, PoolClosed};
use crate::exit::check_not_exiting;
use crate::green::current_greenlet;
use crate::inner::Inner;
use crate::leases::{attach_leak_watch, Held, PyConn};
use crate::permit::{InUseGuard, PermitGuard};
use crate::turns::{thread_turn, turn_of};
use crate::wait::WaitStrategy;
use lido_core::{Check, Checkout, CloseReason, Grant, OpenPermit, Pooled, Waiter};
use pyo3::prelude::*;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The connection for the caller, or the engine's next answer to act on.
type Step = ControlFlow<Py<PyAny>, Checkout<PyConn>>;

/// What the steps of one `getconn` call share.
struct Request<'w> {
    /// How this caller waits when it has to queue.
    how: &'w dyn WaitStrategy,
    start: Instant,
    timeout: Duration,
    deadline: Instant,
    /// The pool's key in this thread's turns, and the greenlet's under gevent (else 0).
    key: (usize, usize),
    /// This thread's turn at the pool when the call began.
    turn: Option<Instant>,
    /// When the request started, once it has had to queue (for the acquire-wait histogram).
    queued_at: Option<Instant>,
    /// A connect made for this request failed (then a timeout carries the last failure).
    connect_failed: bool,
}

impl<'w> Request<'w> {
    fn new(inner: &Inner, timeout: Duration, how: &'w dyn WaitStrategy, owner: usize) -> Self {
        let start = Instant::now();
        let key = (turn_key(inner), owner);
        Request {
            how,
            start,
            timeout,
            deadline: start + timeout,
            key,
            turn: Some(thread_turn(key, start, false)),
            queued_at: None,
            connect_failed: false,
        }
    }

    /// Served: a request that had to queue starts a new turn for this thread.
    fn served(&self) {
        if self.queued_at.is_some() {
            thread_turn(self.key, Instant::now(), true);
        }
    }
}

/// A pool's key in the thread's turns.
fn turn_key(inner: &Inner) -> usize {
    inner.turn_id
}

impl Inner {
    /// Takes a connection for the caller, waiting up to `timeout` (default: the pool's)
    /// in the way `how` says; `owner` tells the thread's greenlets apart (0 for threads).
    #[inline(always)] // one copy per caller: plain threads' stays as it was
    pub(crate) fn getconn(
        self: &Arc<Self>,
        py: Python<'_>,
        timeout: Option<Duration>,
        how: &dyn WaitStrategy,
        owner: usize,
    ) -> PyResult<Py<PyAny>> {
        let mut req = Request::new(self, timeout.unwrap_or(self.timeout), how, owner);
        let mut answer = self.ask(&req, req.start)?;
        loop {
            check_not_exiting(self.engine.name())?;
            let step = match answer {
                Checkout::Ready(conn, check) => self.use_checked(py, &mut req, conn, check)?,
                Checkout::Retire(retired) => {
                    // Expired while idle: close it and ask again, in the same turn.
                    self.retire(py, retired);
                    Step::Continue(self.ask(&req, Instant::now())?)
                }
                Checkout::Open(permit) => {
                    req.served();
                    self.open_for_caller(py, &mut req, permit)?
                }
                Checkout::Wait(waiter) => Step::Continue(self.wait(py, &mut req, &waiter)?),
            };
            answer = match step {
                Step::Break(conn) => return Ok(conn),
                Step::Continue(next) => next,
            };
        }
    }

    /// Asks the engine, which decides under its lock and does no I/O.
    fn ask(&self, req: &Request<'_>, now: Instant) -> PyResult<Checkout<PyConn>> {
        self.engine
            .checkout_in_turn(now, req.turn, || req.how.waker())
            .map_err(acquire_error)
    }

    /// Checks the connection the engine chose, outside its lock. One that fails is
    /// replaced in the same engine step, so the caller keeps its place in line. A round
    /// trip ends by the deadline; with no time left for one, the connection goes back
    /// unchecked and the checkout times out.
    #[inline(always)] // the hot path: as it was before getconn had two callers
    fn use_checked(
        &self,
        py: Python<'_>,
        req: &mut Request<'_>,
        conn: Pooled<PyConn>,
        check: Check,
    ) -> PyResult<Step> {
        let conn = InUseGuard::new(&self.engine, conn);
        if check.round_trip && Instant::now() >= req.deadline {
            if let Some(retired) = self.engine.release(conn.take(), true, Instant::now()) {
                self.retire(py, retired);
            }
            return Err(self.timed_out(py, req));
        }
        if self.verify(py, conn.get(), check, req.deadline) {
            req.served();
            return Ok(Step::Break(self.lend(
                py,
                conn.take(),
                req.queued_at,
                self.mode.within(),
            )));
        }
        let (retired, next) = self.engine.replace(
            conn.take(),
            CloseReason::CheckFailed,
            Instant::now(),
            || req.how.waker(),
        );
        self.retire(py, retired);
        Ok(Step::Continue(next.map_err(acquire_error)?))
    }

    /// Opens a connection for the caller with `permit`, giving the driver the time left
    /// (the connect time itself is not acquire wait: it has its own histogram). A failure
    /// the driver calls transient is retried within the timeout, on the pool's back-off;
    /// any other is raised at once.
    fn open_for_caller(
        self: &Arc<Self>,
        py: Python<'_>,
        req: &mut Request<'_>,
        permit: OpenPermit,
    ) -> PyResult<Step> {
        let slot = PermitGuard::new(&self.engine, permit);
        let time_left = req.deadline.saturating_duration_since(Instant::now());
        let (conn, took) = match self.open(py, time_left) {
            Ok(opened) => opened,
            Err(e) => {
                if !self.connect_failed(py, slot, &e) {
                    return Err(e);
                }
                req.connect_failed = true;
                let now = Instant::now();
                if now >= req.deadline {
                    return Err(self.timed_out(py, req));
                }
                return Ok(Step::Continue(self.ask(req, now)?));
            }
        };
        let conn = attach_leak_watch(self, py, conn)?;
        match self.engine.opened(slot.spend(), conn, Instant::now(), took) {
            Ok(pooled) => Ok(Step::Break(self.lend(
                py,
                pooled,
                req.queued_at,
                self.mode.within(),
            ))),
            Err(retired) => {
                self.retire(py, retired);
                Err(PoolClosed::new_err(format!(
                    "pool '{}' is closed",
                    self.engine.name()
                )))
            }
        }
    }

    /// Waits for the engine to grant something, in the caller's way of waiting. While the
    /// server is down, the first in line wakes when the next probe is due and asks again.
    fn wait(
        &self,
        py: Python<'_>,
        req: &mut Request<'_>,
        waiter: &Arc<Waiter<PyConn>>,
    ) -> PyResult<Checkout<PyConn>> {
        req.queued_at = Some(req.start);
        loop {
            let until = self.engine.wake_time(waiter, req.deadline);
            if let Some(grant) = req.how.wait(py, waiter, until) {
                return self.granted(waiter, grant);
            }
            if let Some(e) = req.how.interrupted() {
                self.abandon(py, waiter);
                return Err(e);
            }
            let now = Instant::now();
            if now >= req.deadline {
                let grant = self.give_up(py, waiter, req)?;
                return self.granted(waiter, grant);
            }
            match self.engine.retry(waiter, now).map_err(acquire_error)? {
                Checkout::Wait(_) => {}
                answer => return Ok(answer),
            }
        }
    }

    /// Turns a grant into the next answer to act on.
    pub(crate) fn granted(
        &self,
        waiter: &Arc<Waiter<PyConn>>,
        grant: Grant<PyConn>,
    ) -> PyResult<Checkout<PyConn>> {
        match grant {
            Grant::Conn(conn, check) => Ok(Checkout::Ready(conn, check)),
            Grant::Open(permit) => Ok(Checkout::Open(permit)),
            // A connection went idle: ask again, keeping the place in the queue.
            Grant::Retry => self
                .engine
                .retry(waiter, Instant::now())
                .map_err(acquire_error),
            Grant::Closed => Err(PoolClosed::new_err(format!(
                "pool '{}' was closed while waiting",
                self.engine.name()
            ))),
        }
    }

    /// The wait ran out: leave the queue, unless a grant came at the last moment.
    fn give_up(
        &self,
        py: Python<'_>,
        waiter: &Arc<Waiter<PyConn>>,
        req: &Request<'_>,
    ) -> PyResult<Grant<PyConn>> {
        self.engine
            .cancel(waiter)
            .ok_or_else(|| self.timed_out(py, req))
    }

    /// A wait ended by an error: leave the queue, and give back a grant that came at the
    /// last moment.
    pub(crate) fn abandon(&self, py: Python<'_>, waiter: &Arc<Waiter<PyConn>>) {
        match self.engine.cancel(waiter) {
            Some(Grant::Conn(conn, _)) => {
                if let Some(retired) = self.engine.release(conn, true, Instant::now()) {
                    self.retire(py, retired);
                }
            }
            Some(Grant::Open(permit)) => self.engine.open_unused(permit),
            Some(Grant::Retry | Grant::Closed) | None => {}
        }
    }

    /// The `PoolTimeout` for `req`; while the server is down, or if a connect failed for
    /// the request, it says so and carries the last connect failure as its `__cause__`.
    fn timed_out(&self, py: Python<'_>, req: &Request<'_>) -> PyErr {
        self.timeout_error(py, req.timeout, req.connect_failed)
    }

    /// The `PoolTimeout` of a checkout that waited `timeout`; `connect_failed`: a connect
    /// made for it failed.
    pub(crate) fn timeout_error(
        &self,
        py: Python<'_>,
        timeout: Duration,
        connect_failed: bool,
    ) -> PyErr {
        self.engine.stats().timeouts.fetch_add(1, Relaxed);
        let err = acquire_error(self.engine.timeout_error(timeout));
        if let Some(cause) = self.connect_error_cause(py, connect_failed) {
            err.set_cause(py, Some(cause));
        }
        err
    }

    /// Takes a connection back: rolled back and reset here, then kept, handed on or retired
    /// by the engine.
    pub(crate) fn putconn(&self, py: Python<'_>, conn: Bound<'_, PyAny>) -> PyResult<()> {
        let Some(held) = self.end_lease(&conn)? else {
            return Ok(()); // the parent's, after a fork: left alone
        };
        if held.meta.long_hold_reported {
            self.long_hold_ended(py, &held);
        }
        let held = InUseGuard::new(&self.engine, held);
        // A connection whose idle transaction the pool ended (idle.rs) is not reused.
        let healthy = !held.get().payload.lent.ended()
            && self.clean(py, &conn, held.get().payload.status_source.as_ref());
        let pooled = Held::rejoin(held.take(), conn.unbind());
        let owner = if self.mode.known_green() {
            current_greenlet(py)
        } else {
            0
        };
        let turn = turn_of((turn_key(self), owner));
        if let Some(retired) = self
            .engine
            .release_in_turn(pooled, healthy, Instant::now(), turn)
        {
            self.retire(py, retired);
        }
        Ok(())
    }
}
