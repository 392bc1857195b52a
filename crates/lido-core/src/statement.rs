//! Which statements can leave state on a session that outlives their transaction.
//!
//! A pooled connection passes from holder to holder; a `SET`, a temporary table, a session
//! advisory lock or a `LISTEN` left by one would reach the next. Resetting every connection
//! on return costs a round trip, so the backends show every statement to
//! [`changes_session`] and reset only the connections it marked. It reads the SQL text the
//! client sends; state changed inside a server function (a procedure that calls
//! `set_config`) cannot be seen from there.
//!
//! The common statements (a plain `SELECT`, `INSERT`, `UPDATE` or `DELETE`) are decided by
//! their first word plus a search for the few functions that take session-level locks or
//! settings; the rest by their first words. When in doubt the answer is "changes": a
//! needless reset costs a round trip, a missed one leaks state to another holder.

use memchr::memmem::{self, Finder};
use std::cell::RefCell;
use std::sync::OnceLock;

/// The SQL dialect a statement is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
}

/// Functions whose effect outlives the transaction, searched for in statements whose first
/// word alone does not decide: the end of a name (its prefix may vary), in lower case; the
/// search ignores case and wants no identifier character after the name.
const PG_FUNCTIONS: &[&[u8]] = &[
    // pg_advisory_lock(_shared), pg_try_advisory_lock(_shared); the transaction-scoped ones
    // are spelled advisory_xact_lock.
    b"advisory_lock",
    b"advisory_lock_shared",
    // set_config(name, value, false); with `true` it is transaction-local, but telling the
    // two apart needs the arguments: a needless reset is the safe side.
    b"set_config",
    b"dblink_connect",
    b"dblink_connect_u",
];
const MYSQL_FUNCTIONS: &[&[u8]] = &[b"get_lock", b"@"];

/// Whether `sql` may leave state on the session beyond its own transaction.
pub fn changes_session(sql: &str, dialect: Dialect) -> bool {
    let mut words = Words::new(sql.as_bytes());
    let Some(first) = words.next() else {
        return false;
    };
    let decided = match dialect {
        Dialect::Postgres => postgres(first, &mut words),
        Dialect::MySql => mysql(first, &mut words),
    };
    decided.unwrap_or_else(|| {
        // SELECT ... INTO TEMP makes a temporary table (Django never writes SELECT INTO).
        let select_into = dialect == Dialect::Postgres && first.eq_ignore_ascii_case(b"select");
        names_any(sql.as_bytes(), functions(dialect), select_into)
    })
}

fn functions(dialect: Dialect) -> &'static [&'static [u8]] {
    match dialect {
        Dialect::Postgres => PG_FUNCTIONS,
        Dialect::MySql => MYSQL_FUNCTIONS,
    }
}

/// Some(answer) when the first words decide; None when the text must be searched.
fn postgres(first: &[u8], words: &mut Words<'_>) -> Option<bool> {
    let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    let kw = |k: &str| is(first, k);
    if kw("select") || kw("insert") || kw("update") || kw("delete") || kw("with") {
        return None;
    }
    if kw("set") {
        let next = words.next().unwrap_or_default();
        // SET LOCAL and SET TRANSACTION/CONSTRAINTS end with the transaction.
        return Some(!(is(next, "local") || is(next, "transaction") || is(next, "constraints")));
    }
    if kw("create") {
        let mut next = words.next().unwrap_or_default();
        if is(next, "or") {
            words.next(); // REPLACE
            next = words.next().unwrap_or_default();
        }
        if is(next, "global") || is(next, "local") {
            next = words.next().unwrap_or_default();
        }
        return Some(is(next, "temp") || is(next, "temporary"));
    }
    if kw("declare") {
        return Some(has_phrase(words, "with", "hold"));
    }
    if kw("prepare") {
        // PREPARE TRANSACTION is two-phase commit, not a prepared statement.
        return Some(!is(words.next().unwrap_or_default(), "transaction"));
    }
    // RESET and DISCARD undo the backend's own set-up too, which the full reset redoes.
    // DO runs arbitrary code.
    if kw("reset") || kw("discard") || kw("listen") || kw("load") || kw("do") {
        return Some(true);
    }
    if kw("begin")
        || kw("start")
        || kw("commit")
        || kw("end")
        || kw("rollback")
        || kw("abort")
        || kw("savepoint")
        || kw("release")
        || kw("deallocate")
        || kw("unlisten")
        || kw("close")
        || kw("fetch")
        || kw("move")
    {
        return Some(false);
    }
    None
}

