//! The shape of a statement: its text with every literal value taken out, so that the
//! statements an application sends can be counted and timed per kind without keeping a
//! parameter value or a literal (which may be personal data) anywhere.
//!
//! [`shape`] reads the SQL once, left to right, without a regular expression, and returns
//! the input itself (borrowed, nothing allocated) when the shape is the text unchanged: the
//! common case for Django's SQL, whose values travel as placeholders.

use crate::statement::Dialect;
use memchr::{memchr, memchr2, memmem};
use std::borrow::Cow;

/// The statement's shape.
///
/// - **Literals become `?`**: numbers (`42`, `1.5e-3`, `.5`, `0x1F`, `1_000`; a `-` or
///   `+` right before one is its sign, and goes with it, after an operator, `(`, `,`, the
///   start or a keyword such as `WHERE`, `AND`, `THEN`, `LIMIT`); strings in single quotes
///   with their prefixes (`E`, `B`, `X`, `N`, `U&` in PostgreSQL; `X`, `B`, `N` and a
///   character set introducer such as `_utf8mb4` in MySQL); PostgreSQL dollar-quoted
///   strings (`$$..$$`, `$tag$..$tag$`); MySQL double-quoted strings (Django does not turn
///   on `ANSI_QUOTES`). Backslash escapes are honoured where the server honours them: in
///   MySQL strings and in PostgreSQL `E'..'` strings (plain PostgreSQL strings follow
///   `standard_conforming_strings`, on by default). A string left open runs to the end.
/// - **A quoted name left open becomes `?`**, with all that follows it.
/// - **Savepoint names become `?`** (`SAVEPOINT "s1402_x3"`): Django makes one per thread
///   and use, so they would make a shape per savepoint.
/// - **Kept as they are**: keywords, identifiers (quoted in `"..."` in PostgreSQL or in
///   backticks, with any digits in them: `t1`), `NULL`, `TRUE`, `FALSE`, operators, and
///   the placeholders `%s`, `%(name)s` and `?`. PostgreSQL's `$1`, `$2`.. become `?`:
///   their numbers shift with the length of a list before them.
/// - **Lists of values collapse**: a list in `(..)` or `[..]` of nothing but placeholders,
///   literals, `NULL`, `DEFAULT`, `TRUE` or `FALSE` becomes `(first, ...)` (or
///   `[first, ...]`) when it has two items or more or follows `IN` (`IN (%s)` and
///   `IN (%s, %s)` are one shape); the first item is written as above. Further lists of
///   the same kind right after it, separated by commas (`VALUES (..), (..), (..)`), are
///   dropped: a `bulk_create` of 3 rows and one of 300 have one shape. A function's
///   arguments (a `(` right after a name other than `IN` or `VALUES`) are not a list.
/// - **Comments go** (`--`, `/* */` nested in PostgreSQL, MySQL's `#` and `/*! */`), and
///   every run of blanks and comments between two tokens becomes one space; none is left
///   at either end.
///
/// So what stays of the input are keywords, names, operators and placeholders: a value
/// survives only where it is part of a name.
pub fn shape(sql: &str, dialect: Dialect) -> Cow<'_, str> {
    shape_with(sql, dialect, true)
}

/// [`shape`], with or without the shortcut for runs of tokens kept as they are (without
/// it, for tests to hold the shortcut to the token-by-token result).
fn shape_with(sql: &str, dialect: Dialect, kept_runs: bool) -> Cow<'_, str> {
    let mut shaper = Shaper {
        kept_runs,
        b: sql.as_bytes(),
        dialect,
        out: Out {
            src: sql,
            start: 0,
            end: 0,
            owned: None,
            started: false,
            gap: false,
            dashes_end_comment: dialect == Dialect::MySql,
        },
        prev: Prev::Start,
    };
    shaper.run();
    shaper.out.finish()
}

/// The shape being written: a slice of the input for as long as it equals one.
struct Out<'a> {
    src: &'a str,
    /// While `owned` is None the shape so far is `src[start..end]`.
    start: usize,
    end: usize,
    owned: Option<String>,
    /// Whether a token has been written.
    started: bool,
    /// Whether blanks or comments came since the last token.
    gap: bool,
    /// Whether `--` and a blank start a comment, but `--` alone does not (MySQL): there
    /// no space is written after `--`, which would make a comment of what follows.
    dashes_end_comment: bool,
}

impl<'a> Out<'a> {
    /// Starts a token found at `at` in the input: one space first if blanks or comments
    /// came since the last token.
    #[inline(always)]
    fn begin(&mut self, at: usize) {
        if !self.started {
            self.started = true;
            self.start = at;
            self.end = at;
        } else if self.gap && !(self.dashes_end_comment && self.ends_with_dashes()) {
            self.put_more(" ");
        }
        self.gap = false;
    }

    /// A token that is the input's own text from `from` to `to`.
    #[inline(always)]
    fn keep(&mut self, from: usize, to: usize) {
        self.begin(from);
        self.keep_more(from, to);
    }

    /// A token found at `at` written as `text`.
    #[inline(always)]
    fn put(&mut self, at: usize, text: &str) {
        self.begin(at);
        self.put_more(text);
    }

    /// The input's text from `from` to `to`, continuing the current token.
    #[inline(always)]
    fn keep_more(&mut self, from: usize, to: usize) {
        let src = self.src;
        match &mut self.owned {
            Some(owned) => owned.push_str(&src[from..to]),
            None if from == self.end => self.end = to,
            None => self.own().push_str(&src[from..to]),
        }
    }

