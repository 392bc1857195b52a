//! Helpers shared by the engine's integration tests.

use lido_core::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn engine(cfg: Config) -> Engine<u32> {
    Engine::new("t", cfg.validate().unwrap())
}

pub fn wake() -> Box<dyn Wake> {
    Box::new(ThreadWake::current())
}

/// Checks out a connection, opening one with payload `p` if the engine asks.
pub fn get(e: &Engine<u32>, now: Instant, p: u32) -> Pooled<u32> {
    match e.checkout(now, wake).unwrap() {
        Checkout::Ready(c, _) => c,
        Checkout::Open(permit) => e.opened(permit, p, now, Duration::ZERO).unwrap(),
        Checkout::Retire(_) => panic!("unexpected retire"),
        Checkout::Wait(_) => panic!("unexpected wait"),
    }
}

/// An engine with these sizes, the other options at their defaults.
#[allow(dead_code)] // each test file compiles this module, and not all use every helper
pub fn sized(min_size: usize, max_size: usize) -> Engine<u32> {
    engine(Config {
        min_size,
        max_size,
        ..Config::default()
    })
}

/// Closes what the engine hands back, as the binding does, each retired for `reason` and
/// none foreign; returns the payloads, sorted.
#[allow(dead_code)]
pub fn close_all(
    e: &Engine<u32>,
    reason: CloseReason,
    retired: impl IntoIterator<Item = Retired<u32>>,
) -> Vec<u32> {
    let mut closed: Vec<u32> = retired
        .into_iter()
        .map(|r| {
            assert_eq!(r.reason, reason);
            assert!(!r.foreign);
            e.retire_done(r)
        })
        .collect();
    closed.sort();
    closed
}

/// Queues a checkout on a full pool.
#[allow(dead_code)]
pub fn queue(e: &Engine<u32>, now: Instant) -> Arc<Waiter<u32>> {
    match e.checkout(now, wake).unwrap() {
        Checkout::Wait(w) => w,
        _ => panic!("the pool is full"),
    }
}

/// A pool of one connection (payload 1), idle, returned within its holder's turn: the
/// waiter queued meanwhile holds a Retry for it.
#[allow(dead_code)]
pub fn idle_one_with_a_told_waiter(now: Instant) -> (Engine<u32>, Arc<Waiter<u32>>) {
    let e = sized(0, 1);
    let a = get(&e, now, 1);
    let w = queue(&e, now);
    assert!(e.release_in_turn(a, true, now, Some(now)).is_none());
    assert!(matches!(w.try_take(), Some(Grant::Retry)));
    (e, w)
}

/// A pool closed with one idle connection (its close done).
#[allow(dead_code)]
pub fn closed_after_one_use(now: Instant) -> Engine<u32> {
    let e = sized(0, 2);
    let c = get(&e, now, 1);
    e.release(c, true, now);
    for r in e.close() {
        e.retire_done(r);
    }
    e
}
