//! The pool's state machine.
//!
//! The engine decides and the caller acts: [`Engine::checkout`] answers with a connection
//! to check and use, a permit to open one, or a place in the queue; the caller does the
//! driver I/O (connect, probe, ping, rollback, close) with no engine lock held and reports
//! the result back. The lock is held only for a few field updates, never across I/O, and
//! waiters are woken after it is released.

use crate::config::{Config, ConfigError, Validated};
use crate::conn::{Check, CloseReason, ConnMeta, OpenPermit, Pooled, Retired};
use crate::error::AcquireError;
use crate::stats::Stats;
use crate::wait::{Grant, Waiter, Wake};
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

mod drain;

/// The answer to a checkout.
pub enum Checkout<C> {
    /// An idle connection, now counted as in use. Run `Check`, then either use it or hand
    /// it back with [`Engine::replace`].
    Ready(Pooled<C>, Check),
    /// Close this expired connection (the engine has already forgotten it) and ask again.
    Retire(Retired<C>),
    /// Open a connection yourself.
    Open(OpenPermit),
    /// Wait for a grant on this waiter, then [`Engine::cancel`] it if the wait runs out.
    Wait(Arc<Waiter<C>>),
}

/// Work for the maintenance helper.
pub struct Maintenance<C> {
    /// Connections to close.
    pub retire: Vec<Retired<C>>,
    /// Connections to open to reach `min_size`; spend each with [`Engine::opened_idle`].
    pub open: Vec<OpenPermit>,
    /// When the next idle connection expires or goes stale, if any.
    pub next_due: Option<Instant>,
}

/// A connection in use held longer than `leak_threshold`, found by [`Engine::review_holds`].
#[derive(Clone, Debug, PartialEq)]
pub struct LongHold<K> {
    /// The caller's key for the connection, as given to the review.
    pub key: K,
    pub id: u64,
    /// How long it has been held.
    pub held: Duration,
}

/// What [`Engine::review_holds`] found.
#[derive(Debug)]
pub struct HoldReview<K> {
    /// Holds past the threshold, not reported before in this hold.
    pub long: Vec<LongHold<K>>,
    /// When the next hold not yet reported passes the threshold, if any.
    pub next_due: Option<Instant>,
}

/// The `leak_threshold` in force: `None` when it is off (None or 0).
fn leak_threshold(cfg: &Config) -> Option<Duration> {
    cfg.leak_threshold.filter(|t| !t.is_zero())
}

/// A snapshot of the pool's occupancy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub min_size: usize,
    pub max_size: usize,
    /// Open connections, including those being opened.
    pub size: usize,
    pub idle: usize,
    pub in_use: usize,
    pub opening: usize,
    pub waiting: usize,
    pub closed: bool,
}

/// After the first transient connect failure until a connect succeeds: the server is
/// taken to be down, and one probing connect at a time is allowed, on a back-off schedule.
#[derive(Clone, Copy, Debug)]
struct Outage {
    /// Probes that failed since the outage began (the first failure counts as one).
    failures: u32,
    /// When the next probe may start.
    next_probe: Instant,
    /// A probe permit is out.
    probing: bool,
}

/// The wait before the `n`th probe of an outage (n >= 1): 50 ms doubling, at most 500 ms,
/// so a server that is back is found within half a second plus a connect.
pub fn probe_backoff(failures: u32) -> Duration {
    let ms = 50u64.saturating_mul(1 << failures.saturating_sub(1).min(4));
    Duration::from_millis(ms.min(500))
}

struct State<C> {
    cfg: Config,
    /// A stack: the most recently returned connection is reused first, so connections
    /// beyond what the load needs sink to the bottom and age out through `max_idle`.
    idle: Vec<Pooled<C>>,
    in_use: usize,
    opening: usize,
    /// Retired but not yet closed by the caller: still holds its slot, so the cap on open
    /// connections is hard even while a close is under way.
    retiring: usize,
    waiters: VecDeque<Arc<Waiter<C>>>,
    /// Waiters holding an unanswered [`Grant::Retry`]. Kept at least as large as `idle`
    /// while anyone waits, so that no idle connection sits unseen by the queue.
    retries_sent: usize,
    closed: bool,
    generation: u64,
    next_id: u64,
    rng: u64,
    /// The maintenance thread, parked while it waits. Per-thread parking rather than a
    /// condition variable keeps a fork safe: the child just forgets the parent's thread.
    maintainer: Option<Thread>,
    /// Maintenance was asked for since the helper last looked.
    maintenance_due: bool,
    /// The server is taken to be down (see [`Outage`]).
    outage: Option<Outage>,
    /// Forks this process made ([`Engine::keep_no_idle`]): a connection opened to be kept
    /// idle with a permit given before the latest one is not kept.
    forks: u64,
    /// Drains of this pool ([`Engine::drain`]): a connection whose permit was given before
    /// the latest one is closed when it comes back, or when it arrives to be kept idle.
    drains: u64,
}

