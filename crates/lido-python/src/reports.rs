//! Reports of long holds, leaks and idle transactions: one dict each, given to the pool's
//! `on_report` hook (the Python `Pool` logs it and keeps the last ones for `reports()`).

use crate::exit::unraisable;
use crate::holders::{epoch_of, stack_item, Lent};
use crate::inner::Inner;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::time::{Duration, Instant};

/// What a report is about; its `kind` in the dict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// Held longer than `leak_threshold`, still referenced.
    LongHold,
    /// A long hold came back.
    LongHoldReturned,
    /// Dropped by its holder without being returned.
    Leak,
    /// A transaction open with no statement running for `idle_in_transaction_threshold`.
    IdleInTransaction,
    /// Such a transaction ended by the pool after `idle_in_transaction_timeout`.
    IdleTransactionEnded,
}

impl Report {
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Report::LongHold => "long_hold",
            Report::LongHoldReturned => "long_hold_returned",
            Report::Leak => "leak",
            Report::IdleInTransaction => "idle_in_transaction",
            Report::IdleTransactionEnded => "idle_transaction_ended",
        }
    }
}

impl Inner {
    /// Reports `what` of connection `lent` to `on_report`; `seconds`: how long it was held
    /// (long holds, leaks) or idle in its transaction.
    pub(crate) fn report_lent(&self, py: Python<'_>, what: Report, lent: &Lent, seconds: Duration) {
        let Some(hook) = &self.hooks.on_report else {
            return;
        };
        let call = report_dict(py, what, lent, seconds).and_then(|d| hook.call1(py, (d,)));
        if let Err(e) = call {
            unraisable(py, e);
        }
    }
}

/// The report's keys: `kind`, `at`, `connection_id`, `seconds`, `holder`, `stack` (where
/// the connection was taken), `transaction_stack`, `last_statement` (its shape).
fn report_dict<'py>(
    py: Python<'py>,
    what: Report,
    lent: &Lent,
    seconds: Duration,
) -> PyResult<Bound<'py, PyDict>> {
    let now = Instant::now();
    let d = PyDict::new(py);
    d.set_item("kind", what.kind())?;
    d.set_item("at", epoch_of(now, now))?;
    d.set_item("connection_id", lent.id)?;
    d.set_item("seconds", seconds.as_secs_f64())?;
    d.set_item("holder", lent.taker.describe(py)?)?;
    d.set_item("stack", stack_item(py, lent.taker.stack.as_ref())?)?;
    let a = lent.activity.lock().snapshot(py);
    d.set_item("transaction_stack", stack_item(py, a.transaction_stack())?)?;
    d.set_item("last_statement", a.last_statement(py))?;
    Ok(d)
}
