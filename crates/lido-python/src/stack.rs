//! Cheap stacks: at a checkout and at a transaction's start the caller's frames are kept as
//! (code object, instruction offset) pairs, an increment of a reference count each; they
//! become "file:line in function" only when a report or `connections()` shows them.
//!
//! The frames are walked with `PyEval_GetFrame` and `PyFrame_GetCode` (stable ABI) and
//! `PyFrame_GetBack` and `PyFrame_GetLasti`, which are not in the limited API this abi3
//! build compiles against but are exported, with these signatures, by every CPython the
//! wheel supports (3.11 on): they are declared here. The limited API's alternatives cost
//! more per frame: `f_back` as an attribute lookup, and `PyFrame_GetLineNumber`, which
//! decodes the line table at capture time.
//!
//! Frames of django_lido, Django and contextlib are skipped (the caller wants the code that
//! took the connection, not the ORM's way to it); if no other frame is found, the innermost
//! frames are kept as they are.

use parking_lot::{Mutex, MutexGuard};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use std::collections::HashMap;
use std::os::raw::c_int;

extern "C" {
    fn PyFrame_GetBack(frame: *mut ffi::PyFrameObject) -> *mut ffi::PyFrameObject;
    fn PyFrame_GetLasti(frame: *mut ffi::PyFrameObject) -> c_int;
}

/// Frames looked at, at most, for `stack_depth` frames outside the skipped packages.
const MAX_WALK: usize = 512;
/// Code objects whose skip decision is remembered; past this, decided at each sight.
const MAX_KNOWN: usize = 16_384;

/// A captured stack, innermost frame first.
pub(crate) struct Stack(Box<[(Py<PyAny>, c_int)]>);

impl Stack {
    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Stack {
        Stack(self.0.iter().map(|(c, i)| (c.clone_ref(py), *i)).collect())
    }
}

/// Whether a code object's frames are skipped, by its address. The entry keeps the code
/// object alive, so its address is never another's. Touched only with the GIL held, and
/// no Python code runs under the lock (see [`skipped`]), so it is never contended.
static KNOWN: Mutex<Option<Known>> = Mutex::new(None);

/// Code object address -> (the code object, whether its frames are skipped).
type Known = HashMap<usize, (Py<PyAny>, bool)>;

impl Stack {
    /// The calling thread's stack, at most `depth` frames; None when `depth` is 0.
    pub(crate) fn capture(py: Python<'_>, depth: usize) -> Option<Stack> {
        if depth == 0 {
            return None;
        }
        let mut kept: Vec<(Py<PyAny>, c_int)> = Vec::with_capacity(depth);
        // The innermost frames, until one outside the skipped packages is found.
        let mut fallback: Vec<(Py<PyAny>, c_int)> = Vec::new();
        let mut known = KNOWN.lock();
        // SAFETY: the GIL is held. PyEval_GetFrame's frame is borrowed and is given a
        // reference of our own; PyFrame_GetBack and PyFrame_GetCode return new references,
        // each released or moved into a `Py`.
        unsafe {
            let mut frame = ffi::PyEval_GetFrame();
            if !frame.is_null() {
                ffi::Py_IncRef(frame.cast());
            }
            let mut walked = 0;
            while !frame.is_null() && kept.len() < depth && walked < MAX_WALK {
                let code: Py<PyAny> = Py::from_owned_ptr(py, ffi::PyFrame_GetCode(frame).cast());
                let lasti = PyFrame_GetLasti(frame);
                if !skipped(py, &mut known, &code) {
                    kept.push((code, lasti));
                } else if kept.is_empty() && fallback.len() < depth {
                    fallback.push((code, lasti));
                }
                let back = PyFrame_GetBack(frame);
                ffi::Py_DecRef(frame.cast());
                frame = back;
                walked += 1;
            }
            if !frame.is_null() {
                ffi::Py_DecRef(frame.cast());
            }
        }
        Some(Stack(
            if kept.is_empty() { fallback } else { kept }.into_boxed_slice(),
        ))
    }

