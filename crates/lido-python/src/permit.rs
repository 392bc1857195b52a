//! Guards that give a slot back to the engine on every failure path, a panic included: an
//! open permit ([`PermitGuard`]), a connection in use outside any lease ([`InUseGuard`]),
//! a retired connection being closed ([`Closing`]), retired connections and permits not
//! yet dealt with ([`Leftovers`]).

use crate::leases::PyConn;
use lido_core::{Engine, OpenPermit, Pooled, Retired};
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

/// Holds a connection the engine counts as in use while the binding works on it outside
/// any lease: checked at checkout, cleaned at return. Dropped with the connection still in
/// it (only a panic does that), it frees the slot: the engine counts the connection as
/// lost, and the object closes when Python frees it.
pub(crate) struct InUseGuard<'a, C> {
    engine: &'a Engine<PyConn>,
    conn: Option<Pooled<C>>,
}

impl<'a, C> InUseGuard<'a, C> {
    pub(crate) fn new(engine: &'a Engine<PyConn>, conn: Pooled<C>) -> Self {
        InUseGuard {
            engine,
            conn: Some(conn),
        }
    }

    pub(crate) fn get(&self) -> &Pooled<C> {
        self.conn.as_ref().expect("taken only by take()")
    }

    /// The connection, to lend, replace or release; the guard then does nothing.
    pub(crate) fn take(mut self) -> Pooled<C> {
        self.conn
            .take()
            .expect("a guard's connection is taken only once")
    }
}

impl<C> Drop for InUseGuard<'_, C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.engine.lost(&conn.meta, Instant::now());
        }
    }
}

/// A retired connection while the driver closes it: its slot is freed when this is
/// dropped, after the close or when a panic unwinds through it.
pub(crate) struct Closing<'a> {
    engine: &'a Engine<PyConn>,
    retired: Option<Retired<PyConn>>,
}

impl<'a> Closing<'a> {
    pub(crate) fn new(engine: &'a Engine<PyConn>, retired: Retired<PyConn>) -> Self {
        Closing {
            engine,
            retired: Some(retired),
        }
    }

    pub(crate) fn conn(&self) -> &PyConn {
        &self.retired.as_ref().expect("until dropped").conn.payload
    }
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        if let Some(retired) = self.retired.take() {
            drop(self.engine.retire_done(retired));
        }
    }
}

/// Retired connections or permits to deal with one by one. Those left when the holder
/// unwinds go back to the engine: a retired connection's slot is freed (its object closes
/// when Python frees it), a permit is given back untried.
pub(crate) struct Leftovers<'a, T> {
    engine: &'a Engine<PyConn>,
    items: std::vec::IntoIter<T>,
    settle: fn(&Engine<PyConn>, T),
}

impl<'a> Leftovers<'a, Retired<PyConn>> {
    pub(crate) fn retired(engine: &'a Engine<PyConn>, items: Vec<Retired<PyConn>>) -> Self {
        Leftovers {
            engine,
            items: items.into_iter(),
            settle: |engine, r| drop(engine.retire_done(r)),
        }
    }
}

impl<'a> Leftovers<'a, OpenPermit> {
    pub(crate) fn permits(engine: &'a Engine<PyConn>, items: Vec<OpenPermit>) -> Self {
        Leftovers {
            engine,
            items: items.into_iter(),
            settle: |engine, p| engine.open_unused(p),
        }
    }
}

impl<T> Iterator for Leftovers<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        self.items.next()
    }
}

impl<T> Drop for Leftovers<'_, T> {
    fn drop(&mut self) {
        for item in self.items.by_ref() {
            (self.settle)(self.engine, item);
        }
    }
}
