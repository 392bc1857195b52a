//! `PermitGuard`: an open permit's slot goes back to the engine on every failure path.

use crate::leases::PyConn;
use lido_core::{Engine, OpenPermit};
use std::time::Instant;

/// Holds an [`OpenPermit`] while its connection is being opened and set up. Dropped on a
/// failure path (an error returned with `?`, a panic), it reports a failed open, which frees
/// the slot for the next waiter; on success, [`PermitGuard::spend`] takes the permit out.
pub(crate) struct PermitGuard<'a> {
    engine: &'a Engine<PyConn>,
    permit: Option<OpenPermit>,
}

impl<'a> PermitGuard<'a> {
    pub(crate) fn new(engine: &'a Engine<PyConn>, permit: OpenPermit) -> Self {
        PermitGuard {
            engine,
            permit: Some(permit),
        }
    }

    /// The permit, to spend on the opened connection; the guard then does nothing.
    pub(crate) fn spend(mut self) -> OpenPermit {
        self.permit
            .take()
            .expect("a guard's permit is taken only once")
    }

    /// The connect failed in a way that may pass (the driver's `transient` hook said so):
    /// the engine takes the server to be down and spaces out the next attempts.
    pub(crate) fn failed_transient(mut self, now: Instant) {
        if let Some(permit) = self.permit.take() {
            self.engine.open_failed_transient(permit, now);
        }
    }
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.engine.open_failed(permit);
        }
    }
}
