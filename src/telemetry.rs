//! Logging set-up: human-readable or JSON lines, filtered by the configured
//! level (or `RUST_LOG` when set).

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global `tracing` subscriber. Call once, at start.
pub fn init(cfg: &LogConfig) {
    let mut filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The Kafka client logs every (re)connection at info; keep its warnings
    // unless the level names it.
    if !cfg.level.contains("rskafka") {
        if let Ok(d) = "rskafka=warn".parse() {
            filter = filter.add_directive(d);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Human => builder.try_init(),
    };
}