    /// `text`, continuing the current token.
    #[inline(always)]
    fn put_more(&mut self, text: &str) {
        let rest = &self.src.as_bytes()[self.end..];
        // Most texts are one byte (`?`, a space): compared without a call to memcmp.
        let same = match text.as_bytes() {
            [one] => rest.first() == Some(one),
            many => rest.starts_with(many),
        };
        match &mut self.owned {
            Some(owned) => owned.push_str(text),
            None if same => self.end += text.len(),
            None => self.own().push_str(text),
        }
    }

    /// The shape so far as a string of its own, from the first change on.
    fn own(&mut self) -> &mut String {
        let mut owned = String::with_capacity(self.src.len());
        owned.push_str(&self.src[self.start..self.end]);
        self.owned.insert(owned)
    }

    fn ends_with_dashes(&self) -> bool {
        match &self.owned {
            Some(owned) => owned.ends_with("--"),
            None => self.src[self.start..self.end].ends_with("--"),
        }
    }

    fn finish(self) -> Cow<'a, str> {
        match self.owned {
            Some(owned) => Cow::Owned(owned),
            None => Cow::Borrowed(&self.src[self.start..self.end]),
        }
    }
}

/// What the last token was, as far as the next one cares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    Start,
    /// A word (keyword or name), from..to in the input.
    Word(usize, usize),
    /// A quoted identifier.
    Name,
    /// A literal or a placeholder.
    Value,
    /// `)` or `]`.
    Close,
    /// Any other punctuation or operator (including `(` and `,`).
    Punct,
}

struct Shaper<'a> {
    kept_runs: bool,
    b: &'a [u8],
    dialect: Dialect,
    out: Out<'a>,
    prev: Prev,
}