impl<C> State<C> {
    /// Slots taken, counting connections being opened and being closed: the hard cap.
    fn size(&self) -> usize {
        self.live() + self.retiring
    }

    /// Connections that will still be there once the closes under way are done: what
    /// decisions to shrink (resize, max_idle) look at.
    fn live(&self) -> usize {
        self.idle.len() + self.in_use + self.opening
    }

    /// Hands `conn`, already taken out of `idle`/`in_use`/`opening`, to the caller to close.
    fn retire(&mut self, conn: Pooled<C>, reason: CloseReason, stats: &Stats) -> Retired<C> {
        self.retiring += 1;
        stats.closed(reason);
        Retired {
            conn,
            reason,
            foreign: false,
        }
    }

    /// Hands every idle connection to the caller to close, each counted under `reason`.
    fn retire_idle(&mut self, reason: CloseReason, stats: &Stats) -> Vec<Retired<C>> {
        let idle = std::mem::take(&mut self.idle);
        idle.into_iter()
            .map(|conn| self.retire(conn, reason, stats))
            .collect()
    }

    fn wake_maintainer(&mut self) {
        self.maintenance_due = true;
        if let Some(t) = &self.maintainer {
            t.unpark();
        }
    }

    fn random_unit(&mut self) -> f64 {
        // xorshift64*: plenty for spreading expiry times.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Takes the first waiter off the queue to be served.
    fn pop_waiter(&mut self) -> Option<Arc<Waiter<C>>> {
        let w = self.waiters.pop_front()?;
        self.forget_retry(&w);
        Some(w)
    }

    fn forget_retry(&mut self, w: &Waiter<C>) {
        if w.retry_sent.swap(false, Relaxed) {
            self.retries_sent -= 1;
        }
    }

    /// No idle connection goes unseen by the queue: at least as many waiters hold a
    /// [`Grant::Retry`] as there are idle connections (or waiters, if fewer).
    fn debug_check_retries(&self) {
        debug_assert_eq!(
            self.retries_sent,
            self.waiters
                .iter()
                .filter(|w| w.retry_sent.load(Relaxed))
                .count()
        );
        debug_assert!(self.retries_sent >= self.idle.len().min(self.waiters.len()));
    }

    /// Sends [`Grant::Retry`] to the first waiter without one, unless every idle connection
    /// already has a waiter on its way to it.
    fn send_retry(&mut self) -> Option<Arc<Waiter<C>>> {
        if self.retries_sent >= self.idle.len() {
            return None;
        }
        let w = self.waiters.iter().find(|w| !w.retry_sent.load(Relaxed))?;
        w.retry_sent.store(true, Relaxed);
        w.give(Grant::Retry);
        let w = Arc::clone(w);
        self.retries_sent += 1;
        Some(w)
    }

    /// Gives a connection that is not in use to the first waiter (it is then in use, with
    /// one more use, and checked by the probe only, since it was in use a moment ago), or
    /// puts it on the idle stack if nobody waits. If the first waiter held a Retry, the next
    /// one is sent it instead.
    fn serve_first_waiter(&mut self, mut conn: Pooled<C>) -> Woken<C> {
        let Some(w) = self.pop_waiter() else {
            self.idle.push(conn);
            return [None, None];
        };
        self.in_use += 1;
        conn.meta.uses += 1;
        let check = Check {
            probe: true,
            round_trip: false,
        };
        w.give(Grant::Conn(conn, check));
        [Some(w), self.send_retry()]
    }

    /// Whether a holder whose turn began at `turn` may still pass over the waiters: take an
    /// idle connection although others wait, or keep a returned one from them. `None` (no
    /// turn) never may.
    fn in_turn(&self, turn: Option<Instant>, now: Instant) -> bool {
        turn.is_some_and(|t| now.saturating_duration_since(t) < self.cfg.turn_length)
    }

    /// Puts a returned connection where it goes: idle when nobody waits; with waiters,
    /// straight to the first one, unless the holder's turn is still running. Then it goes
    /// idle and the first waiter without a [`Grant::Retry`] is sent one, so a thread that
    /// returns and checks out again goes on without a context switch (strict hand-over
    /// would make a lock convoy; see docs/design.md). The caller notifies the returned
    /// waiters once the lock is released.
    fn place_returned(&mut self, conn: Pooled<C>, turn: Option<Instant>, now: Instant) -> Woken<C> {
        let woken = if self.waiters.is_empty() || self.in_turn(turn, now) {
            self.idle.push(conn);
            [self.send_retry(), None]
        } else {
            self.serve_first_waiter(conn)
        };
        self.debug_check_retries();
        woken
    }

    fn new_meta(&mut self, now: Instant, uses: u64) -> ConnMeta {
        self.next_id += 1;
        let jitter = self.cfg.lifetime_jitter * self.random_unit();
        let expires = self
            .cfg
            .max_lifetime
            .map(|life| now + life.mul_f64(1.0 - jitter));
        ConnMeta {
            id: self.next_id,
            expires,
            last_used: now,
            uses,
            long_hold_reported: false,
            generation: self.generation,
            drains: self.drains,
        }
    }

    fn check_for(&self, meta: &ConnMeta, now: Instant) -> Check {
        Check {
            probe: true,
            round_trip: self
                .cfg
                .check_after_idle
                .is_some_and(|window| now.saturating_duration_since(meta.last_used) > window),
        }
    }

    fn expired(meta: &ConnMeta, now: Instant) -> bool {
        meta.expires.is_some_and(|e| now >= e)
    }

    /// Pops the most recent idle connection for a checkout.
    fn take_idle(&mut self, now: Instant, stats: &Stats) -> Option<Checkout<C>> {
        let mut conn = self.idle.pop()?;
        if Self::expired(&conn.meta, now) {
            return Some(Checkout::Retire(self.retire(
                conn,
                CloseReason::Lifetime,
                stats,
            )));
        }
        let check = self.check_for(&conn.meta, now);
        conn.meta.uses += 1;
        conn.meta.last_used = now;
        self.in_use += 1;
        Some(Checkout::Ready(conn, check))
    }

    /// Whether a connection may be opened now (the caller checks the free slot): always,
    /// unless the server is down; then only as the one probe, once it is due. `Some(true)`:
    /// the permit is the probe.
    fn may_open(&self, now: Instant) -> Option<bool> {
        match self.outage {
            None => Some(false),
            Some(o) if !o.probing && now >= o.next_probe => Some(true),
            Some(_) => None,
        }
    }

    /// A free slot that may be used now: `Some(probe)` as for [`State::may_open`].
    fn free_slot_now(&self, now: Instant) -> Option<bool> {
        if self.size() < self.cfg.max_size {
            self.may_open(now)
        } else {
            None
        }
    }

    /// Reserves a slot for a connection about to be opened (counted in `opening` until the
    /// permit is spent or given back). A probe marks the outage as probing.
    fn take_slot(&mut self, probe: bool) -> OpenPermit {
        self.opening += 1;
        if probe {
            if let Some(o) = &mut self.outage {
                o.probing = true;
            }
        }
        OpenPermit {
            generation: self.generation,
            probe,
            forks: self.forks,
            drains: self.drains,
        }
    }

    /// Gives a free slot to the first waiter, if there is a free slot and a waiter, and the
    /// server is not down (then the first waiter probes when its time comes).
    fn grant_open(&mut self) -> Option<Arc<Waiter<C>>> {
        if self.closed
            || self.outage.is_some()
            || self.size() >= self.cfg.max_size
            || !self.idle.is_empty()
        {
            return None;
        }
        let w = self.pop_waiter()?;
        w.give(Grant::Open(self.take_slot(false)));
        Some(w)
    }

    /// Gives free slots to waiters, as many as there are of both (after an outage ends).
    fn grant_opens(&mut self) -> Vec<Arc<Waiter<C>>> {
        let mut woken = Vec::new();
        while let Some(w) = self.grant_open() {
            woken.push(w);
        }
        woken
    }

    /// Tells the first waiter to ask again ([`Grant::Retry`]), so that it learns when the
    /// next probe is due (see [`Engine::wake_time`]).
    fn nudge_first(&mut self) -> Option<Arc<Waiter<C>>> {
        let w = self.waiters.front()?;
        if w.retry_sent.swap(true, Relaxed) {
            return None; // it will ask again anyway
        }
        w.give(Grant::Retry);
        self.retries_sent += 1;
        Some(Arc::clone(w))
    }
}

/// Waiters to notify once the engine's lock is released.
type Woken<C> = [Option<Arc<Waiter<C>>>; 2];

fn notify_all<C>(woken: Woken<C>) {
    for w in woken.into_iter().flatten() {
        w.notify();
    }
}

/// The pool engine for connections of type `C`, which it stores but never inspects.
pub struct Engine<C> {
    name: String,
    state: Mutex<State<C>>,
    stats: Stats,
}

impl<C> Engine<C> {
    /// Builds an engine; `cfg` was checked by [`Config::validate`].
    pub fn new(name: impl Into<String>, cfg: Validated) -> Self {
        let seed = Instant::now().elapsed().as_nanos() as u64
            ^ (std::process::id() as u64).rotate_left(32)
            ^ (&cfg as *const Validated as u64);
        let cfg = cfg.into_inner();
        Engine {
            name: name.into(),
            state: Mutex::new(State {
                cfg,
                idle: Vec::new(),
                in_use: 0,
                opening: 0,
                retiring: 0,
                waiters: VecDeque::new(),
                retries_sent: 0,
                closed: false,
                generation: 0,
                next_id: 0,
                rng: seed | 1,
                maintainer: None,
                maintenance_due: false,
                outage: None,
                forks: 0,
                drains: 0,
            }),
            stats: Stats::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn status(&self) -> Status {
        let st = self.state.lock();
        Status {
            min_size: st.cfg.min_size,
            max_size: st.cfg.max_size,
            size: st.size(),
            idle: st.idle.len(),
            in_use: st.in_use,
            opening: st.opening,
            waiting: st.waiters.len(),
            closed: st.closed,
        }
    }

    /// The error for a checkout that waited `timeout` in vain, describing the pool now.
    pub fn timeout_error(&self, timeout: Duration) -> AcquireError {
        let st = self.state.lock();
        AcquireError::Timeout {
            pool: self.name.clone(),
            timeout,
            size: st.size(),
            max_size: st.cfg.max_size,
            in_use: st.in_use,
            opening: st.opening,
            waiting: st.waiters.len(),
            failed_connects: st.outage.map(|o| o.failures),
        }
    }

    /// Whether the server is taken to be down: a connect failed as transient and none has
    /// succeeded since.
    pub fn server_down(&self) -> bool {
        self.state.lock().outage.is_some()
    }

    /// Until when `waiter` should wait before asking again with [`Engine::retry`]: its
    /// `deadline`, or, while the server is down, when the next probe is due if the waiter
    /// is first in line (it then makes the probe). Others wait for a grant: a connection
    /// once the server is back, or a [`Grant::Retry`] when they become first.
    pub fn wake_time(&self, waiter: &Arc<Waiter<C>>, deadline: Instant) -> Instant {
        let st = self.state.lock();
        match st.outage {
            Some(o) if !o.probing && st.waiters.front().is_some_and(|w| Arc::ptr_eq(w, waiter)) => {
                o.next_probe.min(deadline)
            }
            _ => deadline,
        }
    }

    /// Asks for a connection, strictly in order: behind every waiter. `wake` is called only
    /// when the request has to queue.
    pub fn checkout(
        &self,
        now: Instant,
        wake: impl FnOnce() -> Box<dyn Wake>,
    ) -> Result<Checkout<C>, AcquireError> {
        self.checkout_in_turn(now, None, wake)
    }

    /// Asks for a connection for a holder whose turn began at `turn` (see
    /// [`Config::turn_length`]): within its turn it takes an idle connection even if
    /// others wait; once the turn is over it queues behind them. The caller starts a new
    /// turn when a checkout had to queue.
    pub fn checkout_in_turn(
        &self,
        now: Instant,
        turn: Option<Instant>,
        wake: impl FnOnce() -> Box<dyn Wake>,
    ) -> Result<Checkout<C>, AcquireError> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(AcquireError::Closed {
                pool: self.name.clone(),
            });
        }
        if st.waiters.is_empty() || st.in_turn(turn, now) {
            if let Some(answer) = st.take_idle(now, &self.stats) {
                return Ok(answer);
            }
            if let Some(probe) = st.free_slot_now(now) {
                return Ok(Checkout::Open(st.take_slot(probe)));
            }
        }
        if st.cfg.max_waiting > 0 && st.waiters.len() >= st.cfg.max_waiting {
            self.stats.rejected.fetch_add(1, Relaxed);
            return Err(AcquireError::TooManyWaiters {
                pool: self.name.clone(),
                max_waiting: st.cfg.max_waiting,
            });
        }
        let waiter = Arc::new(Waiter::new(wake()));
        st.waiters.push_back(Arc::clone(&waiter));
        st.debug_check_retries();
        self.stats.requests_queued.fetch_add(1, Relaxed);
        Ok(Checkout::Wait(waiter))
    }

