//! [`Engine::drain`]: every connection replaced, the pool staying open.

mod common;

use common::{get, queue, sized as engine, wake};
use lido_core::*;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn drained(e: &Engine<u32>) -> u64 {
    e.stats().closes_for(CloseReason::Drained)
}

fn close_all(e: &Engine<u32>, retired: impl IntoIterator<Item = Retired<u32>>) -> Vec<u32> {
    common::close_all(e, CloseReason::Drained, retired)
}

/// (size, idle, in_use, opening): size must be the sum of the others once every close is
/// done, or a slot leaked.
fn occupancy(e: &Engine<u32>) -> (usize, usize, usize, usize) {
    let s = e.status();
    assert_eq!(
        s.size,
        s.idle + s.in_use + s.opening,
        "a slot leaked: {s:?}"
    );
    (s.size, s.idle, s.in_use, s.opening)
}

fn open_permit(e: &Engine<u32>, t: Instant) -> OpenPermit {
    match e.checkout(t, wake).unwrap() {
        Checkout::Open(p) => p,
        _ => panic!("a free slot"),
    }
}

#[test]
fn idle_connections_are_handed_back_and_the_sizes_stay() {
    let e = engine(1, 4);
    let t = Instant::now();
    let (a, b) = (get(&e, t, 1), get(&e, t, 2));
    e.release(a, true, t);
    e.release(b, true, t);
    assert_eq!(close_all(&e, e.drain()), [1, 2]);
    assert_eq!(occupancy(&e), (0, 0, 0, 0));
    let s = e.status();
    assert_eq!((s.min_size, s.max_size, s.closed), (1, 4, false));
    assert_eq!(drained(&e), 2);
    assert_eq!(e.stats().closes_total(), 2, "nothing else counted");
    // Maintenance refills min_size with fresh connections, which are kept.
    let mut m = e.maintain(t).unwrap();
    assert_eq!(m.open.len(), 1);
    assert!(e
        .opened_idle(m.open.pop().unwrap(), 3, t, Duration::ZERO)
        .is_none());
    assert_eq!(get(&e, t, 99).payload, 3);
    assert_eq!(occupancy(&e), (1, 0, 1, 0));
}

#[test]
fn a_connection_in_use_is_closed_when_it_comes_back_and_its_slot_goes_to_a_waiter() {
    let e = engine(0, 1);
    let t = Instant::now();
    let held = get(&e, t, 1);
    assert!(e.drain().is_empty(), "nothing idle to close now");
    assert_eq!(occupancy(&e), (1, 0, 1, 0));
    let w = queue(&e, t);
    let r = e.release(held, true, t).expect("closed on return");
    assert!(
        w.try_take().is_none(),
        "the slot is freed once the close is done"
    );
    assert_eq!(close_all(&e, [r]), [1]);
    let permit = match w.try_take() {
        Some(Grant::Open(p)) => p,
        _ => panic!("the waiter gets the freed slot"),
    };
    let fresh = e.opened(permit, 2, t, Duration::ZERO).unwrap();
    assert_eq!(occupancy(&e), (1, 0, 1, 0));
    assert!(e.release(fresh, true, t).is_none(), "a fresh one is kept");
    assert_eq!(occupancy(&e), (1, 1, 0, 0));
    assert_eq!(drained(&e), 1);
}

#[test]
fn a_connection_returned_within_its_holders_turn_is_closed_too() {
    let e = engine(0, 2);
    let t = Instant::now();
    let held = get(&e, t, 1);
    e.drain();
    let r = e.release_in_turn(held, true, t, Some(t)).expect("closed");
    assert_eq!(close_all(&e, [r]), [1]);
    assert_eq!(occupancy(&e), (0, 0, 0, 0));
}

#[test]
fn a_checkout_open_under_way_serves_its_caller_then_is_closed_on_return() {
    let e = engine(0, 2);
    let t = Instant::now();
    let permit = open_permit(&e, t);
    e.drain();
    assert_eq!(occupancy(&e), (1, 0, 0, 1));
    let c = e
        .opened(permit, 1, t, Duration::ZERO)
        .expect("the caller's");
    assert_eq!(occupancy(&e), (1, 0, 1, 0));
    let r = e.release(c, true, t).expect("closed on return");
    assert_eq!(close_all(&e, [r]), [1]);
    // A permit given after the drain opens a connection kept as usual.
    let permit = open_permit(&e, t);
    let c = e.opened(permit, 2, t, Duration::ZERO).unwrap();
    assert!(e.release(c, true, t).is_none());
    assert_eq!(occupancy(&e), (1, 1, 0, 0));
    assert_eq!(drained(&e), 1);
}

