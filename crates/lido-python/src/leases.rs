//! Connections in use: the lease records, the leak watch that notices a connection dropped
//! without being returned, and the parent's connections kept after a fork.

use crate::errors::guarded;
use crate::exit::Active;
use crate::green::running_greenlet;
use crate::holders::Lent;
use crate::inner::Inner;
use crate::reports::Report;
use crate::stack::Stack;
use lido_core::Pooled;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyWeakrefReference};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::raw::c_ulong;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Hashes an object address: already unique, so a multiply spreads it well enough.
#[derive(Default)]
pub(crate) struct AddressHasher(u64);

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

pub(crate) type ByAddress<V> = HashMap<usize, V, BuildHasherDefault<AddressHasher>>;

/// What the engine stores for an idle connection.
pub(crate) struct PyConn {
    pub(crate) obj: Py<PyAny>,
    /// The object whose `status_attr` gives the transaction status (for psycopg, the
    /// connection's `pgconn`), looked up once at open.
    pub(crate) status_source: Option<Py<PyAny>>,
    /// The socket, read once at open; -1 when the driver exposes none.
    pub(crate) fd: i32,
    /// A weak reference to `obj` whose callback reports a leak.
    pub(crate) watch: Py<PyAny>,
}

/// What is kept for a connection in use: no strong reference, so a holder that drops
/// it really lets it go.
pub(crate) struct Held {
    pub(crate) status_source: Option<Py<PyAny>>,
    pub(crate) fd: i32,
    pub(crate) watch: Py<PyAny>,
    /// Who took it, where, and what they do with it (holders.rs).
    pub(crate) lent: Arc<Lent>,
}

extern "C" {
    /// `threading.get_ident()` of the calling thread (CPython's stable ABI).
    fn PyThread_get_thread_ident() -> c_ulong;
}

/// What took a connection in use, recorded at checkout: the thread, by its
/// `threading.get_ident()`, the greenlet (gevent) or asyncio task running in it, and the
/// stack (stack.rs); named and formatted only when shown.
pub(crate) struct Taker {
    thread: c_ulong,
    within: Option<Running>,
    pub(crate) stack: Option<Stack>,
}

/// The greenlet or task that took a connection, held weakly: a strong reference would keep
/// a finished task, its traceback and so the connection alive, and the leak unseen.
struct Running {
    kind: Within,
    /// Its address, the key of its label (`django_lido.labels`) and its name once gone.
    addr: usize,
    weak: Option<Py<PyWeakrefReference>>,
}

impl Running {
    fn new(kind: Within, obj: &Bound<'_, PyAny>) -> Running {
        Running {
            kind,
            addr: obj.as_ptr() as usize,
            weak: PyWeakrefReference::new(obj).ok().map(Bound::unbind),
        }
    }

    /// Its name (`get_name()` of a task, `name` of a greenlet), else its kind and address.
    fn name(&self, py: Python<'_>) -> String {
        let kind = if self.kind == Within::Task {
            "task"
        } else {
            "greenlet"
        };
        let alive = self.weak.as_ref().and_then(|w| w.bind(py).upgrade());
        let name = alive.and_then(|r| match self.kind {
            Within::Task => r.call_method0("get_name").ok(),
            _ => r.getattr("name").ok(),
        });
        name.map_or_else(|| format!("{kind}-{:x}", self.addr), |n| n.to_string())
    }
}

/// What runs in the taking thread besides the thread itself.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Within {
    Thread,
    /// A greenlet (`Pool` under gevent).
    Greenlet,
    /// An asyncio task (`AsyncPool`).
    Task,
}

impl Taker {
    /// The calling thread, which holds the GIL, and what runs in it. Without a stack, for
    /// a plain thread, a few nanoseconds: no Python call.
    pub(crate) fn current(py: Python<'_>, depth: usize, within: Within) -> Taker {
        // SAFETY: no arguments, no preconditions; callable with or without the GIL.
        let thread = unsafe { PyThread_get_thread_ident() };
        let running = match within {
            Within::Thread => None,
            Within::Greenlet => running_greenlet(py),
            Within::Task => current_task(py),
        };
        Taker {
            thread,
            within: running.map(|r| Running::new(within, &r)),
            stack: Stack::capture(py, depth),
        }
    }

    /// `holder` of `connections()` and reports: `thread_id`; `thread`, the thread's name,
    /// or None once the thread has ended (or was not started by `threading`); `greenlet`,
    /// the greenlet's name under gevent; `task`, the asyncio task's name (`AsyncPool`);
    /// `label`, what the thread (or greenlet) is doing now where known: a request
    /// ("GET /path") or a Celery task (`django_lido.labels`).
    pub(crate) fn describe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("thread_id", self.thread)?;
        let active = py.import("threading")?.getattr("_active")?;
        let name = match active.call_method1("get", (self.thread,))? {
            t if t.is_none() => None,
            t => Some(t.getattr("name")?),
        };
        d.set_item("thread", name)?;
        let (greenlet, task) = match &self.within {
            Some(r) if r.kind == Within::Task => (None, Some(r.name(py))),
            Some(r) => (Some(r.name(py)), None),
            None => (None, None),
        };
        d.set_item("greenlet", greenlet)?;
        d.set_item("task", task)?;
        // Keyed by `threading.get_ident()`: the greenlet's id when gevent patched threading.
        let labels = py.import("django_lido.labels")?.getattr("labels")?;
        let mut label = py.None().into_bound(py);
        if let Some(r) = self.within.as_ref().filter(|r| r.kind == Within::Greenlet) {
            label = labels.call_method1("get", (r.addr,))?;
        }
        if label.is_none() {
            label = labels.call_method1("get", (self.thread,))?;
        }
        d.set_item("label", label)?;
        Ok(d)
    }
}

