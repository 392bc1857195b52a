//! Pool options: one table, their validation and their error messages.
//!
//! Every option is declared once, in the [`options!`] table below: its name, type, default,
//! bounds and the sentence that explains it. [`Config`], its `Default`, [`OPTIONS`] (what
//! bindings and documentation read) and every error message derive from that table. A
//! [`Config`] is checked once, by [`Config::validate`], which returns the [`Validated`]
//! config that [`crate::Engine::new`] takes. A wrong option is a [`ConfigError`] that names
//! the option, the value given and what is allowed, so it can be shown to a user unchanged.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

const DAY: f64 = 86_400.0;

/// What an option holds, and the values it allows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A whole number from `min` to `max`; `zero` says what 0 means where it is special.
    Count {
        min: i64,
        max: i64,
        zero: Option<&'static str>,
    },
    /// A number of seconds up to `max`: above 0 if `positive`, else from 0 (`zero` says what
    /// 0 means). `none` says what None means where it is allowed.
    Seconds {
        positive: bool,
        max: f64,
        zero: Option<&'static str>,
        none: Option<&'static str>,
    },
    /// A fraction from `min` to `max`.
    Fraction { min: f64, max: f64 },
    /// True or False.
    Flag,
}

impl Kind {
    /// Whether `value` is of this kind and within its bounds.
    pub fn admits(&self, value: Value) -> bool {
        match (*self, value) {
            (Kind::Count { min, max, .. }, Value::Int(i)) => (min..=max).contains(&i),
            (Kind::Seconds { none, .. }, Value::None) => none.is_some(),
            (Kind::Seconds { positive, max, .. }, Value::Int(_) | Value::Number(_)) => {
                let s = value.as_f64();
                s.is_finite() && s <= max && if positive { s > 0.0 } else { s >= 0.0 }
            }
            (Kind::Fraction { min, max }, Value::Int(_) | Value::Number(_)) => {
                (min..=max).contains(&value.as_f64())
            }
            (Kind::Flag, Value::Bool(_)) => true,
            _ => false,
        }
    }

    /// Whether `value` has this kind's type, whatever its bounds.
    pub fn accepts_type(&self, value: Value) -> bool {
        matches!(
            (*self, value),
            (Kind::Count { .. }, Value::Int(_))
                | (
                    Kind::Seconds { .. } | Kind::Fraction { .. },
                    Value::Int(_) | Value::Number(_)
                )
                | (Kind::Seconds { none: Some(_), .. }, Value::None)
                | (Kind::Flag, Value::Bool(_))
        )
    }

    /// What is allowed, worded for an error message.
    pub fn allowed(&self) -> String {
        let note = |what: Option<&str>, prefix: &str| {
            what.map_or_else(String::new, |w| format!("{prefix}{w}"))
        };
        match *self {
            Kind::Count { min, max, zero } => {
                format!("an integer from {min} to {max}{}", note(zero, "; 0 means "))
            }
            Kind::Seconds {
                positive,
                max,
                zero,
                none,
            } => format!(
                "a number of seconds {} {max}{}{}",
                if positive {
                    "above 0, at most"
                } else {
                    "from 0 to"
                },
                note(zero, "; 0 means "),
                note(none, ", or None for "),
            ),
            Kind::Fraction { min, max } => format!("a fraction from {min:?} to {max:?}"),
            Kind::Flag => "True or False".into(),
        }
    }
}

/// An option's value as a caller gives it, before it is checked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Number(f64),
    None,
    Bool(bool),
    /// Anything else (a string, a list...): always of the wrong type.
    Other,
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Value::Int(i) => i as f64,
            Value::Number(f) => f,
            _ => f64::NAN,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Number(n) => write!(f, "{n:?}"),
            Value::None => f.write_str("None"),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Value::Other => f.write_str("?"),
        }
    }
}

/// One option of the table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: Kind,
    /// What the option does, in one sentence (the documentation's "meaning" column).
    pub doc: &'static str,
}

impl OptionSpec {
    /// The error for `value` given to this option.
    pub fn error(&self, value: impl fmt::Display) -> ConfigError {
        ConfigError {
            option: self.name,
            value: value.to_string(),
            allowed: self.kind.allowed(),
        }
    }

