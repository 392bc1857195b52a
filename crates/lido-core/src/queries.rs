//! Statistics per statement shape: how often each kind of statement ran, how long it took,
//! how often it failed and how many rows it touched.
//!
//! The caller times each statement and hands the time in ([`QueryStats::record`]); nothing
//! here reads a clock. Statements are grouped by their [`shape`], so no literal or
//! parameter value is kept. Shaping costs a pass over the SQL, so the shape of each raw
//! statement text is remembered by a 64-bit hash of that text: a statement seen before
//! costs a hash and one map update under the lock.

use crate::shape::shape;
use crate::statement::Dialect;
use parking_lot::{Mutex, MutexGuard};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The shape of the row that counts the statements of every shape past `max_shapes`.
pub const OTHER_STATEMENTS: &str = "(other statements)";

/// What [`QueryStats::top`] orders by (largest first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryOrder {
    /// Total time spent in the statement.
    Total,
    /// How often it ran.
    Count,
    /// Mean time per run.
    Mean,
    /// 99th percentile of its time.
    P99,
}

impl FromStr for QueryOrder {
    type Err = String;

    /// `"total"`, `"count"`, `"mean"` or `"p99"`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "total" => Ok(QueryOrder::Total),
            "count" => Ok(QueryOrder::Count),
            "mean" => Ok(QueryOrder::Mean),
            "p99" => Ok(QueryOrder::P99),
            _ => Err(format!(
                "unknown order {s:?}: expected total, count, mean or p99"
            )),
        }
    }
}

/// One shape's figures, as [`QueryStats::top`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryRow {
    /// The statement's shape, or [`OTHER_STATEMENTS`].
    pub shape: String,
    /// Runs recorded, failed ones included.
    pub count: u64,
    /// Runs that failed.
    pub errors: u64,
    /// Time of all runs together.
    pub total: Duration,
    /// `total / count`.
    pub mean: Duration,
    /// Median, from the histogram (see [`QueryStats`] for its error).
    pub p50: Duration,
    /// 99th percentile, from the histogram.
    pub p99: Duration,
    /// The longest run, exact.
    pub max: Duration,
    /// Rows summed over the runs that reported a row count; None when none did.
    pub rows: Option<u64>,
}

/// Statistics per statement shape, shared by the threads that run statements.
///
/// Times are kept in a histogram per shape with 8 buckets per power of two from 1 µs to
/// 2^42 ns (about 73 minutes); a quantile is reported as its bucket's middle, which is
/// within 6.25% of the true value for times in that range (shorter times count as 1 µs,
/// longer ones as 73 minutes), and kept between the shape's exact minimum and maximum (so
/// a shape that always takes the same time reports it exactly). Count, total, mean and
/// maximum are exact. A bucket that reaches 2^32 - 1 runs halves every bucket of its
/// shape, which keeps the quantiles as they were, give or take one run per bucket.
///
/// At most `max_shapes` shapes get a row of their own (about 1.1 KiB each, most of it the
/// histogram); the statements of any further shape are counted together in one row whose
/// shape is [`OTHER_STATEMENTS`]. Up to `8 * max_shapes` raw statement texts (at least
/// 1024, at most 65536) are remembered by hash, 16 bytes each; past that the memory starts
/// over, so raw SQL with ever new literals in it costs a shaping per statement, not memory.
/// Two texts whose hashes collide (a chance of about one in 2^64 per pair; the hash is
/// seeded per process) would share the first one's row.
///
/// One lock guards the maps and figures; it is held for a lookup and the update of one
/// row (or the making of a new one), never while a statement is shaped; [`top`](Self::top)
/// holds it to pick its rows and copy them, and works out their quantiles after it.
pub struct QueryStats {
    max_shapes: usize,
    /// Seeds the hash of raw SQL, so that the texts whose hashes collide differ from
    /// process to process.
    seed: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Hash of (dialect, raw SQL) -> row. Bounded: cleared when full, since raw SQL with
    /// literals in it can take endless values.
    by_sql: HashMap<u64, u32, PassThrough>,
    /// Hash of the shape -> row; on a collision the next key is tried.
    by_shape: HashMap<u64, u32, PassThrough>,
    rows: Vec<Row>,
    other: Option<u32>,
}

