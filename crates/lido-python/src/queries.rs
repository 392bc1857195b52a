//! Query statistics: each statement the hook reports, counted and timed by its shape in the
//! pool's `lido_core::QueryStats`; `PoolCore.query_stats()` and `reset_query_stats()`.

use crate::inner::Inner;
use lido_core::Dialect;
use std::time::Duration;

/// A statement's shape as shown anywhere: its literals never are.
pub(crate) fn shape_of(_text: &str, _dialect: Dialect) -> Option<String> {
    None
}

impl Inner {
    /// Counts a statement that ended, if the pool keeps query statistics.
    pub(crate) fn record_statement(
        &self,
        _sql: &str,
        _dialect: Dialect,
        _took: Duration,
        _rows: Option<u64>,
        _failed: bool,
    ) {
    }
}
