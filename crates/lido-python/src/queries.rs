//! Query statistics: each statement the hook reports, counted and timed by its shape in the
//! pool's `lido_core::QueryStats`; `PoolCore.query_stats()` and `reset_query_stats()`.

use crate::inner::Inner;
use lido_core::{Dialect, QueryOrder, QueryRow};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::time::Duration;

/// A statement's shape as shown anywhere: its literals never are.
pub(crate) fn shape_of(text: &str, dialect: Dialect) -> Option<String> {
    Some(lido_core::shape(text, dialect).into_owned())
}

impl Inner {
    /// Counts a statement that ended, if the pool keeps query statistics.
    pub(crate) fn record_statement(
        &self,
        sql: &str,
        dialect: Dialect,
        took: Duration,
        rows: Option<u64>,
        failed: bool,
    ) {
        if let Some(stats) = &self.query_stats {
            stats.record(sql, dialect, took, rows, failed);
        }
    }

    /// `query_stats(top, order)`: the `top` shapes by `order` ("total", "count", "mean",
    /// "p99"), as dicts; empty when the pool keeps none.
    pub(crate) fn query_stats_list<'py>(
        &self,
        py: Python<'py>,
        top: usize,
        order: &str,
    ) -> PyResult<Bound<'py, PyList>> {
        let order: QueryOrder = order.parse().map_err(PyValueError::new_err)?;
        let out = PyList::empty(py);
        if let Some(stats) = &self.query_stats {
            for row in stats.top(top, order) {
                out.append(row_dict(py, &row)?)?;
            }
        }
        Ok(out)
    }

    pub(crate) fn reset_query_stats(&self) {
        if let Some(stats) = &self.query_stats {
            stats.reset();
        }
    }
}

/// Keys: `shape, count, errors, total_s, mean_s, p50_s, p99_s, max_s, rows`.
fn row_dict<'py>(py: Python<'py>, r: &QueryRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("shape", &r.shape)?;
    d.set_item("count", r.count)?;
    d.set_item("errors", r.errors)?;
    d.set_item("total_s", r.total.as_secs_f64())?;
    d.set_item("mean_s", r.mean.as_secs_f64())?;
    d.set_item("p50_s", r.p50.as_secs_f64())?;
    d.set_item("p99_s", r.p99.as_secs_f64())?;
    d.set_item("max_s", r.max.as_secs_f64())?;
    d.set_item("rows", r.rows)?;
    Ok(d)
}
