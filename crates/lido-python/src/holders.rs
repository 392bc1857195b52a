//! Who holds what: the record of each connection lent out ([`Lent`]), what the statement
//! hook tells it through its Python handle ([`Lease`]), and `PoolCore.connections()`.

use crate::driver::{TX_ACTIVE, TX_INERROR, TX_INTRANS};
use crate::errors::guarded;
use crate::exit::Active;
use crate::inner::Inner;
use crate::leases::{Taker, Within};
use crate::queries::shape_of;
use crate::stack::Stack;
use crate::statement::{dialect_of, statement_text};
use lido_core::Dialect;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One connection lent out: made at checkout, shared by the pool's lease map and the
/// statement hook's [`Lease`] handle.
pub(crate) struct Lent {
    pub(crate) id: u64,
    pub(crate) taken: Instant,
    pub(crate) taker: Taker,
    pub(crate) activity: Mutex<Activity>,
    /// Its idle transaction was ended (socket shut down): discarded when it comes back.
    /// Apart from `activity` so that every return reads it without the lock.
    pub(crate) ended: AtomicBool,
}

/// What the statement hook (Django's) reports of a lent connection. Without the hook
/// nothing is known of its transactions and statements.
#[derive(Default)]
pub(crate) struct Activity {
    /// The hook has seen this lease: the transaction state below is known.
    pub(crate) tracked: bool,
    /// When the open transaction began (Django's `set_autocommit(False)`), and where.
    pub(crate) transaction: Option<(Instant, Option<Stack>)>,
    /// A commit or rollback with autocommit off ended the transaction: the next statement
    /// opens another.
    pub(crate) next_statement_opens: bool,
    /// The last statement's SQL (only its shape is ever shown) and how long it took;
    /// `running_since` while it runs.
    pub(crate) last_sql: Option<Py<PyAny>>,
    pub(crate) last_took: Option<Duration>,
    pub(crate) running_since: Option<Instant>,
    /// When the holder last did something: the transaction's start or a statement's end.
    pub(crate) idle_since: Option<Instant>,
    /// Reported as idle in transaction, in this idle spell.
    pub(crate) idle_reported: bool,
    /// The SQL dialect, once the hook has taken a handle (for the statement's shape).
    pub(crate) dialect: Option<Dialect>,
}

impl Lent {
    pub(crate) fn new(py: Python<'_>, id: u64, depth: usize, within: Within) -> Lent {
        Lent {
            id,
            taken: Instant::now(),
            taker: Taker::current(py, depth, within),
            activity: Mutex::new(Activity::default()),
            ended: AtomicBool::new(false),
        }
    }

    /// Whether the idle transaction was ended, so the connection must not be reused.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Relaxed)
    }
}

/// An [`Instant`] as `time.time()` would have said then.
pub(crate) fn epoch_of(at: Instant, now: Instant) -> f64 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    wall - now.saturating_duration_since(at).as_secs_f64()
}

/// The Python handle on a lent connection, for the Django backends' statement hook.
#[pyclass(module = "django_lido._lido", frozen)]
pub struct Lease {
    pub(crate) lent: Arc<Lent>,
    pub(crate) inner: Arc<Inner>,
    pub(crate) dialect: Dialect,
}

#[pymethods]
impl Lease {
    /// A statement is about to be sent: it runs from now. Returns whether it may leave
    /// state on the session (`changes_session`).
    fn begin(&self, py: Python<'_>, sql: &Bound<'_, PyAny>) -> PyResult<bool> {
        guarded(py, "Lease.begin", || {
            let (changes_session, opens) = self.lent.statement_begun(sql, self.dialect);
            if opens {
                let _active = Active::enter(py); // a stack walk may run Python code (exit.rs)
                self.lent.transaction(py, true, self.inner.stack_depth)?;
            }
            Ok(changes_session)
        })
    }

    /// The statement begun last ended (`failed` if it raised), having given `rows` rows
    /// (the driver cursor's `rowcount`: unknown when negative or not an int).
    fn end(&self, py: Python<'_>, rows: &Bound<'_, PyAny>, failed: bool) -> PyResult<()> {
        let (inner, dialect) = (&self.inner, self.dialect);
        guarded(py, "Lease.end", || {
            self.lent.statement_ended(py, inner, dialect, rows, failed)
        })
    }

    /// The holder opened (`open`) or ended its transaction; its start keeps the stack.
    fn transaction(&self, py: Python<'_>, open: bool) -> PyResult<()> {
        let _active = Active::enter(py); // a stack walk may run Python code (exit.rs)
        let depth = self.inner.stack_depth;
        guarded(py, "Lease.transaction", || {
            self.lent.transaction(py, open, depth)
        })
    }

