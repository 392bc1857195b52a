//! Interpreter exit: threads woken during finalization stay parked.

use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Set by the interpreter's exit handler. A thread woken after that must not return to
/// Python: once finalization starts, taking the GIL ends the thread with pthread_exit,
/// whose forced unwind through Rust frames aborts the process. Staying parked is harmless
/// in a process that is exiting (Python 3.14 does the same for its own threads).
pub(crate) static EXITING: AtomicBool = AtomicBool::new(false);

/// Marks the interpreter as exiting; see [`EXITING`].
#[pyfunction]
pub fn _interpreter_exiting() {
    EXITING.store(true, Relaxed);
}

pub(crate) fn park_forever_if_exiting() {
    while EXITING.load(Relaxed) {
        std::thread::park();
    }
}
