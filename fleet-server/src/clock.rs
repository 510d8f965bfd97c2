//! Wall-clock time for the server. The agent's clock trait serves both sides.

pub use rakkr_agent::clock::{Clock, SystemClock};