    /// The holder committed or rolled back with autocommit off: the transaction is over,
    /// and the driver opens the next one with the next statement.
    fn transaction_over(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, "Lease.transaction_over", || {
            self.lent.transaction_over();
            Ok(())
        })
    }
}

impl Lent {
    /// Whether `sql` may change the session, as `changes_session` says, and whether it
    /// opens a transaction (the first after a commit with autocommit off).
    fn statement_begun(&self, sql: &Bound<'_, PyAny>, dialect: Dialect) -> (bool, bool) {
        let now = Instant::now();
        let (previous, opens) = {
            let mut a = self.activity.lock();
            a.tracked = true;
            a.running_since = Some(now);
            let opens = std::mem::take(&mut a.next_statement_opens);
            (a.last_sql.replace(sql.clone().unbind()), opens)
        };
        drop(previous); // outside the lock: freeing runs no code of ours under it
        let changes =
            statement_text(sql).is_none_or(|text| lido_core::changes_session(text, dialect));
        (changes, opens)
    }

    /// See [`Lease::transaction_over`].
    fn transaction_over(&self) {
        let previous = {
            let mut a = self.activity.lock();
            a.tracked = true;
            a.idle_reported = false;
            a.idle_since = Some(Instant::now());
            a.next_statement_opens = true;
            a.transaction.take()
        };
        drop(previous);
    }

    /// Records the statement's time; into the pool's query statistics too.
    fn statement_ended(
        &self,
        py: Python<'_>,
        inner: &Inner,
        dialect: Dialect,
        rows: &Bound<'_, PyAny>,
        failed: bool,
    ) -> PyResult<()> {
        let now = Instant::now();
        let (sql, took) = {
            let mut a = self.activity.lock();
            let Some(since) = a.running_since.take() else {
                return Ok(());
            };
            let took = now.saturating_duration_since(since);
            a.last_took = Some(took);
            a.idle_since = Some(now);
            a.idle_reported = false;
            (a.last_sql.as_ref().map(|s| s.clone_ref(py)), took)
        };
        if let Some(text) = sql.as_ref().and_then(|s| statement_text(s.bind(py))) {
            let rows = rows.extract::<u64>().ok();
            inner.record_statement(text, dialect, took, rows, failed);
        }
        Ok(())
    }

    /// A transaction opened (with the stack that opened it, `depth` frames) or ended.
    fn transaction(&self, py: Python<'_>, open: bool, depth: usize) -> PyResult<()> {
        let opened = open.then(|| Stack::capture(py, depth));
        let now = Instant::now();
        let previous = {
            let mut a = self.activity.lock();
            a.tracked = true;
            a.idle_reported = false;
            a.idle_since = Some(now);
            a.next_statement_opens = false;
            std::mem::replace(&mut a.transaction, opened.map(|s| (now, s)))
        };
        drop(previous);
        Ok(())
    }
}

/// Keys of the dicts of `connections()` and of reports.
mod key {
    pub const ID: &str = "id";
    pub const HELD_FOR: &str = "held_for";
    pub const TAKEN_AT: &str = "taken_at";
    pub const HOLDER: &str = "holder";
    pub const IN_TRANSACTION: &str = "in_transaction";
    pub const TRANSACTION_FOR: &str = "transaction_for";
    pub const LAST_STATEMENT: &str = "last_statement";
    pub const LAST_STATEMENT_SECONDS: &str = "last_statement_seconds";
    pub const STATEMENT_RUNNING: &str = "statement_running";
    pub const STACK: &str = "stack";
    pub const TRANSACTION_STACK: &str = "transaction_stack";
}

/// A stack for a dict: its lines, or None when none was taken.
pub(crate) fn stack_item<'py>(
    py: Python<'py>,
    stack: Option<&Stack>,
) -> PyResult<Option<Bound<'py, PyList>>> {
    stack.map(|s| s.format(py)).transpose()
}

/// What [`Activity`] says, copied out of its lock: no Python code runs under that lock
/// (formatting a stack could collect garbage, and a finalizer run a statement).
pub(crate) struct Snapshot {
    pub(crate) tracked: bool,
    pub(crate) transaction: Option<(Instant, Option<Stack>)>,
    pub(crate) last_sql: Option<Py<PyAny>>,
    pub(crate) last_took: Option<Duration>,
    pub(crate) running: bool,
    pub(crate) dialect: Option<Dialect>,
}

