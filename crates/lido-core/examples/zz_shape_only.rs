use lido_core::{shape, Dialect};
use std::hint::black_box;
fn main() {
    let sql = "SELECT \"auth_user\".\"id\", \"auth_user\".\"password\", \"auth_user\".\"last_login\", \"auth_user\".\"is_superuser\", \"auth_user\".\"username\", \"auth_user\".\"first_name\", \"auth_user\".\"last_name\", \"auth_user\".\"email\", \"auth_user\".\"is_staff\", \"auth_user\".\"is_active\", \"auth_user\".\"date_joined\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = %s LIMIT 21";
    let raw = "SELECT name, count(*) FROM app_item WHERE created > '2026-01-01' AND kind = 3 GROUP BY name ORDER BY 2 DESC LIMIT 10";
    for _ in 0..10_000 {
        black_box(shape(black_box(sql), Dialect::Postgres));
        black_box(shape(black_box(raw), Dialect::Postgres));
    }
}
