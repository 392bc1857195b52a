//! `AsyncCheckout`: one async `getconn`, as steps between the awaited calls.
//!
//! The same decisions as checkout.rs, made resumable: each method acts on the engine's
//! answer until the next step needs an `await`, and returns that step as `(code, arg)`
//! ([`DONE`], [`CHECK`], [`CONNECT`], [`WAIT`], [`CLOSE`]). Whatever the checkout holds
//! between steps (a connection being checked, an open permit, a place in the queue) is in
//! `holding`; [`AsyncCheckout::abandon`] (the coroutine cancelled or failed) and `Drop`
//! give it back, so a cancelled task never loses or leaks a slot.

use crate::aio::{entry, AsyncWake, Slot};
use crate::aio_handles::{AsyncClose, AsyncPermit};
use crate::errors::{acquire_error, PoolClosed};
use crate::exit::{check_not_exiting, Active};
use crate::inner::Inner;
use crate::leases::{attach_leak_watch, PyConn, Within};
use crate::options::timeout_arg;
use crate::permit::PermitGuard;
use lido_core::{probe_socket, Checkout, CloseReason, OpenPermit, Pooled, Retired, Waiter, Wake};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `arg` is the connection: the checkout is over.
const DONE: u8 = 0;
/// `arg` is `(conn, seconds left)`: await the round-trip check, then call `checked`.
const CHECK: u8 = 1;
/// `arg` is the seconds left: await a connect, then call `connected` or `connect_error`.
const CONNECT: u8 = 2;
/// `arg` is `(future, seconds)`: await the future for at most that long, then `woke`.
const WAIT: u8 = 3;
/// `arg` is an `AsyncClose`: await its close, then call `resume`.
const CLOSE: u8 = 4;

/// What a checkout holds while Python awaits a step.
enum Holding {
    Nothing,
    /// A connection in use, being checked.
    Checking(Pooled<PyConn>),
    /// A permit, being spent on a connect.
    Opening(OpenPermit),
    /// A place in the queue, and the slot its future goes in.
    Waiting(Arc<Waiter<PyConn>>, Arc<Slot>),
}

/// One async `getconn()`. Made by `_aio_checkout`, driven by `django_lido.aio`.
#[pyclass(module = "django_lido._lido")]
pub struct AsyncCheckout {
    inner: Arc<Inner>,
    /// The pool's event loop, where a queued checkout's future is made.
    event_loop: Py<PyAny>,
    start: Instant,
    timeout: Duration,
    deadline: Instant,
    queued: bool,
    connect_failed: bool,
    holding: Holding,
    /// The engine's next answer, kept while a retired connection is being closed.
    next: Option<Checkout<PyConn>>,
    /// The slot of the waiter last queued (the engine made it through `waker`).
    slot: Option<Arc<Slot>>,
    /// The step to await first, when `begin` could not finish at once.
    pending: Option<Py<PyTuple>>,
}

type Step = PyResult<(u8, Py<PyAny>)>;

impl AsyncCheckout {
    pub(crate) fn begin(
        py: Python<'_>,
        inner: &Arc<Inner>,
        timeout: Option<&Bound<'_, PyAny>>,
        event_loop: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let timeout = match timeout.filter(|t| !t.is_none()) {
            Some(t) => timeout_arg(t)?,
            None => inner.timeout,
        };
        let start = Instant::now();
        let mut co = AsyncCheckout {
            inner: Arc::clone(inner),
            event_loop: event_loop.clone().unbind(),
            start,
            timeout,
            deadline: start + timeout,
            queued: false,
            connect_failed: false,
            holding: Holding::Nothing,
            next: None,
            slot: None,
            pending: None,
        };
        let answer = co.ask(start)?;
        let (code, arg) = co.advance(py, answer)?;
        if code == DONE {
            return Ok(arg);
        }
        co.pending =
            Some(PyTuple::new(py, [code.into_pyobject(py)?.into_any().unbind(), arg])?.unbind());
        Ok(Py::new(py, co)?.into_any())
    }

    /// Asks the engine, strictly in order (an async task has no turn of its own).
    fn ask(&mut self, now: Instant) -> PyResult<Checkout<PyConn>> {
        let mut made = None;
        let answer = self
            .inner
            .engine
            .checkout(now, || waker(&mut made))
            .map_err(acquire_error)?;
        if made.is_some() {
            self.slot = made;
        }
        Ok(answer)
    }

