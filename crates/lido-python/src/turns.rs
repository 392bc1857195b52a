//! Each thread's turn at each pool (see `lido_core::Config::turn_length`).

use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    /// When this thread's turn at each pool began (keyed by the pool's `turn_id`, and under
    /// gevent by the greenlet too: each greenlet has its own turn): at its first checkout,
    /// then whenever a checkout had to queue. The engine lets a thread pass over waiters
    /// only within its turn (`Config::turn_length`).
    static TURNS: RefCell<Vec<((usize, usize), Instant)>> = const { RefCell::new(Vec::new()) };
}

/// Pools (and greenlets) a thread remembers turns for. Entries are never removed when a
/// pool or a greenlet goes, so the list is capped; a pool whose entry fell off just gives
/// the thread a fresh turn. Plain threads use a few entries at the front; a gevent thread
/// may have many greenlets.
pub(crate) const TURNS_KEPT: usize = 256;

/// This thread's turn at pool `key`: started at `now` if `restart` or if it has none yet.
pub(crate) fn thread_turn(key: (usize, usize), now: Instant, restart: bool) -> Instant {
    TURNS.with_borrow_mut(|turns| {
        if let Some(entry) = turns.iter_mut().find(|(k, _)| *k == key) {
            if restart {
                entry.1 = now;
            }
            return entry.1;
        }
        if turns.len() == TURNS_KEPT {
            turns.remove(0);
        }
        turns.push((key, now));
        now
    })
}

pub(crate) fn turn_of(key: (usize, usize)) -> Option<Instant> {
    TURNS.with_borrow(|turns| turns.iter().find(|(k, _)| *k == key).map(|&(_, t)| t))
}
