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