/// A shape's figures. Cloned out of the lock to be reported.
#[derive(Clone)]
struct Row {
    shape: Arc<str>,
    count: u64,
    errors: u64,
    total_ns: u64,
    min_ns: u64,
    max_ns: u64,
    rows: Option<u64>,
    times: Box<Buckets>,
}

impl QueryStats {
    /// Statistics that keep at most `max_shapes` shapes apart.
    pub fn new(max_shapes: usize) -> Self {
        QueryStats {
            // Rows are numbered in u32.
            max_shapes: max_shapes.min(u32::MAX as usize - 1),
            seed: RandomState::new().hash_one(0x6c69_646f_u64),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records one run of `sql`: its time, the rows it reported (None when the driver
    /// does not know) and whether it failed.
    pub fn record(
        &self,
        sql: &str,
        dialect: Dialect,
        elapsed: Duration,
        rows: Option<u64>,
        failed: bool,
    ) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = bucket_of(ns);
        let (mut inner, at) = self.row_of(sql, dialect);
        inner.rows[at as usize].add(ns, bucket, rows, failed);
    }

    /// The shape of `sql`, as [`shape`] makes it, from the same
    /// memory of raw texts that [`record`](Self::record) uses: for a statement about to
    /// run, whose shape is wanted before it is recorded. The shape gets its row (a row
    /// without runs is not reported); a shape past `max_shapes` is shaped anew each time.
    pub fn shape_of(&self, sql: &str, dialect: Dialect) -> Arc<str> {
        let (inner, at) = self.row_of(sql, dialect);
        if inner.other == Some(at) {
            drop(inner);
            return Arc::from(shape(sql, dialect));
        }
        Arc::clone(&inner.rows[at as usize].shape)
    }

    /// The lock, and the row of `sql` (shaped without the lock when its text is new).
    fn row_of(&self, sql: &str, dialect: Dialect) -> (MutexGuard<'_, Inner>, u32) {
        let key = hash_bytes(sql.as_bytes(), self.seed ^ dialect_salt(dialect));
        {
            let inner = self.inner.lock();
            if let Some(&at) = inner.by_sql.get(&key) {
                return (inner, at);
            }
        }
        let shaped = shape(sql, dialect);
        let shape_key = hash_bytes(shaped.as_bytes(), self.seed);
        let mut inner = self.inner.lock();
        let at = inner.row_for(&shaped, shape_key, self.max_shapes);
        if inner.by_sql.len() >= sql_cache_cap(self.max_shapes) {
            inner.by_sql.clear();
        }
        inner.by_sql.insert(key, at);
        (inner, at)
    }

    /// The `n` rows first in `order` (largest first; ties by count, then shape).
    pub fn top(&self, n: usize, order: QueryOrder) -> Vec<QueryRow> {
        let picked: Vec<Row> = {
            let inner = self.inner.lock();
            let mut keys: Vec<(u64, u64, u32)> = inner
                .rows
                .iter()
                .enumerate()
                .filter(|(_, row)| row.count > 0)
                .map(|(at, row)| (row.order_key(order), row.count, at as u32))
                .collect();
            let first = |a: &(u64, u64, u32), b: &(u64, u64, u32)| {
                (b.0, b.1).cmp(&(a.0, a.1)).then_with(|| {
                    inner.rows[a.2 as usize]
                        .shape
                        .cmp(&inner.rows[b.2 as usize].shape)
                })
            };
            if n < keys.len() {
                keys.select_nth_unstable_by(n, first);
                keys.truncate(n);
            }
            keys.sort_unstable_by(first);
            keys.iter()
                .map(|&(_, _, at)| inner.rows[at as usize].clone())
                .collect()
        };
        picked.iter().map(Row::to_query_row).collect()
    }

    /// Forgets every statement recorded.
    pub fn reset(&self) {
        let old = std::mem::take(&mut *self.inner.lock());
        // Freed outside the lock.
        drop(old);
    }

    /// The number of rows [`top`](Self::top) can report: shapes kept apart that have
    /// run, plus the row of other statements once used.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .rows
            .iter()
            .filter(|r| r.count > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for QueryStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // try_lock: a Debug print while the lock is held (in a panic message) must not hang.
        let rows = self.inner.try_lock().map(|inner| inner.rows.len());
        f.debug_struct("QueryStats")
            .field("max_shapes", &self.max_shapes)
            .field("rows", &rows)
            .finish_non_exhaustive()
    }
}

/// How many raw statement texts are remembered before the memory starts over.
fn sql_cache_cap(max_shapes: usize) -> usize {
    max_shapes.saturating_mul(8).clamp(1024, 1 << 16)
}

fn dialect_salt(dialect: Dialect) -> u64 {
    match dialect {
        Dialect::Postgres => 0,
        Dialect::MySql => 0x9e37_79b9_7f4a_7c15,
    }
}

impl Inner {
    /// The row of `shaped`, made when new (or the other statements' row, when full).
    fn row_for(&mut self, shaped: &str, mut key: u64, max_shapes: usize) -> u32 {
        while let Some(&at) = self.by_shape.get(&key) {
            if &*self.rows[at as usize].shape == shaped {
                return at;
            }
            key = key.wrapping_add(1);
        }
        if self.rows.len() - usize::from(self.other.is_some()) >= max_shapes {
            if let Some(at) = self.other {
                return at;
            }
            let at = self.push_row(OTHER_STATEMENTS);
            self.other = Some(at);
            return at;
        }
        let at = self.push_row(shaped);
        self.by_shape.insert(key, at);
        at
    }

    fn push_row(&mut self, shape: &str) -> u32 {
        self.rows.push(Row {
            shape: Arc::from(shape),
            count: 0,
            errors: 0,
            total_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
            rows: None,
            times: Box::new(Buckets::default()),
        });
        (self.rows.len() - 1) as u32
    }
}

impl Row {
    fn add(&mut self, ns: u64, bucket: usize, rows: Option<u64>, failed: bool) {
        self.count += 1;
        self.errors += u64::from(failed);
        self.total_ns = self.total_ns.saturating_add(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        if let Some(n) = rows {
            self.rows = Some(self.rows.unwrap_or(0).saturating_add(n));
        }
        self.times.add(bucket);
    }

    fn order_key(&self, order: QueryOrder) -> u64 {
        match order {
            QueryOrder::Total => self.total_ns,
            QueryOrder::Count => self.count,
            QueryOrder::Mean => self.total_ns / self.count.max(1),
            QueryOrder::P99 => self.times.quantile_ns(0.99, self.min_ns, self.max_ns),
        }
    }

    /// The row as reported (outside the lock: it reads the histogram twice).
    fn to_query_row(&self) -> QueryRow {
        QueryRow {
            shape: self.shape.to_string(),
            count: self.count,
            errors: self.errors,
            total: Duration::from_nanos(self.total_ns),
            mean: Duration::from_nanos(self.total_ns / self.count.max(1)),
            p50: Duration::from_nanos(self.times.quantile_ns(0.5, self.min_ns, self.max_ns)),
            p99: Duration::from_nanos(self.times.quantile_ns(0.99, self.min_ns, self.max_ns)),
            max: Duration::from_nanos(self.max_ns),
            rows: self.rows,
        }
    }
}

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// The first bucket starts at 2^10 ns (about 1 µs), the last ends at 2^42 ns.
const LOW_POW: u32 = 10;
const HIGH_POW: u32 = 42;
const BUCKETS: usize = (HIGH_POW - LOW_POW) as usize * SUB;

/// Counts of times per bucket. When a bucket would overflow, all are halved: the
/// quantiles, which are ratios, stay as they were.
#[derive(Clone)]
struct Buckets {
    counts: [u32; BUCKETS],
    /// The counts' sum.
    total: u64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: [0; BUCKETS],
            total: 0,
        }
    }
}

fn bucket_of(ns: u64) -> usize {
    let ns = ns.clamp(1 << LOW_POW, (1 << HIGH_POW) - 1);
    let pow = 63 - ns.leading_zeros();
    let sub = ((ns >> (pow - SUB_BITS)) as usize) & (SUB - 1);
    (pow - LOW_POW) as usize * SUB + sub
}

/// The middle of bucket `i`, in ns.
fn bucket_middle(i: usize) -> u64 {
    let pow = (i / SUB) as u32 + LOW_POW;
    let sub = (i % SUB) as u64;
    // [(SUB + sub) << (pow - SUB_BITS), (SUB + sub + 1) << (pow - SUB_BITS))
    (2 * (SUB as u64 + sub) + 1) << (pow - SUB_BITS - 1)
}

impl Buckets {
    /// Counts one time in bucket `at` (from [`bucket_of`], worked out before the lock).
    fn add(&mut self, at: usize) {
        if self.counts[at] == u32::MAX {
            self.total = 0;
            for count in &mut self.counts {
                // Rounded up: a lone slow run stays visible.
                *count = count.div_ceil(2);
                self.total += u64::from(*count);
            }
        }
        self.counts[at] += 1;
        self.total += 1;
    }

