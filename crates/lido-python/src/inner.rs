//! `Inner`: a pool's shared state, and the driver I/O the engine's answers call for: open,
//! verify, lend, clean and retire.

use crate::deadline;
use crate::driver::{Driver, Hooks};
use crate::errors::config_error;
use crate::exit::{is_exit_interrupt, unraisable};
use crate::green::Mode;
use crate::holders::Lent;
use crate::leases::{ByAddress, Held, PyConn, Within};
use crate::permit::{Closing, Leftovers, PermitGuard};
use lido_core::{probe_socket, Check, Engine, Pooled, QueryStats, Retired, Validated};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

static NEXT_TURN_ID: AtomicUsize = AtomicUsize::new(1);

/// A pool's shared state: the engine and what the binding keeps beside it. `PoolCore` and
/// `Maintainer` hold it; a `LeakWatch` only refers to it weakly.
pub(crate) struct Inner {
    /// This pool's key in each thread's turns (turns.rs): unique for the process's life,
    /// where an address could be a freed pool's, whose stale turn the thread would inherit.
    pub(crate) turn_id: usize,
    pub(crate) engine: Engine<PyConn>,
    pub(crate) timeout: Duration,
    pub(crate) probe: bool,
    pub(crate) hooks: Hooks,
    pub(crate) driver: PyOnceLock<Driver>,
    /// Connections in use, by object address.
    pub(crate) leases: Mutex<ByAddress<Pooled<Held>>>,
    /// After a fork, the parent's connections: kept alive and never closed here.
    pub(crate) foreign: Mutex<(HashSet<usize>, Vec<Py<PyAny>>)>,
    /// Consecutive failed maintenance opens, for back-off.
    pub(crate) open_failures: AtomicU64,
    /// The last connect error, the cause of a `PoolTimeout` while the server is down.
    pub(crate) last_connect_error: Mutex<Option<PyErr>>,
    /// Between `before_fork` and the after-fork hooks (see `Inner::lost`).
    pub(crate) forking: AtomicBool,
    /// Whether checkouts wait as threads or as greenlets (learned at the first one).
    pub(crate) mode: Mode,
    /// Observability options (holders.rs, idle.rs), fixed for the pool's life.
    pub(crate) stack_depth: usize,
    pub(crate) idle_threshold: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    /// Statements by shape (queries.rs); None with `query_stats=False`.
    pub(crate) query_stats: Option<QueryStats>,
}

impl Inner {
    pub(crate) fn new(name: String, cfg: Validated, hooks: Hooks) -> Self {
        let (timeout, probe) = (cfg.timeout, cfg.probe);
        let idle_threshold = cfg.idle_in_transaction_threshold.filter(|t| !t.is_zero());
        let (stack_depth, idle_timeout) = (cfg.stack_depth, cfg.idle_in_transaction_timeout);
        let query_stats = cfg
            .query_stats
            .then(|| QueryStats::new(cfg.query_stats_max_shapes));
        let engine = Engine::new(name, cfg);
        Inner {
            engine,
            timeout,
            probe,
            hooks,
            driver: PyOnceLock::new(),
            leases: Mutex::new(ByAddress::default()),
            foreign: Mutex::new((HashSet::new(), Vec::new())),
            open_failures: AtomicU64::new(0),
            turn_id: NEXT_TURN_ID.fetch_add(1, Relaxed),
            last_connect_error: Mutex::new(None),
            forking: AtomicBool::new(false),
            mode: Mode::new(),
            stack_depth,
            idle_threshold,
            idle_timeout,
            query_stats,
        }
    }

    /// Closes the pool. Idle connections close now, those in use when they come back.
    pub(crate) fn close(&self, py: Python<'_>) {
        for retired in Leftovers::retired(&self.engine, self.engine.close()) {
            self.retire(py, retired);
        }
    }

    /// Changes min_size and max_size; idle connections above the new maximum close now.
    pub(crate) fn resize(&self, py: Python<'_>, min_size: usize, max_size: usize) -> PyResult<()> {
        let retired = self
            .engine
            .resize(min_size, max_size)
            .map_err(config_error)?;
        for r in Leftovers::retired(&self.engine, retired) {
            self.retire(py, r);
        }
        Ok(())
    }

    /// Replaces every connection (`Engine::drain`): the idle ones close now, those in use
    /// or being opened when they come back; the engine wakes maintenance to refill min_size.
    pub(crate) fn drain(&self, py: Python<'_>) {
        for r in Leftovers::retired(&self.engine, self.engine.drain()) {
            self.retire(py, r);
        }
    }

    /// `repr()` of the pool.
    pub(crate) fn describe(&self) -> String {
        let s = self.engine.status();
        format!(
            "<Pool '{}' size={}/{} idle={} in_use={} waiting={}{}>",
            self.engine.name(),
            s.size,
            s.max_size,
            s.idle,
            s.in_use,
            s.waiting,
            if s.closed { " closed" } else { "" }
        )
    }

    pub(crate) fn driver(&self, py: Python<'_>) -> Option<&Driver> {
        self.driver.get(py)
    }

    /// Closes (or sets aside, if foreign) a retired connection, then frees its slot.
    pub(crate) fn retire(&self, py: Python<'_>, retired: Retired<PyConn>) {
        if retired.foreign {
            let conn = self.engine.retire_done(retired);
            self.keep_foreign(conn.obj, conn.watch);
            return;
        }
        let closing = Closing::new(&self.engine, retired);
        if let Some(driver) = self.driver(py) {
            let obj = closing.conn().obj.bind(py);
            if let Err(e) = driver.close.call1(py, (obj,)) {
                self.report(py, "closing a connection", e);
            }
        }
    }

