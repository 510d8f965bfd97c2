//! What every long-running Rakkr binary does the same way: log to stderr with a
//! level from `RAKKR_LOG`, and turn SIGINT/SIGTERM into one cancellation token
//! that every task of the service watches.

use tokio_util::sync::CancellationToken;

/// Log to stderr. `RAKKR_LOG` (`RUST_LOG` syntax) overrides `default_filter`.
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAKKR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled by the first SIGINT or SIGTERM. Must be called inside a
/// tokio runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        cancel.cancel();
    });
    token
}