    /// Gives up a connection that failed its checkout check, and in the same step gives
    /// the caller what replaces it: another idle connection, or the freed slot as a permit.
    /// The caller keeps its place: it never queues behind later arrivals. While the server
    /// is down and no probe is due, it waits first in line (`wake` as for a checkout).
    pub fn replace(
        &self,
        conn: Pooled<C>,
        reason: CloseReason,
        now: Instant,
        wake: impl FnOnce() -> Box<dyn Wake>,
    ) -> (Retired<C>, Result<Checkout<C>, AcquireError>) {
        let mut st = self.state.lock();
        if conn.meta.generation != st.generation {
            let foreign = Retired {
                conn,
                reason,
                foreign: true,
            };
            return (foreign, self.closed_error());
        }
        st.in_use -= 1;
        let retired = st.retire(conn, reason, &self.stats);
        if st.closed {
            return (retired, self.closed_error());
        }
        if let Some(answer) = st.take_idle(now, &self.stats) {
            return (retired, Ok(answer));
        }
        match st.may_open(now) {
            Some(probe) => (retired, Ok(Checkout::Open(st.take_slot(probe)))),
            None => {
                let waiter = Arc::new(Waiter::new(wake()));
                st.waiters.push_front(Arc::clone(&waiter));
                st.debug_check_retries();
                self.stats.requests_queued.fetch_add(1, Relaxed);
                (retired, Ok(Checkout::Wait(waiter)))
            }
        }
    }

