//! What `changes_session` costs per statement, for statements as Django writes them:
//! `cargo run --release -p lido-core --example statement_cost`. Prints the median of 7
//! rounds (and the range) in ns per statement, per statement kind.

#[path = "common/django_sql.rs"]
mod django_sql;

use lido_core::{changes_session, Dialect};
use std::hint::black_box;
use std::time::Instant;

const STATEMENTS: &[(&str, &str)] = &[
    ("pk lookup", django_sql::PK_LOOKUP),
    ("insert", django_sql::INSERT),
    ("update", django_sql::UPDATE),
    ("select 1", "select 1"),
    ("savepoint", django_sql::SAVEPOINT),
    ("set", "SET search_path TO other"),
];

fn main() {
    const N: u32 = 1_000_000;
    for (kind, sql) in STATEMENTS {
        let mut rounds: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..N {
                    black_box(changes_session(black_box(sql), Dialect::Postgres));
                }
                t.elapsed().as_nanos() as f64 / f64::from(N)
            })
            .collect();
        rounds.sort_by(f64::total_cmp);
        println!(
            "{kind:>10} ({:>3} bytes): {:6.1} ns per statement (range {:.1}-{:.1}), changes: {}",
            sql.len(),
            rounds[3],
            rounds[0],
            rounds[6],
            changes_session(sql, Dialect::Postgres)
        );
    }
}
