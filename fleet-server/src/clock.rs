//! Wall-clock time for the server. The agent's clock trait serves both sides.

pub use rakkr_agent::clock::{Clock, SystemClock};

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A background runner's beat: a tick every period (one that comes late
/// delays the next instead of bunching up), until shutdown.
#[derive(Debug)]
pub struct Ticks {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticks {
    /// The first tick is at once.
    pub fn every(period: Duration, shutdown: CancellationToken) -> Ticks {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { interval, shutdown }
    }

    /// Wait for the next tick: `false` once the server shuts down.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.interval.tick() => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}