    /// Reports an error that has no caller to raise to: to `on_error`, else as unraisable.
    pub(crate) fn report(&self, py: Python<'_>, what: &str, e: PyErr) {
        if is_exit_interrupt(py, &e) {
            return;
        }
        match &self.hooks.on_error {
            Some(hook) => {
                if let Err(e2) = hook.call1(py, (what, e.into_value(py))) {
                    unraisable(py, e2);
                }
            }
            None => unraisable(py, e),
        }
    }

    /// Checkout checks: the socket probe, and a round trip if the engine asks for one. The
    /// round trip ends by `deadline`: the socket is shut down then if it has not returned.
    pub(crate) fn verify(
        &self,
        py: Python<'_>,
        conn: &Pooled<PyConn>,
        check: Check,
        deadline: Instant,
    ) -> bool {
        if check.probe
            && self.probe
            && conn.payload.fd >= 0
            && !probe_socket(conn.payload.fd).reusable()
        {
            return false;
        }
        if check.round_trip {
            let hook = match (&self.hooks.check, self.driver(py)) {
                (Some(user), _) => user,
                (None, Some(d)) => &d.check,
                (None, None) => return true,
            };
            let watch = (conn.payload.fd >= 0).then(|| deadline::arm(conn.payload.fd, deadline));
            let answered = hook.call1(py, (conn.payload.obj.bind(py),)).is_ok();
            let cut_off = watch.is_some_and(deadline::Armed::disarm);
            if !answered || cut_off {
                return false;
            }
        }
        true
    }

    /// Gives a connection to the caller (a thread, or what runs `within` it), keeping only
    /// a weak record of it. `queued_at` is when the request started, if it had to queue.
    pub(crate) fn lend(
        &self,
        py: Python<'_>,
        conn: Pooled<PyConn>,
        queued_at: Option<Instant>,
        within: Within,
    ) -> Py<PyAny> {
        let Pooled { payload, meta } = conn;
        let key = payload.obj.as_ptr() as usize;
        let lent = Lent::new(py, meta.id, self.stack_depth, within);
        let held = Pooled {
            payload: Held {
                status_source: payload.status_source,
                fd: payload.fd,
                watch: payload.watch,
                lent: Arc::new(lent),
            },
            meta,
        };
        self.leases.lock().insert(key, held);
        let wait = &self.engine.stats().acquire_wait;
        match queued_at {
            Some(start) => wait.record(start.elapsed()),
            None => wait.record_zero(),
        }
        payload.obj
    }

    /// Opens a connection, giving the driver `time_left` to connect; the driver's own error
    /// reaches the caller. The caller holds the slot in a [`PermitGuard`], which frees it if
    /// this fails (see [`Inner::connect_failed`]).
    pub(crate) fn open(&self, py: Python<'_>, time_left: Duration) -> PyResult<(PyConn, Duration)> {
        let t0 = Instant::now();
        let obj = self.hooks.connect.call1(py, (time_left.as_secs_f64(),))?;
        Ok((self.adopt(py, obj)?, t0.elapsed()))
    }

    /// What the pool keeps for a connection just opened (the asyncio pool opens its own):
    /// the driver learned at the first, the socket and the status source read once.
    pub(crate) fn adopt(&self, py: Python<'_>, obj: Py<PyAny>) -> PyResult<PyConn> {
        let driver = self.driver.get_or_try_init(py, || {
            Driver::learn(py, &self.hooks.driver_for, obj.bind(py))
        })?;
        let fd = driver
            .fileno
            .call1(py, (obj.bind(py),))
            .and_then(|v| v.extract::<i32>(py))
            .unwrap_or(-1);
        let status_source = driver.status_source(py, obj.bind(py))?;
        Ok(PyConn {
            status_source,
            watch: py.None(),
            obj,
            fd,
        })
    }

    /// A connect with `slot` failed with `e`: asks the `transient` hook whether the failure
    /// may pass and tells the engine, which frees the slot. Returns the hook's answer.
    pub(crate) fn connect_failed(&self, py: Python<'_>, slot: PermitGuard<'_>, e: &PyErr) -> bool {
        let transient = self.hooks.transient.as_ref().is_some_and(|hook| {
            hook.call1(py, (e.value(py),))
                .and_then(|answer| answer.is_truthy(py))
                .unwrap_or(false)
        });
        *self.last_connect_error.lock() = Some(e.clone_ref(py));
        if transient {
            slot.failed_transient(Instant::now());
        } else {
            drop(slot); // a permanent failure
        }
        transient
    }

    /// The last connect error, if the server is taken to be down or `failed` (the caller
    /// saw a connect fail itself).
    pub(crate) fn connect_error_cause(&self, py: Python<'_>, failed: bool) -> Option<PyErr> {
        if !failed && !self.engine.server_down() {
            return None;
        }
        self.last_connect_error
            .lock()
            .as_ref()
            .map(|e| e.clone_ref(py))
    }

    /// Rolls back what the holder left open and runs the reset hook. False: not reusable.
    pub(crate) fn clean(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyAny>,
        status_source: Option<&Py<PyAny>>,
    ) -> bool {
        let Some(driver) = self.driver(py) else {
            return false;
        };
        let Some(needs_rollback) = driver.needs_rollback(py, conn, status_source) else {
            return false;
        };
        if needs_rollback {
            if driver.rollback.call1(py, (conn,)).is_err() {
                return false;
            }
            if driver.knows_status() {
                self.engine
                    .stats()
                    .returns_rolled_back
                    .fetch_add(1, Relaxed);
            }
        }
        if let Some(reset) = &self.hooks.reset {
            if let Err(e) = reset.call1(py, (conn,)) {
                self.report(py, "resetting a returned connection", e);
                return false;
            }
        }
        true
    }
}