fn mysql(first: &[u8], words: &mut Words<'_>) -> Option<bool> {
    let is = |w: &[u8], k: &str| w.eq_ignore_ascii_case(k.as_bytes());
    let kw = |k: &str| is(first, k);
    if kw("select") || kw("insert") || kw("update") || kw("delete") || kw("replace") {
        return None;
    }
    // Every SET: session variables, user variables, NAMES, and SET TRANSACTION, which
    // applies to the session's next transaction, possibly the next holder's.
    if kw("set") || kw("use") || kw("prepare") || kw("lock") {
        return Some(true);
    }
    if kw("create") {
        let next = words.next().unwrap_or_default();
        return Some(is(next, "temporary"));
    }
    if kw("begin")
        || kw("start")
        || kw("commit")
        || kw("rollback")
        || kw("savepoint")
        || kw("release")
        || kw("deallocate")
        || kw("unlock")
    {
        return Some(false);
    }
    None
}

/// Whether the statement names one of `names`, or the word `into` if `into` (ASCII case
/// ignored); a name that ends in an identifier character must not be followed by another.
fn names_any(sql: &[u8], names: &'static [&'static [u8]], into: bool) -> bool {
    thread_local! {
        /// Reused for the lower-case copy, so that a check allocates nothing.
        static LOWER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let ident = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    let search = |text: &[u8]| {
        let named = finders(names).iter().any(|(finder, open_end)| {
            finder.find_iter(text).any(|at| {
                let end = at + finder.needle().len();
                // MySQL's `@@name` reads a system variable; `@name` is a user variable.
                let system = finder.needle() == b"@"
                    && (text.get(end) == Some(&b'@') || at > 0 && text[at - 1] == b'@');
                (*open_end || !text.get(end).is_some_and(ident)) && !system
            })
        });
        named
            || into
                && memmem::find_iter(text, b"into").any(|at| {
                    // A keyword, not part of a name or a quoted identifier.
                    at > 0
                        && text[at - 1].is_ascii_whitespace()
                        && text.get(at + 4).is_some_and(u8::is_ascii_whitespace)
                })
    };
    if !sql.iter().any(u8::is_ascii_uppercase) {
        return search(sql);
    }
    LOWER.with_borrow_mut(|lower| {
        lower.clear();
        lower.extend_from_slice(sql);
        lower.make_ascii_lowercase();
        search(lower)
    })
}

/// The searchers for `names` (built once), each with whether the name's end is open (no
/// identifier character to end it).
fn finders(names: &'static [&'static [u8]]) -> &'static [(Finder<'static>, bool)] {
    static PG: OnceLock<Vec<(Finder<'static>, bool)>> = OnceLock::new();
    static MYSQL: OnceLock<Vec<(Finder<'static>, bool)>> = OnceLock::new();
    let cell = if std::ptr::eq(names, PG_FUNCTIONS) {
        &PG
    } else {
        &MYSQL
    };
    cell.get_or_init(|| {
        names
            .iter()
            .map(|n| {
                let open_end = !n
                    .last()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
                (Finder::new(*n), open_end)
            })
            .collect()
    })
}

fn has_phrase(words: &mut Words<'_>, first: &str, second: &str) -> bool {
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case(first.as_bytes()) {
            if let Some(n) = words.next() {
                if n.eq_ignore_ascii_case(second.as_bytes()) {
                    return true;
                }
            }
        }
    }
    false
}

/// The SQL keywords and identifiers of a statement, skipping blanks, comments, quoted text
/// and punctuation.
struct Words<'a> {
    sql: &'a [u8],
    at: usize,
}

impl<'a> Words<'a> {
    fn new(sql: &'a [u8]) -> Self {
        Words { sql, at: 0 }
    }