    /// Acts on the engine's answers until one needs an await.
    fn advance(&mut self, py: Python<'_>, mut answer: Checkout<PyConn>) -> Step {
        let inner = Arc::clone(&self.inner);
        loop {
            check_not_exiting(inner.engine.name())?;
            answer = match answer {
                Checkout::Ready(conn, check) => {
                    if check.probe
                        && inner.probe
                        && conn.payload.fd >= 0
                        && !probe_socket(conn.payload.fd).reusable()
                    {
                        match self.replace(py, conn)? {
                            Ok(next) => next,
                            Err(close) => return close,
                        }
                    } else if check.round_trip {
                        let left = self.deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            if let Some(r) = inner.engine.release(conn, true, Instant::now()) {
                                inner.retire(py, r);
                            }
                            return Err(self.timed_out(py));
                        }
                        let obj = conn.payload.obj.clone_ref(py);
                        self.holding = Holding::Checking(conn);
                        let arg = (obj, left.as_secs_f64()).into_pyobject(py)?;
                        return Ok((CHECK, arg.into_any().unbind()));
                    } else {
                        return Ok((DONE, self.lend(py, conn)));
                    }
                }
                Checkout::Retire(retired) => match self.ask(Instant::now()) {
                    Ok(next) => {
                        self.next = Some(next);
                        return self.close_first(py, retired);
                    }
                    Err(e) => {
                        inner.retire(py, retired);
                        return Err(e);
                    }
                },
                Checkout::Open(permit) => {
                    let left = self.deadline.saturating_duration_since(Instant::now());
                    self.holding = Holding::Opening(permit);
                    return Ok((
                        CONNECT,
                        left.as_secs_f64().into_pyobject(py)?.into_any().unbind(),
                    ));
                }
                Checkout::Wait(waiter) => {
                    self.queued = true;
                    let slot = Arc::clone(self.slot.as_ref().expect("a queued waiter has a slot"));
                    // Held from here: if making the future fails, the place is given up.
                    self.holding = Holding::Waiting(Arc::clone(&waiter), Arc::clone(&slot));
                    let until = inner.engine.wake_time(&waiter, self.deadline);
                    let event_loop = self.event_loop.bind(py);
                    let fut = event_loop.call_method0("create_future")?.unbind();
                    let threadsafe = event_loop.getattr("call_soon_threadsafe")?.unbind();
                    slot.arm(fut.clone_ref(py), threadsafe);
                    // After arming: a grant given before is seen here, one given after wakes.
                    let Some(grant) = waiter.try_take() else {
                        let secs = until
                            .saturating_duration_since(Instant::now())
                            .as_secs_f64();
                        let arg = (fut, secs).into_pyobject(py)?;
                        return Ok((WAIT, arg.into_any().unbind()));
                    };
                    slot.disarm();
                    self.holding = Holding::Nothing;
                    inner.granted(&waiter, grant)?
                }
            };
        }
    }

    /// A connection failed its check: the engine retires it and answers again in the same
    /// step, keeping this checkout's place. `Err` holds the CLOSE step for the retired one.
    fn replace(
        &mut self,
        py: Python<'_>,
        conn: Pooled<PyConn>,
    ) -> PyResult<Result<Checkout<PyConn>, Step>> {
        let mut made = None;
        let (retired, next) =
            self.inner
                .engine
                .replace(conn, CloseReason::CheckFailed, Instant::now(), || {
                    waker(&mut made)
                });
        if made.is_some() {
            self.slot = made;
        }
        match next.map_err(acquire_error) {
            Ok(next) => {
                self.next = Some(next);
                Ok(Err(self.close_first(py, retired)))
            }
            Err(e) => {
                self.inner.retire(py, retired);
                Err(e)
            }
        }
    }

    /// The CLOSE step for `retired`; the answer in `next` is acted on at `resume`.
    fn close_first(&mut self, py: Python<'_>, retired: Retired<PyConn>) -> Step {
        match AsyncClose::new(py, &self.inner, retired) {
            Some(close) => Ok((CLOSE, Py::new(py, close)?.into_any())),
            None => self.resume_next(py),
        }
    }

    fn resume_next(&mut self, py: Python<'_>) -> Step {
        let next = self
            .next
            .take()
            .expect("a CLOSE step keeps the next answer");
        self.advance(py, next)
    }

    fn lend(&mut self, py: Python<'_>, conn: Pooled<PyConn>) -> Py<PyAny> {
        let queued_at = self.queued.then_some(self.start);
        self.inner.lend(py, conn, queued_at, Within::Task)
    }

    fn timed_out(&self, py: Python<'_>) -> PyErr {
        self.inner
            .timeout_error(py, self.timeout, self.connect_failed)
    }

    /// Gives back whatever the checkout holds: a connection being checked is closed (its
    /// check was cut short), a permit returns unused, a place in the queue is left and a
    /// grant that came at the last moment is handed on.
    fn settle(&mut self, py: Python<'_>) {
        let inner = Arc::clone(&self.inner);
        match std::mem::replace(&mut self.holding, Holding::Nothing) {
            Holding::Nothing => {}
            Holding::Checking(conn) => {
                if let Some(r) = inner.engine.release(conn, false, Instant::now()) {
                    inner.retire(py, r);
                }
            }
            Holding::Opening(permit) => inner.engine.open_unused(permit),
            Holding::Waiting(waiter, slot) => {
                slot.disarm();
                inner.abandon(py, &waiter);
            }
        }
        match self.next.take() {
            None => {}
            Some(Checkout::Wait(waiter)) => inner.abandon(py, &waiter),
            Some(Checkout::Ready(conn, _)) => {
                if let Some(r) = inner.engine.release(conn, true, Instant::now()) {
                    inner.retire(py, r);
                }
            }
            Some(Checkout::Open(permit)) => inner.engine.open_unused(permit),
            Some(Checkout::Retire(r)) => inner.retire(py, r),
        }
    }
}

