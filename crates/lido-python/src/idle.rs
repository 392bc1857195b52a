//! Idle in transaction: a holder with a transaction open and no statement running is
//! reported after `idle_in_transaction_threshold`, and its transaction ended after
//! `idle_in_transaction_timeout` (off by default): the socket is shut down (`shutdown(2)`,
//! as deadline.rs does, the descriptor stays the driver's), so the server rolls back at
//! once, the holder's next statement fails, and the connection is discarded on return.
//! Only the statement hook (Django's) tells the pool of transactions.

use crate::holders::Lent;
use crate::inner::Inner;
use crate::reports::Report;
use pyo3::prelude::*;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the review found for one lease: reported now, ended now (both may be due at once).
#[derive(Default)]
struct Finding {
    report: Option<Duration>,
    end: Option<Duration>,
}

impl Inner {
    /// Reports (and, past the timeout, ends) idle transactions; returns when to look again.
    /// Run by maintenance, which looks again within the threshold even with nothing due:
    /// a transaction begun meanwhile is not told to it (that would cost every transaction
    /// a wake-up), so one is reported at most a threshold late.
    pub(crate) fn review_idle_transactions(&self, py: Python<'_>, now: Instant) -> Option<Instant> {
        let (threshold, timeout) = (self.idle_threshold, self.idle_timeout);
        let poll = threshold.into_iter().chain(timeout).min()?;
        let lent: Vec<(Arc<Lent>, i32, Py<PyAny>)> = self
            .leases
            .lock()
            .values()
            .map(|h| {
                let p = &h.payload;
                (Arc::clone(&p.lent), p.fd, p.watch.clone_ref(py))
            })
            .collect();
        let mut next_due = now + poll;
        for (l, fd, watch) in lent {
            let finding = {
                let mut a = l.activity.lock();
                let idle_since = match (&a.transaction, a.running_since, a.idle_since) {
                    (Some(_), None, Some(since)) if !l.ended() => since,
                    _ => continue,
                };
                let idle = now.saturating_duration_since(idle_since);
                let mut finding = Finding::default();
                if let Some(t) = threshold {
                    if idle >= t && !a.idle_reported {
                        a.idle_reported = true;
                        finding.report = Some(idle);
                    } else if idle < t {
                        next_due = next_due.min(idle_since + t);
                    }
                }
                if let Some(t) = timeout {
                    if idle >= t {
                        l.ended.store(true, Relaxed);
                        finding.end = Some(idle);
                    } else {
                        next_due = next_due.min(idle_since + t);
                    }
                }
                finding
            };
            if let Some(idle) = finding.report {
                self.report_lent(py, Report::IdleInTransaction, &l, idle);
            }
            if let Some(idle) = finding.end {
                if self.shut_down(py, fd, &watch) {
                    self.report_lent(py, Report::IdleTransactionEnded, &l, idle);
                }
            }
        }
        Some(next_due)
    }

    /// Shuts down the socket of the connection `watch` refers to, if it is still alive and
    /// still on descriptor `fd` (a holder may have closed it, and the number been reused).
    fn shut_down(&self, py: Python<'_>, fd: i32, watch: &Py<PyAny>) -> bool {
        if fd < 0 {
            return false;
        }
        let Some(driver) = self.driver(py) else {
            return false;
        };
        let Ok(conn) = watch.call0(py) else {
            return false;
        };
        if conn.is_none(py) {
            return false;
        }
        let same = driver
            .fileno
            .call1(py, (conn.bind(py),))
            .and_then(|v| v.extract::<i32>(py))
            .is_ok_and(|now| now == fd);
        if same {
            // SAFETY: shutdown() on a descriptor has no memory effects. It is the live
            // connection's: checked just now, and its holder needs the GIL, which this
            // thread has held since `fileno` returned, to close it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        same
    }
}
