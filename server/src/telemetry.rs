//! Tracing setup: an env filter (`RUST_LOG`, default `info`) and text or JSON lines.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber at `info` unless `RUST_LOG` says otherwise.
/// Later calls (e.g. from tests) are no-ops.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// As [`init`], with another default level (the ATM keeps the embedded
/// ledger's logs at `warn` so that its table stays readable).
pub fn init_with_default(format: LogFormat, default_directive: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
