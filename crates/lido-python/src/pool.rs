//! `PoolCore`: checkout, return, maintenance and statistics for Python connections.

use crate::errors::{acquire_error, config_error, PoolClosed};
use lido_core::{
    probe_socket, Check, Checkout, CloseReason, Config, ConfigError, Engine, Grant,
    HistogramSummary, OpenPermit, Pooled, Retired, ThreadWake,
};
use parking_lot::Mutex;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Hashes an object address: already unique, so a multiply spreads it well enough.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(20);
    }
}

type ByAddress<V> = HashMap<usize, V, BuildHasherDefault<AddressHasher>>;

/// Set by the interpreter's exit handler. A thread woken after that must not return to
/// Python: once finalization starts, taking the GIL ends the thread with pthread_exit,
/// whose forced unwind through Rust frames aborts the process. Staying parked is harmless
/// in a process that is exiting (Python 3.14 does the same for its own threads).
static EXITING: AtomicBool = AtomicBool::new(false);

/// Marks the interpreter as exiting; see [`EXITING`].
#[pyfunction]
pub fn _interpreter_exiting() {
    EXITING.store(true, Relaxed);
}

thread_local! {
    /// When this thread's turn at each pool began (keyed by the address of the pool's shared
    /// state): at its first checkout, then whenever a checkout had to queue. The engine lets
    /// a thread pass over waiters only within its turn (`Config::turn_length`).
    static TURNS: RefCell<Vec<(usize, Instant)>> = const { RefCell::new(Vec::new()) };
}

/// Pools a thread remembers turns for. Entries are never removed when a pool goes, so the
/// list is capped; a pool whose entry fell off just gives the thread a fresh turn.
const TURNS_KEPT: usize = 16;

/// This thread's turn at pool `key`: started at `now` if `restart` or if it has none yet.
fn thread_turn(key: usize, now: Instant, restart: bool) -> Instant {
    TURNS.with_borrow_mut(|turns| {
        if let Some(entry) = turns.iter_mut().find(|(k, _)| *k == key) {
            if restart {
                entry.1 = now;
            }
            return entry.1;
        }
        if turns.len() == TURNS_KEPT {
            turns.remove(0);
        }
        turns.push((key, now));
        now
    })
}

fn turn_of(key: usize) -> Option<Instant> {
    TURNS.with_borrow(|turns| turns.iter().find(|(k, _)| *k == key).map(|&(_, t)| t))
}

fn park_forever_if_exiting() {
    while EXITING.load(Relaxed) {
        std::thread::park();
    }
}

/// What the engine stores for an idle connection.
struct PyConn {
    obj: Py<PyAny>,
    /// The object whose `status_attr` gives the transaction status (for psycopg, the
    /// connection's `pgconn`), looked up once at open.
    status_source: Option<Py<PyAny>>,
    /// The socket, read once at open; -1 when the driver exposes none.
    fd: i32,
    /// A weak reference to `obj` whose callback reports a leak.
    watch: Py<PyAny>,
}

/// What is kept for a connection in use: no strong reference, so a holder that drops
/// it really lets it go.
struct Held {
    status_source: Option<Py<PyAny>>,
    fd: i32,
    watch: Py<PyAny>,
}

/// libpq's PQtransactionStatus codes, the convention every driver hook maps to.
const TX_IDLE: i64 = 0;
const TX_INTRANS: i64 = 2;
const TX_INERROR: i64 = 3;

/// How to read a returned connection's transaction status (libpq codes).
enum Status {
    /// Unknown: always roll back.
    Unknown,
    /// Call this on the connection.
    Call(Py<PyAny>),
    /// Call this once per connection at open, then read the attribute on what it gave.
    /// The source must not reference the connection, or leased connections stay alive.
    Attr(Py<PyAny>, Py<PyString>),
}

/// Per-driver hooks, learned from the first connection.
struct Driver {
    status: Status,
    rollback: Py<PyAny>,
    /// The default round-trip check; a user's `check` takes precedence.
    check: Py<PyAny>,
    close: Py<PyAny>,
    fileno: Py<PyAny>,
}

