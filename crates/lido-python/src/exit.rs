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

use crate::errors::{guarded, PoolClosed};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::{ffi, PyTypeInfo};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Set by the exit handler; see the module documentation.
static EXITING: AtomicBool = AtomicBool::new(false);
/// How long exit waits for the sections open when it began.
const DRAIN: Duration = Duration::from_millis(500);

/// A thread that has entered a pool: its identity for `PyThreadState_SetAsyncExc` and its
/// section depth (the thread's own `DEPTH`, read here only under the `THREADS` lock, which
/// the thread's `Registration` takes to remove it before its thread-locals go).
struct Entry {
    ident: std::ffi::c_long,
    depth: *const AtomicUsize,
}

// SAFETY: `depth` is read only under the THREADS lock while the entry is listed, and the
// entry is removed (under that lock) before the thread-local it points to is freed.
unsafe impl Send for Entry {}

/// Every thread that has entered a pool and is still alive.
static THREADS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

thread_local! {
    /// This thread's section depth: written only by this thread (plain loads and stores, no
    /// locked instruction on the hot path), read by the exit handler.
    static DEPTH: AtomicUsize = const { AtomicUsize::new(0) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static REGISTRATION: Registration = Registration::new();
    /// True in the thread running the exit handler.
    static EXIT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Lists this thread in THREADS; dropped when the thread ends, it removes it.
struct Registration(std::ffi::c_long);

impl Registration {
    fn new() -> Self {
        // What CPython's thread states hold as `thread_id` (threading.get_ident()).
        let ident = unsafe { libc::pthread_self() } as std::ffi::c_long;
        let depth = DEPTH.with(|d| d as *const AtomicUsize);
        THREADS.lock().push(Entry { ident, depth });
        Registration(ident)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        THREADS.lock().retain(|e| e.ident != self.0);
    }
}

/// Adds `n` to this thread's section depth. The first time, lists the thread; once its
/// thread-locals are being destroyed, does nothing.
fn add_depth(n: isize) {
    if !REGISTERED.get() {
        if REGISTRATION.try_with(|_| ()).is_err() {
            return;
        }
        REGISTERED.set(true);
    }
    DEPTH.with(|d| d.store(d.load(Relaxed).wrapping_add_signed(n), Relaxed));
}

/// The idents of the threads (other than this one) inside a section.
fn inside() -> Vec<std::ffi::c_long> {
    let me = unsafe { libc::pthread_self() } as std::ffi::c_long;
    THREADS
        .lock()
        .iter()
        // SAFETY: see `Entry`.
        .filter(|e| e.ident != me && unsafe { &*e.depth }.load(Relaxed) > 0)
        .map(|e| e.ident)
        .collect()
}

fn must_park() -> bool {
    EXITING.load(Relaxed) && !EXIT_THREAD.get()
}

/// Closes the gate, ends the long calls of threads inside a section, and waits for open
/// sections to end (at most [`DRAIN`]). Called by the interpreter's exit handler before it
/// closes the pools.
#[pyfunction]
pub fn _interpreter_exiting(py: Python<'_>) -> PyResult<()> {
    guarded(py, "_interpreter_exiting", || {
        EXIT_THREAD.set(true);
        EXITING.store(true, SeqCst);
        let exc = PoolClosed::type_object(py).unbind();
        let deadline = Instant::now() + DRAIN;
        let mut told = Vec::new();
        let mut empty_scans = 0;
        // Sections are counted with plain stores: a thread that has just entered may show up a
        // moment late, so exit ends only after two empty scans a millisecond apart.
        while empty_scans < 2 && Instant::now() < deadline {
            let threads = inside();
            if threads.is_empty() {
                empty_scans += 1;
            } else {
                empty_scans = 0;
                for t in threads {
                    if !told.contains(&t) {
                        // SAFETY: the GIL is held; the exception type stays alive.
                        unsafe { ffi::PyThreadState_SetAsyncExc(t, exc.as_ptr()) };
                        told.push(t);
                    }
                }
            }
            py.detach(|| std::thread::sleep(Duration::from_millis(1)));
        }
        Ok(())
    })
}

/// Before `fork()` (fork.rs): the thread list is not inherited mid-update.
pub(crate) fn before_fork() {
    std::mem::forget(THREADS.lock());
}

pub(crate) fn after_fork_in_parent() {
    // SAFETY: locked by `before_fork` on this thread, and the guard was forgotten.
    unsafe { THREADS.force_unlock() };
}

/// In the child only this thread exists: the others' entries go.
pub(crate) fn after_fork_in_child() {
    // SAFETY: in the child, locked by `before_fork` on this thread, guard forgotten.
    unsafe { lido_core::release_in_child(&THREADS) };
    let me = unsafe { libc::pthread_self() } as std::ffi::c_long;
    THREADS.lock().retain(|e| e.ident == me);
}

/// A section of a pool call that may run Python code; it ends when dropped.
pub(crate) struct Active(());

impl Active {
    /// Opens a section, or parks the thread for good if the interpreter is exiting.
    pub(crate) fn enter(py: Python<'_>) -> Active {
        // Counted before the flag is read: the exit handler, which sets the flag before it
        // reads the counts, then either sees this section or is seen by it (see
        // `_interpreter_exiting` on why it scans twice).
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

/// Writes an error that has no caller to raise to as unraisable, unless it is the
/// `PoolClosed` that exit raised in this thread inside a section: caught by a callback
/// (a wake, a report), it has done its work, and is no error.
pub(crate) fn unraisable(py: Python<'_>, e: PyErr) {
    if !is_exit_interrupt(py, &e) {
        e.write_unraisable(py, None);
    }
}

/// Whether `e` is the `PoolClosed` that exit raises in threads inside a section.
pub(crate) fn is_exit_interrupt(py: Python<'_>, e: &PyErr) -> bool {
    EXITING.load(Relaxed) && e.is_instance_of::<PoolClosed>(py)
}

/// Parks this thread for good. Its sections, nested ones included, will never end: they no
/// longer count.
fn park_forever() -> ! {
    let _ = DEPTH.try_with(|d| d.store(0, Relaxed));
    loop {
        std::thread::park();
    }
}
