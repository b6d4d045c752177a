//! The one error every component's settings can fail with.

use std::borrow::Cow;

/// A configuration that cannot work; `main` prints it on one line and exits with 64.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct ConfigError {
    /// The flag, or the configuration file and the key path in it (`apps.yaml: apps[1].token`).
    pub flag: Cow<'static, str>,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        ConfigError {
            flag: flag.into(),
            message: message.into(),
        }
    }
}
