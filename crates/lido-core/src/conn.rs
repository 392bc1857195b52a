//! A pooled connection: the caller's payload plus what the engine knows about it.

use std::time::Instant;

/// Why the engine retired a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Older than `max_lifetime`.
    Lifetime,
    /// Idle longer than `max_idle` while the pool was above `min_size`.
    Idle,
    /// Used `max_uses` times.
    MaxUses,
    /// Returned broken, or in a state that could not be cleaned.
    Broken,
    /// Failed the checkout check (socket probe or round trip).
    CheckFailed,
    /// Above `max_size` after a resize.
    Resize,
    /// The pool was closed.
    PoolClosed,
    /// Idle, or opened to be kept idle, when the process forked: the parent keeps no idle
    /// connections ([`crate::Engine::keep_no_idle`]).
    AfterFork,
    /// In the pool when it was drained ([`crate::Engine::drain`]): idle then, or in use,
    /// or being opened, then closed when it came back.
    Drained,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Lifetime,
        CloseReason::Idle,
        CloseReason::MaxUses,
        CloseReason::Broken,
        CloseReason::CheckFailed,
        CloseReason::Resize,
        CloseReason::PoolClosed,
        CloseReason::AfterFork,
        CloseReason::Drained,
    ];

    /// The name used in statistics (`closes_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Lifetime => "lifetime",
            CloseReason::Idle => "idle",
            CloseReason::MaxUses => "max_uses",
            CloseReason::Broken => "broken",
            CloseReason::CheckFailed => "check_failed",
            CloseReason::Resize => "resize",
            CloseReason::PoolClosed => "pool_closed",
            CloseReason::AfterFork => "after_fork",
            CloseReason::Drained => "drained",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// What the engine tracks for each open connection.
#[derive(Clone, Debug)]
pub struct ConnMeta {
    /// Unique within the pool, in opening order.
    pub id: u64,
    /// When `max_lifetime` (with jitter) runs out.
    pub expires: Option<Instant>,
    /// When it last changed hands: checkout time while in use, return time while idle.
    pub last_used: Instant,
    /// How many times it was checked out.
    pub uses: u64,
    /// In use, and reported as held longer than `leak_threshold` ([`crate::Engine::review_holds`]);
    /// cleared when it comes back.
    pub long_hold_reported: bool,
    /// The engine generation it belongs to; a fork starts a new one.
    pub(crate) generation: u64,
    /// The engine's count of drains when its permit was given: one drain later, it is
    /// closed when it comes back ([`crate::Engine::drain`]).
    pub(crate) drains: u64,
}

/// A connection with its metadata. The engine never looks inside `payload`.
#[derive(Debug)]
pub struct Pooled<C> {
    pub payload: C,
    pub meta: ConnMeta,
}

/// A connection the engine no longer wants, and what the caller must do with it: close it
/// (or set it aside if `foreign`), then pass it to [`crate::Engine::retire_done`], which frees
/// its slot.
#[derive(Debug)]
#[must_use = "a retired connection holds its slot until passed to Engine::retire_done"]
pub struct Retired<C> {
    pub conn: Pooled<C>,
    pub reason: CloseReason,
    /// True for a connection that belongs to the parent of a fork: the caller must neither
    /// use nor close it (closing a libpq connection would end the parent's session).
    pub foreign: bool,
}

/// What the caller should verify before handing a connection out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Check {
    /// Run the zero-round-trip socket probe.
    pub probe: bool,
    /// Run a round-trip check: the connection sat idle longer than `check_after_idle`.
    pub round_trip: bool,
}

/// Leave to open one connection. The slot it stands for counts towards `max_size` until
/// it is spent with [`crate::Engine::opened`],
/// [`crate::Engine::opened_idle`] or [`crate::Engine::open_failed`].
#[derive(Debug)]
#[must_use = "a permit holds a slot until it is spent"]
pub struct OpenPermit {
    pub(crate) generation: u64,
    /// Given while the server was taken to be down: the one probing connect.
    pub(crate) probe: bool,
    /// The engine's count of forks when given: one given before a fork opens a connection
    /// that the pool does not keep idle ([`crate::Engine::keep_no_idle`]).
    pub(crate) forks: u64,
    /// The engine's count of drains when given ([`crate::Engine::drain`]).
    pub(crate) drains: u64,
}

impl OpenPermit {
    /// Whether this is the probe made while the server is taken to be down.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}