impl Shaper<'_> {
    fn run(&mut self) {
        let b = self.b;
        let mut i = 0;
        while i < b.len() {
            if self.kept_runs && self.out.started && !self.out.gap {
                i = self.kept_run(i);
                if i == b.len() {
                    break;
                }
            }
            let c = b[i];
            if is_word_start(c) {
                let end = word_end(b, i + 1);
                // A word right before a quote may be a string's prefix (E'..', U&'..').
                let prefix = matches!(b.get(end), Some(b'\'' | b'&'));
                if !prefix {
                    i = self.word(i, end);
                    continue;
                }
            }
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c => {
                    self.out.gap = true;
                    i += 1;
                    continue;
                }
                b'"' if self.dialect == Dialect::Postgres => {
                    i = self.quoted_name(i);
                    continue;
                }
                b'-' | b'/' | b'#' => {
                    let after = skip_gap(b, i, self.dialect);
                    if after > i {
                        self.out.gap = true;
                        i = after;
                        continue;
                    }
                }
                _ => {}
            }
            if VALUE_START[c as usize] || is_word_start(c) {
                if let Some(end) = placeholder_end(b, i, self.dialect) {
                    // `$n` are numbered by position: `?` keeps a shape whatever comes before.
                    if c == b'$' {
                        self.out.put(i, "?");
                    } else {
                        self.out.keep(i, end);
                    }
                    self.prev = Prev::Value;
                    i = end;
                    continue;
                }
                if let Some(end) = literal_end(b, i, self.dialect, self.unary_sign_here()) {
                    self.out.put(i, "?");
                    self.prev = Prev::Value;
                    i = end;
                    continue;
                }
                if is_word_start(c) {
                    i = self.word(i, word_end(b, i + 1));
                    continue;
                }
            }
            match c {
                // MySQL's double quotes are strings, caught by literal_end above.
                b'"' | b'`' => i = self.quoted_name(i),
                b'(' | b'[' => i = self.open(i),
                _ => {
                    // One byte; a non-ASCII byte only starts a word, so this is a char.
                    self.out.keep(i, i + 1);
                    self.prev = if c == b')' || c == b']' {
                        Prev::Close
                    } else {
                        Prev::Punct
                    };
                    i += 1;
                }
            }
        }
    }

    /// Right after a token: takes in the tokens that stay as they are (names, quoted names,
    /// most punctuation, single spaces between them) in one tight loop, and returns where
    /// one that needs a closer look starts. Django's SQL is mostly such tokens.
    fn kept_run(&mut self, i: usize) -> usize {
        let b = self.b;
        let pg = self.dialect == Dialect::Postgres;
        let mut at = i;
        let mut prev = self.prev;
        while at < b.len() {
            let c = b[at];
            let next = b.get(at + 1).copied();
            // A name right after SAVEPOINT is for the main loop to replace.
            let savepoint = matches!(prev, Prev::Word(f, t)
                if t - f == 9 && b[f..t].eq_ignore_ascii_case(b"savepoint"));
            match c {
                _ if is_word_start(c) => {
                    let end = word_end(b, at + 1);
                    if matches!(b.get(end), Some(b'\'' | b'&')) || savepoint {
                        break;
                    }
                    prev = Prev::Word(at, end);
                    at = end;
                }
                b'"' | b'`' if (pg || c == b'`') && !savepoint => {
                    match quoted_close(b, at, c, false) {
                        Some(end) => at = end,
                        None => break,
                    }
                    prev = Prev::Name;
                }
                b' ' if next.is_some_and(|n| {
                    !n.is_ascii_whitespace() && n != 0x0b && !matches!(n, b'-' | b'/' | b'#')
                }) =>
                {
                    // One space before a token: what the gap would be written as.
                    at += 1;
                }
                b'.' if !next.is_some_and(|n| n.is_ascii_digit()) => {
                    prev = Prev::Punct;
                    at += 1;
                }
                b',' | b'=' | b'<' | b'>' | b'*' | b';' | b':' | b'!' | b'|' | b'&' | b'^'
                | b'~' | b'@' => {
                    prev = Prev::Punct;
                    at += 1;
                }
                b')' | b']' => {
                    prev = Prev::Close;
                    at += 1;
                }
                _ => break,
            }
        }
        if at > i {
            self.out.keep_more(i, at);
            self.prev = prev;
        }
        at
    }

    /// The identifier quoted at `from` (a savepoint's name becomes `?`); returns its end.
    #[inline(always)]
    fn quoted_name(&mut self, from: usize) -> usize {
        match quoted_close(self.b, from, self.b[from], false) {
            Some(to) if !self.after_savepoint() => {
                self.out.keep(from, to);
                self.prev = Prev::Name;
                to
            }
            // Left open, the rest may hold anything, literals too: it goes.
            closed => {
                self.out.put(from, "?");
                self.prev = Prev::Value;
                closed.unwrap_or(self.b.len())
            }
        }
    }

    /// The word from `from` to `to` (a savepoint's name becomes `?`); returns `to`.
    #[inline(always)]
    fn word(&mut self, from: usize, to: usize) -> usize {
        if self.after_savepoint() {
            self.out.put(from, "?");
            self.prev = Prev::Value;
        } else {
            self.out.keep(from, to);
            self.prev = Prev::Word(from, to);
        }
        to
    }

    #[inline]
    fn prev_word_is(&self, keyword: &str) -> bool {
        match self.prev {
            Prev::Word(from, to) => self.b[from..to].eq_ignore_ascii_case(keyword.as_bytes()),
            _ => false,
        }
    }

    #[inline]
    fn after_savepoint(&self) -> bool {
        self.prev_word_is("savepoint")
    }

    /// Whether a `-` or `+` here would be a sign rather than a subtraction or addition.
    fn unary_sign_here(&self) -> bool {
        match self.prev {
            Prev::Start | Prev::Punct => true,
            Prev::Word(from, to) => {
                let word = &self.b[from..to];
                UNARY_AFTER
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
            }
            Prev::Name | Prev::Value | Prev::Close => false,
        }
    }

    /// At `(`: a list of values collapses (with the lists of the same kind that follow it,
    /// separated by commas); anything else is written as it comes.
    fn open(&mut self, i: usize) -> usize {
        let open = self.b[i];
        let after_in = self.prev_word_is("in");
        // A function's arguments: their number is part of the shape, and stays.
        let call = open == b'('
            && matches!(self.prev, Prev::Word(..))
            && !after_in
            && !self.prev_word_is("values")
            && !self.prev_word_is("value");
        let list = if call {
            None
        } else {
            value_list(self.b, i, self.dialect)
        };
        let Some(list) = list else {
            self.out.keep(i, i + 1);
            self.prev = Prev::Punct;
            return i + 1;
        };
        self.out.keep(i, i + 1);
        match list.first {
            (_, _, true) => self.out.put_more("?"),
            (from, to, false) => self.out.keep_more(from, to),
        }
        if list.items > 1 || after_in {
            self.out.put_more(", ...");
        }
        self.out.put_more(if open == b'(' { ")" } else { "]" });
        self.prev = Prev::Close;
        let mut end = list.end;
        loop {
            let comma = skip_gap(self.b, end, self.dialect);
            if self.b.get(comma) != Some(&b',') {
                break;
            }
            let next = skip_gap(self.b, comma + 1, self.dialect);
            if self.b.get(next) != Some(&open) {
                break;
            }
            match value_list(self.b, next, self.dialect) {
                Some(next) => end = next.end,
                None => break,
            }
        }
        end
    }
}

/// Keywords after which a `-` or `+` is a sign.
const UNARY_AFTER: &[&str] = &[
    "select",
    "where",
    "and",
    "or",
    "not",
    "when",
    "then",
    "else",
    "limit",
    "offset",
    "by",
    "return",
    "returning",
    "values",
    "in",
    "between",
    "like",
    "is",
    "as",
    "set",
    "interval",
];

/// A parenthesised list of values: where it ends, its item count and its first item (from,
/// to, whether it is a literal).
struct ValueList {
    end: usize,
    items: usize,
    first: (usize, usize, bool),
}

/// The list of values that opens at `open` (a `(`), if that is what it is.
fn value_list(b: &[u8], open: usize, dialect: Dialect) -> Option<ValueList> {
    let close = if b[open] == b'(' { b')' } else { b']' };
    let mut i = skip_gap(b, open + 1, dialect);
    let mut items = 0;
    let mut first = (0, 0, false);
    while i < b.len() {
        // A sign is a sign here: the item follows `(` or `,`.
        let (end, literal) = if let Some(end) = placeholder_end(b, i, dialect) {
            (end, b[i] == b'$')
        } else if let Some(end) = literal_end(b, i, dialect, true) {
            (end, true)
        } else if b.get(i).copied().is_some_and(is_word_start) {
            let end = word_end(b, i);
            let word = &b[i..end];
            if !["null", "default", "true", "false"]
                .iter()
                .any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
            {
                return None;
            }
            (end, false)
        } else {
            return None;
        };
        if items == 0 {
            first = (i, end, literal);
        }
        items += 1;
        i = skip_gap(b, end, dialect);
        match b.get(i) {
            Some(b',') => i = skip_gap(b, i + 1, dialect),
            Some(&c) if c == close => {
                return Some(ValueList {
                    end: i + 1,
                    items,
                    first,
                })
            }
            _ => return None,
        }
    }
    None
}

