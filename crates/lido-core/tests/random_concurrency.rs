//! Many threads doing random checkouts, returns, failures, timeouts and leaks against one
//! engine, checking its invariants throughout: never more than `max_size` connections
//! open (counting those being opened), never one connection held twice, every waiter
//! served or timed out, and at the end every opened connection accounted for. A drainer
//! thread drains the pool now and then meanwhile.

use lido_core::*;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_SIZE: usize = 4;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct World {
    engine: Engine<u64>,
    /// Connections physically open or being opened, as the "driver" sees them.
    physical: AtomicUsize,
    held: Mutex<HashSet<u64>>,
    next_payload: AtomicUsize,
    closed: AtomicBool,
    served: AtomicUsize,
    timed_out: AtomicUsize,
    /// Waiters told to ask again (an idle connection kept by a holder within its turn).
    retries: AtomicUsize,
}

impl World {
    fn connect_start(&self) {
        let n = self.physical.fetch_add(1, SeqCst) + 1;
        assert!(n <= MAX_SIZE, "{n} connections open or opening > max_size");
    }
    fn close(&self, r: Retired<u64>) {
        assert!(!r.foreign);
        assert!(
            !self.held.lock().contains(&r.conn.payload),
            "closing a held connection"
        );
        // The driver closes it, then the engine frees the slot.
        self.physical.fetch_sub(1, SeqCst);
        self.engine.retire_done(r);
    }
    fn hold(&self, c: &Pooled<u64>) {
        assert!(
            self.held.lock().insert(c.payload),
            "connection {} held twice",
            c.payload
        );
    }
    fn retry(&self, waiter: &Arc<Waiter<u64>>) -> Result<Checkout<u64>, AcquireError> {
        self.retries.fetch_add(1, SeqCst);
        self.engine.retry(waiter, Instant::now())
    }
    fn unhold(&self, c: &Pooled<u64>) {
        assert!(self.held.lock().remove(&c.payload));
    }
}

/// One checkout, driving the engine like a binding would, for a thread whose turn began at
/// `turn` (`None`: strictly in order); a checkout that queues starts a new turn.
/// `None`: timed out or closed.
fn acquire(w: &World, rng: &mut Rng, turn: &mut Option<Instant>) -> Option<Pooled<u64>> {
    let deadline = Instant::now() + Duration::from_micros(rng.next() % 3000);
    let mut queued = false;
    let mut step = match w
        .engine
        .checkout_in_turn(Instant::now(), *turn, || Box::new(ThreadWake::current()))
    {
        Ok(s) => s,
        Err(AcquireError::Closed { .. }) => return None,
        Err(e) => panic!("{e}"),
    };
    loop {
        step = match step {
            Checkout::Ready(c, check) => {
                assert!(check.probe);
                if rng.chance(5) {
                    // The check found it dead.
                    let (retired, next) =
                        w.engine
                            .replace(c, CloseReason::CheckFailed, Instant::now(), || {
                                Box::new(ThreadWake::current())
                            });
                    w.close(retired);
                    match next {
                        Ok(s) => s,
                        Err(_) => return None,
                    }
                } else {
                    w.hold(&c);
                    if queued && turn.is_some() {
                        *turn = Some(Instant::now());
                    }
                    return Some(c);
                }
            }
            Checkout::Retire(r) => {
                w.close(r);
                match w
                    .engine
                    .checkout(Instant::now(), || Box::new(ThreadWake::current()))
                {
                    Ok(s) => s,
                    Err(_) => return None,
                }
            }
            Checkout::Open(permit) => {
                w.connect_start();
                if rng.chance(10) {
                    w.physical.fetch_sub(1, SeqCst);
                    // Half the failures are transient: the server is taken to be down
                    // until the next successful open, one probe at a time.
                    if rng.chance(50) {
                        w.engine.open_failed_transient(permit, Instant::now());
                    } else {
                        w.engine.open_failed(permit);
                    }
                    return None;
                }
                let id = w.next_payload.fetch_add(1, SeqCst) as u64;
                match w
                    .engine
                    .opened(permit, id, Instant::now(), Duration::from_micros(10))
                {
                    Ok(c) => {
                        w.hold(&c);
                        if queued && turn.is_some() {
                            *turn = Some(Instant::now());
                        }
                        return Some(c);
                    }
                    Err(r) => {
                        w.close(r);
                        return None;
                    }
                }
            }
            Checkout::Wait(waiter) => {
                queued = true;
                let until = w.engine.wake_time(&waiter, deadline);
                let grant = match waiter.park_until(until) {
                    Some(g) => g,
                    // First in line while the server is down: the probe is due.
                    None if Instant::now() < deadline => Grant::Retry,
                    None => match w.engine.cancel(&waiter) {
                        Some(g) => g,
                        None => {
                            w.timed_out.fetch_add(1, SeqCst);
                            return None;
                        }
                    },
                };
                match grant {
                    Grant::Conn(c, check) => Checkout::Ready(c, check),
                    Grant::Open(p) => Checkout::Open(p),
                    Grant::Retry => match w.retry(&waiter) {
                        Ok(s) => s,
                        Err(_) => return None,
                    },
                    Grant::Closed => {
                        assert!(w.closed.load(SeqCst));
                        return None;
                    }
                }
            }
        };
    }
}

