//! The driver protocol: the Python callbacks the pool makes, the per-driver hooks learned
//! from the first connection, and how a returned connection's transaction status is read.
//!
//! Every Python callback Rust makes, each called with the GIL held and no engine lock:
//!
//! | callback | from | called when | arguments -> return | an exception means |
//! |---|---|---|---|---|
//! | `connect` | pool | a checkout or maintenance holds an open permit (`Inner::open`) | (seconds left: the checkout's remaining time, or the pool's `timeout` for maintenance) -> a new connection | the open failed: `transient` says how; the slot is freed |
//! | `transient` | pool | a `connect` raised (`Inner::connect_failed`) | (exception) -> true if the failure may pass (connection refused or timed out, server starting up or shutting down) | taken as permanent. Permanent: a checkout raises the error at once. Transient: the engine takes the server to be down, the checkout waits and retries within its timeout (one probe at a time for the pool), then raises `PoolTimeout` with the error as `__cause__`; maintenance reports it to `on_error` and backs off |
//! | `driver_for` | pool | once, at the first open (`Driver::learn`) | (conn) -> an object with the five driver attributes below and `status_attr` | that open fails, as for `connect`; the next open asks again |
//! | `status_source` | driver | with `status_attr`, once per connection at open; without (`""`), at every return | (conn) -> an object whose `status_attr` is the status (it must not reference conn), or the status itself: a libpq `PQtransactionStatus` code | at open, the open fails; at return, the connection is closed |
//! | `rollback` | driver | at return, when a transaction is open or failed, or the status is unknown (`Inner::clean`) | (conn) -> ignored | the connection is closed |
//! | `check` | pool's `check`, else driver's | at checkout, after the connection sat idle longer than `check_after_idle`, if time is left (`Inner::verify`); the socket is shut down at the checkout's deadline if it has not returned (`deadline.rs`) | (conn) -> ignored | the connection is closed and replaced (`closes_check_failed`) |
//! | `close` | driver | when the engine retires a connection, never for a fork parent's (`Inner::retire`) | (conn) -> ignored | reported to `on_error`; the slot is freed anyway |
//! | `fileno` | driver | once per connection at open | (conn) -> the socket's fd | no socket probe for that connection |
//! | `reset` | pool | at every return, after any rollback (`Inner::clean`) | (conn) -> ignored | reported to `on_error`; the connection is closed |
//! | `on_report` | pool | a lent connection was garbage-collected unreturned (`Inner::lost`); maintenance found one held longer than `leak_threshold` (once per hold, `Inner::review_holds`), then at its return (`Inner::long_hold_ended`); maintenance found a transaction idle past `idle_in_transaction_threshold`, or ended one past `idle_in_transaction_timeout` (idle.rs) | (report: a dict, reports.rs) -> ignored | printed as unraisable |
//! | `on_error` | pool | an error on a path with no caller to raise to: close, reset, maintenance opens (`Inner::report`) | (what, exception) -> ignored | printed as unraisable, as is the error itself without the hook |
//!
//! "pool" callbacks are `PoolCore`'s constructor arguments ([`Hooks`]); "driver" ones are
//! attributes of what `driver_for` returns ([`Driver`]).

use pyo3::prelude::*;
use pyo3::types::PyString;

/// libpq's PQtransactionStatus codes, the convention every driver hook maps to.
const TX_IDLE: i64 = 0;
pub(crate) const TX_ACTIVE: i64 = 1;
pub(crate) const TX_INTRANS: i64 = 2;
pub(crate) const TX_INERROR: i64 = 3;

/// How to read a returned connection's transaction status (libpq codes).
enum TxStatus {
    /// Unknown: always roll back.
    Unknown,
    /// Call this on the connection.
    Call(Py<PyAny>),
    /// Call this once per connection at open, then read the attribute on what it gave.
    /// The source must not reference the connection, or leased connections stay alive.
    Attr(Py<PyAny>, Py<PyString>),
}