    /// "file:line in function" for each frame, outermost first, innermost last.
    pub(crate) fn format<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let lines = PyList::empty(py);
        for (code, lasti) in self.0.iter().rev() {
            lines.append(formatted(py, code, *lasti)?)?;
        }
        Ok(lines)
    }
}

/// Formatted frames by (code object address, offset): `connections()` is asked for often
/// (a dashboard, each process's published record) and shows the same frames again. The
/// entry keeps the code object alive, so its address is never another's.
static FORMATTED: Mutex<Option<Formatted>> = Mutex::new(None);

type Formatted = HashMap<(usize, c_int), (Py<PyAny>, Py<PyString>)>;

/// Frames kept formatted; past this, formatted at each sight.
const MAX_FORMATTED: usize = 65_536;

fn formatted<'py>(
    py: Python<'py>,
    code: &Py<PyAny>,
    lasti: c_int,
) -> PyResult<Bound<'py, PyString>> {
    let key = (code.as_ptr() as usize, lasti);
    if let Some((_, line)) = FORMATTED.lock().as_ref().and_then(|f| f.get(&key)) {
        return Ok(line.bind(py).clone());
    }
    // Formatted with the table unlocked: that runs Python.
    let bound = code.bind(py);
    let file = bound.getattr("co_filename")?;
    let name = bound.getattr("co_qualname")?;
    let line = line_of(bound, lasti)?;
    let text = PyString::new(py, &format!("{file}:{line} in {name}"));
    let mut table = FORMATTED.lock();
    let table = table.get_or_insert_with(HashMap::new);
    if table.len() < MAX_FORMATTED {
        table.insert(key, (code.clone_ref(py), text.clone().unbind()));
    }
    Ok(text)
}

/// The line of the instruction at byte offset `lasti`, from `co_lines()`.
fn line_of(code: &Bound<'_, PyAny>, lasti: c_int) -> PyResult<i64> {
    let first: i64 = code.getattr("co_firstlineno")?.extract()?;
    if lasti < 0 {
        return Ok(first);
    }
    let at = i64::from(lasti);
    for entry in code.call_method0("co_lines")?.try_iter()? {
        let (start, end, line): (i64, i64, Option<i64>) = entry?.extract()?;
        if start <= at && at < end {
            return Ok(line.unwrap_or(first));
        }
    }
    Ok(first)
}

/// Whether frames of `code` are skipped: django_lido's, Django's and contextlib's. A code
/// object not seen before is looked at with the lock released (that runs Python, which may
/// collect garbage, and a finalizer take a connection and so capture a stack).
fn skipped(py: Python<'_>, known: &mut MutexGuard<'_, Option<Known>>, code: &Py<PyAny>) -> bool {
    let key = code.as_ptr() as usize;
    if let Some((_, skip)) = known.as_ref().and_then(|k| k.get(&key)) {
        return *skip;
    }
    let skip = MutexGuard::unlocked(known, || decide(py, code.bind(py)).unwrap_or(false));
    let known = known.get_or_insert_with(HashMap::new);
    if known.len() < MAX_KNOWN {
        known.insert(key, (code.clone_ref(py), skip));
    }
    skip
}

fn decide(py: Python<'_>, code: &Bound<'_, PyAny>) -> PyResult<bool> {
    let file = code.getattr("co_filename")?.cast_into::<PyString>()?;
    let file = file.to_str()?;
    let modules = py.import("sys")?.getattr("modules")?;
    for package in ["django_lido", "django", "contextlib"] {
        let Some(module) = modules.get_item(package).ok().filter(|m| !m.is_none()) else {
            continue;
        };
        let Ok(path) = module.getattr("__file__") else {
            continue;
        };
        let Ok(path) = path.extract::<String>() else {
            continue;
        };
        // A package: its directory; a module: its file.
        let prefix = match path.strip_suffix("__init__.py") {
            Some(dir) => dir,
            None => path.as_str(),
        };
        if file.starts_with(prefix) {
            return Ok(true);
        }
    }
    Ok(false)
}