fn worker(w: Arc<World>, seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    // Half the threads take turns (as the Python binding does), half go strictly in order.
    let mut turn = seed.is_multiple_of(2).then(Instant::now);
    for _ in 0..ops {
        let Some(c) = acquire(&w, &mut rng, &mut turn) else {
            continue;
        };
        w.served.fetch_add(1, SeqCst);
        if rng.chance(20) {
            std::thread::sleep(Duration::from_micros(rng.next() % 500));
        }
        w.unhold(&c);
        if rng.chance(2) {
            // The holder dropped it: the driver connection dies with the holder.
            // It is closed by the time the engine hears of it.
            w.physical.fetch_sub(1, SeqCst);
            assert!(w.engine.lost(&c.meta, Instant::now()));
            continue;
        }
        let healthy = !rng.chance(5);
        if let Some(r) = w.engine.release_in_turn(c, healthy, Instant::now(), turn) {
            w.close(r);
        }
    }
}

fn run(seed: u64, threads: usize, ops: usize, close_midway: bool) {
    let engine = Engine::new(
        "random",
        Config {
            min_size: 1,
            max_size: MAX_SIZE,
            max_lifetime: Some(Duration::from_millis(5)),
            max_idle: Some(Duration::from_millis(2)),
            max_uses: 7,
            check_after_idle: Some(Duration::from_micros(100)),
            turn_length: Duration::from_micros(300),
            ..Config::default()
        }
        .validate()
        .unwrap(),
    );
    let w = Arc::new(World {
        engine,
        physical: AtomicUsize::new(0),
        held: Mutex::new(HashSet::new()),
        next_payload: AtomicUsize::new(0),
        closed: AtomicBool::new(false),
        served: AtomicUsize::new(0),
        timed_out: AtomicUsize::new(0),
        retries: AtomicUsize::new(0),
    });
    let done = Arc::new(AtomicBool::new(false));
    // A maintenance helper, as a binding would run it.
    let helper = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || {
            while w
                .engine
                .wait_for_maintenance(Instant::now() + Duration::from_millis(1), false)
            {
                let Some(m) = w.engine.maintain(Instant::now()) else {
                    break;
                };
                for r in m.retire {
                    w.close(r);
                }
                for p in m.open {
                    w.connect_start();
                    let id = w.next_payload.fetch_add(1, SeqCst) as u64;
                    if let Some(r) = w.engine.opened_idle(p, id, Instant::now(), Duration::ZERO) {
                        w.close(r);
                    }
                }
            }
        })
    };
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let start = Instant::now();
            while !done.load(SeqCst) {
                assert!(start.elapsed() < Duration::from_secs(120), "workers hung");
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                worker(w, seed.wrapping_mul(31).wrapping_add(i as u64 + 1), ops)
            })
        })
        .collect();
    // Drains now and then while the workers run, until the pool closes.
    let drainer = {
        let w = Arc::clone(&w);
        std::thread::spawn(move || {
            for _ in 0..5000 {
                if w.closed.load(SeqCst) {
                    break;
                }
                for r in w.engine.drain() {
                    w.close(r);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    if close_midway {
        std::thread::sleep(Duration::from_millis(30));
        w.closed.store(true, SeqCst);
        for r in w.engine.close() {
            w.close(r);
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    if !close_midway {
        w.closed.store(true, SeqCst);
        for r in w.engine.close() {
            w.close(r);
        }
    }
    helper.join().unwrap();
    drainer.join().unwrap();
    done.store(true, SeqCst);
    watchdog.join().unwrap();

    let s = w.engine.status();
    assert_eq!(
        (s.size, s.in_use, s.idle, s.opening, s.waiting),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(
        w.physical.load(SeqCst),
        0,
        "every opened connection was closed or lost"
    );
    let st = w.engine.stats();
    let opens = st.opens.load(SeqCst);
    let leaked = st.leaked.load(SeqCst);
    assert_eq!(opens, st.closes_total() + leaked, "opens = closes + leaked");
    assert!(w.held.lock().is_empty());
    if !close_midway {
        // The workload must really have exercised the contended paths.
        assert!(w.served.load(SeqCst) > 0);
        assert!(st.requests_queued.load(SeqCst) > 0, "nobody queued");
        assert!(w.timed_out.load(SeqCst) > 0, "nobody timed out");
        assert!(
            w.retries.load(SeqCst) > 0,
            "no waiter was told to ask again"
        );
        assert!(st.open_errors.load(SeqCst) > 0 && st.closes_total() > 0);
        assert!(st.closes_for(CloseReason::Drained) > 0, "nothing drained");
    }
}

#[test]
fn random_workload_keeps_invariants() {
    for seed in 1..=6 {
        run(seed, 12, 400, false);
    }
}

#[test]
fn random_workload_with_close_midway_wakes_everyone() {
    for seed in 10..=15 {
        run(seed, 12, 100_000, true);
    }
}