/// Per-driver hooks, learned from the first connection.
pub(crate) struct Driver {
    status: TxStatus,
    pub(crate) rollback: Py<PyAny>,
    /// The default round-trip check; a user's `check` takes precedence.
    pub(crate) check: Py<PyAny>,
    pub(crate) close: Py<PyAny>,
    pub(crate) fileno: Py<PyAny>,
}

/// The pool's own callbacks, given to `PoolCore`.
pub(crate) struct Hooks {
    pub(crate) connect: Py<PyAny>,
    /// conn -> driver object with `status_source`, `status_attr`, `rollback`, `check`,
    /// `close`, `fileno`.
    pub(crate) driver_for: Py<PyAny>,
    pub(crate) check: Option<Py<PyAny>>,
    /// exception -> whether a failed connect may succeed later; None: none may.
    pub(crate) transient: Option<Py<PyAny>>,
    pub(crate) reset: Option<Py<PyAny>>,
    /// (report dict) -> None; logs a leak, a long hold, an idle transaction.
    pub(crate) on_report: Option<Py<PyAny>>,
    /// (what, exception) -> None; logs an error swallowed on a background path.
    pub(crate) on_error: Option<Py<PyAny>>,
}

impl Driver {
    /// Asks `driver_for` for the hooks of the driver `conn` comes from.
    pub(crate) fn learn(
        py: Python<'_>,
        driver_for: &Py<PyAny>,
        conn: &Bound<'_, PyAny>,
    ) -> PyResult<Driver> {
        let d = driver_for.call1(py, (conn,))?;
        let d = d.bind(py);
        let source = d.getattr("status_source")?;
        let attr = d.getattr("status_attr")?.cast_into::<PyString>()?;
        let status = if source.is_none() {
            TxStatus::Unknown
        } else if attr.is_empty()? {
            TxStatus::Call(source.unbind())
        } else {
            TxStatus::Attr(source.unbind(), attr.unbind())
        };
        Ok(Driver {
            status,
            rollback: d.getattr("rollback")?.unbind(),
            check: d.getattr("check")?.unbind(),
            close: d.getattr("close")?.unbind(),
            fileno: d.getattr("fileno")?.unbind(),
        })
    }

    /// What to read a new connection's status on at each return, looked up once at open;
    /// `None` if the status is called for or unknown.
    pub(crate) fn status_source(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyAny>,
    ) -> PyResult<Option<Py<PyAny>>> {
        match &self.status {
            TxStatus::Attr(source, _) => Ok(Some(source.call1(py, (conn,))?)),
            _ => Ok(None),
        }
    }

    /// Whether a returned connection needs a rollback: yes in a transaction, open or
    /// failed, or when the status is unknown. `None`: it cannot be cleaned (a query still
    /// running, or broken).
    pub(crate) fn needs_rollback(
        &self,
        py: Python<'_>,
        conn: &Bound<'_, PyAny>,
        status_source: Option<&Py<PyAny>>,
    ) -> Option<bool> {
        let code = match (&self.status, status_source) {
            (TxStatus::Attr(_, attr), Some(source)) => source.bind(py).getattr(attr.bind(py)),
            (TxStatus::Call(f), _) => f.bind(py).call1((conn,)),
            _ => return Some(true),
        };
        match code.and_then(|v| v.extract::<i64>()) {
            Ok(TX_IDLE) => Some(false),
            Ok(TX_INTRANS | TX_INERROR) => Some(true),
            _ => None,
        }
    }

    /// The status of a connection in use, read on its status source (without the
    /// connection, which the pool does not hold while it is lent), for `connections()`:
    /// None where the driver reads it through the connection, or does not know it.
    pub(crate) fn status_in_use(&self, py: Python<'_>, source: Option<&Py<PyAny>>) -> Option<i64> {
        match (&self.status, source) {
            (TxStatus::Attr(_, attr), Some(source)) => {
                source.bind(py).getattr(attr.bind(py)).ok()?.extract().ok()
            }
            _ => None,
        }
    }

    /// Whether the status is known; a rollback of an unknown status is not counted.
    pub(crate) fn knows_status(&self) -> bool {
        !matches!(self.status, TxStatus::Unknown)
    }
}