/// The running asyncio task (`AsyncPool`), if asyncio can tell.
fn current_task(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    static CURRENT_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let f = CURRENT_TASK
        .get_or_try_init(py, || {
            PyResult::Ok(py.import("asyncio")?.getattr("current_task")?.unbind())
        })
        .ok()?;
    f.bind(py).call0().ok().filter(|t| !t.is_none())
}

impl Held {
    /// The pooled connection again, once its holder gave `obj` back.
    pub(crate) fn rejoin(held: Pooled<Held>, obj: Py<PyAny>) -> Pooled<PyConn> {
        let Pooled { payload, meta } = held;
        Pooled {
            payload: PyConn {
                status_source: payload.status_source,
                obj,
                fd: payload.fd,
                watch: payload.watch,
            },
            meta,
        }
    }
}

/// The weakref callback that notices a connection dropped by its holder.
#[pyclass(module = "django_lido._lido", frozen)]
pub struct LeakWatch {
    pub(crate) pool: Weak<Inner>,
    pub(crate) key: usize,
}

#[pymethods]
impl LeakWatch {
    fn __call__(&self, py: Python<'_>, _ref: &Bound<'_, PyAny>) -> PyResult<()> {
        let _active = Active::enter(py);
        guarded(py, "LeakWatch", || {
            if let Some(inner) = self.pool.upgrade() {
                inner.lost(py, self.key);
            }
            Ok(())
        })
    }
}

/// Registers a freshly opened connection's leak watch: a weak reference whose callback
/// frees the slot if the holder drops the connection.
pub(crate) fn attach_leak_watch(
    inner: &Arc<Inner>,
    py: Python<'_>,
    mut conn: PyConn,
) -> PyResult<PyConn> {
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

impl Inner {
    /// Ends the lease of a returned connection. `Ok(None)`: the parent's, after a fork, to
    /// be left alone; `Err`: not lent by this pool.
    pub(crate) fn end_lease(&self, conn: &Bound<'_, PyAny>) -> PyResult<Option<Pooled<Held>>> {
        let key = conn.as_ptr() as usize;
        if let Some(held) = self.leases.lock().remove(&key) {
            return Ok(Some(held));
        }
        if self.foreign.lock().0.contains(&key) {
            return Ok(None);
        }
        Err(PyValueError::new_err(format!(
            "pool '{}': this connection is not checked out from it (returned twice, \
             or from another pool)",
            self.engine.name()
        )))
    }

    pub(crate) fn keep_foreign(&self, obj: Py<PyAny>, watch: Py<PyAny>) {
        let mut f = self.foreign.lock();
        f.0.insert(obj.as_ptr() as usize);
        f.1.push(obj);
        f.1.push(watch);
    }

    /// Reports holds longer than `leak_threshold` (once each), and returns when the next
    /// may pass it. Run by maintenance.
    pub(crate) fn review_holds(&self, py: Python<'_>, now: Instant) -> Option<Instant> {
        let review = {
            let mut leases = self.leases.lock();
            let held = leases
                .values_mut()
                .map(|h| (Arc::clone(&h.payload.lent), &mut h.meta));
            self.engine.review_holds(held, now)
        };
        for long in review.long {
            self.report_lent(py, Report::LongHold, &long.key, long.held);
        }
        review.next_due
    }

    /// A connection reported as held too long came back (`putconn`, with the lease ended).
    pub(crate) fn long_hold_ended(&self, py: Python<'_>, held: &Pooled<Held>) {
        let took = Instant::now().saturating_duration_since(held.meta.last_used);
        self.report_lent(py, Report::LongHoldReturned, &held.payload.lent, took);
    }

    pub(crate) fn lost(&self, py: Python<'_>, key: usize) {
        // In a fork child before its hook ran (CPython frees the other threads' locals
        // then, in the forking thread): the connection was the parent's, and the locks are
        // held across the fork. The child's hook forgets the lease.
        if self.forking.load(SeqCst) {
            return;
        }
        let Some(held) = self.leases.lock().remove(&key) else {
            return;
        };
        let now = Instant::now();
        if self.engine.lost(&held.meta, now) {
            let held_for = now.saturating_duration_since(held.meta.last_used);
            self.report_lent(py, Report::Leak, &held.payload.lent, held_for);
        }
    }
}
