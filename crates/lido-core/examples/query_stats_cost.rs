//! What query statistics cost per statement, for statements as Django writes them:
//! `cargo run --release -p lido-core --example query_stats_cost`. Prints the median of 7
//! rounds (and the range) in ns, per statement kind: `shape()` alone; `record()` and
//! `shape_of()` of a text seen before (the cache hit every statement but the first of its
//! text takes); `record()` of a text never seen (a cache miss: shaping, then a map lookup
//! by shape).

#[path = "common/django_sql.rs"]
mod django_sql;

use lido_core::{shape, Dialect, QueryStats};
use std::hint::black_box;
use std::time::{Duration, Instant};

const STATEMENTS: &[(&str, &str)] = &[
    ("pk lookup", django_sql::PK_LOOKUP),
    ("insert", django_sql::INSERT),
    ("update", django_sql::UPDATE),
    (
        "in list",
        "SELECT \"app_item\".\"id\", \"app_item\".\"name\" FROM \"app_item\" \
         WHERE \"app_item\".\"owner_id\" IN (%s, %s, %s, %s, %s, %s, %s, %s)",
    ),
    (
        "raw sql",
        "SELECT name, count(*) FROM app_item WHERE created > '2026-01-01' AND kind = 3 \
         GROUP BY name ORDER BY 2 DESC LIMIT 10",
    ),
    ("savepoint", django_sql::SAVEPOINT),
];

/// Median, min and max ns per call of 7 rounds of `n` calls of `f`.
fn rounds(n: u32, mut f: impl FnMut(u32)) -> (f64, f64, f64) {
    let mut ns: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    ns.sort_by(f64::total_cmp);
    (ns[3], ns[0], ns[6])
}

fn main() {
    const N: u32 = 200_000;
    let elapsed = Duration::from_micros(350);
    println!("ns per call, median of 7 rounds (range); {N} calls a round");
    for (kind, sql) in STATEMENTS {
        let (shape_ns, lo, hi) = rounds(N, |_| {
            black_box(shape(black_box(sql), Dialect::Postgres));
        });
        println!(
            "{kind:>10} ({:>3} bytes) shape():       {shape_ns:7.1} ({lo:.1}-{hi:.1})  -> {}",
            sql.len(),
            shape(sql, Dialect::Postgres)
        );

        let stats = QueryStats::new(1000);
        let (hit, lo, hi) = rounds(N, |_| {
            stats.record(black_box(sql), Dialect::Postgres, elapsed, Some(1), false);
        });
        println!("{:>27} record() hit:  {hit:7.1} ({lo:.1}-{hi:.1})", "");
        let (hit, lo, hi) = rounds(N, |_| {
            black_box(stats.shape_of(black_box(sql), Dialect::Postgres));
        });
        println!("{:>27} shape_of() hit: {hit:5.1} ({lo:.1}-{hi:.1})", "");

        // Texts that differ in a trailing comment: each is new to the cache (so it is
        // shaped), and all have one shape. Made beforehand so the round times no formatting.
        let texts: Vec<String> = (0..N).map(|i| format!("{sql} /* {i} */")).collect();
        let stats = QueryStats::new(1000);
        let (miss, lo, hi) = rounds(N, |i| {
            if i == 0 {
                // Every round misses: start from an empty cache.
                stats.reset();
            }
            stats.record(
                &texts[i as usize],
                Dialect::Postgres,
                elapsed,
                Some(1),
                false,
            );
        });
        println!("{:>27} record() miss: {miss:7.1} ({lo:.1}-{hi:.1})", "");
    }
}
