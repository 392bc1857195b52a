//! The engine's options, converted from the dict `django_lido.options.validate` returns.

use crate::errors::config_error;
use lido_core::{Config, ConfigError};
use pyo3::prelude::*;
use std::time::Duration;

pub(crate) fn opt_secs(
    option: &'static str,
    v: Option<f64>,
) -> Result<Option<Duration>, ConfigError> {
    v.map(|s| secs(option, s)).transpose()
}

pub(crate) fn secs(option: &'static str, v: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|_| v.is_finite())
        .ok_or_else(|| ConfigError {
            option,
            value: v.to_string(),
            allowed: "a finite number of seconds >= 0".into(),
        })
}

pub(crate) fn count(option: &'static str, v: i64) -> Result<u64, ConfigError> {
    u64::try_from(v).map_err(|_| ConfigError {
        option,
        value: v.to_string(),
        allowed: "an integer >= 0".into(),
    })
}

/// The engine's options as `django_lido.options.validate` returns them: a dict with every
/// key, types already checked there. One struct, so that an option is declared once here.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct EngineOptions {
    pub(crate) min_size: i64,
    pub(crate) max_size: i64,
    pub(crate) timeout: f64,
    pub(crate) max_waiting: i64,
    pub(crate) max_lifetime: Option<f64>,
    pub(crate) lifetime_jitter: f64,
    pub(crate) max_idle: Option<f64>,
    pub(crate) max_uses: i64,
    pub(crate) check_after_idle: Option<f64>,
    pub(crate) turn_length: f64,
}

impl EngineOptions {
    /// The engine's configuration, every value and relation checked (the same checks
    /// `Engine::new` makes).
    pub(crate) fn config(&self) -> Result<Config, ConfigError> {
        let cfg = Config {
            min_size: count("min_size", self.min_size)? as usize,
            max_size: count("max_size", self.max_size)? as usize,
            timeout: secs("timeout", self.timeout)?,
            max_waiting: count("max_waiting", self.max_waiting)? as usize,
            max_lifetime: opt_secs("max_lifetime", self.max_lifetime)?,
            lifetime_jitter: self.lifetime_jitter,
            max_idle: opt_secs("max_idle", self.max_idle)?,
            max_uses: count("max_uses", self.max_uses)?,
            check_after_idle: opt_secs("check_after_idle", self.check_after_idle)?,
            turn_length: secs("turn_length", self.turn_length)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Checks pool option values without building a pool (Django's settings are checked before
/// the first connect, and by `manage.py check`); raises ValueError naming the option.
#[pyfunction]
pub fn validate_options(options: EngineOptions) -> PyResult<()> {
    options.config().map(drop).map_err(config_error)
}
