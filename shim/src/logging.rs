//! The shim's logs: `tracing` into containerd's log pipe (the `log` FIFO in
//! the bundle directory), at the level the config asks for.

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};

/// Errors setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open containerd's log pipe: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// Changes the log level after start (once the config is known).
#[derive(Clone)]
pub struct LogLevel(reload::Handle<LevelFilter, Registry>);

/// Parses `error|warn|info|debug|trace` (anything else: info).
pub fn parse_level(level: &str) -> LevelFilter {
    level.parse().unwrap_or(LevelFilter::INFO)
}

impl LogLevel {
    pub fn set(&self, level: &str) {
        let _ = self.0.modify(|f| *f = parse_level(level));
    }
}

/// Sends logs to the `log` FIFO in the working directory (the bundle).
pub fn init(level: &str, debug: bool) -> Result<LogLevel, LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open("log")
        .map_err(LogError::Open)?;
    let level = if debug {
        LevelFilter::DEBUG
    } else {
        parse_level(level)
    };
    let (filter, handle) = reload::Layer::new(level);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_target(false)
                .with_writer(Mutex::new(file)),
        )
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))?;
    Ok(LogLevel(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels() {
        assert_eq!(parse_level("debug"), LevelFilter::DEBUG);
        assert_eq!(parse_level("warn"), LevelFilter::WARN);
        assert_eq!(parse_level("nonsense"), LevelFilter::INFO);
    }
}
