//! Logging: `tracing` with JSON lines (or a readable format for development). Nothing here
//! may ever be handed protected health information: log ids, never clinical data or contacts.
//!
//! It must not: log protected health information (nothing that logs does).

use tracing_subscriber::{fmt, EnvFilter};

use crate::configuration::LogSettings;

/// Starts logging with `settings` (`log.filter`, validated at load), or with `BREAKGLASS_LOG`
/// when it is set; a `BREAKGLASS_LOG` that is not a filter is an error, not a silent fallback.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let filter = match std::env::var("BREAKGLASS_LOG") {
        Ok(f) => EnvFilter::try_new(&f).map_err(|e| format!("BREAKGLASS_LOG {f:?}: {e}"))?,
        Err(_) => EnvFilter::try_new(&settings.filter)
            .map_err(|e| format!("log.filter {:?}: {e}", settings.filter))?,
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    // a second init (tests that start the app twice) keeps the first subscriber
    let _ = if settings.format == crate::configuration::LogFormat::Pretty {
        builder.try_init()
    } else {
        builder.json().flatten_event(true).try_init()
    };
    Ok(())
}