    fn closed_error<T>(&self) -> Result<T, AcquireError> {
        Err(AcquireError::Closed {
            pool: self.name.clone(),
        })
    }

    /// Takes back a connection. `healthy` is false when it came back broken or could not
    /// be cleaned. Hands it straight to the first waiter if there is one.
    pub fn release(&self, conn: Pooled<C>, healthy: bool, now: Instant) -> Option<Retired<C>> {
        self.release_in_turn(conn, healthy, now, None)
    }

    /// Takes back a connection from a holder whose turn began at `turn`: with waiters, it
    /// goes straight to the first one once the turn is over, and idle (the first waiter is
    /// sent a Retry) while it lasts. See [`Engine::checkout_in_turn`].
    pub fn release_in_turn(
        &self,
        mut conn: Pooled<C>,
        healthy: bool,
        now: Instant,
        turn: Option<Instant>,
    ) -> Option<Retired<C>> {
        let mut st = self.state.lock();
        if conn.meta.generation != st.generation {
            return Some(Retired {
                conn,
                reason: CloseReason::PoolClosed,
                foreign: true,
            });
        }
        st.in_use -= 1;
        self.stats
            .usage
            .record(now.saturating_duration_since(conn.meta.last_used));
        let reason = if !healthy {
            Some(CloseReason::Broken)
        } else if st.closed {
            Some(CloseReason::PoolClosed)
        } else if st.drained(&conn.meta) {
            Some(CloseReason::Drained)
        } else if State::<C>::expired(&conn.meta, now) {
            Some(CloseReason::Lifetime)
        } else if st.cfg.max_uses > 0 && conn.meta.uses >= st.cfg.max_uses {
            Some(CloseReason::MaxUses)
        } else if st.live() >= st.cfg.max_size {
            Some(CloseReason::Resize)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Some(st.retire(conn, reason, &self.stats));
        }
        conn.meta.last_used = now;
        conn.meta.long_hold_reported = false;
        let woken = st.place_returned(conn, turn, now);
        if woken[0].is_some() {
            drop(st);
            notify_all(woken);
            return None;
        }
        self.evict_stale_idle(&mut st, now)
    }

