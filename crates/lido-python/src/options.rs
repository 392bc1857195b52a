//! Pool options from Python: `PoolOptions` (checked once, then handed to pools) and
//! `OPTIONS` (the engine's table, for the Python layers and the documentation).
//!
//! Python values map to the engine's [`Value`]s strictly: a bool is never a number, an int
//! never a bool. The engine's table decides what is allowed and words every message; this
//! file only renders Python values and raises `TypeError` or `ValueError`.

use crate::errors::{config_error, guarded};
use lido_core::{
    checkout_timeout, option, Config, ConfigError, Kind, SetError, Validated, Value, OPTIONS,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyTuple};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// The engine's value for a Python object.
fn value_of(obj: &Bound<'_, PyAny>) -> Value {
    if obj.is_none() {
        Value::None
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if obj.is_instance_of::<PyInt>() {
        // Beyond i64 is beyond every bound: clamp, and the message shows the real value.
        obj.extract::<i64>().map_or_else(
            |_| {
                let negative = obj.lt(0i64).unwrap_or(false);
                Value::Int(if negative { i64::MIN } else { i64::MAX })
            },
            Value::Int,
        )
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Value::Number(f.value())
    } else {
        Value::Other
    }
}

fn to_py<'py>(py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Number(f) => f.into_pyobject(py)?.into_any(),
        Value::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
        Value::None | Value::Other => py.None().into_bound(py),
    })
}

/// The error as Python raises it: the message shows the value as Python writes it.
fn with_repr(mut e: ConfigError, obj: &Bound<'_, PyAny>) -> ConfigError {
    if let Ok(r) = obj.repr() {
        e.value = r.to_string();
    }
    e
}

/// A timeout given to one `getconn()`, checked like the `timeout` option.
pub fn timeout_arg(obj: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let v = value_of(obj);
    match checkout_timeout(v) {
        Ok(d) => Ok(d),
        Err(e) if matches!(v, Value::Int(_) | Value::Number(_)) => {
            Err(config_error(with_repr(e, obj)))
        }
        Err(e) => Err(PyTypeError::new_err(with_repr(e, obj).to_string())),
    }
}

/// A size given to `resize()`; its bounds are checked with the other size's by the engine.
pub fn size_arg(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    let spec = option(name).expect("a size option");
    match value_of(obj) {
        Value::Int(i) => {
            usize::try_from(i).map_err(|_| config_error(with_repr(spec.error(i), obj)))
        }
        v => Err(PyTypeError::new_err(
            with_repr(spec.error(v), obj).to_string(),
        )),
    }
}

/// Pool options, checked: `PoolOptions(min_size=2, max_size=8)`. Unknown names and wrong
/// types raise `TypeError`, values out of bounds `ValueError`, each naming the option, the
/// value and what is allowed. Equal options compare and hash equal.
#[pyclass(module = "django_lido._lido", frozen)]
pub struct PoolOptions {
    pub config: Validated,
}

#[pymethods]
impl PoolOptions {
    #[new]
    #[pyo3(signature = (**options))]
    fn new(py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        guarded(py, "PoolOptions()", || Self::from_dict(options))
    }

    /// Every option and its value, in the table's order.
    fn as_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        guarded(py, "PoolOptions.as_dict", || {
            let d = PyDict::new(py);
            for o in OPTIONS {
                d.set_item(o.name, to_py(py, self.value(o.name))?)?;
            }
            Ok(d)
        })
    }

    fn __getitem__<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        guarded(py, "PoolOptions[]", || match self.config.get(name) {
            Some(v) => to_py(py, v),
            None => Err(pyo3::exceptions::PyKeyError::new_err(name.to_owned())),
        })
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        guarded(py, "PoolOptions ==", || {
            Ok(other
                .cast::<PoolOptions>()
                .is_ok_and(|o| *o.get().config == *self.config))
        })
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<u64> {
        guarded(py, "hash(PoolOptions)", || {
            let mut h = DefaultHasher::new();
            format!("{:?}", *self.config).hash(&mut h);
            Ok(h.finish())
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        guarded(py, "repr(PoolOptions)", || {
            let items: Vec<String> = OPTIONS
                .iter()
                .map(|o| format!("{}={}", o.name, self.value(o.name)))
                .collect();
            Ok(format!("PoolOptions({})", items.join(", ")))
        })
    }
}

impl PoolOptions {
    fn from_dict(options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut cfg = Config::default();
        for (key, obj) in options.into_iter().flatten() {
            let name: String = key.extract()?;
            cfg.set(&name, value_of(&obj)).map_err(|e| match e {
                SetError::Unknown => PyTypeError::new_err(format!(
                    "unknown pool option {name}; allowed: {}",
                    OPTIONS
                        .iter()
                        .map(|o| o.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                SetError::WrongType(e) => PyTypeError::new_err(with_repr(e, &obj).to_string()),
                SetError::Invalid(e) => config_error(with_repr(e, &obj)),
            })?;
        }
        let config = cfg.validate().map_err(config_error)?;
        Ok(PoolOptions { config })
    }

    fn value(&self, name: &str) -> Value {
        self.config.get(name).expect("an option of the table")
    }
}

/// The option table: for each option a dict with `name`, `kind` (count, seconds, fraction,
/// flag), `default`, `allowed` (the wording of its errors) and `doc`.
pub fn option_table<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
    let defaults = Config::default();
    let rows = OPTIONS
        .iter()
        .map(|o| {
            let d = PyDict::new(py);
            d.set_item("name", o.name)?;
            let kind = match o.kind {
                Kind::Count { .. } => "count",
                Kind::Seconds { .. } => "seconds",
                Kind::Fraction { .. } => "fraction",
                Kind::Flag => "flag",
            };
            d.set_item("kind", kind)?;
            d.set_item(
                "default",
                to_py(py, defaults.get(o.name).expect("in the table"))?,
            )?;
            d.set_item("allowed", o.kind.allowed())?;
            d.set_item("doc", o.doc)?;
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, rows)
}