struct Hooks {
    connect: Py<PyAny>,
    /// conn -> driver object with `status`, `rollback`, `check`, `close`, `fileno`.
    driver_for: Py<PyAny>,
    check: Option<Py<PyAny>>,
    reset: Option<Py<PyAny>>,
    /// (connection id, seconds held) -> None; logs the leak.
    on_leak: Option<Py<PyAny>>,
    /// (what, exception) -> None; logs an error swallowed on a background path.
    on_error: Option<Py<PyAny>>,
}

struct Inner {
    engine: Engine<PyConn>,
    timeout: Duration,
    probe: bool,
    hooks: Hooks,
    driver: PyOnceLock<Driver>,
    /// Connections in use, by object address.
    leases: Mutex<ByAddress<Pooled<Held>>>,
    /// After a fork, the parent's connections: kept alive and never closed here.
    foreign: Mutex<(HashSet<usize>, Vec<Py<PyAny>>)>,
    /// Consecutive failed maintenance opens, for back-off.
    open_failures: AtomicU64,
}

/// The weakref callback that notices a connection dropped by its holder.
#[pyclass(module = "django_lido._lido", frozen)]
pub struct LeakWatch {
    pool: Weak<Inner>,
    key: usize,
}

#[pymethods]
impl LeakWatch {
    fn __call__(&self, py: Python<'_>, _ref: &Bound<'_, PyAny>) {
        if let Some(inner) = self.pool.upgrade() {
            inner.lost(py, self.key);
        }
    }
}

fn opt_secs(option: &'static str, v: Option<f64>) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| secs(option, s)).transpose()
}

fn secs(option: &'static str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|_| v.is_finite())
        .ok_or_else(|| ConfigError {
            option,
            value: v.to_string(),
            allowed: "a finite number of seconds >= 0".into(),
        })
}

fn count(option: &'static str, v: i64) -> Result<u64, ConfigError> {
    u64::try_from(v).map_err(|_| ConfigError {
        option,
        value: v.to_string(),
        allowed: "an integer >= 0".into(),
    })
}

/// The engine's options as `django_lido.options.validate` returns them: a dict with every
/// key, types already checked there. One struct, so that an option is declared once here.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct EngineOptions {
    min_size: i64,
    max_size: i64,
    timeout: f64,
    max_waiting: i64,
    max_lifetime: Option<f64>,
    lifetime_jitter: f64,
    max_idle: Option<f64>,
    max_uses: i64,
    check_after_idle: Option<f64>,
    turn_length: f64,
}

