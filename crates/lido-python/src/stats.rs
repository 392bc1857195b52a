//! Statistics as Python dicts.

use lido_core::HistogramSummary;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::time::Duration;

pub(crate) fn summary_dict<'py>(
    py: Python<'py>,
    h: &HistogramSummary,
) -> PyResult<Bound<'py, PyDict>> {
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