    /// Skips to the end of a quoted run that starts at `self.at` with `quote`.
    fn skip_quoted(&mut self, quote: u8) {
        self.at += 1;
        while self.at < self.sql.len() {
            let c = self.sql[self.at];
            self.at += 1;
            if c == quote {
                return;
            }
        }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.sql;
        while self.at < s.len() {
            let c = s[self.at];
            if c.is_ascii_alphabetic() || c == b'_' {
                let start = self.at;
                while self.at < s.len()
                    && (s[self.at].is_ascii_alphanumeric() || s[self.at] == b'_')
                {
                    self.at += 1;
                }
                return Some(&s[start..self.at]);
            }
            match c {
                b'-' if s.get(self.at + 1) == Some(&b'-') => {
                    self.at = memchr::memchr(b'\n', &s[self.at..]).map_or(s.len(), |i| self.at + i);
                }
                b'/' if s.get(self.at + 1) == Some(&b'*') => {
                    self.at = memmem::find(&s[self.at + 2..], b"*/")
                        .map_or(s.len(), |i| self.at + 2 + i + 2);
                }
                b'\'' | b'"' | b'`' => self.skip_quoted(c),
                _ => self.at += 1,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Dialect::{MySql, Postgres};

    fn pg(sql: &str) -> bool {
        changes_session(sql, Postgres)
    }

    #[test]
    fn plain_statements_change_nothing() {
        for sql in [
            "SELECT \"auth_user\".\"id\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = %s",
            "INSERT INTO \"app_item\" (\"name\") VALUES (%s) RETURNING \"app_item\".\"id\"",
            "UPDATE app_item SET name = %s WHERE id = %s",
            "DELETE FROM app_item WHERE id = 1",
            "  /* a comment */ -- another\n select 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "SET LOCAL statement_timeout = 1000",
            "set transaction isolation level serializable",
            "SAVEPOINT \"s1_x1\"",
            "RELEASE SAVEPOINT \"s1_x1\"",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT set_configuration FROM t",
            "SELECT advisory_locks FROM t",
            "DECLARE c CURSOR FOR SELECT 1",
            "PREPARE TRANSACTION 'x'",
            "",
            "   ",
        ] {
            assert!(!pg(sql), "{sql}");
        }
    }

    #[test]
    fn session_changes_are_seen() {
        for sql in [
            "SET search_path TO other",
            "set statement_timeout = 5",
            "SET SESSION statement_timeout = 5",
            "SET ROLE other",
            "SET SESSION AUTHORIZATION other",
            "SET TIME ZONE 'UTC'",
            "RESET ALL",
            "SELECT set_config('app.user', '1', false)",
            "select SET_CONFIG('app.user', '1', false)",
            "CREATE TEMP TABLE t (id int)",
            "create temporary table t (id int)",
            "CREATE GLOBAL TEMPORARY TABLE t (id int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "SELECT pg_advisory_lock(42)",
            "SELECT pg_try_advisory_lock_shared(42)",
            "SELECT Pg_Advisory_Lock(42)",
            "LISTEN channel",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE q AS SELECT 1",
            "SELECT * INTO TEMP t FROM x",
            "DISCARD ALL",
            "DO $$ BEGIN PERFORM set_config('a.b', '1', false); END $$",
            "/* leading */ SET search_path TO x",
        ] {
            assert!(pg(sql), "{sql}");
        }
    }

    #[test]
    fn quoted_text_and_comments_are_not_words() {
        assert!(!pg("SELECT 'SET x' FROM t"));
        assert!(!pg("-- SET search_path\nSELECT 1"));
        assert!(!pg("/* LISTEN x */ SELECT 1"));
        assert!(!pg("SELECT \"into\" FROM t"));
    }

    #[test]
    fn mysql_session_changes() {
        for sql in [
            "SET NAMES utf8mb4",
            "SET @x = 1",
            "SET SESSION sql_mode = ''",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT @x := 1",
            "SELECT @@sql_mode, @x",
            "SELECT 1 INTO @x",
            "SELECT GET_LOCK('a', 0)",
            "CREATE TEMPORARY TABLE t (id int)",
            "USE other",
            "LOCK TABLES t WRITE",
            "PREPARE s FROM 'SELECT 1'",
        ] {
            assert!(changes_session(sql, MySql), "{sql}");
        }
        for sql in [
            "SELECT `app_item`.`id` FROM `app_item` WHERE `app_item`.`id` = %s",
            "INSERT INTO `app_item` (`name`) VALUES (%s)",
            "CREATE TABLE t (id int)",
            "SAVEPOINT `s1`",
            "SELECT RELEASE_LOCK('a')",
            "SELECT @@max_connections, @@max_user_connections",
            "SELECT VERSION(), @@sql_mode, @@SESSION.sql_auto_is_null",
        ] {
            assert!(!changes_session(sql, MySql), "{sql}");
        }
    }
}