/// A waker for a new waiter, its slot kept in `made`.
fn waker(made: &mut Option<Arc<Slot>>) -> Box<dyn Wake> {
    let slot = Arc::new(Slot::default());
    *made = Some(Arc::clone(&slot));
    Box::new(AsyncWake(slot))
}

/// The steps after each awaited call, each acting until the next await.
impl AsyncCheckout {
    /// The round-trip check ended; `ok`: it answered in time.
    fn on_checked(&mut self, py: Python<'_>, ok: bool) -> Step {
        let Holding::Checking(conn) = std::mem::replace(&mut self.holding, Holding::Nothing) else {
            return Err(out_of_order("checked"));
        };
        if ok {
            return Ok((DONE, self.lend(py, conn)));
        }
        match self.replace(py, conn)? {
            Ok(next) => self.advance(py, next),
            Err(close) => close,
        }
    }

    /// The connect for this checkout returned `conn` after `took` seconds.
    fn on_connected(&mut self, py: Python<'_>, conn: Py<PyAny>, took: f64) -> Step {
        let Holding::Opening(permit) = std::mem::replace(&mut self.holding, Holding::Nothing)
        else {
            return Err(out_of_order("connected"));
        };
        let inner = Arc::clone(&self.inner);
        let slot = PermitGuard::new(&inner.engine, permit);
        let conn = attach_leak_watch(&inner, py, inner.adopt(py, conn)?)?;
        let took = Duration::try_from_secs_f64(took).unwrap_or_default();
        match inner
            .engine
            .opened(slot.spend(), conn, Instant::now(), took)
        {
            Ok(pooled) => Ok((DONE, self.lend(py, pooled))),
            Err(retired) => {
                inner.retire(py, retired);
                Err(PoolClosed::new_err(format!(
                    "pool '{}' is closed",
                    inner.engine.name()
                )))
            }
        }
    }

    /// The connect for this checkout raised `error`: raised again at once unless the driver
    /// calls it transient; then the checkout asks again within its timeout.
    fn on_connect_error(&mut self, py: Python<'_>, error: Bound<'_, PyAny>) -> Step {
        let Holding::Opening(permit) = std::mem::replace(&mut self.holding, Holding::Nothing)
        else {
            return Err(out_of_order("connect_error"));
        };
        let inner = Arc::clone(&self.inner);
        let e = PyErr::from_value(error);
        if !inner.connect_failed(py, PermitGuard::new(&inner.engine, permit), &e) {
            return Err(e);
        }
        self.connect_failed = true;
        let now = Instant::now();
        if now >= self.deadline {
            return Err(self.timed_out(py));
        }
        let next = self.ask(now)?;
        self.advance(py, next)
    }

