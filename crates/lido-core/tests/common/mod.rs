//! Helpers shared by the engine's integration tests.

use lido_core::*;
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