    /// Retires the longest-idle connection if it sat idle past `max_idle` while the pool is
    /// above `min_size`. One per call keeps the return path short; maintenance does the rest.
    fn evict_stale_idle(&self, st: &mut State<C>, now: Instant) -> Option<Retired<C>> {
        let max_idle = st.cfg.max_idle?;
        let oldest = st.idle.first()?;
        if st.live() <= st.cfg.min_size
            || now.saturating_duration_since(oldest.meta.last_used) <= max_idle
        {
            return None;
        }
        let conn = st.idle.remove(0);
        Some(st.retire(conn, CloseReason::Idle, &self.stats))
    }

    /// Records a connection opened with `permit` for the caller, who now holds it.
    /// `Err` means the pool closed (or forked) meanwhile: close the connection.
    pub fn opened(
        &self,
        permit: OpenPermit,
        payload: C,
        now: Instant,
        took: Duration,
    ) -> Result<Pooled<C>, Retired<C>> {
        let mut st = self.state.lock();
        let conn = self.record_open(&mut st, permit, payload, now, took, 1)?;
        st.in_use += 1;
        let woken = st.grant_opens();
        drop(st);
        for w in woken {
            w.notify();
        }
        Ok(conn)
    }

    /// Records a connection opened by maintenance: it goes to the first waiter, or idle;
    /// if the process forked or the pool was drained while it was being opened, it goes to
    /// the first waiter, or is handed back for closing ([`Engine::keep_no_idle`],
    /// [`Engine::drain`]).
    pub fn opened_idle(
        &self,
        permit: OpenPermit,
        payload: C,
        now: Instant,
        took: Duration,
    ) -> Option<Retired<C>> {
        // One lock for the whole step, so that a close() cannot slip in between and leave
        // the connection idle in a closed pool. Nobody has used it yet: no use counted.
        let mut st = self.state.lock();
        let unwanted = if permit.forks != st.forks {
            Some(CloseReason::AfterFork)
        } else if permit.drains != st.drains {
            Some(CloseReason::Drained)
        } else {
            None
        };
        let conn = match self.record_open(&mut st, permit, payload, now, took, 0) {
            Ok(conn) => conn,
            Err(retired) => return Some(retired),
        };
        if let Some(reason) = unwanted.filter(|_| st.waiters.is_empty()) {
            return Some(st.retire(conn, reason, &self.stats));
        }
        let woken = st.serve_first_waiter(conn);
        let more = st.grant_opens();
        drop(st);
        notify_all(woken);
        for w in more {
            w.notify();
        }
        None
    }

    /// Spends `permit` on a freshly opened connection, with `uses` uses counted; `Err` if
    /// the pool closed or forked meanwhile.
    fn record_open(
        &self,
        st: &mut State<C>,
        permit: OpenPermit,
        payload: C,
        now: Instant,
        took: Duration,
        uses: u64,
    ) -> Result<Pooled<C>, Retired<C>> {
        let mut meta = st.new_meta(now, uses);
        meta.drains = permit.drains;
        if permit.generation != st.generation {
            // Opened across a fork: no slot of this generation to free.
            meta.generation = permit.generation;
            return Err(Retired {
                conn: Pooled { payload, meta },
                reason: CloseReason::PoolClosed,
                foreign: false,
            });
        }
        let conn = Pooled { payload, meta };
        st.opening -= 1;
        // The server answered: it is up.
        st.outage = None;
        self.stats.opens.fetch_add(1, Relaxed);
        self.stats.open_time.record(took);
        if st.closed {
            return Err(st.retire(conn, CloseReason::PoolClosed, &self.stats));
        }
        Ok(conn)
    }

