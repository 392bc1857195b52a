"""Django-level benchmark: no pool, persistent connections, Django's native pool,
django-db-connection-pool and django-lido, side by side in one run, on PostgreSQL or MariaDB.

One throwaway server (Unix socket) unless --conninfo / --mysql-url is given: PostgreSQL from
harness.servers (trust), or with --vendor mysql MariaDB from
harness.mariadb (root, no password; mysqlclient, or PyMySQL with --driver pymysql).
Every (variant, scenario) runs in its own child process of this package (Django settings are per
process): `--child VARIANT SCENARIO` configures Django with settings.configure(), warms up for
--warmup seconds, measures for --seconds and prints one JSON line. The parent interleaves
repetitions (rotating the order of the variants each repetition), takes medians and prints the
tables; unless --no-write it also rewrites the `django_cycle` (PostgreSQL) or
`django_cycle_mysql` (MariaDB) section of docs/benchmarks.md.

Scenarios:

* a: one thread, `connection.cursor().execute("select 1"); connection.close()` in a loop
  (the persistent variant never closes: the limit) -> iterations/s;
* b: --threads threads (16), each cycle `close_old_connections()`, `select 1`, a primary-key
  lookup in a 1,000-row table, `close_old_connections()` -> cycles/s, fairness (min/max
  cycles per thread), peak server connections (pg_stat_activity or the MariaDB processlist,
  polled by the parent);
* c (PostgreSQL only): one thread, a 4-table ORM query (`Book` with `select_related` author,
  publisher, store, filtered and ordered, first 10 rows), one checkout per query ->
  queries/s; also reports how many statements the server holds prepared on the connection at
  the end.

MySQL has no native pool in Django and no server-side binding: on MariaDB the variants are no
pool, persistent, django-db-connection-pool and lido, in (a) and (b).

Run from the repo root (the Python 3.13 venv: the one the figures in docs/benchmarks.md were
taken with):

    .venv313/bin/python bench/django_cycle                  # about 4-5 minutes
    .venv313/bin/python bench/django_cycle --quick          # about a minute, smoke figures
    .venv313/bin/python bench/django_cycle --vendor mysql   # MariaDB, about 2-3 minutes

The package's modules: `variants` (the catalog and the constants
both sides share), `server` (the benchmark server), `child` (what runs in the children),
`machine` (CPU accounting, the connections monitor), `runner` (spawning a child, recording its
result), `report` (the tables, from one table spec, and the docs section), `__main__` (the
command line).
"""
