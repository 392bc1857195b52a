//! The driver protocol: the per-driver hooks learned from the first connection, and the
//! pool's own hooks.

use pyo3::prelude::*;
use pyo3::types::PyString;

/// libpq's PQtransactionStatus codes, the convention every driver hook maps to.
pub(crate) const TX_IDLE: i64 = 0;
pub(crate) const TX_INTRANS: i64 = 2;
pub(crate) const TX_INERROR: i64 = 3;

/// How to read a returned connection's transaction status (libpq codes).
pub(crate) enum TxStatus {
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
    pub(crate) status: TxStatus,
    pub(crate) rollback: Py<PyAny>,
    /// The default round-trip check; a user's `check` takes precedence.
    pub(crate) check: Py<PyAny>,
    pub(crate) close: Py<PyAny>,
    pub(crate) fileno: Py<PyAny>,
}

pub(crate) struct Hooks {
    pub(crate) connect: Py<PyAny>,
    /// conn -> driver object with `status`, `rollback`, `check`, `close`, `fileno`.
    pub(crate) driver_for: Py<PyAny>,
    pub(crate) check: Option<Py<PyAny>>,
    pub(crate) reset: Option<Py<PyAny>>,
    /// (connection id, seconds held) -> None; logs the leak.
    pub(crate) on_leak: Option<Py<PyAny>>,
    /// (what, exception) -> None; logs an error swallowed on a background path.
    pub(crate) on_error: Option<Py<PyAny>>,
}
