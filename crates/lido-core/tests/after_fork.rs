//! A process that forks keeps no idle connections: [`Engine::keep_no_idle`], in the parent.

mod common;

use common::{get, sized as engine, wake};
use lido_core::*;
use std::time::{Duration, Instant};

fn after_fork(e: &Engine<u32>) -> u64 {
    e.stats().closes_for(CloseReason::AfterFork)
}

fn close_all(e: &Engine<u32>, retired: Vec<Retired<u32>>) -> Vec<u32> {
    common::close_all(e, CloseReason::AfterFork, retired)
}

#[test]
fn idle_connections_are_handed_back_and_min_size_becomes_zero() {
    let e = engine(2, 4);
    let t = Instant::now();
    let (a, b, held) = (get(&e, t, 1), get(&e, t, 2), get(&e, t, 3));
    e.release(a, true, t);
    e.release(b, true, t);
    e.before_fork();
    e.after_fork_in_parent();
    assert_eq!(close_all(&e, e.keep_no_idle()), [1, 2]);
    let s = e.status();
    assert_eq!((s.min_size, s.max_size), (0, 4), "max_size is not touched");
    assert_eq!((s.size, s.idle, s.in_use), (1, 0, 1));
    assert_eq!(after_fork(&e), 2);
    // Nothing else counted: no resize, no broken return.
    assert_eq!(e.stats().closes_total(), 2);
    // Maintenance does not fill min_size again.
    let m = e.maintain(t).unwrap();
    assert!(m.open.is_empty() && m.retire.is_empty());
    // The connection in use comes back idle, as usual (max_idle closes it later).
    assert!(e.release(held, true, t).is_none());
    assert_eq!(e.status().idle, 1);
}

#[test]
fn other_holders_keep_every_slot_up_to_max_size() {
    let e = engine(0, 3);
    let t = Instant::now();
    let idle = get(&e, t, 1);
    e.release(idle, true, t);
    let closed = close_all(&e, e.keep_no_idle());
    assert_eq!(closed, [1]);
    let held: Vec<_> = (10..13).map(|p| get(&e, t, p)).collect();
    assert_eq!(e.status().in_use, 3);
    for c in held {
        assert!(e.release(c, true, t).is_none(), "none is closed on return");
    }
    assert_eq!(e.status().idle, 3);
    assert_eq!(after_fork(&e), 1);
    assert_eq!(e.stats().closes_total(), 1);
}

#[test]
fn a_maintenance_open_under_way_at_the_fork_is_closed_when_it_arrives() {
    let e = engine(2, 3);
    let t = Instant::now();
    let mut m = e.maintain(t).unwrap();
    assert_eq!(m.open.len(), 2);
    let (p1, p2) = (m.open.pop().unwrap(), m.open.pop().unwrap());
    e.keep_no_idle();
    assert_eq!(e.status().opening, 2);
    // A permit given after the fork opens a connection kept as usual.
    let later = match e.checkout(t, wake).unwrap() {
        Checkout::Open(p) => p,
        _ => panic!("a free slot"),
    };
    let r = e.opened_idle(p1, 1, t, Duration::ZERO).expect("closed");
    assert_eq!(close_all(&e, vec![r]), [1]);
    let r = e.opened_idle(p2, 2, t, Duration::ZERO).expect("closed");
    assert_eq!(close_all(&e, vec![r]), [2]);
    assert!(e.opened_idle(later, 3, t, Duration::ZERO).is_none());
    let s = e.status();
    assert_eq!((s.size, s.idle, s.opening, s.min_size), (1, 1, 0, 0));
    assert_eq!(after_fork(&e), 2);
    assert_eq!(
        e.stats().opens.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    assert!(e.maintain(t).unwrap().open.is_empty());
}

#[test]
fn a_maintenance_open_under_way_at_the_fork_goes_to_a_waiter() {
    let e = engine(1, 2);
    let t = Instant::now();
    let permit = e.maintain(t).unwrap().open.pop().unwrap();
    let held = get(&e, t, 1);
    e.keep_no_idle();
    let w = common::queue(&e, t); // one in use, one being opened
    assert!(e.opened_idle(permit, 2, t, Duration::ZERO).is_none());
    match w.try_take() {
        Some(Grant::Conn(c, _)) => assert_eq!(c.payload, 2),
        _ => panic!("the waiter gets the connection"),
    }
    assert_eq!(after_fork(&e), 0);
    let _ = held;
}

#[test]
fn a_checkout_open_under_way_at_the_fork_is_the_callers() {
    let e = engine(0, 2);
    let t = Instant::now();
    let permit = match e.checkout(t, wake).unwrap() {
        Checkout::Open(p) => p,
        _ => panic!("a free slot"),
    };
    e.keep_no_idle();
    let c = e.opened(permit, 1, t, Duration::ZERO).unwrap();
    assert_eq!(e.status().in_use, 1);
    assert!(e.release(c, true, t).is_none());
    assert_eq!(after_fork(&e), 0);
}

#[test]
fn each_fork_marks_the_opens_under_way_then() {
    let e = engine(1, 2);
    let t = Instant::now();
    e.keep_no_idle();
    e.resize(1, 2).unwrap(); // min_size set again after a fork
    let permit = e.maintain(t).unwrap().open.pop().unwrap();
    assert!(
        e.opened_idle(permit, 1, t, Duration::ZERO).is_none(),
        "kept"
    );
    assert_eq!(close_all(&e, e.keep_no_idle()), [1]);
    e.resize(1, 2).unwrap();
    let permit = e.maintain(t).unwrap().open.pop().unwrap();
    e.keep_no_idle();
    let r = e.opened_idle(permit, 2, t, Duration::ZERO).expect("closed");
    assert_eq!(close_all(&e, vec![r]), [2]);
    assert_eq!(after_fork(&e), 2);
}

#[test]
fn a_closed_pool_is_left_alone() {
    let e = common::closed_after_one_use(Instant::now());
    assert!(e.keep_no_idle().is_empty());
    assert_eq!(after_fork(&e), 0);
}

#[test]
fn a_waiter_sent_to_an_idle_connection_gets_the_freed_slot() {
    let t = Instant::now();
    let (e, w) = common::idle_one_with_a_told_waiter(t);
    let retired = e.keep_no_idle();
    assert!(matches!(e.retry(&w, t).unwrap(), Checkout::Wait(_)));
    assert_eq!(close_all(&e, retired), [1]);
    assert!(matches!(w.try_take(), Some(Grant::Open(_))));
    assert_eq!(e.status().opening, 1);
}
