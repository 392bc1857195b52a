//! `changes_session(sql, vendor)`: lido-core's statement classifier, for the Django backends'
//! statement hook (every statement that goes through Django's cursors is shown to it).

use lido_core::Dialect;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// Whether `sql` may leave state on the session beyond its own transaction. `vendor` is
/// Django's `connection.vendor`: "postgresql" or "mysql". A `str` or UTF-8 `bytes` statement
/// is read; anything else (a psycopg `sql.Composed`, invalid UTF-8) counts as a change.
#[pyfunction]
pub fn changes_session(sql: &Bound<'_, PyAny>, vendor: &str) -> PyResult<bool> {
    let dialect = match vendor {
        "postgresql" => Dialect::Postgres,
        "mysql" => Dialect::MySql,
        _ => {
            return Err(PyValueError::new_err(format!(
                "vendor must be 'postgresql' or 'mysql', not {vendor:?}"
            )))
        }
    };
    let text = if let Ok(s) = sql.cast::<PyString>() {
        s.to_str()?
    } else if let Ok(b) = sql.cast::<PyBytes>() {
        match std::str::from_utf8(b.as_bytes()) {
            Ok(s) => s,
            Err(_) => return Ok(true),
        }
    } else {
        return Ok(true);
    };
    Ok(lido_core::changes_session(text, dialect))
}