impl EngineOptions {
    /// The engine's configuration, every value and relation checked (the same checks
    /// `Engine::new` makes).
    fn config(&self) -> Result<Config, ConfigError> {
        let cfg = Config {
            min_size: count("min_size", self.min_size)? as usize,
            max_size: count("max_size", self.max_size)? as usize,
            timeout: secs("timeout", self.timeout)?,
            max_waiting: count("max_waiting", self.max_waiting)? as usize,
            max_lifetime: opt_secs("max_lifetime", self.max_lifetime)?,
            lifetime_jitter: self.lifetime_jitter,
            max_idle: opt_secs("max_idle", self.max_idle)?,
            max_uses: count("max_uses", self.max_uses)?,
            check_after_idle: opt_secs("check_after_idle", self.check_after_idle)?,
            turn_length: secs("turn_length", self.turn_length)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Checks pool option values without building a pool (Django's settings are checked before
/// the first connect, and by `manage.py check`); raises ValueError naming the option.
#[pyfunction]
pub fn validate_options(options: EngineOptions) -> PyResult<()> {
    options.config().map(drop).map_err(config_error)
}

fn summary_dict<'py>(py: Python<'py>, h: &HistogramSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    d.set_item("count", h.count)?;
    d.set_item("sum_ms", ms(h.sum))?;
    d.set_item("p50_ms", ms(h.p50))?;
    d.set_item("p90_ms", ms(h.p90))?;
    d.set_item("p99_ms", ms(h.p99))?;
    d.set_item("max_ms", ms(h.max))?;
    Ok(d)
}

impl Inner {
    fn driver(&self, py: Python<'_>) -> Option<&Driver> {
        self.driver.get(py)
    }

    /// Closes (or sets aside, if foreign) a retired connection, then frees its slot.
    fn dispose(&self, py: Python<'_>, retired: Retired<PyConn>) {
        if retired.foreign {
            let conn = self.engine.retire_done(retired);
            self.keep_foreign(conn.obj, conn.watch);
            return;
        }
        if let Some(driver) = self.driver(py) {
            let obj = retired.conn.payload.obj.bind(py);
            if let Err(e) = driver.close.call1(py, (obj,)) {
                self.report(py, "closing a connection", e);
            }
        }
        drop(self.engine.retire_done(retired));
    }

    fn keep_foreign(&self, obj: Py<PyAny>, watch: Py<PyAny>) {
        let mut f = self.foreign.lock();
        f.0.insert(obj.as_ptr() as usize);
        f.1.push(obj);
        f.1.push(watch);
    }

    fn report(&self, py: Python<'_>, what: &str, e: PyErr) {
        match &self.hooks.on_error {
            Some(hook) => {
                if let Err(e2) = hook.call1(py, (what, e.into_value(py))) {
                    e2.write_unraisable(py, None);
                }
            }
            None => e.write_unraisable(py, None),
        }
    }

    /// Checkout checks: the socket probe, and a round trip if the engine asks for one.
    fn verify(&self, py: Python<'_>, conn: &Pooled<PyConn>, check: Check) -> bool {
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
            if hook.call1(py, (conn.payload.obj.bind(py),)).is_err() {
                return false;
            }
        }
        true
    }

    /// Gives a connection to the caller, keeping only a weak record of it.
    /// `queued_at` is when the request started, if it had to queue.
    fn lend(&self, conn: Pooled<PyConn>, queued_at: Option<Instant>) -> Py<PyAny> {
        let Pooled { payload, meta } = conn;
        let key = payload.obj.as_ptr() as usize;
        let held = Pooled {
            payload: Held {
                status_source: payload.status_source,
                fd: payload.fd,
                watch: payload.watch,
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

    /// Opens a connection with `permit`; the driver's own error reaches the caller.
    fn open(&self, py: Python<'_>, permit: OpenPermit) -> PyResult<(PyConn, Duration, OpenPermit)> {
        let t0 = Instant::now();
        let obj = match self.hooks.connect.call0(py) {
            Ok(obj) => obj,
            Err(e) => {
                self.engine.open_failed(permit);
                return Err(e);
            }
        };
        let took = t0.elapsed();
        let driver = match self
            .driver
            .get_or_try_init(py, || self.learn_driver(py, obj.bind(py)))
        {
            Ok(d) => d,
            Err(e) => {
                self.engine.open_failed(permit);
                return Err(e);
            }
        };
        let fd = driver
            .fileno
            .call1(py, (obj.bind(py),))
            .and_then(|v| v.extract::<i32>(py))
            .unwrap_or(-1);
        let status_source = match &driver.status {
            Status::Attr(source, _) => match source.call1(py, (obj.bind(py),)) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.engine.open_failed(permit);
                    return Err(e);
                }
            },
            _ => None,
        };
        Ok((
            PyConn {
                status_source,
                watch: py.None(),
                obj,
                fd,
            },
            took,
            permit,
        ))
    }

    fn learn_driver(&self, py: Python<'_>, conn: &Bound<'_, PyAny>) -> PyResult<Driver> {
        let d = self.hooks.driver_for.call1(py, (conn,))?;
        let d = d.bind(py);
        let source = d.getattr("status_source")?;
        let attr = d.getattr("status_attr")?.cast_into::<PyString>()?;
        let status = if source.is_none() {
            Status::Unknown
        } else if attr.is_empty()? {
            Status::Call(source.unbind())
        } else {
            Status::Attr(source.unbind(), attr.unbind())
        };
        Ok(Driver {
            status,
            rollback: d.getattr("rollback")?.unbind(),
            check: d.getattr("check")?.unbind(),
            close: d.getattr("close")?.unbind(),
            fileno: d.getattr("fileno")?.unbind(),
        })
    }

    /// Rolls back what the holder left open and runs the reset hook. False: not reusable.
    fn clean(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyAny>,
        status_source: Option<&Py<PyAny>>,
    ) -> bool {
        let Some(driver) = self.driver(py) else {
            return false;
        };
        let code = match (&driver.status, status_source) {
            (Status::Attr(_, attr), Some(source)) => Some(source.bind(py).getattr(attr.bind(py))),
            (Status::Call(f), _) => Some(f.bind(py).call1((conn,))),
            _ => None,
        };
        let needs_rollback = match code {
            Some(code) => match code.and_then(|v| v.extract::<i64>()) {
                Ok(TX_IDLE) => false,
                Ok(TX_INTRANS | TX_INERROR) => true,
                // Active (a query still running) or unknown (broken): cannot be cleaned.
                _ => return false,
            },
            None => true,
        };
        if needs_rollback {
            if driver.rollback.call1(py, (conn,)).is_err() {
                return false;
            }
            if !matches!(driver.status, Status::Unknown) {
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

    fn lost(&self, py: Python<'_>, key: usize) {
        let Some(held) = self.leases.lock().remove(&key) else {
            return;
        };
        let now = Instant::now();
        if self.engine.lost(&held.meta, now) {
            if let Some(hook) = &self.hooks.on_leak {
                let secs = now
                    .saturating_duration_since(held.meta.last_used)
                    .as_secs_f64();
                if let Err(e) = hook.call1(py, (held.meta.id, secs)) {
                    e.write_unraisable(py, None);
                }
            }
        }
    }
}

/// The Rust half of `django_lido.Pool`. Not meant to be used directly.
#[pyclass(module = "django_lido._lido", subclass, frozen)]
pub struct PoolCore {
    inner: Arc<Inner>,
}

/// Registers a freshly opened connection's leak watch: a weak reference whose callback
/// frees the slot if the holder drops the connection.
fn admit(inner: &Arc<Inner>, py: Python<'_>, mut conn: PyConn) -> PyResult<PyConn> {
    let watch = Py::new(
        py,
        LeakWatch {
            pool: Arc::downgrade(inner),
            key: conn.obj.as_ptr() as usize,
        },
    )?;
    let weakref = py.import("weakref")?.getattr("ref")?;
    conn.watch = match weakref.call1((conn.obj.bind(py), watch)) {
        Ok(w) => w.unbind(),
        Err(e) if e.is_instance_of::<PyTypeError>(py) => {
            let kind = conn
                .obj
                .bind(py)
                .get_type()
                .fully_qualified_name()
                .map_or_else(|_| "?".to_owned(), |n| n.to_string());
            return Err(PyTypeError::new_err(format!(
                "pool '{}': connections of type {kind} cannot be weakly referenced, and the \
                 pool needs that to notice connections dropped without being returned",
                inner.engine.name()
            )));
        }
        Err(e) => return Err(e),
    };
    Ok(conn)
}

impl PoolCore {
    /// Opens a connection for the caller with `permit`; `queued_at` as for `lend` (the
    /// connect time itself is not acquire wait: it has its own histogram).
    fn open_for_caller(
        &self,
        py: Python<'_>,
        permit: OpenPermit,
        queued_at: Option<Instant>,
    ) -> PyResult<Py<PyAny>> {
        let inner = &*self.inner;
        let (conn, took, permit) = inner.open(py, permit)?;
        let conn = match admit(&self.inner, py, conn) {
            Ok(c) => c,
            Err(e) => {
                inner.engine.open_failed(permit);
                return Err(e);
            }
        };
        match inner.engine.opened(permit, conn, Instant::now(), took) {
            Ok(pooled) => Ok(inner.lend(pooled, queued_at)),
            Err(retired) => {
                inner.dispose(py, retired);
                Err(PoolClosed::new_err(format!(
                    "pool '{}' is closed",
                    inner.engine.name()
                )))
            }
        }
    }
}

#[pymethods]
impl PoolCore {
    #[new]
    #[pyo3(signature = (
        connect, driver_for, *, name, options,
        probe=true, check=None, reset=None, on_leak=None, on_error=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        connect: Py<PyAny>,
        driver_for: Py<PyAny>,
        name: String,
        options: EngineOptions,
        probe: bool,
        check: Option<Py<PyAny>>,
        reset: Option<Py<PyAny>>,
        on_leak: Option<Py<PyAny>>,
        on_error: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let cfg = options.config().map_err(config_error)?;
        let timeout = cfg.timeout;
        let engine = Engine::new(name, cfg).map_err(config_error)?;
        Ok(PoolCore {
            inner: Arc::new(Inner {
                engine,
                timeout,
                probe,
                hooks: Hooks {
                    connect,
                    driver_for,
                    check,
                    reset,
                    on_leak,
                    on_error,
                },
                driver: PyOnceLock::new(),
                leases: Mutex::new(ByAddress::default()),
                foreign: Mutex::new((HashSet::new(), Vec::new())),
                open_failures: AtomicU64::new(0),
            }),
        })
    }

    /// Takes a connection, waiting up to `timeout` seconds (default: the pool's).
    #[pyo3(signature = (timeout=None))]
    fn getconn(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        let inner = &*self.inner;
        let start = Instant::now();
        let timeout = match timeout {
            None => inner.timeout,
            Some(t) => secs("timeout", t).map_err(config_error)?,
        };
        let deadline = start + timeout;
        let wake = || -> Box<dyn lido_core::Wake> { Box::new(ThreadWake::current()) };
        let key = Arc::as_ptr(&self.inner) as usize;
        let turn = Some(thread_turn(key, start, false));
        let mut step = inner
            .engine
            .checkout_in_turn(start, turn, wake)
            .map_err(acquire_error)?;
        // Set once the request has to queue, for the acquire-wait histogram.
        let mut queued_at = None;
        loop {
            step = match step {
                Checkout::Ready(conn, check) => {
                    if inner.verify(py, &conn, check) {
                        if queued_at.is_some() {
                            thread_turn(key, Instant::now(), true);
                        }
                        return Ok(inner.lend(conn, queued_at));
                    }
                    let (retired, next) =
                        inner
                            .engine
                            .replace(conn, CloseReason::CheckFailed, Instant::now());
                    inner.dispose(py, retired);
                    next.map_err(acquire_error)?
                }
                Checkout::Retire(retired) => {
                    inner.dispose(py, retired);
                    inner
                        .engine
                        .checkout_in_turn(Instant::now(), turn, wake)
                        .map_err(acquire_error)?
                }
                Checkout::Open(permit) => {
                    if queued_at.is_some() {
                        thread_turn(key, Instant::now(), true);
                    }
                    return self.open_for_caller(py, permit, queued_at);
                }
                Checkout::Wait(waiter) => {
                    queued_at = Some(start);
                    let w = Arc::clone(&waiter);
                    let grant = match py.detach(move || {
                        let grant = w.park_until(deadline);
                        park_forever_if_exiting();
                        grant
                    }) {
                        Some(g) => g,
                        None => match inner.engine.cancel(&waiter) {
                            Some(g) => g,
                            None => {
                                inner.engine.stats().timeouts.fetch_add(1, Relaxed);
                                return Err(acquire_error(inner.engine.timeout_error(timeout)));
                            }
                        },
                    };
                    match grant {
                        Grant::Conn(conn, check) => Checkout::Ready(conn, check),
                        Grant::Open(permit) => Checkout::Open(permit),
                        Grant::Retry => inner
                            .engine
                            .retry(&waiter, Instant::now())
                            .map_err(acquire_error)?,
                        Grant::Closed => {
                            return Err(PoolClosed::new_err(format!(
                                "pool '{}' was closed while waiting",
                                inner.engine.name()
                            )))
                        }
                    }
                }
            };
        }
    }

    /// Gives a connection back: rolled back, reset, then kept, handed on, or closed.
    fn putconn(&self, py: Python<'_>, conn: Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &*self.inner;
        let key = conn.as_ptr() as usize;
        let Some(held) = inner.leases.lock().remove(&key) else {
            if inner.foreign.lock().0.contains(&key) {
                return Ok(()); // the parent's, after a fork: left alone
            }
            return Err(PyValueError::new_err(format!(
                "pool '{}': this connection is not checked out from it (returned twice, \
                 or from another pool)",
                inner.engine.name()
            )));
        };
        let healthy = inner.clean(py, &conn, held.payload.status_source.as_ref());
        let pooled = Pooled {
            payload: PyConn {
                status_source: held.payload.status_source,
                obj: conn.unbind(),
                fd: held.payload.fd,
                watch: held.payload.watch,
            },
            meta: held.meta,
        };
        let turn = turn_of(Arc::as_ptr(&self.inner) as usize);
        if let Some(retired) = inner
            .engine
            .release_in_turn(pooled, healthy, Instant::now(), turn)
        {
            inner.dispose(py, retired);
        }
        Ok(())
    }

    /// Closes the pool. Idle connections close now, those in use when they come back.
    fn close(&self, py: Python<'_>) {
        for retired in self.inner.engine.close() {
            self.inner.dispose(py, retired);
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.engine.status().closed
    }

    #[getter]
    fn name(&self) -> &str {
        self.inner.engine.name()
    }

    /// Changes min_size and max_size at run time.
    fn resize(&self, py: Python<'_>, min_size: i64, max_size: i64) -> PyResult<()> {
        let min = count("min_size", min_size).map_err(config_error)? as usize;
        let max = count("max_size", max_size).map_err(config_error)? as usize;
        let retired = self.inner.engine.resize(min, max).map_err(config_error)?;
        for r in retired {
            self.inner.dispose(py, r);
        }
        Ok(())
    }

    /// A handle for the maintenance thread; it does not keep the pool alive.
    fn _maintainer(&self) -> Maintainer {
        Maintainer {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Statistics, with names from psycopg_pool and HikariCP.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = &*self.inner;
        let s = inner.engine.status();
        let st = inner.engine.stats();
        let d = PyDict::new(py);
        d.set_item("name", inner.engine.name())?;
        d.set_item("pool_min", s.min_size)?;
        d.set_item("pool_max", s.max_size)?;
        d.set_item("pool_size", s.size)?;
        d.set_item("pool_available", s.idle)?;
        d.set_item("idle", s.idle)?;
        d.set_item("in_use", s.in_use)?;
        d.set_item("opening", s.opening)?;
        d.set_item("requests_waiting", s.waiting)?;
        // One read of the buckets: requests_num and the wait quantiles agree.
        let wait = st.acquire_wait.summary();
        d.set_item("requests_num", wait.count)?;
        d.set_item("requests_queued", st.requests_queued.load(Relaxed))?;
        d.set_item("requests_timeouts", st.timeouts.load(Relaxed))?;
        d.set_item("requests_rejected", st.rejected.load(Relaxed))?;
        let usage = st.usage.summary();
        let open = st.open_time.summary();
        d.set_item("requests_wait_ms", wait.sum.as_secs_f64() * 1000.0)?;
        d.set_item("usage_ms", usage.sum.as_secs_f64() * 1000.0)?;
        d.set_item("connections_num", st.opens.load(Relaxed))?;
        d.set_item("connections_ms", open.sum.as_secs_f64() * 1000.0)?;
        d.set_item("connections_errors", st.open_errors.load(Relaxed))?;
        d.set_item("connections_lost", st.leaked.load(Relaxed))?;
        d.set_item("connections_leaked", st.leaked.load(Relaxed))?;
        d.set_item("returns_bad", st.closes_for(CloseReason::Broken))?;
        d.set_item("returns_rolled_back", st.returns_rolled_back.load(Relaxed))?;
        for reason in CloseReason::ALL {
            d.set_item(format!("closes_{}", reason.name()), st.closes_for(reason))?;
        }
        d.set_item("acquire_wait", summary_dict(py, &wait)?)?;
        d.set_item("usage", summary_dict(py, &usage)?)?;
        d.set_item("connection_open", summary_dict(py, &open)?)?;
        Ok(d)
    }

    /// Before os.fork(): hold the locks so the child never inherits one mid-update.
    fn _before_fork(&self) {
        std::mem::forget(self.inner.leases.lock());
        std::mem::forget(self.inner.foreign.lock());
        self.inner.engine.before_fork();
    }

    fn _after_fork_in_parent(&self) {
        self.inner.engine.after_fork_in_parent();
        // SAFETY: both locked in `_before_fork` by this thread, guards forgotten.
        unsafe {
            self.inner.foreign.force_unlock();
            self.inner.leases.force_unlock();
        }
    }

    /// In the child: start empty, and keep every connection of the parent alive and
    /// untouched, idle or in use, so that no close (and no libpq Terminate) ends the
    /// parent's sessions.
    fn _after_fork_in_child(&self, py: Python<'_>) {
        let inner = &*self.inner;
        let idle = inner.engine.after_fork_in_child();
        // SAFETY: both locked in `_before_fork` by this thread, guards forgotten.
        unsafe {
            inner.foreign.force_unlock();
            inner.leases.force_unlock();
        }
        for conn in idle {
            inner.keep_foreign(conn.payload.obj, conn.payload.watch);
        }
        let held: Vec<Pooled<Held>> = inner.leases.lock().drain().map(|(_, h)| h).collect();
        for h in held {
            if let Ok(obj) = h.payload.watch.call0(py) {
                if !obj.is_none(py) {
                    inner.keep_foreign(obj, h.payload.watch);
                }
            }
        }
    }

    fn __repr__(&self) -> String {
        let s = self.inner.engine.status();
        format!(
            "<Pool '{}' size={}/{} idle={} in_use={} waiting={}{}>",
            self.inner.engine.name(),
            s.size,
            s.max_size,
            s.idle,
            s.in_use,
            s.waiting,
            if s.closed { " closed" } else { "" }
        )
    }
}

impl Drop for PoolCore {
    /// A pool dropped without close(): close it, so the maintenance thread ends and idle
    /// connections are closed through the driver.
    fn drop(&mut self) {
        if !self.inner.engine.status().closed {
            Python::attach(|py| {
                for retired in self.inner.engine.close() {
                    self.inner.dispose(py, retired);
                }
            });
        }
    }
}

/// The maintenance thread's view of a pool.
#[pyclass(module = "django_lido._lido", frozen)]
pub struct Maintainer {
    inner: Arc<Inner>,
}

#[pymethods]
impl Maintainer {
    /// Blocks (without the GIL) until maintenance is due, at most `seconds`. With `pause`,
    /// waits the full time unless the pool closes (for back-off after failures).
    /// Returns False once the pool is closed.
    #[pyo3(signature = (seconds, pause=false))]
    fn wait(&self, py: Python<'_>, seconds: f64, pause: bool) -> bool {
        let inner = Arc::clone(&self.inner);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds.clamp(0.0, 3600.0));
        py.detach(move || {
            let open = inner.engine.wait_for_maintenance(deadline, pause);
            // Closed: the exit handler is joining this thread before finalization; go on.
            if open {
                park_forever_if_exiting();
            }
            open
        })
    }

    /// Does one round of maintenance: closes expired and stale idle connections and opens
    /// connections up to min_size. Returns (seconds until next due, opens failed), or None
    /// once the pool is closed.
    fn run(&self, py: Python<'_>) -> Option<(f64, bool)> {
        let inner = &*self.inner;
        let m = inner.engine.maintain(Instant::now())?;
        for r in m.retire {
            inner.dispose(py, r);
        }
        let mut failed = false;
        for permit in m.open {
            if failed {
                inner.engine.open_unused(permit);
                continue;
            }
            match inner.open(py, permit) {
                Ok((conn, took, permit)) => match admit(&self.inner, py, conn) {
                    Ok(conn) => {
                        if let Some(r) =
                            inner.engine.opened_idle(permit, conn, Instant::now(), took)
                        {
                            inner.dispose(py, r);
                        }
                        inner.open_failures.store(0, Relaxed);
                    }
                    Err(e) => {
                        inner.engine.open_failed(permit);
                        inner.report(py, "registering a new connection", e);
                        failed = true;
                    }
                },
                Err(e) => {
                    inner.report(py, "opening a connection to keep min_size", e);
                    failed = true;
                }
            }
        }
        let next = if failed {
            // Exponential back-off, 0.1 s doubling up to 10 s.
            let n = inner.open_failures.fetch_add(1, Relaxed).min(7);
            (0.1 * f64::from(1u32 << n)).min(10.0)
        } else {
            m.next_due
                .map_or(60.0, |t| {
                    t.saturating_duration_since(Instant::now()).as_secs_f64()
                })
                .clamp(0.01, 60.0)
        };
        Some((next, failed))
    }
}