    /// The `q` quantile in ns, kept within the exact minimum and maximum. A high quantile
    /// is found from the top, starting at the maximum's bucket: a few buckets read, not
    /// all (ordering every shape by p99 reads them under the lock).
    fn quantile_ns(&self, q: f64, min_ns: u64, max_ns: u64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let bucket = if q > 0.5 {
            // The highest bucket with at most `total - rank` counts above it.
            let allowed_above = self.total - rank;
            let mut above = 0;
            let mut at = bucket_of(max_ns);
            loop {
                above += u64::from(self.counts[at]);
                if above > allowed_above || at == 0 {
                    break at;
                }
                at -= 1;
            }
        } else {
            let mut seen = 0;
            let mut at = 0;
            loop {
                seen += u64::from(self.counts[at]);
                if seen >= rank || at == BUCKETS - 1 {
                    break at;
                }
                at += 1;
            }
        };
        bucket_middle(bucket).clamp(min_ns.min(max_ns), max_ns)
    }
}

/// A 64-bit hash of `bytes`, 16 bytes per multiplication (a folded 128-bit product), in two
/// independent chains so that the multiplications overlap.
fn hash_bytes(bytes: &[u8], seed: u64) -> u64 {
    const K0: u64 = 0xa076_1d64_78bd_642f;
    const K1: u64 = 0xe703_7ed1_a0b4_28db;
    let fold = |a: u64, b: u64| {
        let p = u128::from(a) * u128::from(b);
        (p as u64) ^ ((p >> 64) as u64)
    };
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let len = bytes.len();
    // Both factors depend on the seed, so that no input known in advance zeroes one.
    let s1 = fold(seed ^ K0, K1);
    let s2 = fold(seed ^ K1, K0);
    let mut h = seed ^ (len as u64).wrapping_mul(K1);
    let mut h2 = s1 ^ s2;
    let blocks = bytes.chunks_exact(32);
    let mut at = len - blocks.remainder().len();
    for block in blocks {
        // Fixed-size pieces of a chunk: no bounds checks in the loop.
        let w = |k: usize| u64::from_le_bytes(block[k..k + 8].try_into().unwrap());
        h = fold(w(0) ^ s1, w(8) ^ h);
        h2 = fold(w(16) ^ s2, w(24) ^ h2);
    }
    if len >= 32 {
        h = fold(h ^ s2, h2 ^ K0);
    }
    if at + 16 <= len {
        h = fold(word(at) ^ s1, word(at + 8) ^ h);
        at += 16;
    }
    let rest = len - at;
    let (a, b) = if rest == 0 {
        (0, 0)
    } else if len >= 16 {
        // The last 16 bytes, overlapping ones already read.
        (word(len - 16), word(len - 8))
    } else if rest >= 8 {
        (word(0), word(len - 8))
    } else {
        let mut tail = [0u8; 8];
        tail[..rest].copy_from_slice(&bytes[..rest]);
        (u64::from_le_bytes(tail), 0)
    };
    fold(a ^ s1 ^ h, b ^ K0 ^ seed) ^ h.rotate_left(29)
}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here.
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PassThrough = BuildHasherDefault<PassThroughHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::tests::Rng;
    use Dialect::Postgres;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn rows_per_shape() {
        let stats = QueryStats::new(10);
        for id in 0..5 {
            let sql = format!("SELECT * FROM t WHERE id = {id}");
            stats.record(&sql, Postgres, MS * (id + 1), Some(1), false);
        }
        stats.record("UPDATE t SET a = %s", Postgres, MS * 100, None, true);
        assert_eq!(stats.len(), 2);
        let top = stats.top(10, QueryOrder::Count);
        assert_eq!(top[0].shape, "SELECT * FROM t WHERE id = ?");
        assert_eq!(top[0].count, 5);
        assert_eq!(top[0].errors, 0);
        assert_eq!(top[0].total, MS * 15);
        assert_eq!(top[0].mean, MS * 3);
        assert_eq!(top[0].max, MS * 5);
        assert_eq!(top[0].rows, Some(5));
        assert_eq!(top[1].shape, "UPDATE t SET a = %s");
        assert_eq!(top[1].errors, 1);
        assert_eq!(top[1].rows, None);
        let by_total = stats.top(1, QueryOrder::Total);
        assert_eq!(by_total.len(), 1);
        assert_eq!(by_total[0].shape, "UPDATE t SET a = %s");
        assert_eq!(
            stats.top(1, QueryOrder::Mean)[0].shape,
            "UPDATE t SET a = %s"
        );
        assert_eq!(stats.top(1, QueryOrder::P99)[0].p99, MS * 100);
    }

