//! Interpreter exit: no thread is inside the pool, running Python, when finalization starts.
//!
//! Once CPython 3.11–3.13 starts finalizing, a daemon thread that takes the GIL is ended
//! with `pthread_exit`. Its forced unwind aborts the process ("FATAL: exception not
//! rethrown") when it meets a Rust frame that catches unwinds, as PyO3's method trampolines
//! do; and it can happen wherever Python code runs: in a driver call, a hook, the eval
//! loop's GIL hand-over. So every entry into the pool that may run Python code is an
//! [`Active`] section. At exit, [`_interpreter_exiting`] closes the gate and waits (without
//! the GIL, so sections can finish) until no section is open, up to [`DRAIN`]. A thread
//! that then enters, or wakes from a wait, parks for good without the GIL: harmless in a
//! process that is exiting (Python 3.14 does the same for its own threads). The thread that
//! runs the exit handler passes the gate, to close the pools.

use crate::errors::guarded;
use pyo3::prelude::*;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Set by the exit handler; see the module documentation.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Threads inside an [`Active`] section.
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// How long exit waits for the sections open when it began.
const DRAIN: Duration = Duration::from_millis(500);

thread_local! {
    /// True in the thread running the exit handler.
    static EXIT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Closes the gate and waits for open sections to end (at most [`DRAIN`]). Called by the
/// interpreter's exit handler before it closes the pools.
#[pyfunction]
pub fn _interpreter_exiting(py: Python<'_>) -> PyResult<()> {
    guarded(py, "_interpreter_exiting", || {
        EXIT_THREAD.set(true);
        EXITING.store(true, SeqCst);
        let deadline = Instant::now() + DRAIN;
        py.detach(|| {
            while ACTIVE.load(SeqCst) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Ok(())
    })
}

/// A section of a pool call that may run Python code; it ends when dropped.
pub(crate) struct Active(());

impl Active {
    /// Opens a section, or parks the thread for good if the interpreter is exiting.
    pub(crate) fn enter(py: Python<'_>) -> Active {
        // Counted before the flag is read: the exit handler, which sets the flag before it
        // reads the count, then either sees this section or is seen by it.
        ACTIVE.fetch_add(1, SeqCst);
        if EXITING.load(SeqCst) && !EXIT_THREAD.get() {
            ACTIVE.fetch_sub(1, SeqCst);
            py.detach(|| {
                park_forever();
            });
        }
        Active(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, SeqCst);
    }
}

/// Runs `wait` (which must not hold the GIL) outside the caller's section: a thread that
/// waits does not hold up exit. Woken after exit began, it parks for good.
pub(crate) fn outside_section<R>(wait: impl FnOnce() -> R) -> R {
    ACTIVE.fetch_sub(1, SeqCst);
    let r = wait();
    ACTIVE.fetch_add(1, SeqCst);
    if EXITING.load(SeqCst) && !EXIT_THREAD.get() {
        ACTIVE.fetch_sub(1, SeqCst);
        park_forever();
    }
    r
}

/// For a thread that waits outside any section: woken after exit began, it parks for good.
pub(crate) fn park_forever_if_exiting() {
    if EXITING.load(SeqCst) && !EXIT_THREAD.get() {
        park_forever();
    }
}

fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}
