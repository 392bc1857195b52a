//! Why a checkout failed.

use std::fmt;
use std::time::Duration;

/// A checkout that could not be served. Connect errors are not here: they belong to the
/// driver and reach the caller unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// No connection came free within the timeout. Carries the pool's state at that moment
    /// so the message tells *why*.
    Timeout {
        pool: String,
        timeout: Duration,
        size: usize,
        max_size: usize,
        in_use: usize,
        opening: usize,
        waiting: usize,
        /// While the server is taken to be down: the connects that failed since.
        failed_connects: Option<u32>,
    },
    /// The pool was closed before or while waiting.
    Closed { pool: String },
    /// `max_waiting` requests were already waiting.
    TooManyWaiters { pool: String, max_waiting: usize },
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Timeout {
                pool,
                timeout,
                size,
                max_size,
                in_use,
                opening,
                waiting,
                failed_connects,
            } => match failed_connects {
                Some(n) => write!(
                    f,
                    "pool '{pool}': no connection within {:.2} s: the server cannot be \
                     reached ({n} connect attempts failed in a row, retried with back-off; \
                     the last failure is the cause) (size {size}/{max_size}, in use \
                     {in_use}, opening {opening}, waiting {waiting})",
                    timeout.as_secs_f64()
                ),
                None => write!(
                    f,
                    "pool '{pool}': no connection within {:.2} s (size {size}/{max_size}, \
                     in use {in_use}, opening {opening}, waiting {waiting}); connections \
                     are held too long or max_size is too small",
                    timeout.as_secs_f64()
                ),
            },
            AcquireError::Closed { pool } => write!(f, "pool '{pool}' is closed"),
            AcquireError::TooManyWaiters { pool, max_waiting } => write!(
                f,
                "pool '{pool}': {max_waiting} requests already waiting (max_waiting)"
            ),
        }
    }
}

impl std::error::Error for AcquireError {}