/// Bytes that may start a literal or a placeholder, letters aside (string prefixes).
const VALUE_START: [bool; 256] = {
    let mut t = [false; 256];
    let starts = b"0123456789.-+'\"$%?";
    let mut k = 0;
    while k < starts.len() {
        t[starts[k] as usize] = true;
        k += 1;
    }
    t
};

/// Bytes that continue a word: letters, digits, `_`, `$` and any byte of a non-ASCII char.
const WORD_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        c += 1;
    }
    t
};

/// Bytes that start a word: those of [`WORD_CHAR`] but digits and `$`.
const WORD_START: [bool; 256] = {
    let mut t = WORD_CHAR;
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = false;
        c += 1;
    }
    t[b'$' as usize] = false;
    t
};

#[inline]
fn is_word_start(c: u8) -> bool {
    WORD_START[c as usize]
}

#[inline]
fn is_word_char(c: u8) -> bool {
    WORD_CHAR[c as usize]
}

#[inline]
fn word_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_word_char(b[i]) {
        i += 1;
    }
    i
}

/// The end of the blanks and comments that start at `i` (`i` itself when none do).
#[inline]
fn skip_gap(b: &[u8], mut i: usize, dialect: Dialect) -> usize {
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c.is_ascii_whitespace() || c == 0x0b {
            i += 1;
        } else if c == b'-' && next == Some(b'-') {
            // MySQL wants a blank or control char after `--`; `--1` there is minus minus one.
            if dialect == Dialect::MySql
                && !b
                    .get(i + 2)
                    .is_some_and(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            {
                break;
            }
            i = line_end(b, i);
        } else if c == b'#' && dialect == Dialect::MySql {
            i = line_end(b, i);
        } else if c == b'/' && next == Some(b'*') {
            i = block_comment_end(b, i, dialect == Dialect::Postgres);
        } else {
            break;
        }
    }
    i
}

fn line_end(b: &[u8], i: usize) -> usize {
    memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1)
}

