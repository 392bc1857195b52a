//! Pool options and their validation.
//!
//! Every option is checked when the pool is built; a wrong one is reported as a
//! [`ConfigError`] that names the option, the value given and what is allowed, so the
//! message can be shown to a user unchanged.

use std::fmt;
use std::time::Duration;

/// Longer turns would let waiters be passed over for longer than any request should wait.
const MAX_TURN_LENGTH: Duration = Duration::from_secs(1);

/// The options of one pool. Durations of `None` mean "never".
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Connections kept open even when idle.
    pub min_size: usize,
    /// Hard cap on open connections, counting those being opened.
    pub max_size: usize,
    /// How long a checkout may wait for a connection.
    pub timeout: Duration,
    /// Checkouts beyond this many waiters fail at once; 0 means no limit.
    pub max_waiting: usize,
    /// A connection is closed once it is this old (reduced by a random jitter).
    pub max_lifetime: Option<Duration>,
    /// Fraction (0..=0.5) by which `max_lifetime` is randomly shortened per connection, so
    /// connections opened together do not all expire together.
    pub lifetime_jitter: f64,
    /// Idle connections above `min_size` are closed after sitting idle this long.
    pub max_idle: Option<Duration>,
    /// A connection is closed after this many checkouts; 0 means no limit.
    pub max_uses: u64,
    /// A connection that sat idle longer than this gets a round-trip check at checkout;
    /// `None` never does one. The zero-round-trip socket probe runs at every checkout.
    pub check_after_idle: Option<Duration>,
    /// How long a holder's turn lasts: for this long after its checkout last had to queue
    /// (or its first one), a thread may take an idle connection although others wait, and
    /// keep the one it returns for its own next checkout; then it hands over and queues.
    /// Zero serves strictly in order. See [`crate::Engine::checkout_in_turn`].
    pub turn_length: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_size: 0,
            max_size: 10,
            timeout: Duration::from_secs(30),
            max_waiting: 0,
            max_lifetime: Some(Duration::from_secs(3600)),
            lifetime_jitter: 0.1,
            max_idle: Some(Duration::from_secs(600)),
            max_uses: 0,
            check_after_idle: Some(Duration::from_secs(1)),
            turn_length: Duration::from_millis(1),
        }
    }
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

fn err(option: &'static str, value: impl fmt::Display, allowed: impl Into<String>) -> ConfigError {
    ConfigError {
        option,
        value: value.to_string(),
        allowed: allowed.into(),
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "None".to_owned(), |d| format!("{}", d.as_secs_f64()))
}

impl Config {
    /// Checks every option and the relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_size == 0 {
            return Err(err("max_size", self.max_size, "an integer >= 1"));
        }
        if self.min_size > self.max_size {
            return Err(err(
                "min_size",
                self.min_size,
                format!("an integer from 0 to max_size ({})", self.max_size),
            ));
        }
        if self.timeout.is_zero() {
            return Err(err("timeout", 0, "a number of seconds > 0"));
        }
        if !(0.0..=0.5).contains(&self.lifetime_jitter) {
            return Err(err(
                "lifetime_jitter",
                self.lifetime_jitter,
                "a fraction from 0.0 to 0.5",
            ));
        }
        if matches!(self.max_lifetime, Some(d) if d.is_zero()) {
            return Err(err(
                "max_lifetime",
                secs(self.max_lifetime),
                "a number of seconds > 0, or None for no limit",
            ));
        }
        if self.turn_length > MAX_TURN_LENGTH {
            return Err(err(
                "turn_length",
                self.turn_length.as_secs_f64(),
                "a number of seconds from 0 to 1 (0: strictly in order)",
            ));
        }
        if matches!(self.max_idle, Some(d) if d.is_zero()) {
            return Err(err(
                "max_idle",
                secs(self.max_idle),
                "a number of seconds > 0, or None for no limit",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
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
    fn zero_max_size_and_bad_jitter_are_rejected() {
        let c = Config {
            max_size: 0,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().option, "max_size");
        let c = Config {
            lifetime_jitter: 0.9,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().option, "lifetime_jitter");
        let c = Config {
            max_idle: Some(Duration::ZERO),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().option, "max_idle");
    }
}
