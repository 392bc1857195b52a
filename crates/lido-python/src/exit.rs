//! Interpreter exit: no thread is inside the pool, running Python, when finalization starts.
//!
//! Once CPython 3.11–3.13 starts finalizing, a daemon thread that takes the GIL is ended
//! with `pthread_exit`. Its forced unwind aborts the process ("FATAL: exception not
//! rethrown") when it meets a Rust frame that catches unwinds, as PyO3's method trampolines
//! do; and it can happen wherever Python code runs: in a driver call, a hook, the eval
//! loop's GIL hand-over. So every entry into the pool that may run Python code is an
//! [`Active`] section, counted per thread. At exit, [`_interpreter_exiting`] closes the
//! gate, raises `PoolClosed` in the threads inside a section (so a long driver call, such as
//! a connect to a silent server, ends at its next Python step) and waits, without the GIL,
//! until no section is open, up to [`DRAIN`]. A thread that then enters, or wakes from a
//! wait, parks for good without the GIL: harmless in a process that is exiting (Python 3.14
//! does the same for its own threads). The thread that runs the exit handler passes the
//! gate, to close the pools.

use crate::errors::PoolClosed;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::{ffi, PyTypeInfo};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Set by the exit handler; see the module documentation.
static EXITING: AtomicBool = AtomicBool::new(false);
/// How long exit waits for the sections open when it began.
const DRAIN: Duration = Duration::from_millis(500);

/// A thread that has entered a pool: its identity for `PyThreadState_SetAsyncExc` and how
/// many sections it is inside.
struct ThreadSlot {
    ident: std::ffi::c_long,
    depth: AtomicUsize,
}

/// Every thread that has entered a pool and is still alive.
static THREADS: Mutex<Vec<Weak<ThreadSlot>>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: Arc<ThreadSlot> = register();
    /// True in the thread running the exit handler.
    static EXIT_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn register() -> Arc<ThreadSlot> {
    let slot = Arc::new(ThreadSlot {
        // What CPython's thread states hold as `thread_id` (threading.get_ident()).
        ident: unsafe { libc::pthread_self() } as std::ffi::c_long,
        depth: AtomicUsize::new(0),
    });
    let mut threads = THREADS.lock();
    threads.retain(|t| t.strong_count() > 0);
    threads.push(Arc::downgrade(&slot));
    slot
}

/// Adds `n` to this thread's section depth (none once its thread-locals are gone).
fn add_depth(n: isize) {
    let _ = SLOT.try_with(|s| {
        if n > 0 {
            s.depth.fetch_add(n.unsigned_abs(), SeqCst)
        } else {
            s.depth.fetch_sub(n.unsigned_abs(), SeqCst)
        }
    });
}

fn must_park() -> bool {
    EXITING.load(SeqCst) && !EXIT_THREAD.get()
}

/// Closes the gate, ends the long calls of threads inside a section, and waits for open
/// sections to end (at most [`DRAIN`]). Called by the interpreter's exit handler before it
/// closes the pools.
#[pyfunction]
pub fn _interpreter_exiting(py: Python<'_>) {
    EXIT_THREAD.set(true);
    EXITING.store(true, SeqCst);
    let me = unsafe { libc::pthread_self() } as std::ffi::c_long;
    let inside = || -> Vec<Arc<ThreadSlot>> {
        THREADS
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|t| t.ident != me && t.depth.load(SeqCst) > 0)
            .collect()
    };
    let exc = PoolClosed::type_object(py);
    for t in inside() {
        // SAFETY: the GIL is held; the exception is a type object that stays alive.
        unsafe { ffi::PyThreadState_SetAsyncExc(t.ident, exc.as_ptr()) };
    }
    let deadline = Instant::now() + DRAIN;
    py.detach(|| {
        while !inside().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// A section of a pool call that may run Python code; it ends when dropped.
pub(crate) struct Active(());

impl Active {
    /// Opens a section, or parks the thread for good if the interpreter is exiting.
    pub(crate) fn enter(py: Python<'_>) -> Active {
        // Counted before the flag is read: the exit handler, which sets the flag before it
        // reads the counts, then either sees this section or is seen by it.
        add_depth(1);
        if must_park() {
            py.detach(|| {
                park_forever();
            });
        }
        Active(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        add_depth(-1);
    }
}

/// Runs `wait` (which must not hold the GIL) outside the caller's section: a thread that
/// waits does not hold up exit. Woken after exit began, it parks for good.
pub(crate) fn outside_section<R>(wait: impl FnOnce() -> R) -> R {
    add_depth(-1);
    let r = wait();
    add_depth(1);
    if must_park() {
        park_forever();
    }
    r
}

/// For a thread that waits outside any section: woken after exit began, it parks for good.
pub(crate) fn park_forever_if_exiting() {
    if must_park() {
        park_forever();
    }
}

/// Between the steps of a call that may run Python code several times: once exit has
/// begun, stop with `PoolClosed` rather than start another driver call.
pub(crate) fn check_not_exiting(name: &str) -> PyResult<()> {
    if must_park() {
        return Err(PoolClosed::new_err(format!(
            "pool '{name}': the interpreter is exiting"
        )));
    }
    Ok(())
}

/// Parks this thread for good. Its sections, nested ones included, will never end: they no
/// longer count.
fn park_forever() -> ! {
    let _ = SLOT.try_with(|s| s.depth.store(0, SeqCst));
    loop {
        std::thread::park();
    }
}