/// The end of the `/* .. */` comment at `i`; PostgreSQL's nest.
fn block_comment_end(b: &[u8], i: usize, nested: bool) -> usize {
    let mut depth = 1;
    let mut at = i + 2;
    if !nested {
        return memmem::find(&b[at..], b"*/").map_or(b.len(), |n| at + n + 2);
    }
    while let Some(n) = memchr2(b'*', b'/', &b[at..]) {
        at += n;
        if b[at] == b'*' && b.get(at + 1) == Some(&b'/') {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else if b[at] == b'/' && b.get(at + 1) == Some(&b'*') {
            depth += 1;
            at += 2;
        } else {
            at += 1;
        }
    }
    b.len()
}

/// The longest name of a `%(name)s` placeholder.
const MAX_PARAM_NAME: usize = 256;

/// The end of a placeholder at `i`: `%s`, `%(name)s`, `?`, or PostgreSQL's `$1`.
#[inline]
fn placeholder_end(b: &[u8], i: usize, dialect: Dialect) -> Option<usize> {
    match b[i] {
        b'%' => match b.get(i + 1)? {
            b's' => Some(i + 2),
            b'(' => {
                // Names are short; looking no further keeps `%(%(%(..` linear.
                let window = &b[i + 2..b.len().min(i + 2 + MAX_PARAM_NAME)];
                let close = i + 2 + memchr(b')', window)?;
                (b.get(close + 1) == Some(&b's')).then_some(close + 2)
            }
            _ => None,
        },
        b'?' => Some(i + 1),
        b'$' if dialect == Dialect::Postgres => {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            (digits > 0).then_some(i + 1 + digits)
        }
        _ => None,
    }
}

/// The end of a literal at `i`, if one starts there. `sign_ok`: a `-` or `+` before a
/// digit is a sign here.
#[inline]
fn literal_end(b: &[u8], i: usize, dialect: Dialect, sign_ok: bool) -> Option<usize> {
    let c = b[i];
    let next = b.get(i + 1).copied();
    let pg = dialect == Dialect::Postgres;
    match c {
        b'0'..=b'9' => Some(number_end(b, i)),
        b'.' if next.is_some_and(|n| n.is_ascii_digit()) => Some(number_end(b, i)),
        b'-' | b'+' if sign_ok => {
            let at = i + 1;
            let digit = |k: usize| b.get(k).is_some_and(u8::is_ascii_digit);
            (digit(at) || b.get(at) == Some(&b'.') && digit(at + 1)).then(|| number_end(b, at))
        }
        b'\'' => Some(quoted_end(b, i, b'\'', !pg)),
        b'"' if !pg => Some(quoted_end(b, i, b'"', true)),
        b'$' if pg => dollar_quoted_end(b, i),
        b'e' | b'E' if pg && next == Some(b'\'') => Some(quoted_end(b, i + 1, b'\'', true)),
        b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == Some(b'\'') => {
            Some(quoted_end(b, i + 1, b'\'', !pg))
        }
        b'u' | b'U' if pg && next == Some(b'&') && b.get(i + 2) == Some(&b'\'') => {
            Some(quoted_end(b, i + 2, b'\'', false))
        }
        // MySQL's character set introducer: _utf8mb4'..' is one literal.
        b'_' if !pg => {
            let end = word_end(b, i + 1);
            match b.get(end) {
                Some(&q) if q == b'\'' || q == b'"' => Some(quoted_end(b, end, q, true)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The end of the number at `i` (a digit, or a `.` before one): digits with `_`, a
/// fraction, an exponent, and any letters run on (`0x1F`, `0b101`, `1e5`).
#[inline]
fn number_end(b: &[u8], mut i: usize) -> usize {
    let digits = |mut i: usize| {
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
        i
    };
    i = digits(i);
    if b.get(i) == Some(&b'.') && b.get(i + 1) != Some(&b'.') {
        i = digits(i + 1);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'-' | b'+')));
        if b.get(i + 1 + sign).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1 + sign);
        }
    }
    word_end(b, i)
}

/// The end of the text quoted by `quote` at `i`: a doubled quote stands for itself, and
/// with `backslash` a backslash escapes the next byte. Left open, it runs to the end.
fn quoted_end(b: &[u8], i: usize, quote: u8, backslash: bool) -> usize {
    quoted_close(b, i, quote, backslash).unwrap_or(b.len())
}

/// The end of the text quoted by `quote` at `i` as [`quoted_end`] finds it; None when it
/// is left open.
fn quoted_close(b: &[u8], i: usize, quote: u8, backslash: bool) -> Option<usize> {
    // A plain loop: quoted text in SQL is mostly a few bytes, too short for memchr to pay.
    let mut at = i + 1;
    while at < b.len() {
        let c = b[at];
        if c == quote {
            if b.get(at + 1) != Some(&quote) {
                return Some(at + 1);
            }
            at += 2;
        } else if c == b'\\' && backslash {
            at += 2;
        } else {
            at += 1;
        }
    }
    None
}

/// The end of a PostgreSQL dollar-quoted string (`$$..$$`, `$tag$..$tag$`) at `i`.
fn dollar_quoted_end(b: &[u8], i: usize) -> Option<usize> {
    let mut at = i + 1;
    if b.get(at).is_some_and(|c| *c != b'$' && !is_word_start(*c)) {
        return None;
    }
    while at < b.len() && b[at] != b'$' {
        if !is_word_char(b[at]) || b[at] == b'$' {
            return None;
        }
        at += 1;
    }
    if at == b.len() {
        return None;
    }
    let tag = &b[i..=at];
    let body = at + 1;
    Some(memmem::find(&b[body..], tag).map_or(b.len(), |n| body + n + tag.len()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use Dialect::{MySql, Postgres};

    /// The shape, checked to be the same token by token.
    fn both_paths(sql: &str, dialect: Dialect) -> String {
        let got = shape(sql, dialect).into_owned();
        assert_eq!(shape_with(sql, dialect, false), got, "{sql}");
        got
    }

    fn pg(sql: &str) -> String {
        both_paths(sql, Postgres)
    }

    fn my(sql: &str) -> String {
        both_paths(sql, MySql)
    }

    #[test]
    fn django_sql_is_borrowed_unchanged() {
        for sql in [
            "SELECT \"auth_user\".\"id\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = %s",
            "INSERT INTO \"app_item\" (\"name\", \"owner_id\") VALUES (%s) RETURNING \"app_item\".\"id\"",
            "UPDATE `app_item` SET `name` = %s WHERE `app_item`.`id` = %s",
            "SELECT \"t1\".\"x2\" FROM \"t1\" WHERE \"t1\".\"y\" = %(name)s AND \"t1\".z = ?",
        ] {
            assert!(matches!(shape(sql, Postgres), Cow::Borrowed(s) if s == sql), "{sql}");
        }
        let trimmed = shape("  SELECT %s  ", Postgres);
        assert!(matches!(trimmed, Cow::Borrowed("SELECT %s")));
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(pg("SELECT 1"), "SELECT ?");
        assert_eq!(pg("x LIMIT 21 OFFSET 40"), "x LIMIT ? OFFSET ?");
        assert_eq!(
            pg("a = 1.5e-3 AND b = .5 AND c = 0x1F"),
            "a = ? AND b = ? AND c = ?"
        );
        assert_eq!(pg("a = -1 AND b=+2"), "a = ? AND b=?");
        assert_eq!(pg("a -1"), "a -?");
        assert_eq!(pg("select a-1, 2-1 from t1"), "select a-?, ?-? from t1");
        assert_eq!(pg("WHERE -1 < a"), "WHERE ? < a");
        assert_eq!(pg("name = 'O''Brien'"), "name = ?");
        assert_eq!(pg(r"name = 'a\' OR 1=1"), "name = ? OR ?=?");
        assert_eq!(pg(r"name = E'a\'b' || 'c'"), "name = ? || ?");
        assert_eq!(
            pg("x = B'0101' OR y = X'1f' OR z = N'n' OR u = U&'d\\0061'"),
            "x = ? OR y = ? OR z = ? OR u = ?"
        );
        assert_eq!(
            pg("SELECT $$it's$$, $f$a $$ b$f$ FROM t"),
            "SELECT ?, ? FROM t"
        );
        assert_eq!(
            pg("SELECT '2020-01-01'::date, interval '1 day'"),
            "SELECT ?::date, interval ?"
        );
        assert_eq!(pg("x = 'open"), "x = ?");
        assert_eq!(pg("SELECT \"open, 'secret'"), "SELECT ?");
        assert_eq!(my("SELECT `open, 'secret'"), "SELECT ?");
    }

    #[test]
    fn mysql_quoting() {
        assert_eq!(
            my(r#"name = "a\"b" AND c = 'd\'e' AND `we``ird` = 1"#),
            "name = ? AND c = ? AND `we``ird` = ?"
        );
        assert_eq!(
            my("x = _utf8mb4'abc' AND y = X'0A' AND _z = 1"),
            "x = ? AND y = ? AND _z = ?"
        );
        assert_eq!(my("SELECT 1 # comment 2\nFROM t -- 3\n"), "SELECT ? FROM t");
        assert_eq!(my("SELECT 5--1"), "SELECT ?-?");
        assert_eq!(my("SELECT /*!40101 SET x=1 */ a"), "SELECT a");
        // `"` is an identifier in PostgreSQL, a string in MySQL.
        assert_eq!(pg("SELECT \"x1\""), "SELECT \"x1\"");
        assert_eq!(my("SELECT \"x1\""), "SELECT ?");
    }

    #[test]
    fn placeholders_stay() {
        assert_eq!(
            pg("a = %s AND b = %(b)s AND c = $12 AND d = ?"),
            "a = %s AND b = %(b)s AND c = ? AND d = ?"
        );
        assert_eq!(pg("SELECT a$1, $1"), "SELECT a$1, ?");
        assert_eq!(
            pg("a LIKE %s ESCAPE '\\' AND b % 2 = 0"),
            "a LIKE %s ESCAPE ? AND b % ? = ?"
        );
    }

    #[test]
    fn open_placeholders_cost_no_more_than_their_length() {
        let sql = "%(".repeat(100_000);
        assert_eq!(shape(&sql, Postgres).len(), sql.len());
        let long = format!("x = %({})s", "n".repeat(MAX_PARAM_NAME + 1));
        assert_eq!(
            pg(&long),
            format!("x = %({})s", "n".repeat(MAX_PARAM_NAME + 1))
        );
    }

    #[test]
    fn blanks_and_comments_collapse() {
        assert_eq!(
            pg("  SELECT\n\t a /* x 1 /* nested 2 */ 3 */,b -- tail 4\n FROM  t  "),
            "SELECT a ,b FROM t"
        );
        assert_eq!(pg("SELECT a/**/FROM t"), "SELECT a FROM t");
        assert_eq!(pg("/* only */ -- comments"), "");
        assert_eq!(pg(""), "");
    }

    #[test]
    fn lists_collapse() {
        assert_eq!(pg("WHERE id IN (%s, %s, %s)"), "WHERE id IN (%s, ...)");
        assert_eq!(pg("WHERE id IN (%s)"), "WHERE id IN (%s, ...)");
        assert_eq!(pg("WHERE id in ( 1 ,2 )"), "WHERE id in (?, ...)");
        assert_eq!(
            pg("VALUES (%s, %s), (%s, %s), (%s, %s) RETURNING id"),
            "VALUES (%s, ...) RETURNING id"
        );
        assert_eq!(
            pg("VALUES (%s, DEFAULT, NULL), (1, 'a', -2)"),
            "VALUES (%s, ...)"
        );
        assert_eq!(pg("VALUES (%s), (%s)"), "VALUES (%s)");
        assert_eq!(
            pg("WHERE (a, b) IN ((1, 2), (3, 4))"),
            "WHERE (a, b) IN ((?, ...))"
        );
        assert_eq!(
            pg("SELECT f(a, 1), g(%s::int)"),
            "SELECT f(a, ?), g(%s::int)"
        );
        assert_eq!(pg("SELECT now()"), "SELECT now()");
        assert_eq!(
            pg("SELECT coalesce(%s, %s), greatest(1, 2), f (3)"),
            "SELECT coalesce(%s, %s), greatest(?, ?), f (?)"
        );
        assert_eq!(
            pg("WHERE a IN(1, 2) OR b = ANY(ARRAY[3])"),
            "WHERE a IN(?, ...) OR b = ANY(ARRAY[?])"
        );
        assert_eq!(
            pg("WHERE a = ANY(ARRAY[1, 2, 3]) AND b = ANY(%s)"),
            "WHERE a = ANY(ARRAY[?, ...]) AND b = ANY(%s)"
        );
        assert_eq!(
            pg("SELECT ARRAY[[1, 2], [3, 4], [5, 6]], x[1]"),
            "SELECT ARRAY[[?, ...]], x[?]"
        );
        assert_eq!(
            pg("WHERE a IN ($1, $2) AND b = $3"),
            "WHERE a IN (?, ...) AND b = ?"
        );
        assert_eq!(
            pg("WHERE a IN ($1, $2, $3) AND b = $4"),
            "WHERE a IN (?, ...) AND b = ?"
        );
        assert_eq!(
            pg("WHERE a IN (SELECT b FROM c WHERE d = 1)"),
            "WHERE a IN (SELECT b FROM c WHERE d = ?)"
        );
    }

    #[test]
    fn statements_as_django_writes_them() {
        // (dialect, SQL, shape); an empty shape: unchanged.
        let cases: &[(Dialect, &str, &str)] = &[
            (
                Postgres,
                "SELECT \"app_book\".\"id\", \"app_author\".\"name\" FROM \"app_book\" \
                 INNER JOIN \"app_author\" ON (\"app_book\".\"author_id\" = \"app_author\".\"id\") \
                 WHERE (\"app_book\".\"year\" >= %s AND NOT (\"app_book\".\"title\"::text LIKE %s)) \
                 ORDER BY \"app_book\".\"id\" DESC",
                "",
            ),
            (
                Postgres,
                "SELECT COUNT(*) AS \"__count\" FROM \"app_book\" WHERE \"app_book\".\"id\" IN (%s, %s, %s)",
                "SELECT COUNT(*) AS \"__count\" FROM \"app_book\" WHERE \"app_book\".\"id\" IN (%s, ...)",
            ),
            (
                Postgres,
                "SELECT 1 AS \"a\" FROM \"app_book\" WHERE \"app_book\".\"id\" = %s LIMIT 1",
                "SELECT ? AS \"a\" FROM \"app_book\" WHERE \"app_book\".\"id\" = %s LIMIT ?",
            ),
            (
                Postgres,
                "INSERT INTO \"app_book\" (\"title\", \"year\") VALUES (%s, %s), (%s, %s), (%s, %s) \
                 RETURNING \"app_book\".\"id\"",
                "INSERT INTO \"app_book\" (\"title\", \"year\") VALUES (%s, ...) RETURNING \"app_book\".\"id\"",
            ),
            (
                Postgres,
                "INSERT INTO \"app_book\" (\"title\", \"year\") SELECT * FROM \
                 UNNEST((%s)::varchar[], (%s)::integer[]) RETURNING \"app_book\".\"id\"",
                "",
            ),
            (
                Postgres,
                "UPDATE \"app_book\" SET \"year\" = (\"app_book\".\"year\" + %s) WHERE \"app_book\".\"id\" = %s",
                "",
            ),
            (Postgres, "SET TIME ZONE 'UTC'", "SET TIME ZONE ?"),
            (Postgres, "SELECT set_config('TimeZone', %s, false)", "SELECT set_config(?, %s, false)"),
            (Postgres, "SAVEPOINT \"s139872_x12\"", "SAVEPOINT ?"),
            (
                MySql,
                "SELECT `app_book`.`id`, `app_book`.`title` FROM `app_book` WHERE `app_book`.`id` IN (%s, %s) LIMIT 21",
                "SELECT `app_book`.`id`, `app_book`.`title` FROM `app_book` WHERE `app_book`.`id` IN (%s, ...) LIMIT ?",
            ),
            (
                MySql,
                "INSERT INTO `app_book` (`title`, `year`) VALUES (%s, %s), (%s, %s)",
                "INSERT INTO `app_book` (`title`, `year`) VALUES (%s, ...)",
            ),
            (
                MySql,
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                "",
            ),
            (MySql, "SELECT @@SQL_AUTO_IS_NULL", ""),
            (MySql, "ROLLBACK TO SAVEPOINT `s139872_x12`", "ROLLBACK TO SAVEPOINT ?"),
        ];
        for &(dialect, sql, want) in cases {
            let got = both_paths(sql, dialect);
            assert_eq!(got, if want.is_empty() { sql } else { want }, "{sql}");
            if want.is_empty() {
                assert!(matches!(shape(sql, dialect), Cow::Borrowed(_)), "{sql}");
            }
        }
    }

    #[test]
    fn savepoint_names_go() {
        assert_eq!(pg("SAVEPOINT \"s140245_x1\""), "SAVEPOINT ?");
        assert_eq!(pg("RELEASE SAVEPOINT \"s9_x22\""), "RELEASE SAVEPOINT ?");
        assert_eq!(
            my("ROLLBACK TO SAVEPOINT `s9_x22`"),
            "ROLLBACK TO SAVEPOINT ?"
        );
        assert_eq!(pg("savepoint sp_3"), "savepoint ?");
    }

    #[test]
    fn non_ascii_text_is_kept_whole() {
        assert_eq!(
            pg("SELECT \"naïve\" FROM été WHERE x = 'ünï'"),
            "SELECT \"naïve\" FROM été WHERE x = ?"
        );
    }

    /// A small deterministic generator for the property tests (xorshift64).
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A literal in `dialect` whose text is distinctive (a 6-digit run or a `qz` marker)
    /// so that finding it in a shape means it survived.
    fn literal(rng: &mut Rng, dialect: Dialect) -> String {
        let digits = 100_000 + rng.below(900_000);
        let word: String = (0..1 + rng.below(6))
            .map(|_| {
                let pick = b"abc'\\\" $%?()-,0123456789;*/#\n";
                pick[rng.below(pick.len() as u64) as usize] as char
            })
            .collect();
        let quoted = |q: char, backslash: bool| {
            let mut s = String::from(q);
            s.push_str("qz");
            for c in word.chars() {
                if c == q {
                    s.push(q);
                }
                if c == '\\' && backslash {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push(q);
            s
        };
        let pg = dialect == Postgres;
        match rng.below(11) {
            0 => format!("{digits}"),
            1 => format!("-{digits}.{}", rng.below(1000)),
            2 => format!("{digits}e-{}", rng.below(20)),
            3 => quoted('\'', !pg),
            4 if pg => format!("E{}", quoted('\'', true)),
            4 => quoted('"', true),
            5 if pg => format!("$t$qz{}$t$", word.replace('$', "")),
            5 => format!("_utf8mb4{}", quoted('\'', true)),
            6 => format!("X'{digits}'"),
            7 if pg => format!("U&{}", quoted('\'', false)),
            7 => format!("0x{digits}"),
            8 => format!("N{}", quoted('\'', !pg)),
            9 if pg => format!("$${}$$", word.replace('$', "")),
            9 => format!(".{digits}"),
            _ => format!("'qz{digits}'"),
        }
    }

    /// Whether `text` has a run of 3 digits or more: the generated numbers do (quoted
    /// literals carry `qz` instead), the names around them do not.
    fn digit_run(text: &str) -> bool {
        text.as_bytes()
            .split(|c| !c.is_ascii_digit())
            .any(|run| run.len() >= 3)
    }

    const TEMPLATES: &[&str] = &[
        "SELECT \"t1\".\"a\" FROM \"t1\" WHERE \"t1\".\"b\" = {} AND \"t1\".c2 > {} LIMIT {}",
        "INSERT INTO t (a, b) VALUES ({}, {}), ({}, {}) RETURNING id",
        "UPDATE t SET a = {}, b = %s WHERE id IN ({}, {}, {})",
        "SELECT * FROM t WHERE a = ANY(ARRAY[{}]) -- note 987654 qz\n AND b = {}",
        "SELECT coalesce(x, {}) /* 123456 qz */ , {}::text FROM t WHERE {} < x",
        "DELETE FROM t WHERE a BETWEEN {} AND {} OR b LIKE {}",
        "SELECT CASE WHEN a = {} THEN {} ELSE {} END, f({}, {}) FROM t WHERE x IN ({})",
        "INSERT INTO t VALUES ({}, {}), ({}, %s) ON CONFLICT DO NOTHING",
        "SET x = {}; SELECT {} FROM t ORDER BY {} DESC",
    ];

    fn fill(template: &str, rng: &mut Rng, dialect: Dialect) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut literals = Vec::new();
        let mut parts = template.split("{}");
        sql.push_str(parts.next().unwrap());
        for part in parts {
            let lit = literal(rng, dialect);
            sql.push_str(&lit);
            literals.push(lit);
            sql.push_str(part);
        }
        (sql, literals)
    }

    #[test]
    fn no_literal_survives_and_shapes_agree() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for dialect in [Postgres, MySql] {
            for template in TEMPLATES {
                let (first, _) = fill(template, &mut rng, dialect);
                let expected = shape(&first, dialect).into_owned();
                for _ in 0..300 {
                    let (sql, literals) = fill(template, &mut rng, dialect);
                    let got = shape(&sql, dialect);
                    assert_eq!(got, expected, "{sql}");
                    assert!(!got.contains("qz"), "{sql} -> {got}");
                    assert!(!digit_run(&got), "{sql} -> {got} ({literals:?})");
                    // Shaping a shape changes nothing.
                    assert_eq!(shape(&got, dialect), got);
                    assert_eq!(shape_with(&sql, dialect, false), got);
                }
            }
        }
    }

    #[test]
    fn no_literal_survives_in_any_company() {
        // Random statements of tokens apart (so that none glues to the next and becomes
        // part of a name, as a server would read it too): every literal must go.
        const OTHERS: &[&str] = &[
            "SELECT",
            "IN",
            "VALUES",
            "SAVEPOINT",
            "E",
            "U",
            "N",
            "X",
            "_utf8",
            "t1",
            "AND",
            "\"t2\"",
            "`t3`",
            "%s",
            "%(p)s",
            "$1",
            "?",
            "(",
            ")",
            "[",
            "]",
            ",",
            "-",
            "+",
            ".",
            "::",
            "=",
            "*",
            "/* c */",
            "-- c\n",
            "# c\n",
            "NULL",
            "&",
        ];
        let mut rng = Rng(0x5151_2026_1130_0001);
        for _ in 0..20_000 {
            for dialect in [Postgres, MySql] {
                let mut sql = String::new();
                for _ in 0..rng.below(16) {
                    if rng.below(3) == 0 {
                        sql.push_str(&literal(&mut rng, dialect));
                    } else {
                        sql.push_str(OTHERS[rng.below(OTHERS.len() as u64) as usize]);
                    }
                    sql.push_str([" ", "\n", "  ", "\t"][rng.below(4) as usize]);
                }
                let got = shape(&sql, dialect);
                assert!(!got.contains("qz"), "{sql:?} -> {got:?}");
                assert!(!digit_run(&got), "{sql:?} -> {got:?}");
            }
        }
    }

    #[test]
    fn any_text_shapes_without_panic_to_a_fixed_point_and_alike_by_both_paths() {
        let alphabet: Vec<char> = "ab eEuUxXnN$10_9.-+*/#'\"`\\()[],;%s?&\né\t"
            .chars()
            .collect();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let len = rng.below(32) as usize;
            let sql: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            for dialect in [Postgres, MySql] {
                let once = shape(&sql, dialect);
                assert_eq!(shape(&once, dialect), once, "{sql:?}");
                assert_eq!(shape_with(&sql, dialect, false), once, "{sql:?}");
            }
        }
    }
}