#[test]
fn an_open_to_keep_idle_under_way_is_closed_when_it_arrives() {
    let e = engine(2, 3);
    let t = Instant::now();
    let mut m = e.maintain(t).unwrap();
    assert_eq!(m.open.len(), 2);
    e.drain();
    for p in [1, 2] {
        let r = e.opened_idle(m.open.pop().unwrap(), p, t, Duration::ZERO);
        assert_eq!(close_all(&e, r), [p]);
    }
    assert_eq!(occupancy(&e), (0, 0, 0, 0));
    assert_eq!(drained(&e), 2);
    // Refilled by the next round, kept this time.
    let m = e.maintain(t).unwrap();
    assert_eq!(m.open.len(), 2);
    for (p, permit) in (3..).zip(m.open) {
        assert!(e.opened_idle(permit, p, t, Duration::ZERO).is_none());
    }
    assert_eq!(occupancy(&e), (2, 2, 0, 0));
}

#[test]
fn an_open_to_keep_idle_under_way_goes_to_a_waiter_and_is_closed_on_return() {
    let e = engine(1, 2);
    let t = Instant::now();
    let permit = e.maintain(t).unwrap().open.pop().unwrap();
    let held = get(&e, t, 1);
    e.drain();
    let w = queue(&e, t);
    assert!(e.opened_idle(permit, 2, t, Duration::ZERO).is_none());
    let c = match w.try_take() {
        Some(Grant::Conn(c, _)) => c,
        _ => panic!("the waiter gets the connection"),
    };
    assert_eq!(c.payload, 2);
    assert_eq!(drained(&e), 0);
    let r = e.release(c, true, t).expect("closed on return");
    assert_eq!(close_all(&e, [r]), [2]);
    let r = e.release(held, true, t).expect("closed on return");
    assert_eq!(close_all(&e, [r]), [1]);
    assert_eq!(occupancy(&e), (0, 0, 0, 0));
    assert_eq!(drained(&e), 2);
}

#[test]
fn a_broken_return_counts_as_broken() {
    let e = engine(0, 1);
    let t = Instant::now();
    let held = get(&e, t, 1);
    e.drain();
    let r = e.release(held, false, t).unwrap();
    assert_eq!(r.reason, CloseReason::Broken);
    e.retire_done(r);
    assert_eq!(drained(&e), 0);
    assert_eq!(occupancy(&e), (0, 0, 0, 0));
}

#[test]
fn draining_twice_closes_what_came_between_and_leaves_later_ones() {
    let e = engine(0, 4);
    let t = Instant::now();
    let (old, idle) = (get(&e, t, 1), get(&e, t, 2));
    e.release(idle, true, t);
    assert_eq!(close_all(&e, e.drain()), [2]);
    let between = get(&e, t, 3);
    e.release(between, true, t);
    let between_held = get(&e, t, 3);
    assert!(e.drain().is_empty(), "the one between is in use again");
    assert!(e.drain().is_empty(), "nothing idle");
    let r = e.release(between_held, true, t).expect("closed");
    assert_eq!(close_all(&e, [r]), [3]);
    let r = e.release(old, true, t).expect("closed");
    assert_eq!(close_all(&e, [r]), [1]);
    let later = get(&e, t, 4);
    assert!(
        e.release(later, true, t).is_none(),
        "opened after the drains: kept"
    );
    assert_eq!(occupancy(&e), (1, 1, 0, 0));
    assert_eq!(drained(&e), 3);
    assert_eq!(e.stats().closes_total(), 3);
}

#[test]
fn a_waiter_sent_to_an_idle_connection_gets_the_freed_slot() {
    let t = Instant::now();
    let (e, w) = common::idle_one_with_a_told_waiter(t);
    let retired = e.drain();
    assert!(matches!(e.retry(&w, t).unwrap(), Checkout::Wait(_)));
    assert_eq!(close_all(&e, retired), [1]);
    assert!(matches!(w.try_take(), Some(Grant::Open(_))));
    assert_eq!(occupancy(&e), (1, 0, 0, 1));
}

#[test]
fn maintenance_is_woken() {
    let e = engine(0, 2);
    let t = Instant::now();
    let c = get(&e, t, 1);
    e.release(c, true, t);
    // Whatever was asked for so far is taken.
    assert!(e.wait_for_maintenance(Instant::now(), false));
    let retired = e.drain();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Not due otherwise (min_size 0): only the drain's request ends this wait early.
            let woken = e.wait_for_maintenance(Instant::now() + Duration::from_secs(60), false);
            tx.send(woken).unwrap();
        });
        let woken = rx.recv_timeout(Duration::from_secs(30));
        assert_eq!(woken, Ok(true), "maintenance was asked for");
    });
    assert_eq!(close_all(&e, retired), [1]);
}

#[test]
fn a_closed_pool_is_left_alone() {
    let e = common::closed_after_one_use(Instant::now());
    assert!(e.drain().is_empty());
    assert_eq!(drained(&e), 0);
    assert!(e.status().closed);
}