    /// Checks `value` against this option's type and bounds.
    pub fn check(&self, value: Value) -> Result<Value, ConfigError> {
        if self.kind.admits(value) {
            Ok(value)
        } else {
            Err(self.error(value))
        }
    }
}

/// A Rust type an option can have, and its [`Value`] form.
trait Field: Sized {
    fn to_value(&self) -> Value;
    /// `value` is already admitted by the option's kind.
    fn from_value(value: Value) -> Self;
}

impl Field for usize {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
    fn from_value(value: Value) -> Self {
        match value {
            Value::Int(i) => usize::try_from(i).unwrap_or(0),
            _ => unreachable!("a count is admitted only as an integer"),
        }
    }
}

impl Field for u64 {
    fn to_value(&self) -> Value {
        Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
    fn from_value(value: Value) -> Self {
        usize::from_value(value) as u64
    }
}

impl Field for f64 {
    fn to_value(&self) -> Value {
        Value::Number(*self)
    }
    fn from_value(value: Value) -> Self {
        value.as_f64()
    }
}

impl Field for bool {
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(value: Value) -> Self {
        matches!(value, Value::Bool(true))
    }
}

impl Field for Duration {
    fn to_value(&self) -> Value {
        Value::Number(self.as_secs_f64())
    }
    fn from_value(value: Value) -> Self {
        // Admitted values are finite, >= 0 and at most days, so this cannot fail.
        Duration::from_secs_f64(value.as_f64())
    }
}

impl Field for Option<Duration> {
    fn to_value(&self) -> Value {
        self.map_or(Value::None, |d| d.to_value())
    }
    fn from_value(value: Value) -> Self {
        match value {
            Value::None => None,
            v => Some(Duration::from_value(v)),
        }
    }
}

/// Declares the options: each row gives the field's name, type, default, kind (with its
/// bounds) and the sentence that explains it. Generates [`Config`], its `Default`,
/// [`OPTIONS`] and the by-name access the bindings use.
macro_rules! options {
    ($( $name:ident: $ty:ty = $default:expr, $kind:expr, $doc:literal; )*) => {
        /// The options of one pool. Durations of `None` mean "never".
        #[derive(Clone, Debug, PartialEq)]
        pub struct Config {
            $( #[doc = $doc] pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config { $( $name: $default, )* }
            }
        }

        /// Every option, in the order of the documentation's tables.
        pub const OPTIONS: &[OptionSpec] = &[
            $( OptionSpec { name: stringify!($name), kind: $kind, doc: $doc }, )*
        ];

        impl Config {
            /// The value of option `name`, or None if there is no such option.
            pub fn get(&self, name: &str) -> Option<Value> {
                match name {
                    $( stringify!($name) => Some(self.$name.to_value()), )*
                    _ => None,
                }
            }

            /// Sets option `name` to `value`, checking its type and bounds (relations
            /// between options are checked by [`Config::validate`]).
            pub fn set(&mut self, name: &str, value: Value) -> Result<(), SetError> {
                let spec = option(name).ok_or(SetError::Unknown)?;
                if !spec.kind.accepts_type(value) {
                    return Err(SetError::WrongType(spec.error(value)));
                }
                let value = spec.check(value).map_err(SetError::Invalid)?;
                match name {
                    $( stringify!($name) => self.$name = Field::from_value(value), )*
                    _ => unreachable!("option() found it"),
                }
                Ok(())
            }
        }
    };
}

options! {
    min_size: usize = 0,
        Kind::Count { min: 0, max: MAX_SIZE, zero: None },
        "connections kept open even when idle (opened by the maintenance thread)";
    max_size: usize = 10,
        Kind::Count { min: 1, max: MAX_SIZE, zero: None },
        "hard cap on open connections, counting those being opened and being closed";
    timeout: Duration = Duration::from_secs(30),
        Kind::Seconds { positive: true, max: DAY, zero: None, none: None },
        "how long `getconn()` may take in all (waiting, connecting, checking, retrying while \
         the server is down) before raising `PoolTimeout`";
    max_waiting: usize = 0,
        Kind::Count { min: 0, max: 1_000_000, zero: Some("no limit") },
        "more waiting requests than this raise `TooManyWaiters` at once";
    max_lifetime: Option<Duration> = Some(Duration::from_secs(3600)),
        Kind::Seconds { positive: true, max: 30.0 * DAY, zero: None, none: Some("no limit") },
        "a connection is closed once this old (less its jitter)";
    lifetime_jitter: f64 = 0.1,
        Kind::Fraction { min: 0.0, max: 0.5 },
        "fraction by which each connection's lifetime is randomly shortened, so connections \
         opened together do not expire together";
    max_idle: Option<Duration> = Some(Duration::from_secs(600)),
        Kind::Seconds { positive: true, max: 30.0 * DAY, zero: None, none: Some("no limit") },
        "idle connections above `min_size` are closed after sitting idle this long";
    max_uses: u64 = 0,
        Kind::Count { min: 0, max: 1_000_000_000, zero: Some("no limit") },
        "a connection is closed after this many checkouts";
    check_after_idle: Option<Duration> = Some(Duration::from_secs(1)),
        Kind::Seconds { positive: false, max: DAY, zero: Some("at every checkout"),
                        none: Some("never") },
        "a connection idle longer than this gets a round-trip `check` at checkout";
    turn_length: Duration = Duration::from_millis(1),
        Kind::Seconds { positive: false, max: 1.0, zero: Some("strictly first come, first served"),
                        none: None },
        "while others wait, a thread may reuse connections ahead of them for this long after \
         it was last served from the queue, then it hands over and queues";
    probe: bool = true,
        Kind::Flag,
        "run the zero-round-trip socket probe at every checkout";
    leak_threshold: Option<Duration> = Some(Duration::from_secs(60)),
        Kind::Seconds { positive: false, max: DAY, zero: Some("no report"), none: Some("no report") },
        "a connection held longer than this (still referenced) is logged with the thread and \
         the stack that took it, once per checkout, and again when it comes back";
    stack_depth: usize = 16,
        Kind::Count { min: 0, max: 256, zero: Some("no stacks") },
        "frames of the caller's stack kept at each checkout and transaction start (code and \
         offset, formatted only for a report), outside Django and django_lido";
    idle_in_transaction_threshold: Option<Duration> = Some(Duration::from_secs(10)),
        Kind::Seconds { positive: false, max: DAY, zero: Some("no report"), none: Some("no report") },
        "a holder with a transaction open and no statement running for longer than this is \
         logged with the stack that began the transaction and the last statement's shape";
    idle_in_transaction_timeout: Option<Duration> = None,
        Kind::Seconds { positive: true, max: DAY, zero: None, none: Some("never") },
        "a transaction idle this long is ended: the socket is shut down, the server rolls \
         back, and the connection is discarded when it comes back";
    query_stats: bool = true,
        Kind::Flag,
        "count and time each statement by its shape (never its parameter values)";
    query_stats_max_shapes: usize = 1000,
        Kind::Count { min: 1, max: 100_000, zero: None },
        "statement shapes tracked; statements of further shapes are counted together";
}

/// More connections than this in one process's pool is a configuration mistake: a server's
/// `max_connections` is shared by every process of every host.
const MAX_SIZE: i64 = 10_000;

/// The option called `name`.
pub fn option(name: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.name == name)
}

