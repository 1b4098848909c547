//! Logging: `tracing` with JSON lines (or a readable format for development). Nothing here
//! may ever be handed protected health information: log ids, never clinical data or contacts.

use tracing_subscriber::{fmt, EnvFilter};

use crate::configuration::LogSettings;

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_env("BREAKGLASS_LOG")
        .unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // a second init (tests that start the app twice) keeps the first subscriber
    let _ = if settings.format == "pretty" {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
}