    #[test]
    fn repeated_sql_hits_the_cache_and_counts_alike() {
        let stats = QueryStats::new(10);
        for _ in 0..3 {
            stats.record("SELECT 1", Postgres, MS, None, false);
            stats.record("SELECT 2", Postgres, MS, None, false);
        }
        assert_eq!(stats.inner.lock().by_sql.len(), 2);
        let top = stats.top(5, QueryOrder::Total);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].count, 6);
        // The same text in another dialect is shaped by that dialect's rules.
        stats.record("SELECT \"x\"", Postgres, MS, None, false);
        stats.record("SELECT \"x\"", Dialect::MySql, MS, None, false);
        let shapes: Vec<String> = stats
            .top(5, QueryOrder::Total)
            .into_iter()
            .map(|r| r.shape)
            .collect();
        assert!(shapes.contains(&"SELECT \"x\"".to_string()));
        assert!(shapes.contains(&"SELECT ?".to_string()));
    }

    #[test]
    fn shapes_past_the_cap_share_one_row() {
        let stats = QueryStats::new(3);
        for table in ["a", "b", "c", "d", "e", "d"] {
            stats.record(&format!("SELECT x FROM {table}"), Postgres, MS, None, false);
        }
        // A shape kept before the cap keeps its row.
        stats.record("SELECT x FROM a", Postgres, MS, None, false);
        assert_eq!(stats.len(), 4);
        let top = stats.top(10, QueryOrder::Count);
        assert_eq!(top[0].shape, OTHER_STATEMENTS);
        assert_eq!(top[0].count, 3);
        assert_eq!(top[1].shape, "SELECT x FROM a");
        assert_eq!(top[1].count, 2);
        assert_eq!(QueryStats::new(0).top(1, QueryOrder::Count), vec![]);
    }

    #[test]
    fn shape_of_shares_the_memory_of_texts() {
        let stats = QueryStats::new(1);
        let first = stats.shape_of("SELECT 1", Postgres);
        assert_eq!(&*first, "SELECT ?");
        // A shape not yet run is not reported.
        assert!(stats.is_empty());
        assert!(stats.top(5, QueryOrder::Count).is_empty());
        stats.record("SELECT 1", Postgres, MS, None, false);
        assert_eq!(stats.top(5, QueryOrder::Count)[0].count, 1);
        let again = stats.shape_of("SELECT 1", Postgres);
        assert!(Arc::ptr_eq(&first, &again));
        // Past the cap, the shape still comes back (not the other statements' name).
        assert_eq!(
            &*stats.shape_of("SELECT 'x' FROM t", Postgres),
            "SELECT ? FROM t"
        );
        assert_eq!(
            &*stats.shape_of("SELECT 'x' FROM t", Postgres),
            "SELECT ? FROM t"
        );
    }

    #[test]
    fn shareable_and_printable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<QueryStats>();
        let stats = QueryStats::new(3);
        stats.record("SELECT 1", Postgres, MS, None, false);
        assert_eq!(
            format!("{stats:?}"),
            "QueryStats { max_shapes: 3, rows: Some(1), .. }"
        );
    }

    #[test]
    fn reset_forgets_everything() {
        let stats = QueryStats::new(10);
        stats.record("SELECT 1", Postgres, MS, None, false);
        stats.reset();
        assert!(stats.is_empty());
        assert!(stats.top(10, QueryOrder::Total).is_empty());
        stats.record("SELECT 1", Postgres, MS, None, false);
        assert_eq!(stats.top(10, QueryOrder::Total)[0].count, 1);
    }

    #[test]
    fn the_sql_cache_is_bounded() {
        let stats = QueryStats::new(1);
        for n in 0..5000 {
            stats.record(&format!("SELECT {n}"), Postgres, MS, None, false);
        }
        assert!(stats.inner.lock().by_sql.len() <= sql_cache_cap(1));
        assert_eq!(stats.top(5, QueryOrder::Count)[0].count, 5000);
    }

    #[test]
    fn buckets_are_ordered_and_hold_their_middles() {
        for i in 0..BUCKETS {
            assert_eq!(bucket_of(bucket_middle(i)), i);
            if i > 0 {
                assert!(bucket_middle(i) > bucket_middle(i - 1));
            }
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_the_stated_error() {
        // Every time from 1 µs to 1 h, scaled geometrically: each quantile of one value.
        let mut ns = 1_000f64;
        while ns < 3.6e12 {
            let mut b = Buckets::default();
            let v = ns as u64;
            b.add(bucket_of(v));
            let got = b.quantile_ns(0.5, 0, u64::MAX) as f64;
            let err = (got - ns).abs() / ns;
            let bound = if v < 1 << LOW_POW { 0.1 } else { 0.0625 };
            assert!(err <= bound + 1e-9, "{v} ns read back as {got}");
            ns *= 1.07;
        }
        let mut b = Buckets::default();
        for us in 1..=1000u64 {
            b.add(bucket_of(us * 1000));
        }
        let p50 = b.quantile_ns(0.5, 1000, 1_000_000) as f64;
        let p99 = b.quantile_ns(0.99, 1000, 1_000_000) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 <= 0.0625, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 <= 0.0625, "{p99}");
    }

    #[test]
    fn high_quantiles_from_the_top_agree_with_a_scan_from_the_bottom() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..200 {
            let mut b = Buckets::default();
            let mut max = 0;
            for _ in 0..1 + round * 7 {
                // Spread over 1 µs .. 1 s, heavier at the low end.
                let ns = (1_000 << rng.below(20)) | rng.below(1000);
                max = max.max(ns);
                b.add(bucket_of(ns));
            }
            for q in [0.5001, 0.9, 0.99, 0.999, 1.0] {
                let rank = ((b.total as f64 * q).ceil() as u64).clamp(1, b.total);
                let mut seen = 0;
                let from_bottom = (0..BUCKETS)
                    .find(|&i| {
                        seen += u64::from(b.counts[i]);
                        seen >= rank
                    })
                    .unwrap();
                assert_eq!(
                    b.quantile_ns(q, 0, max),
                    bucket_middle(from_bottom).min(max),
                    "round {round} q {q}"
                );
            }
        }
    }

    #[test]
    fn a_full_bucket_halves_them_all() {
        let mut b = Buckets::default();
        b.counts[bucket_of(10_000)] = u32::MAX;
        b.counts[bucket_of(1_000_000)] = 1;
        b.total = u64::from(u32::MAX) + 1;
        b.add(bucket_of(10_000));
        assert_eq!(b.counts[bucket_of(10_000)], (u32::MAX / 2) + 2);
        assert_eq!(b.counts[bucket_of(1_000_000)], 1);
        assert_eq!(b.total, u64::from(u32::MAX / 2) + 3);
    }

    #[test]
    fn the_hash_reads_every_byte() {
        let seed = 7;
        let base = b"SELECT a FROM t WHERE b = 1 AND c = 'xyz' LIMIT 21".to_vec();
        let h = hash_bytes(&base, seed);
        for at in 0..base.len() {
            let mut changed = base.clone();
            changed[at] ^= 1;
            assert_ne!(hash_bytes(&changed, seed), h, "byte {at}");
        }
        for len in 0..base.len() {
            assert_ne!(hash_bytes(&base[..len], seed), h);
        }
        assert_ne!(hash_bytes(&base, seed + 1), h);
    }

    #[test]
    fn shared_between_threads() {
        let stats = Arc::new(QueryStats::new(100));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    for n in 0..1000u64 {
                        let sql = format!("SELECT {} FROM t{}", n % 7, t % 2);
                        stats.record(
                            &sql,
                            Postgres,
                            Duration::from_micros(n),
                            Some(n),
                            n % 10 == 0,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let top = stats.top(10, QueryOrder::Count);
        assert_eq!(top.len(), 2);
        assert!(top.iter().all(|r| r.count == 2000 && r.errors == 200));
        assert!(top.iter().all(|r| r.rows == Some(2 * 999 * 1000 / 2)));
    }
}