    /// The wait ended: the future was resolved, or its time ran out.
    fn on_woke(&mut self, py: Python<'_>) -> Step {
        let Holding::Waiting(waiter, slot) = std::mem::replace(&mut self.holding, Holding::Nothing)
        else {
            return Err(out_of_order("woke"));
        };
        slot.disarm();
        self.slot = Some(slot);
        let inner = Arc::clone(&self.inner);
        let next = match waiter.try_take() {
            Some(grant) => inner.granted(&waiter, grant)?,
            None => {
                let now = Instant::now();
                if now >= self.deadline {
                    match inner.engine.cancel(&waiter) {
                        Some(grant) => inner.granted(&waiter, grant)?,
                        None => return Err(self.timed_out(py)),
                    }
                } else {
                    // The first in line while the server is down: the next probe is due.
                    inner.engine.retry(&waiter, now).map_err(acquire_error)?
                }
            }
        };
        self.advance(py, next)
    }

    /// A retired connection was closed: go on with the engine's next answer.
    fn on_resume(&mut self, py: Python<'_>) -> Step {
        if self.next.is_none() {
            return Err(out_of_order("resume"));
        }
        self.resume_next(py)
    }
}

#[pymethods]
impl AsyncCheckout {
    /// The first step to await, as `(code, arg)`.
    #[getter]
    fn pending(&mut self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.pending.take().map(|p| p.clone_ref(py))
    }

    /// The round-trip check ended; `ok`: it answered in time.
    fn checked(&mut self, py: Python<'_>, ok: bool) -> Step {
        entry(py, "AsyncCheckout.checked", || self.on_checked(py, ok))
    }

    /// The connect for this checkout returned `conn` after `took` seconds.
    fn connected(&mut self, py: Python<'_>, conn: Py<PyAny>, took: f64) -> Step {
        entry(py, "AsyncCheckout.connected", || {
            self.on_connected(py, conn, took)
        })
    }

    /// The connect for this checkout raised `error`.
    fn connect_error(&mut self, py: Python<'_>, error: Bound<'_, PyAny>) -> Step {
        entry(py, "AsyncCheckout.connect_error", || {
            self.on_connect_error(py, error)
        })
    }

    /// The wait ended: the future was resolved, or its time ran out.
    fn woke(&mut self, py: Python<'_>) -> Step {
        entry(py, "AsyncCheckout.woke", || self.on_woke(py))
    }

    /// A retired connection was closed: go on with the engine's next answer.
    fn resume(&mut self, py: Python<'_>) -> Step {
        entry(py, "AsyncCheckout.resume", || self.on_resume(py))
    }

    /// Cancelled while connecting: the connect goes on in the background with the permit,
    /// which this returns (the connection then goes to the first waiter, or idle). Closing
    /// a half-open connection instead would leave it to the garbage collector, and the
    /// server would see more than `max_size` connections meanwhile.
    fn detach_permit(&mut self) -> Option<AsyncPermit> {
        match std::mem::replace(&mut self.holding, Holding::Nothing) {
            Holding::Opening(permit) => Some(AsyncPermit::new(&self.inner, permit)),
            other => {
                self.holding = other;
                None
            }
        }
    }

    /// The coroutine was cancelled or failed: give back whatever this checkout holds.
    fn abandon(&mut self, py: Python<'_>) -> PyResult<()> {
        entry(py, "AsyncCheckout.abandon", || {
            self.settle(py);
            Ok(())
        })
    }
}

impl Drop for AsyncCheckout {
    /// A coroutine dropped mid-checkout (never resumed, garbage-collected) gives its slot
    /// back too.
    fn drop(&mut self) {
        if !matches!(self.holding, Holding::Nothing) || self.next.is_some() {
            Python::attach(|py| {
                let _active = Active::enter(py);
                self.settle(py);
            });
        }
    }
}

fn out_of_order(what: &str) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!(
        "AsyncCheckout.{what}() called out of order (a bug in django_lido.aio)"
    ))
}
