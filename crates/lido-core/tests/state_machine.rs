//! Deterministic tests of the engine's decisions, with time passed in by hand.

mod common;

use common::{engine, get, wake};
use lido_core::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Checks out, expecting to queue: strictly in order with `turn` None.
fn wait(e: &Engine<u32>, now: Instant, turn: Option<Instant>) -> Arc<Waiter<u32>> {
    match e.checkout_in_turn(now, turn, wake).unwrap() {
        Checkout::Wait(w) => w,
        _ => panic!("should wait"),
    }
}

#[test]
fn opens_up_to_max_then_queues_and_hands_off_fifo() {
    let e = engine(Config {
        max_size: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    let w1 = wait(&e, t, None);
    let w2 = wait(&e, t, None);
    assert_eq!(e.status().waiting, 2);
    assert!(e.release(b, true, t).is_none());
    // The first waiter got connection 2 directly; the second still waits.
    match w1.try_take() {
        Some(Grant::Conn(c, check)) => {
            assert_eq!(c.payload, 2);
            assert!(check.probe && !check.round_trip);
            e.release(c, true, t);
        }
        _ => panic!("first waiter should hold connection 2"),
    }
    match w2.try_take() {
        Some(Grant::Conn(c, _)) => assert_eq!(c.payload, 2),
        _ => panic!("second waiter is next in line"),
    }
    let s = e.status();
    assert_eq!((s.size, s.in_use, s.idle, s.waiting), (2, 2, 0, 0));
    let _ = a;
}

#[test]
fn failed_open_frees_the_slot_for_the_next_waiter() {
    let e = engine(Config {
        max_size: 1,
        ..Config::default()
    });
    let t = Instant::now();
    let permit = match e.checkout(t, wake).unwrap() {
        Checkout::Open(p) => p,
        _ => panic!(),
    };
    let w = wait(&e, t, None);
    e.open_failed(permit);
    assert!(matches!(w.try_take(), Some(Grant::Open(_))));
    assert_eq!(e.status().opening, 1);
    assert_eq!(
        e.stats()
            .open_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn too_many_waiters_is_rejected_at_once() {
    let e = engine(Config {
        max_size: 1,
        max_waiting: 1,
        ..Config::default()
    });
    let t = Instant::now();
    let _a = get(&e, t, 1);
    assert!(matches!(e.checkout(t, wake).unwrap(), Checkout::Wait(_)));
    match e.checkout(t, wake) {
        Err(AcquireError::TooManyWaiters { max_waiting: 1, .. }) => {}
        _ => panic!("expected TooManyWaiters"),
    }
}

#[test]
fn cancel_withdraws_or_returns_a_late_grant() {
    let e = engine(Config {
        max_size: 1,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let w = wait(&e, t, None);
    assert!(e.cancel(&w).is_none());
    assert_eq!(e.status().waiting, 0);
    let w = wait(&e, t, None);
    e.release(a, true, t);
    // Granted just before the cancel: the grant is the caller's.
    assert!(matches!(e.cancel(&w), Some(Grant::Conn(..))));
}

#[test]
fn timeout_error_describes_the_pool() {
    let e = engine(Config {
        max_size: 1,
        ..Config::default()
    });
    let t = Instant::now();
    let _a = get(&e, t, 1);
    let msg = e.timeout_error(Duration::from_millis(1500)).to_string();
    assert!(msg.contains("pool 't'"), "{msg}");
    assert!(msg.contains("1.50 s"), "{msg}");
    assert!(msg.contains("size 1/1, in use 1"), "{msg}");
}

#[test]
fn lifo_reuse_and_round_trip_check_only_after_idle_window() {
    let e = engine(Config {
        max_size: 3,
        check_after_idle: Some(Duration::from_secs(1)),
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    e.release(a, true, t);
    e.release(b, true, t + Duration::from_millis(10));
    match e.checkout(t + Duration::from_millis(20), wake).unwrap() {
        Checkout::Ready(c, check) => {
            assert_eq!(c.payload, 2, "most recently returned first");
            assert!(check.probe && !check.round_trip);
            e.release(c, true, t + Duration::from_millis(30));
        }
        _ => panic!(),
    }
    match e.checkout(t + Duration::from_secs(5), wake).unwrap() {
        Checkout::Ready(_, check) => assert!(check.round_trip, "idle 5 s > 1 s window"),
        _ => panic!(),
    }
}

#[test]
fn lifetime_with_jitter_retires_on_checkout_and_return() {
    let life = Duration::from_secs(100);
    let e = engine(Config {
        max_size: 50,
        max_lifetime: Some(life),
        lifetime_jitter: 0.2,
        ..Config::default()
    });
    let t = Instant::now();
    let conns: Vec<_> = (0..50).map(|i| get(&e, t, i)).collect();
    let expiries: Vec<_> = conns.iter().map(|c| c.meta.expires.unwrap() - t).collect();
    for x in &expiries {
        assert!(*x <= life && *x >= life.mul_f64(0.8), "{x:?}");
    }
    let distinct: std::collections::HashSet<_> = expiries.iter().collect();
    assert!(distinct.len() > 40, "jitter spreads expiry times");
    // Returned after its lifetime: retired instead of kept.
    let mut it = conns.into_iter();
    let c = it.next().unwrap();
    let r = e.release(c, true, t + life).expect("expired on return");
    assert_eq!(r.reason, CloseReason::Lifetime);
    e.retire_done(r);
    // Kept idle, then expired while idle: retired at checkout.
    let c = it.next().unwrap();
    assert!(e.release(c, true, t).is_none());
    match e.checkout(t + life, wake).unwrap() {
        Checkout::Retire(r) => {
            assert_eq!(r.reason, CloseReason::Lifetime);
            e.retire_done(r);
        }
        _ => panic!("expired idle connection must not be handed out"),
    }
}

#[test]
fn max_uses_and_broken_returns_are_closed() {
    let e = engine(Config {
        max_size: 2,
        max_uses: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let c = get(&e, t, 1);
    assert!(e.release(c, true, t).is_none());
    let c = get(&e, t, 9);
    assert_eq!(c.meta.uses, 2);
    let r = e.release(c, true, t).unwrap();
    assert_eq!(r.reason, CloseReason::MaxUses);
    assert_eq!(
        e.status().size,
        1,
        "the slot is held until the close is done"
    );
    e.retire_done(r);
    let c = get(&e, t, 2);
    let r = e.release(c, false, t).unwrap();
    assert_eq!(r.reason, CloseReason::Broken);
    e.retire_done(r);
    assert_eq!(e.status().size, 0);
    assert_eq!(e.stats().closes_total(), 2);
}

#[test]
fn max_uses_counts_only_real_uses_of_a_maintenance_opened_connection() {
    let e = engine(Config {
        min_size: 1,
        max_size: 1,
        max_uses: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let permit = e.maintain(t).unwrap().open.pop().unwrap();
    assert!(e.opened_idle(permit, 7, t, Duration::ZERO).is_none());
    let c = get(&e, t, 0);
    assert_eq!((c.payload, c.meta.uses), (7, 1));
    assert!(
        e.release(c, true, t).is_none(),
        "one use of two: kept for another"
    );
    let c = get(&e, t, 0);
    assert_eq!(c.meta.uses, 2);
    let r = e.release(c, true, t).unwrap();
    assert_eq!(r.reason, CloseReason::MaxUses);
    e.retire_done(r);
}

#[test]
fn max_idle_closes_only_above_min_size() {
    let e = engine(Config {
        min_size: 1,
        max_size: 3,
        max_idle: Some(Duration::from_secs(10)),
        max_lifetime: None,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    let c = get(&e, t, 3);
    e.release(a, true, t);
    e.release(b, true, t);
    // 11 s later the bottom of the stack has been idle too long.
    let r = e.release(c, true, t + Duration::from_secs(11)).unwrap();
    assert_eq!((r.reason, r.conn.payload), (CloseReason::Idle, 1));
    e.retire_done(r);
    let m = e.maintain(t + Duration::from_secs(11)).unwrap();
    assert_eq!(m.retire.len(), 1, "one more stale, then min_size stops it");
    for r in m.retire {
        e.retire_done(r);
    }
    assert_eq!(e.status().size, 1);
    assert!(m.open.is_empty());
}

#[test]
fn maintenance_opens_up_to_min_size_counting_opening() {
    let e = engine(Config {
        min_size: 3,
        max_size: 5,
        ..Config::default()
    });
    let t = Instant::now();
    let m = e.maintain(t).unwrap();
    assert_eq!(m.open.len(), 3);
    assert_eq!(e.status().opening, 3);
    assert!(
        e.maintain(t).unwrap().open.is_empty(),
        "opening counts toward min_size"
    );
    for (i, p) in m.open.into_iter().enumerate() {
        assert!(e.opened_idle(p, i as u32, t, Duration::ZERO).is_none());
    }
    assert_eq!(e.status().idle, 3);
}

#[test]
fn close_wakes_waiters_retires_idle_and_later_returns() {
    let e = engine(Config {
        max_size: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    e.release(b, true, t);
    let _ = get(&e, t, 2); // take it back so the pool is full
    let w = wait(&e, t, None);
    let retired = e.close();
    assert!(retired.is_empty());
    assert!(matches!(w.try_take(), Some(Grant::Closed)));
    let r = e.release(a, true, t).unwrap();
    assert_eq!(r.reason, CloseReason::PoolClosed);
    e.retire_done(r);
    assert!(matches!(
        e.checkout(t, wake),
        Err(AcquireError::Closed { .. })
    ));
    assert!(e.maintain(t).is_none());
    assert!(!e.wait_for_maintenance(t + Duration::from_secs(60), false));
}

#[test]
fn resize_shrinks_idle_and_grows_for_waiters() {
    let e = engine(Config {
        max_size: 3,
        ..Config::default()
    });
    let t = Instant::now();
    let cs: Vec<_> = (0..3).map(|i| get(&e, t, i)).collect();
    let w = wait(&e, t, None);
    e.resize(0, 4).unwrap();
    assert!(
        matches!(w.try_take(), Some(Grant::Open(_))),
        "new slot goes to the waiter"
    );
    let retired = e.resize(0, 1).unwrap();
    assert!(retired.is_empty(), "nothing idle to close");
    let mut reasons = Vec::new();
    for c in cs {
        if let Some(r) = e.release(c, true, t) {
            reasons.push(r.reason);
            e.retire_done(r);
        }
    }
    assert_eq!(
        reasons,
        vec![CloseReason::Resize; 3],
        "opening slot keeps the pool at 1"
    );
    assert_eq!(e.resize(3, 2).unwrap_err().option, "min_size");
}

#[test]
fn replace_hands_back_another_idle_or_a_permit() {
    let e = engine(Config {
        max_size: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    e.release(a, true, t);
    let (retired, next) = e.replace(b, CloseReason::CheckFailed, t, wake);
    assert_eq!(e.retire_done(retired), 2);
    match next.unwrap() {
        Checkout::Ready(c, _) => {
            assert_eq!(c.payload, 1);
            let (retired, next) = e.replace(c, CloseReason::CheckFailed, t, wake);
            e.retire_done(retired);
            assert!(matches!(next.unwrap(), Checkout::Open(_)));
        }
        _ => panic!(),
    }
    assert_eq!(e.stats().closes_for(CloseReason::CheckFailed), 2);
}

#[test]
fn lost_connection_frees_its_slot_for_a_waiter() {
    let e = engine(Config {
        max_size: 1,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let w = wait(&e, t, None);
    assert!(e.lost(&a.meta, t));
    assert!(matches!(w.try_take(), Some(Grant::Open(_))));
    assert_eq!(
        e.stats().leaked.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn fork_child_starts_empty_and_treats_parent_connections_as_foreign() {
    let e = engine(Config {
        max_size: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    e.release(b, true, t);
    e.before_fork();
    let parents_idle = e.after_fork_in_child();
    assert_eq!(parents_idle.len(), 1);
    assert_eq!(e.status().size, 0);
    let r = e.release(a, true, t).unwrap();
    assert!(
        r.foreign,
        "a parent's connection is never closed by the child"
    );
    assert!(!e.lost(&r.conn.meta, t));
    e.retire_done(r);
    assert_eq!(e.status().size, 0);
    let c = get(&e, t, 3);
    assert_eq!(c.payload, 3);
    assert_eq!(e.status().in_use, 1);
}

#[test]
fn parked_waiter_is_woken_by_another_thread() {
    let e = Arc::new(engine(Config {
        max_size: 1,
        ..Config::default()
    }));
    let a = get(&e, Instant::now(), 1);
    let e2 = Arc::clone(&e);
    let h = std::thread::spawn(move || {
        let w = wait(&e2, Instant::now(), None);
        match w.park_until(Instant::now() + Duration::from_secs(30)) {
            Some(Grant::Conn(c, _)) => c.payload,
            _ => panic!("no grant"),
        }
    });
    while e.status().waiting == 0 {
        std::thread::yield_now();
    }
    e.release(a, true, Instant::now());
    assert_eq!(h.join().unwrap(), 1);
}

#[test]
fn shrinking_counts_connections_still_being_closed_as_gone() {
    let e = engine(Config {
        min_size: 1,
        max_size: 4,
        max_idle: Some(Duration::from_secs(1)),
        max_lifetime: None,
        ..Config::default()
    });
    let t = Instant::now();
    let cs: Vec<_> = (0..4).map(|i| get(&e, t, i)).collect();
    for c in cs {
        assert!(e.release(c, true, t).is_none());
    }
    // Nothing is reported closed yet, and still only the three above min_size go.
    let m = e.maintain(t + Duration::from_secs(2)).unwrap();
    assert_eq!(m.retire.len(), 3);
    assert_eq!(e.status().idle, 1);
    let retired = e.resize(0, 1).unwrap();
    assert!(retired.is_empty(), "1 live connection fits max_size 1");
    for r in m.retire {
        e.retire_done(r);
    }
    assert_eq!(e.status().size, 1);
}

#[test]
fn permits_given_back_untried_count_no_connection_error() {
    let e = engine(Config {
        min_size: 3,
        max_size: 3,
        ..Config::default()
    });
    let t = Instant::now();
    let mut permits = e.maintain(t).unwrap().open;
    assert_eq!(permits.len(), 3);
    // The first attempt fails; maintenance gives the other two back without trying.
    e.open_failed(permits.pop().unwrap());
    for p in permits {
        e.open_unused(p);
    }
    assert_eq!(
        e.stats()
            .open_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let s = e.status();
    assert_eq!((s.size, s.opening), (0, 0));
}

#[test]
fn a_connection_opened_by_maintenance_after_close_is_retired() {
    let e = engine(Config {
        min_size: 1,
        max_size: 1,
        ..Config::default()
    });
    let t = Instant::now();
    let permit = e.maintain(t).unwrap().open.pop().unwrap();
    assert!(e.close().is_empty());
    let r = e
        .opened_idle(permit, 7, t, Duration::ZERO)
        .expect("a closed pool keeps nothing idle");
    assert_eq!((r.conn.payload, r.reason), (7, CloseReason::PoolClosed));
    e.retire_done(r);
    let s = e.status();
    assert_eq!((s.size, s.idle), (0, 0));
}

fn turns(max_size: usize) -> Engine<u32> {
    engine(Config {
        max_size,
        turn_length: Duration::from_millis(1),
        ..Config::default()
    })
}

/// Connection 1 held by a thread whose turn began at `t`, one waiter queued, then the
/// connection returned within the turn: it goes idle, and the waiter is told to ask again.
fn returned_within_turn(e: &Engine<u32>, t: Instant) -> Arc<Waiter<u32>> {
    let a = get(e, t, 1);
    let w = wait(e, t, None);
    assert!(e.release_in_turn(a, true, t, Some(t)).is_none());
    assert!(matches!(w.try_take(), Some(Grant::Retry)));
    w
}

#[test]
fn within_its_turn_a_holder_keeps_what_it_returns_and_the_waiter_is_told() {
    let e = turns(1);
    let t = Instant::now();
    let w = returned_within_turn(&e, t);
    let s = e.status();
    assert_eq!((s.idle, s.waiting), (1, 1));
    // The holder, still in its turn, takes it again before the waiter runs.
    let t1 = t + Duration::from_micros(500);
    let a = match e.checkout_in_turn(t1, Some(t), wake).unwrap() {
        Checkout::Ready(c, _) => c,
        _ => panic!("within its turn the holder takes the idle connection"),
    };
    // The waiter finds nothing, keeps its place and is told again at the next return.
    assert!(matches!(e.retry(&w, t1).unwrap(), Checkout::Wait(_)));
    assert_eq!(e.status().waiting, 1);
    assert!(e.release_in_turn(a, true, t1, Some(t)).is_none());
    assert!(matches!(w.try_take(), Some(Grant::Retry)));
    match e.retry(&w, t1).unwrap() {
        Checkout::Ready(c, _) => assert_eq!(c.payload, 1),
        _ => panic!("the waiter takes the idle connection"),
    }
    let s = e.status();
    assert_eq!((s.in_use, s.idle, s.waiting), (1, 0, 0));
}

#[test]
fn once_its_turn_is_over_a_holder_hands_over_and_queues() {
    let e = turns(2);
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    let w = wait(&e, t, None);
    let late = t + Duration::from_millis(1);
    // The turn began at t and lasts 1 ms: at `late` it is over, so the return goes
    // straight to the waiter, like a strictly ordered return.
    assert!(e.release_in_turn(a, true, late, Some(t)).is_none());
    assert!(matches!(w.try_take(), Some(Grant::Conn(c, _)) if c.payload == 1));
    // A checkout past its turn queues behind a waiter even though a connection is idle.
    let w2 = wait(&e, late, None);
    assert!(e.release_in_turn(b, true, late, Some(late)).is_none());
    assert_eq!(e.status().idle, 1);
    assert!(matches!(
        e.checkout_in_turn(late, Some(t), wake).unwrap(),
        Checkout::Wait(_)
    ));
    // ...while one within its turn may take it.
    assert!(matches!(
        e.checkout_in_turn(late, Some(late), wake).unwrap(),
        Checkout::Ready(..)
    ));
    assert!(matches!(w2.try_take(), Some(Grant::Retry)));
}

#[test]
fn a_told_waiter_that_leaves_passes_the_news_on() {
    let e = turns(1);
    let t = Instant::now();
    let a = get(&e, t, 1);
    let w1 = wait(&e, t, None);
    let w2 = wait(&e, t, None);
    assert!(e.release_in_turn(a, true, t, Some(t)).is_none());
    assert!(matches!(w1.try_take(), Some(Grant::Retry)));
    assert!(
        w2.try_take().is_none(),
        "one idle connection, one waiter told"
    );
    // The told waiter times out: the next one is told, or the connection would sit idle.
    assert!(e.cancel(&w1).is_none());
    assert!(matches!(w2.try_take(), Some(Grant::Retry)));
    assert!(matches!(e.retry(&w2, t).unwrap(), Checkout::Ready(..)));
}

#[test]
fn a_direct_hand_over_to_a_told_waiter_tells_the_next_one() {
    let e = turns(2);
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = get(&e, t, 2);
    let w1 = wait(&e, t, None);
    let w2 = wait(&e, t, None);
    // `a` goes idle within its holder's turn; w1 is told.
    assert!(e.release_in_turn(a, true, t, Some(t)).is_none());
    // Before w1 asks again, `b` comes back from a holder past its turn: it goes to w1,
    // the first waiter, and w2 must now be told of the idle connection.
    let late = t + Duration::from_millis(2);
    assert!(e.release_in_turn(b, true, late, Some(t)).is_none());
    assert!(matches!(w1.try_take(), Some(Grant::Conn(c, _)) if c.payload == 2));
    assert!(matches!(w2.try_take(), Some(Grant::Retry)));
    match e.retry(&w2, late).unwrap() {
        Checkout::Ready(c, _) => assert_eq!(c.payload, 1),
        _ => panic!("w2 takes the idle connection"),
    }
}

#[test]
fn a_retry_after_the_waiter_was_served_finds_its_grant() {
    let e = turns(1);
    let t = Instant::now();
    let w = returned_within_turn(&e, t);
    // Someone in turn takes the connection and hands it over once past the turn, all
    // before the told waiter gets to ask again.
    let a = match e.checkout_in_turn(t, Some(t), wake).unwrap() {
        Checkout::Ready(c, _) => c,
        _ => panic!("in turn"),
    };
    let late = t + Duration::from_millis(1);
    assert!(e.release_in_turn(a, true, late, Some(t)).is_none());
    // The waiter left the queue with a grant: retry says wait, and the grant is there.
    assert!(matches!(e.retry(&w, late).unwrap(), Checkout::Wait(_)));
    assert!(matches!(w.try_take(), Some(Grant::Conn(..))));
    assert_eq!(e.status().waiting, 0);
}

#[test]
fn a_zero_turn_length_serves_strictly_in_order() {
    let e = engine(Config {
        max_size: 1,
        turn_length: Duration::ZERO,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let w = wait(&e, t, Some(t));
    assert!(e.release_in_turn(a, true, t, Some(t)).is_none());
    assert!(matches!(w.try_take(), Some(Grant::Conn(..))));
}

// --- The server down: back-off shared by the pool, one probe at a time ---------------------

fn open_permit(c: Checkout<u32>) -> OpenPermit {
    match c {
        Checkout::Open(p) => p,
        _ => panic!("expected a permit to open"),
    }
}

fn is_wait(c: &Checkout<u32>) -> bool {
    matches!(c, Checkout::Wait(_))
}

#[test]
fn a_transient_failure_makes_later_checkouts_wait_for_one_probe_at_a_time() {
    let e = engine(Config {
        max_size: 4,
        ..Config::default()
    });
    let t = Instant::now();
    let ms = Duration::from_millis;
    let p = open_permit(e.checkout(t, wake).unwrap());
    assert!(!p.is_probe());
    e.open_failed_transient(p, t);
    assert!(e.server_down());
    assert_eq!(e.status().opening, 0);
    // Slots are free, but nobody opens before the first probe is due: all queue.
    let w1 = wait(&e, t, None);
    let w2 = wait(&e, t + ms(10), None);
    let far = t + Duration::from_secs(2);
    // The first in line wakes when the probe is due; the others sleep to their deadline.
    assert_eq!(e.wake_time(&w1, far), t + probe_backoff(1));
    assert_eq!(e.wake_time(&w2, far), far);
    assert_eq!(e.wake_time(&w1, t + ms(20)), t + ms(20));
    // Asking early keeps the place in line.
    assert!(is_wait(&e.retry(&w1, t + ms(20)).unwrap()));
    // Due: the first in line gets the probe; nobody else may open meanwhile.
    let t1 = t + probe_backoff(1);
    let probe = open_permit(e.retry(&w1, t1).unwrap());
    assert!(probe.is_probe());
    assert!(is_wait(&e.retry(&w2, t1).unwrap()));
    assert!(is_wait(&e.checkout(t1, wake).unwrap()));
    assert_eq!(e.wake_time(&w2, far), far);
    // The probe fails: the next one is due after a longer pause, and the first waiter
    // (now w2) is told to ask again, so that it makes it.
    e.open_failed_transient(probe, t1);
    assert!(matches!(w2.try_take(), Some(Grant::Retry)));
    assert!(probe_backoff(2) > probe_backoff(1));
    assert_eq!(e.wake_time(&w2, far), t1 + probe_backoff(2));
    let t2 = t1 + probe_backoff(2);
    let probe = open_permit(e.retry(&w2, t2).unwrap());
    assert!(probe.is_probe());
    // It succeeds: the server is up, and the waiters still queued get the free slots.
    let c = e.opened(probe, 7, t2, ms(1)).unwrap();
    assert!(!e.server_down());
    let s = e.status();
    assert_eq!(s.waiting, 0, "{s:?}");
    assert_eq!(s.opening, 1);
    e.release(c, true, t2);
    assert_eq!(
        e.stats()
            .open_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

#[test]
fn probes_back_off_up_to_half_a_second() {
    let pauses: Vec<_> = (1..=8).map(probe_backoff).collect();
    assert_eq!(pauses[0], Duration::from_millis(50));
    assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*pauses.last().unwrap(), Duration::from_millis(500));
    // Five seconds down: some twenty probes, not thousands of connects.
    let e = engine(Config::default());
    let mut now = Instant::now();
    let end = now + Duration::from_secs(5);
    e.open_failed_transient(open_permit(e.checkout(now, wake).unwrap()), now);
    let mut attempts = 1;
    let mut waiter = wait(&e, now, None);
    while now < end {
        now = e.wake_time(&waiter, end);
        match e.retry(&waiter, now).unwrap() {
            Checkout::Open(p) => {
                attempts += 1;
                e.open_failed_transient(p, now);
                // The prober asks again, and queues.
                waiter = wait(&e, now, None);
            }
            Checkout::Wait(_) => {}
            _ => panic!(),
        }
    }
    assert!(
        (10..=20).contains(&attempts),
        "{attempts} connect attempts in 5 s"
    );
}

#[test]
fn failures_of_connects_begun_before_the_outage_do_not_lengthen_the_back_off() {
    let e = engine(Config {
        max_size: 3,
        ..Config::default()
    });
    let t = Instant::now();
    let permits: Vec<_> = (0..3)
        .map(|_| open_permit(e.checkout(t, wake).unwrap()))
        .collect();
    for p in permits {
        e.open_failed_transient(p, t);
    }
    let w = wait(&e, t, None);
    assert_eq!(
        e.wake_time(&w, t + Duration::from_secs(9)),
        t + probe_backoff(1)
    );
    let (size, opening) = (e.status().size, e.status().opening);
    assert_eq!((size, opening), (0, 0));
}

#[test]
fn a_permanent_failure_ends_the_outage_and_frees_the_slot_for_a_waiter() {
    let e = engine(Config {
        max_size: 1,
        ..Config::default()
    });
    let t = Instant::now();
    e.open_failed_transient(open_permit(e.checkout(t, wake).unwrap()), t);
    let w = wait(&e, t, None);
    let t1 = t + probe_backoff(1);
    let probe = open_permit(e.retry(&w, t1).unwrap());
    let w2 = wait(&e, t1, None);
    // The server answered (say, a wrong password): not down; the next waiter tries at once.
    e.open_failed(probe);
    assert!(!e.server_down());
    assert!(matches!(w2.try_take(), Some(Grant::Open(p)) if !p.is_probe()));
}

#[test]
fn when_the_first_waiter_gives_up_the_next_one_makes_the_probe() {
    let e = engine(Config::default());
    let t = Instant::now();
    e.open_failed_transient(open_permit(e.checkout(t, wake).unwrap()), t);
    let w1 = wait(&e, t, None);
    let w2 = wait(&e, t, None);
    let far = t + Duration::from_secs(5);
    assert_eq!(e.wake_time(&w2, far), far);
    assert!(e.cancel(&w1).is_none());
    assert!(matches!(w2.try_take(), Some(Grant::Retry)));
    assert_eq!(e.wake_time(&w2, far), t + probe_backoff(1));
}

#[test]
fn a_dead_idle_connection_while_the_server_is_down_waits_first_in_line() {
    let e = engine(Config {
        max_size: 2,
        ..Config::default()
    });
    let t = Instant::now();
    let a = get(&e, t, 1);
    let b = open_permit(e.checkout(t, wake).unwrap());
    e.release(a, true, t);
    e.open_failed_transient(b, t);
    // The idle one is taken, and fails its check...
    let c = match e.checkout(t, wake).unwrap() {
        Checkout::Ready(c, _) => c,
        _ => panic!("the idle connection"),
    };
    let other = wait(&e, t, None);
    let (retired, next) = e.replace(c, CloseReason::CheckFailed, t, wake);
    e.retire_done(retired);
    // ...and its holder waits ahead of the others, and makes the probe.
    let w = match next.unwrap() {
        Checkout::Wait(w) => w,
        _ => panic!("should wait: the server is down"),
    };
    let far = t + Duration::from_secs(5);
    assert_eq!(e.wake_time(&w, far), t + probe_backoff(1));
    assert_eq!(e.wake_time(&other, far), far);
}

#[test]
fn maintenance_probes_once_and_returns_an_unused_probe() {
    let e = engine(Config {
        min_size: 3,
        max_size: 4,
        ..Config::default()
    });
    let t = Instant::now();
    let mut m = e.maintain(t).unwrap();
    assert_eq!(m.open.len(), 3);
    let first = m.open.pop().unwrap();
    e.open_failed_transient(first, t);
    for p in m.open {
        e.open_unused(p);
    }
    // Down: no opens until the probe is due, and the helper is told when that is.
    let m = e.maintain(t).unwrap();
    assert!(m.open.is_empty());
    assert_eq!(m.next_due, Some(t + probe_backoff(1)));
    let mut m = e.maintain(t + probe_backoff(1)).unwrap();
    assert_eq!(m.open.len(), 1);
    let probe = m.open.pop().unwrap();
    assert!(probe.is_probe());
    // A probe given back untried lets the next one go, and the first waiter is told.
    let w = wait(&e, t + probe_backoff(1), None);
    e.open_unused(probe);
    assert!(matches!(w.try_take(), Some(Grant::Retry)));
    assert_eq!(e.maintain(t + probe_backoff(1)).unwrap().open.len(), 1);
}

#[test]
fn the_timeout_error_says_the_server_is_down() {
    let e = engine(Config::default());
    let t = Instant::now();
    e.open_failed_transient(open_permit(e.checkout(t, wake).unwrap()), t);
    let msg = e.timeout_error(Duration::from_secs(2)).to_string();
    assert!(msg.contains("cannot be reached"), "{msg}");
    assert!(msg.contains("1 connect attempts failed"), "{msg}");
}

#[test]
fn long_holds_are_reported_once_per_hold_and_again_after_a_new_checkout() {
    let e = engine(Config {
        max_size: 2,
        leak_threshold: Some(Duration::from_secs(10)),
        ..Config::default()
    });
    let t = Instant::now();
    let mut a = get(&e, t, 1);
    let mut b = get(&e, t + Duration::from_secs(4), 2);
    let s = |n| t + Duration::from_secs(n);

    // Nothing yet: the next one is due when `a` passes 10 s.
    let r = e.review_holds([("a", &mut a.meta), ("b", &mut b.meta)], s(5));
    assert!(r.long.is_empty());
    assert_eq!(r.next_due, Some(s(10)));

    // `a` passes: reported once, with how long it was held; `b` is next.
    let r = e.review_holds([("a", &mut a.meta), ("b", &mut b.meta)], s(11));
    assert_eq!(
        r.long,
        vec![LongHold {
            key: "a",
            id: a.meta.id,
            held: Duration::from_secs(11)
        }]
    );
    assert!(a.meta.long_hold_reported);
    assert_eq!(r.next_due, Some(s(14)));
    let r = e.review_holds([("a", &mut a.meta), ("b", &mut b.meta)], s(30));
    assert_eq!(r.long.iter().map(|l| l.key).collect::<Vec<_>>(), ["b"]);
    assert_eq!(r.next_due, None);

    // Back and out again: a new hold, reported again once past the threshold.
    assert!(e.release(a, true, s(31)).is_none());
    let mut a = get(&e, s(32), 0);
    assert!(!a.meta.long_hold_reported);
    let r = e.review_holds([("a", &mut a.meta)], s(41));
    assert!(r.long.is_empty());
    assert_eq!(r.next_due, Some(s(42)));
    assert_eq!(e.review_holds([("a", &mut a.meta)], s(42)).long.len(), 1);

    // Maintenance looks again no later than one threshold from now, for holds that
    // begin after its run.
    let plan = e.maintain(s(50)).unwrap();
    assert!(plan.next_due.is_some_and(|d| d <= s(60)));
    let _ = b;
}

#[test]
fn long_holds_are_not_reviewed_when_the_threshold_is_off() {
    for off in [None, Some(Duration::ZERO)] {
        let e = engine(Config {
            leak_threshold: off,
            max_idle: None,
            ..Config::default()
        });
        let t = Instant::now();
        let mut a = get(&e, t, 1);
        let r = e.review_holds([(0, &mut a.meta)], t + Duration::from_secs(86_400));
        assert!(r.long.is_empty() && r.next_due.is_none());
        assert_eq!(e.maintain(t).unwrap().next_due, None);
    }
}
