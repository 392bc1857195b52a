//! Checkout and return. `getconn` is a chain of small steps: the engine decides under its
//! lock with no I/O, then each step acts on its answer without the lock, until the answer
//! is a connection for the caller.

use crate::errors::{acquire_error, PoolClosed};
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
    /// The pool's key in this thread's turns.
    key: usize,
    /// This thread's turn at the pool when the call began.
    turn: Option<Instant>,
    /// When the request started, once it has had to queue (for the acquire-wait histogram).
    queued_at: Option<Instant>,
}

impl<'w> Request<'w> {
    fn new(inner: &Inner, timeout: Duration, how: &'w dyn WaitStrategy) -> Self {
        let start = Instant::now();
        let key = turn_key(inner);
        Request {
            how,
            start,
            timeout,
            deadline: start + timeout,
            key,
            turn: Some(thread_turn(key, start, false)),
            queued_at: None,
        }
    }

    /// Served: a request that had to queue starts a new turn for this thread.
    fn served(&self) {
        if self.queued_at.is_some() {
            thread_turn(self.key, Instant::now(), true);
        }
    }
}

/// A pool's key in the thread's turns: the address of its shared state.
fn turn_key(inner: &Inner) -> usize {
    inner as *const Inner as usize
}

impl Inner {
    /// Takes a connection for the caller, waiting up to `timeout` (default: the pool's)
    /// in the way `how` says.
    pub(crate) fn getconn(
        self: &Arc<Self>,
        py: Python<'_>,
        timeout: Option<Duration>,
        how: &dyn WaitStrategy,
    ) -> PyResult<Py<PyAny>> {
        let mut req = Request::new(self, timeout.unwrap_or(self.timeout), how);
        let mut answer = self.ask(&req, req.start)?;
        loop {
            let step = match answer {
                Checkout::Ready(conn, check) => self.use_checked(py, &req, conn, check)?,
                Checkout::Retire(retired) => {
                    // Expired while idle: close it and ask again, in the same turn.
                    self.retire(py, retired);
                    Step::Continue(self.ask(&req, Instant::now())?)
                }
                Checkout::Open(permit) => {
                    req.served();
                    Step::Break(self.open_for_caller(py, permit, req.queued_at)?)
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
    /// replaced in the same engine step, so the caller keeps its place in line.
    fn use_checked(
        &self,
        py: Python<'_>,
        req: &Request<'_>,
        conn: Pooled<PyConn>,
        check: Check,
    ) -> PyResult<Step> {
        let conn = InUseGuard::new(&self.engine, conn);
        if self.verify(py, conn.get(), check) {
            req.served();
            return Ok(Step::Break(self.lend(conn.take(), req.queued_at)));
        }
        let (retired, next) =
            self.engine
                .replace(conn.take(), CloseReason::CheckFailed, Instant::now());
        self.retire(py, retired);
        Ok(Step::Continue(next.map_err(acquire_error)?))
    }

    /// Opens a connection for the caller with `permit`; `queued_at` as for `lend` (the
    /// connect time itself is not acquire wait: it has its own histogram).
    fn open_for_caller(
        self: &Arc<Self>,
        py: Python<'_>,
        permit: OpenPermit,
        queued_at: Option<Instant>,
    ) -> PyResult<Py<PyAny>> {
        let slot = PermitGuard::new(&self.engine, permit);
        let (conn, took) = self.open(py)?;
        let conn = attach_leak_watch(self, py, conn)?;
        match self.engine.opened(slot.spend(), conn, Instant::now(), took) {
            Ok(pooled) => Ok(self.lend(pooled, queued_at)),
            Err(retired) => {
                self.retire(py, retired);
                Err(PoolClosed::new_err(format!(
                    "pool '{}' is closed",
                    self.engine.name()
                )))
            }
        }
    }

    /// Waits for the engine to grant something, in the caller's way of waiting.
    fn wait(
        &self,
        py: Python<'_>,
        req: &mut Request<'_>,
        waiter: &Arc<Waiter<PyConn>>,
    ) -> PyResult<Checkout<PyConn>> {
        req.queued_at = Some(req.start);
        let grant = match req.how.wait(py, waiter, req.deadline) {
            Some(grant) => grant,
            None => self.give_up(waiter, req.timeout)?,
        };
        self.granted(waiter, grant)
    }

    /// Turns a grant into the next answer to act on.
    fn granted(
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
    fn give_up(&self, waiter: &Arc<Waiter<PyConn>>, timeout: Duration) -> PyResult<Grant<PyConn>> {
        self.engine.cancel(waiter).ok_or_else(|| {
            self.engine.stats().timeouts.fetch_add(1, Relaxed);
            acquire_error(self.engine.timeout_error(timeout))
        })
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
        let healthy = self.clean(py, &conn, held.get().payload.status_source.as_ref());
        let pooled = Held::rejoin(held.take(), conn.unbind());
        let turn = turn_of(turn_key(self));
        if let Some(retired) = self
            .engine
            .release_in_turn(pooled, healthy, Instant::now(), turn)
        {
            self.retire(py, retired);
        }
        Ok(())
    }
}
