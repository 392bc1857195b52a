//! # lido-core
//!
//! The pool engine of django-lido, in plain Rust. It decides who gets which connection and
//! when to open, check, recycle or close one; the caller does the I/O. It knows nothing of
//! Python or of any database driver: a connection is an opaque `C`.
//!
//! ```
//! use lido_core::{Checkout, Config, Engine, ThreadWake};
//! use std::time::{Duration, Instant};
//!
//! let engine: Engine<String> = Engine::new("demo", Config { max_size: 2, ..Config::default() }.validate()?);
//! // Nothing is open yet, so the engine hands out a permit to open a connection.
//! let conn = match engine.checkout(Instant::now(), || Box::new(ThreadWake::current()))? {
//!     Checkout::Open(permit) => {
//!         let opened = "a connection".to_string(); // the caller's driver I/O
//!         engine.opened(permit, opened, Instant::now(), Duration::from_millis(2)).unwrap()
//!     }
//!     _ => unreachable!(),
//! };
//! assert_eq!(engine.status().in_use, 1);
//! // Returned healthy: it goes idle, ready for the next checkout.
//! assert!(engine.release(conn, true, Instant::now()).is_none());
//! assert_eq!(engine.status().idle, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod conn;
pub mod engine;
pub mod error;
pub mod liveness;
pub mod queries;
pub mod shape;
pub mod statement;
pub mod stats;
pub mod wait;

pub use config::{
    checkout_timeout, option, Config, ConfigError, Kind, OptionSpec, SetError, Validated, Value,
    OPTIONS,
};
pub use conn::{Check, CloseReason, ConnMeta, OpenPermit, Pooled, Retired};
pub use engine::{
    probe_backoff, release_in_child, Checkout, Engine, HoldReview, LongHold, Maintenance, Status,
};
pub use error::AcquireError;
pub use liveness::{probe_socket, Liveness};
pub use queries::{QueryOrder, QueryRow, QueryStats, OTHER_STATEMENTS};
pub use shape::shape;
pub use statement::{changes_session, Dialect};
pub use stats::{Histogram, HistogramSummary, Stats, BOUNDS_LOG2_NS};
pub use wait::{Grant, ThreadWake, Waiter, Wake};