fn spec(name: &str) -> &'static OptionSpec {
    option(name).expect("an option of the table")
}

/// Why [`Config::set`] refused a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetError {
    /// No option has that name.
    Unknown,
    /// The value is not of the option's type (for Python: a `TypeError`).
    WrongType(ConfigError),
    /// The value is of the right type but out of bounds.
    Invalid(ConfigError),
}

/// An option with a value that is not allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The option's name, as the user spells it.
    pub option: &'static str,
    /// The value given, rendered for a message.
    pub value: String,
    /// What is allowed instead.
    pub allowed: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid pool option {}={}: {}",
            self.option, self.value, self.allowed
        )
    }
}

impl std::error::Error for ConfigError {}

/// A [`Config`] that passed [`Config::validate`]; only that makes one.
#[derive(Clone, Debug, PartialEq)]
pub struct Validated(Config);

impl Deref for Validated {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.0
    }
}

impl Validated {
    pub fn into_inner(self) -> Config {
        self.0
    }
}

impl Config {
    /// Checks every option's bounds and the relations between options.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        for spec in OPTIONS {
            spec.check(self.get(spec.name).expect("every option has a field"))?;
        }
        if self.min_size > self.max_size {
            return Err(ConfigError {
                option: "min_size",
                value: self.min_size.to_string(),
                allowed: format!("an integer from 0 to max_size ({})", self.max_size),
            });
        }
        Ok(Validated(self))
    }

    /// The same options with `min_size` and `max_size` changed, validated.
    pub fn resized(&self, min_size: usize, max_size: usize) -> Result<Validated, ConfigError> {
        let mut cfg = self.clone();
        for (name, n) in [("max_size", max_size), ("min_size", min_size)] {
            cfg.set(name, n.to_value()).map_err(|e| match e {
                SetError::WrongType(e) | SetError::Invalid(e) => e,
                SetError::Unknown => unreachable!("sizes are options"),
            })?;
        }
        cfg.validate()
    }

    /// The default value of option `name`.
    pub fn default_of(name: &str) -> Option<Value> {
        Config::default().get(name)
    }
}

