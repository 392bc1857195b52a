//! Draining: every connection of the pool replaced, the pool staying open (HikariCP's
//! `softEvictConnections`, PgBouncer's `RECONNECT`), after a failover, a password rotation
//! or a server setting changed.
//!
//! Each drain counts one more in `State::drains`. Permits carry the count of when they were
//! given, and connections that of their permit: one from before the latest drain is closed
//! when it comes back, or, opened to be kept idle, when it arrives with nobody waiting.
//! The slots freed go to waiters, who open fresh connections, and maintenance refills
//! `min_size`. Not the fork `generation`: drained connections keep their slots until closed.

use super::{Engine, State};
use crate::conn::{CloseReason, ConnMeta, Retired};

impl<C> Engine<C> {
    /// Replaces every connection without closing the pool: the idle ones are handed back
    /// for closing now; those in use are closed when they come back, and those being opened
    /// when they come back after serving the checkout they were opened for (or when they
    /// arrive, if opened to be kept idle and nobody waits). Sizes are left as they are;
    /// maintenance is woken to refill `min_size`. Each close counts as
    /// [`CloseReason::Drained`]. A closed pool is left alone.
    pub fn drain(&self) -> Vec<Retired<C>> {
        let mut st = self.state.lock();
        if st.closed {
            return Vec::new();
        }
        st.drains += 1;
        let retired = st.retire_idle(CloseReason::Drained, &self.stats);
        st.wake_maintainer();
        st.debug_check_retries();
        retired
    }
}

impl<C> State<C> {
    /// Whether the connection of `meta` was in the pool (or being opened) at the latest drain.
    pub(super) fn drained(&self, meta: &ConnMeta) -> bool {
        meta.drains != self.drains
    }
}