    /// A connection attempt failed for good (the server refused it: authentication, an
    /// unknown database, bad parameters): its slot goes to the first waiter, who tries
    /// itself. The server answered, so it is not down.
    pub fn open_failed(&self, permit: OpenPermit) {
        self.stats.open_errors.fetch_add(1, Relaxed);
        let mut st = self.state.lock();
        if permit.generation != st.generation {
            return;
        }
        st.outage = None;
        st.opening -= 1;
        let woken = st.grant_opens();
        self.below_min(&mut st);
        drop(st);
        for w in woken {
            w.notify();
        }
    }

    /// A connection attempt failed in a way that may pass (connection refused or timed out,
    /// the server starting up or shutting down): the server is taken to be down. Its slot
    /// is freed but given to nobody; from now until a connect succeeds, one probing connect
    /// at a time is allowed, the first 50 ms after this failure, each next one after a
    /// longer pause (see [`probe_backoff`]). The first waiter is told to ask again, so that
    /// it makes the next probe; callers that are not waiting ask again themselves.
    pub fn open_failed_transient(&self, permit: OpenPermit, now: Instant) {
        self.stats.open_errors.fetch_add(1, Relaxed);
        let mut st = self.state.lock();
        if permit.generation != st.generation {
            return;
        }
        st.opening -= 1;
        match &mut st.outage {
            None => {
                st.outage = Some(Outage {
                    failures: 1,
                    next_probe: now + probe_backoff(1),
                    probing: false,
                });
            }
            Some(o) if permit.probe => {
                o.failures = o.failures.saturating_add(1);
                o.next_probe = now + probe_backoff(o.failures);
                o.probing = false;
            }
            // Opened before the outage was known: the schedule stands.
            Some(_) => {}
        }
        let woken = st.nudge_first();
        st.debug_check_retries();
        drop(st);
        if let Some(w) = woken {
            w.notify();
        }
    }

    /// Gives back a permit that was not tried (maintenance stops opening after a failure):
    /// its slot goes to the first waiter, and no connection error is counted.
    pub fn open_unused(&self, permit: OpenPermit) {
        let mut st = self.state.lock();
        if permit.generation != st.generation {
            return;
        }
        st.opening -= 1;
        let mut first = None;
        if permit.probe {
            if let Some(o) = &mut st.outage {
                // The probe was not made: the first waiter makes it.
                o.probing = false;
                first = st.nudge_first();
            }
        }
        self.free_slot(st);
        if let Some(w) = first {
            w.notify();
        }
    }

    /// A holder dropped a connection without returning it; the connection is gone with it.
    /// Frees its slot. Returns false if it did not belong to this generation.
    pub fn lost(&self, meta: &ConnMeta, now: Instant) -> bool {
        let mut st = self.state.lock();
        if meta.generation != st.generation {
            return false;
        }
        st.in_use -= 1;
        self.stats.leaked.fetch_add(1, Relaxed);
        self.stats
            .usage
            .record(now.saturating_duration_since(meta.last_used));
        self.free_slot(st);
        true
    }

    /// Reports that a retired connection is now closed (or, if foreign, set aside): its
    /// slot is free again and goes to the first waiter. Call it for every [`Retired`].
    pub fn retire_done(&self, retired: Retired<C>) -> C {
        if !retired.foreign {
            let mut st = self.state.lock();
            if retired.conn.meta.generation == st.generation {
                st.retiring -= 1;
                self.free_slot(st);
            }
        }
        retired.conn.payload
    }

    /// Withdraws a waiter whose wait ran out (or was cancelled). A grant given at the last
    /// moment is returned and belongs to the caller; `None` means it was withdrawn.
    pub fn cancel(&self, waiter: &Arc<Waiter<C>>) -> Option<Grant<C>> {
        let mut st = self.state.lock();
        if let Some(pos) = st.waiters.iter().position(|w| Arc::ptr_eq(w, waiter)) {
            st.waiters.remove(pos);
            st.forget_retry(waiter);
            // Its Retry, if it had one, passes to the next waiter; while the server is
            // down, the new first waiter is told so that it makes the next probe.
            let next = st.send_retry();
            let first = if pos == 0 && st.outage.is_some() {
                st.nudge_first()
            } else {
                None
            };
            st.debug_check_retries();
            drop(st);
            notify_all([next, first]);
            return None;
        }
        drop(st);
        // Not queued any more, so it was granted, under the lock we just took.
        waiter.try_take()
    }