/// A timeout given for one checkout, checked like the `timeout` option.
pub fn checkout_timeout(value: Value) -> Result<Duration, ConfigError> {
    spec("timeout").check(value).map(Duration::from_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_within_their_bounds() {
        let cfg = Config::default();
        for spec in OPTIONS {
            let v = cfg.get(spec.name).unwrap();
            assert!(
                spec.kind.admits(v),
                "{}'s default {v} is out of bounds",
                spec.name
            );
        }
        cfg.validate().unwrap();
    }

    #[test]
    fn every_option_is_settable_to_its_default() {
        for spec in OPTIONS {
            let mut cfg = Config::default();
            cfg.set(spec.name, Config::default_of(spec.name).unwrap())
                .unwrap();
            assert_eq!(cfg, Config::default());
        }
    }

    #[test]
    fn min_above_max_names_the_option_and_the_bound() {
        let c = Config {
            min_size: 5,
            max_size: 2,
            ..Config::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.option, "min_size");
        assert_eq!(
            e.to_string(),
            "invalid pool option min_size=5: an integer from 0 to max_size (2)"
        );
    }

    #[test]
    fn out_of_bounds_values_are_rejected_with_the_tables_wording() {
        let mut c = Config::default();
        assert_eq!(
            c.set("max_size", Value::Int(0)).unwrap_err(),
            SetError::Invalid(spec("max_size").error(0))
        );
        assert_eq!(
            spec("max_size").error(0).to_string(),
            "invalid pool option max_size=0: an integer from 1 to 10000"
        );
        for (name, v) in [
            ("lifetime_jitter", Value::Number(0.9)),
            ("max_idle", Value::Int(0)),
            ("timeout", Value::Number(9.3e18)),
            ("max_lifetime", Value::Number(f64::INFINITY)),
            ("turn_length", Value::Number(f64::NAN)),
            ("min_size", Value::Int(i64::MAX)),
        ] {
            assert!(
                matches!(c.set(name, v), Err(SetError::Invalid(e)) if e.option == name),
                "{name}={v}"
            );
        }
        assert_eq!(
            spec("turn_length").error(2).to_string(),
            "invalid pool option turn_length=2: a number of seconds from 0 to 1; 0 means \
             strictly first come, first served"
        );
        assert_eq!(
            spec("max_idle").error(0).to_string(),
            "invalid pool option max_idle=0: a number of seconds above 0, at most 2592000, \
             or None for no limit"
        );
    }

    #[test]
    fn wrong_types_are_told_apart_from_bad_values() {
        let mut c = Config::default();
        for (name, v) in [
            ("probe", Value::Int(1)),
            ("min_size", Value::Number(1.0)),
            ("min_size", Value::Bool(true)),
            ("timeout", Value::None),
            ("timeout", Value::Other),
        ] {
            assert!(
                matches!(c.set(name, v), Err(SetError::WrongType(_))),
                "{name}={v}"
            );
        }
        assert_eq!(c.set("nope", Value::Int(1)), Err(SetError::Unknown));
        c.set("max_idle", Value::None).unwrap();
        assert_eq!(c.max_idle, None);
    }

    #[test]
    fn resized_checks_both_sizes() {
        let c = Config::default();
        assert_eq!(c.resized(2, 4).unwrap().max_size, 4);
        assert_eq!(c.resized(5, 4).unwrap_err().option, "min_size");
        assert_eq!(c.resized(0, 0).unwrap_err().option, "max_size");
    }
}