impl Activity {
    pub(crate) fn snapshot(&self, py: Python<'_>) -> Snapshot {
        Snapshot {
            tracked: self.tracked,
            transaction: self
                .transaction
                .as_ref()
                .map(|(at, s)| (*at, s.as_ref().map(|s| s.clone_ref(py)))),
            last_sql: self.last_sql.as_ref().map(|s| s.clone_ref(py)),
            last_took: self.last_took,
            running: self.running_since.is_some(),
            dialect: self.dialect,
        }
    }
}

impl Snapshot {
    /// The last statement's shape, if one was seen.
    pub(crate) fn last_statement(&self, py: Python<'_>) -> Option<String> {
        let sql = self.last_sql.as_ref()?;
        shape_of(statement_text(sql.bind(py))?, self.dialect?)
    }

    /// The stack that began the open transaction, if any.
    pub(crate) fn transaction_stack(&self) -> Option<&Stack> {
        self.transaction.as_ref().and_then(|(_, s)| s.as_ref())
    }
}

impl Inner {
    /// The handle on `conn` for the statement hook, if this pool lent it; `vendor` is
    /// Django's ("postgresql" or "mysql").
    pub(crate) fn lease_of(
        self: &Arc<Self>,
        conn: &Bound<'_, PyAny>,
        vendor: &str,
    ) -> PyResult<Option<Lease>> {
        let dialect = dialect_of(vendor)?;
        let key = conn.as_ptr() as usize;
        let Some(lent) = self
            .leases
            .lock()
            .get(&key)
            .map(|h| Arc::clone(&h.payload.lent))
        else {
            return Ok(None);
        };
        {
            let mut a = lent.activity.lock();
            a.dialect = Some(dialect);
            a.tracked = true;
        }
        Ok(Some(Lease {
            lent,
            inner: Arc::clone(self),
            dialect,
        }))
    }

    /// `connections()`: one dict per connection lent out, oldest first.
    pub(crate) fn connections<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut lent: Vec<(Arc<Lent>, Option<Py<PyAny>>)> = self
            .leases
            .lock()
            .values()
            .map(|h| {
                let source = h.payload.status_source.as_ref().map(|s| s.clone_ref(py));
                (Arc::clone(&h.payload.lent), source)
            })
            .collect();
        lent.sort_by_key(|(l, _)| l.taken);
        let now = Instant::now();
        let out = PyList::empty(py);
        for (l, source) in lent {
            out.append(self.describe_lent(py, &l, source.as_ref(), now)?)?;
        }
        Ok(out)
    }

    fn describe_lent<'py>(
        &self,
        py: Python<'py>,
        l: &Lent,
        status_source: Option<&Py<PyAny>>,
        now: Instant,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item(key::ID, l.id)?;
        d.set_item(
            key::HELD_FOR,
            now.saturating_duration_since(l.taken).as_secs_f64(),
        )?;
        d.set_item(key::TAKEN_AT, epoch_of(l.taken, now))?;
        d.set_item(key::HOLDER, l.taker.describe(py)?)?;
        d.set_item(key::STACK, stack_item(py, l.taker.stack.as_ref())?)?;
        let a = l.activity.lock().snapshot(py);
        // Without the statement hook, the driver's status where it can be read (psycopg):
        // whether a transaction is open or a statement running, not since when.
        let status = (!a.tracked)
            .then(|| self.driver(py)?.status_in_use(py, status_source))
            .flatten();
        let (in_tx, tx_for) = match (&a.transaction, a.tracked) {
            (Some((since, _)), _) => (
                Some(true),
                Some(now.saturating_duration_since(*since).as_secs_f64()),
            ),
            (None, true) => (Some(false), None),
            (None, false) => (status.map(|s| s == TX_INTRANS || s == TX_INERROR), None),
        };
        let tx_stack = stack_item(py, a.transaction_stack())?;
        d.set_item(key::IN_TRANSACTION, in_tx)?;
        d.set_item(key::TRANSACTION_FOR, tx_for)?;
        d.set_item(key::TRANSACTION_STACK, tx_stack)?;
        d.set_item(key::LAST_STATEMENT, a.last_statement(py))?;
        d.set_item(
            key::LAST_STATEMENT_SECONDS,
            a.last_took.map(|t| t.as_secs_f64()),
        )?;
        d.set_item(
            key::STATEMENT_RUNNING,
            a.running || status == Some(TX_ACTIVE),
        )?;
        Ok(d)
    }
}
