"""Dev-only test harness, not part of the installed package: throwaway PostgreSQL,
PgBouncer and MariaDB servers, and a runner for Django's own test suite."""
