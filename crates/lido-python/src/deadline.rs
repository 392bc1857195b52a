//! A bounded wait for a round trip made through a driver's blocking call: a watch on the
//! connection's socket that shuts it down (`shutdown(2)`, not `close`: the descriptor stays
//! the driver's) when the deadline passes first. The driver's blocked read then ends at
//! once with an error, whatever the network does, and the check fails.
//!
//! One timer thread serves every pool; it is started at the first watch (again in a forked
//! child, where the parent's does not exist) and holds no Python state. Its lock is taken
//! around `fork()` (`pthread_atfork`), so a child never inherits it held.

use parking_lot::{Condvar, Mutex};
use std::sync::OnceLock;
use std::thread;
use std::time::Instant;

struct Watch {
    id: u64,
    fd: i32,
    deadline: Instant,
}

#[derive(Default)]
struct Watches {
    armed: Vec<Watch>,
    /// Watches whose deadline passed and whose socket was shut down, until disarmed.
    fired: Vec<u64>,
    next_id: u64,
    /// The process whose timer thread runs; another (a forked child) starts its own.
    timer_pid: u32,
}

struct Timer {
    watches: Mutex<Watches>,
    changed: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        // SAFETY: the handlers only take and release the lock of a static.
        unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(after_fork_in_child),
            )
        };
        Timer {
            watches: Mutex::new(Watches::default()),
            changed: Condvar::new(),
        }
    })
}

extern "C" fn before_fork() {
    std::mem::forget(timer().watches.lock());
}

extern "C" fn after_fork_in_parent() {
    // SAFETY: locked by `before_fork` on this thread, and the guard was forgotten.
    unsafe { timer().watches.force_unlock() };
}

extern "C" fn after_fork_in_child() {
    let t = timer();
    // SAFETY: in the child, locked by `before_fork` on this thread, guard forgotten.
    unsafe { lido_core::release_in_child(&t.watches) };
    // The parent's timer thread, waiting on `changed`, does not exist here: wake it out of
    // the queue (the lock is free, so it is not moved onto it), or a notify would go to it
    // instead of the child's own timer thread.
    while t.changed.notify_one() {}
}

fn run(t: &'static Timer) {
    let mut w = t.watches.lock();
    loop {
        let now = Instant::now();
        let mut i = 0;
        while i < w.armed.len() {
            if w.armed[i].deadline <= now {
                let watch = w.armed.swap_remove(i);
                // SAFETY: the descriptor is open: it is disarmed (under this lock) only
                // after the driver call that uses it has returned.
                unsafe { libc::shutdown(watch.fd, libc::SHUT_RDWR) };
                w.fired.push(watch.id);
            } else {
                i += 1;
            }
        }
        match w.armed.iter().map(|x| x.deadline).min() {
            Some(next) => {
                t.changed.wait_until(&mut w, next);
            }
            None => t.changed.wait(&mut w),
        }
    }
}

/// A watch on a socket until [`Armed::disarm`].
pub(crate) struct Armed {
    id: u64,
}

/// Shuts `fd` down at `deadline` unless disarmed first.
pub(crate) fn arm(fd: i32, deadline: Instant) -> Armed {
    let t = timer();
    let mut w = t.watches.lock();
    let pid = std::process::id();
    if w.timer_pid != pid {
        w.timer_pid = pid;
        w.armed.clear();
        w.fired.clear();
        let spawned = thread::Builder::new()
            .name("lido-deadline".into())
            .spawn(move || run(t));
        if spawned.is_err() {
            w.timer_pid = 0; // no watch this time; the next one tries again
        }
    }
    w.next_id += 1;
    let id = w.next_id;
    w.armed.push(Watch { id, fd, deadline });
    drop(w);
    t.changed.notify_one();
    Armed { id }
}

impl Armed {
    /// Ends the watch. True if the deadline passed first and the socket was shut down.
    pub(crate) fn disarm(self) -> bool {
        let fired = end_watch(self.id);
        std::mem::forget(self);
        fired
    }
}

impl Drop for Armed {
    /// Ended on every path (a panic included), so no later socket on a reused descriptor is
    /// ever shut down.
    fn drop(&mut self) {
        end_watch(self.id);
    }
}

fn end_watch(id: u64) -> bool {
    let mut w = timer().watches.lock();
    if let Some(i) = w.armed.iter().position(|x| x.id == id) {
        w.armed.swap_remove(i);
        return false;
    }
    match w.fired.iter().position(|&x| x == id) {
        Some(i) => {
            w.fired.swap_remove(i);
            true
        }
        None => false,
    }
}