    /// Answers a waiter's [`Grant::Retry`]: an idle connection or a permit to open one (the
    /// waiter then leaves the queue), or [`Checkout::Wait`] again, with its place kept.
    pub fn retry(
        &self,
        waiter: &Arc<Waiter<C>>,
        now: Instant,
    ) -> Result<Checkout<C>, AcquireError> {
        let mut st = self.state.lock();
        let Some(pos) = st.waiters.iter().position(|w| Arc::ptr_eq(w, waiter)) else {
            // Served or closed meanwhile, under the lock: the grant is in its slot.
            return Ok(Checkout::Wait(Arc::clone(waiter)));
        };
        st.forget_retry(waiter);
        let answer = if let Some(answer) = st.take_idle(now, &self.stats) {
            st.waiters.remove(pos);
            answer
        } else if let Some(probe) = st.free_slot_now(now) {
            st.waiters.remove(pos);
            Checkout::Open(st.take_slot(probe))
        } else {
            Checkout::Wait(Arc::clone(waiter))
        };
        st.debug_check_retries();
        Ok(answer)
    }

    /// Closes the pool: idle connections are handed back for closing, waiters are woken
    /// with [`Grant::Closed`], connections in use are retired when they come back.
    pub fn close(&self) -> Vec<Retired<C>> {
        let mut st = self.state.lock();
        if st.closed {
            return Vec::new();
        }
        st.closed = true;
        let retired = st.retire_idle(CloseReason::PoolClosed, &self.stats);
        let waiters: Vec<_> = st.waiters.drain(..).collect();
        st.retries_sent = 0;
        for w in &waiters {
            w.retry_sent.store(false, Relaxed);
            w.give(Grant::Closed);
        }
        st.wake_maintainer();
        drop(st);
        for w in waiters {
            w.notify();
        }
        retired
    }

    /// Changes `min_size` and `max_size` at run time. Idle connections above the new
    /// maximum are handed back for closing; busy ones are closed when they return.
    pub fn resize(&self, min_size: usize, max_size: usize) -> Result<Vec<Retired<C>>, ConfigError> {
        let mut st = self.state.lock();
        st.cfg = st.cfg.resized(min_size, max_size)?.into_inner();
        let mut retired = Vec::new();
        while st.live() > st.cfg.max_size && !st.idle.is_empty() {
            let conn = st.idle.remove(0);
            retired.push(st.retire(conn, CloseReason::Resize, &self.stats));
        }
        let mut woken = Vec::new();
        while let Some(w) = st.grant_open() {
            woken.push(w);
        }
        self.below_min(&mut st);
        drop(st);
        for w in woken {
            w.notify();
        }
        Ok(retired)
    }

    /// Computes the helper's work: expired and stale idle connections to close, and
    /// permits to open connections up to `min_size`. Returns `None` once the pool is closed.
    pub fn maintain(&self, now: Instant) -> Option<Maintenance<C>> {
        let mut st = self.state.lock();
        if st.closed {
            return None;
        }
        let mut retire = Vec::new();
        let mut i = 0;
        while i < st.idle.len() {
            if State::<C>::expired(&st.idle[i].meta, now) {
                let conn = st.idle.remove(i);
                retire.push(st.retire(conn, CloseReason::Lifetime, &self.stats));
            } else {
                i += 1;
            }
        }
        while let Some(r) = self.evict_stale_idle(&mut st, now) {
            retire.push(r);
        }
        let mut open = Vec::new();
        while st.size() < st.cfg.min_size {
            match st.may_open(now) {
                Some(probe) => open.push(st.take_slot(probe)),
                None => break,
            }
            if st.outage.is_some() {
                break; // one probe at a time
            }
        }
        let next_probe = st.outage.filter(|o| !o.probing).map(|o| o.next_probe);
        let stale_at = st
            .cfg
            .max_idle
            .filter(|_| st.live() > st.cfg.min_size)
            .and_then(|max_idle| st.idle.first().map(|c| c.meta.last_used + max_idle));
        // Connections returned later go idle unseen by this computation: look again
        // every max_idle/2, so a stale one is closed within 1.5 x max_idle.
        let next_look = st.cfg.max_idle.map(|max_idle| now + max_idle / 2);
        // A checkout from now on is held past the threshold no sooner than this.
        let next_hold = leak_threshold(&st.cfg).map(|t| now + t);
        let next_due = st
            .idle
            .iter()
            .filter_map(|c| c.meta.expires)
            .chain(stale_at)
            .chain(next_look)
            .chain(next_probe.filter(|_| st.size() < st.cfg.min_size))
            .chain(next_hold)
            .min();
        Some(Maintenance {
            retire,
            open,
            next_due,
        })
    }

