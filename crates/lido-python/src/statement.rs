//! `changes_session(sql, vendor)`: lido-core's statement classifier, for the Django backends'
//! statement hook (every statement that goes through Django's cursors is shown to it).

use lido_core::Dialect;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// Whether `sql` may leave state on the session beyond its own transaction. `vendor` is
/// Django's `connection.vendor`: "postgresql" or "mysql". A `str` or UTF-8 `bytes` statement
/// is read; anything else (a psycopg `sql.Composed`, invalid UTF-8, lone surrogates) counts
/// as a change.
#[pyfunction]
pub fn changes_session(sql: &Bound<'_, PyAny>, vendor: &str) -> PyResult<bool> {
    let dialect = dialect_of(vendor)?;
    Ok(statement_text(sql).is_none_or(|text| lido_core::changes_session(text, dialect)))
}

/// A statement as text: a `str`, or UTF-8 `bytes`; None for anything else.
pub(crate) fn statement_text<'a>(sql: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    if let Ok(s) = sql.cast::<PyString>() {
        s.to_str().ok()
    } else if let Ok(b) = sql.cast::<PyBytes>() {
        std::str::from_utf8(b.as_bytes()).ok()
    } else {
        None
    }
}

/// The dialect of Django's `connection.vendor`: "postgresql" or "mysql".
pub(crate) fn dialect_of(vendor: &str) -> PyResult<Dialect> {
    match vendor {
        "postgresql" => Ok(Dialect::Postgres),
        "mysql" => Ok(Dialect::MySql),
        _ => Err(PyValueError::new_err(format!(
            "vendor must be 'postgresql' or 'mysql', not {vendor:?}"
        ))),
    }
}
