//! What every long-running Rakkr binary does the same way: log to stderr with a
//! level from `RAKKR_LOG`, and turn SIGINT/SIGTERM into one cancellation token
//! that every task of the service watches.

use tokio_util::sync::CancellationToken;

/// Log to stderr. `RAKKR_LOG` (`RUST_LOG` syntax) overrides `default_filter`.
/// Colours only on a terminal: the journal, log files and tests that search
/// the log read plain `key=value` text.
pub fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAKKR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::registry()
        .with(filter)
        .with(KnownNoise)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
}

/// Log events from dependencies that are known to be benign but logged as
/// errors, matched by target and message. Each entry says why it is noise.
const KNOWN_NOISE: &[(&str, &str)] = &[
    // rumqttd handles the DISCONNECT packet and then the closed socket as two
    // disconnections (its own comment: "This will lead to double Disconnect
    // packets"); the second logs this at ERROR for every orderly disconnect.
    ("rumqttd::router::routing", "is already gone"),
];

/// Drops the events listed in [`KNOWN_NOISE`], and nothing else.
struct KnownNoise;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for KnownNoise {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let target = event.metadata().target();
        if !KNOWN_NOISE.iter().any(|(t, _)| *t == target) {
            return true;
        }
        let mut message = MessageText(String::new());
        event.record(&mut message);
        !KNOWN_NOISE
            .iter()
            .any(|(t, needle)| *t == target && message.0.contains(needle))
    }
}

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// An error and its causes on one line, for people. Our error messages usually
/// include their cause already; a cause whose text the line already contains is
/// not repeated.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// For synchronous commands: a flag set by the first SIGINT or SIGTERM, watched
/// by a small background thread with its own runtime.
pub fn stop_flag_on_signal() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    let spawned = std::thread::Builder::new()
        .name("rakkr-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                shutdown_on_signal().cancelled().await;
                set.store(true, std::sync::atomic::Ordering::Relaxed);
            });
        });
    if spawned.is_err() {
        tracing::error!("cannot watch for signals; stop with SIGKILL");
    }
    flag
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Captured {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut m = MessageText(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }

    #[derive(Debug)]
    struct Outer(std::io::Error, bool);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.1 {
                write!(f, "cannot open x: {}", self.0)
            } else {
                write!(f, "cannot open x")
            }
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_shown_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(describe(&Outer(io(), true)), "cannot open x: disk on fire");
        assert_eq!(describe(&Outer(io(), false)), "cannot open x: disk on fire");
    }

    #[test]
    fn only_the_listed_noise_is_dropped() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry()
            .with(KnownNoise)
            .with(captured.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rumqttd::router::routing", "no-connection id 3 is already gone");
            tracing::error!(target: "rumqttd::router::routing", "no space for new connection");
            tracing::error!(target: "elsewhere", "thing is already gone");
        });
        let seen = captured.0.lock().unwrap().clone();
        assert_eq!(
            seen,
            ["no space for new connection", "thing is already gone"]
        );
    }
}