    /// Reviews the connections in use, given by the caller (who keeps them while they are
    /// lent) as `(key, meta)` pairs: those held longer than `leak_threshold` and not yet
    /// reported in this hold are marked and returned, each once per hold (the mark is
    /// cleared when the connection comes back); `next_due` is when the next one that is
    /// not reported yet passes the threshold. Nothing is found when the option is off.
    pub fn review_holds<'a, K>(
        &self,
        held: impl IntoIterator<Item = (K, &'a mut ConnMeta)>,
        now: Instant,
    ) -> HoldReview<K> {
        let (threshold, generation) = {
            let st = self.state.lock();
            (leak_threshold(&st.cfg), st.generation)
        };
        let mut review = HoldReview {
            long: Vec::new(),
            next_due: None,
        };
        let Some(threshold) = threshold else {
            return review;
        };
        for (key, meta) in held {
            if meta.long_hold_reported || meta.generation != generation {
                continue;
            }
            let held_for = now.saturating_duration_since(meta.last_used);
            if held_for >= threshold {
                meta.long_hold_reported = true;
                review.long.push(LongHold {
                    key,
                    id: meta.id,
                    held: held_for,
                });
            } else {
                let due = meta.last_used + threshold;
                review.next_due = Some(review.next_due.map_or(due, |d: Instant| d.min(due)));
            }
        }
        review
    }

    /// Blocks the maintenance helper until `deadline`, the pool falling below `min_size`,
    /// or close. Returns false once the pool is closed.
    /// With `pause`, a deficit does not end the wait (back-off after failed opens).
    pub fn wait_for_maintenance(&self, deadline: Instant, pause: bool) -> bool {
        loop {
            let now = Instant::now();
            {
                let mut st = self.state.lock();
                if st.closed {
                    return false;
                }
                let asked = std::mem::take(&mut st.maintenance_due);
                let deficit = st.size() < st.cfg.min_size && st.outage.is_none();
                if (!pause && (asked || deficit)) || now >= deadline {
                    st.maintainer = None;
                    return true;
                }
                st.maintainer = Some(thread::current());
            }
            thread::park_timeout(deadline - now);
        }
    }

    /// A slot was just freed under `st`: gives it to the first waiter, asks maintenance to
    /// refill if the pool fell below `min_size`, then releases the lock and wakes the waiter.
    fn free_slot(&self, mut st: MutexGuard<'_, State<C>>) {
        let woken = st.grant_open();
        self.below_min(&mut st);
        drop(st);
        if let Some(w) = woken {
            w.notify();
        }
    }

    fn below_min(&self, st: &mut State<C>) {
        if st.size() < st.cfg.min_size {
            st.wake_maintainer();
        }
    }

    /// Before `fork()`: takes the engine lock so the child never inherits it mid-update.
    /// Must be followed, in both processes, by [`Engine::after_fork_in_parent`] or
    /// [`Engine::after_fork_in_child`].
    pub fn before_fork(&self) {
        std::mem::forget(self.state.lock());
    }

    /// After `fork()`, in the parent: carries on as before.
    pub fn after_fork_in_parent(&self) {
        // SAFETY: locked by `before_fork` on this thread, and the guard was forgotten.
        unsafe { self.state.force_unlock() };
    }

    /// After `fork()`, in the parent, once the locks are released: a process that forks is
    /// taken for a master that serves nothing itself (gunicorn `--preload`), and keeps no
    /// idle connections. `min_size` becomes 0, every idle connection is handed back for
    /// closing, and those being opened to be kept idle are handed back when they arrive,
    /// unless a waiter takes them ([`Engine::opened_idle`]). `max_size` and the connections
    /// in use are left as they are: the process still gets connections on demand, and
    /// they close after `max_idle`. Each close counts as [`CloseReason::AfterFork`].
    pub fn keep_no_idle(&self) -> Vec<Retired<C>> {
        let mut st = self.state.lock();
        if st.closed {
            return Vec::new();
        }
        st.cfg.min_size = 0;
        st.forks += 1;
        let retired = st.retire_idle(CloseReason::AfterFork, &self.stats);
        st.debug_check_retries();
        retired
    }

    /// After `fork()`, in the child: starts a new generation with no connections. Returns
    /// the parent's idle connections; the caller must keep them unused and unclosed (see
    /// [`Retired::foreign`]). Connections the parent had in use are treated as foreign when
    /// they come back.
    pub fn after_fork_in_child(&self) -> Vec<Pooled<C>> {
        // SAFETY: locked by `before_fork` on this thread, and the guard was forgotten.
        unsafe { release_in_child(&self.state) };
        let mut st = self.state.lock();
        st.generation += 1;
        st.in_use = 0;
        st.opening = 0;
        st.retiring = 0;
        st.outage = None;
        // The parent's maintenance thread does not exist here.
        st.maintainer = None;
        // Their threads do not exist in the child.
        st.waiters.clear();
        st.retries_sent = 0;
        std::mem::take(&mut st.idle)
    }
}

/// After `fork()`, in the child: releases a lock that the forking thread took before the
/// fork (its guard forgotten). Threads of the parent that were parked waiting for it do not
/// exist in the child, but a release may still hand the lock to one of them (parking_lot's
/// fair hand-off), which would leave it held for good; so it is released until it is free.
///
/// # Safety
/// Only in a forked child, before it starts any thread, on a lock held across the fork.
pub unsafe fn release_in_child<T>(lock: &Mutex<T>) {
    lock.force_unlock();
    while lock.is_locked() {
        lock.force_unlock();
    }
}
