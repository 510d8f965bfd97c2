//! Lifecycle states and the transitions allowed between them.
//!
//! Every state change in the system goes through [`transition`], so agent, server
//! and any future store agree on what may follow what.
//!
//! ```text
//! job:        queued → leased → running → stop_requested → completed
//!             leased → stop_requested                    (stopped before it reported running)
//!             leased → completed                         (its final report overtook `running`)
//!             queued|leased|running|stop_requested → cancelled | failed
//!             leased|running|stop_requested → lost      (lease expired)
//!             leased → queued                            (lease released before start)
//!             lost → running                             (the node renewed the lease after all)
//!             lost → completed | failed | cancelled      (a partitioned node returned the take)
//! recording:  recording → finalized → uploading → uploaded | partial
//!             partial → uploading; recording → failed; finalized|uploaded|partial → deleted
//! health:     open → acknowledged | suppressed | resolved
//!             acknowledged|suppressed → resolved;  resolved → open (reopen)
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// A state machine: which transitions are legal.
pub trait Lifecycle: Copy + Eq + fmt::Debug + 'static {
    const NAME: &'static str;
    fn allows(self, next: Self) -> bool;
    fn is_terminal(self) -> bool;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {machine} cannot go from {from} to {to}")]
pub struct TransitionError {
    pub machine: &'static str,
    pub from: String,
    pub to: String,
}

/// Move from `from` to `to` if the lifecycle allows it.
pub fn transition<S: Lifecycle>(from: S, to: S) -> Result<S, TransitionError> {
    if from.allows(to) {
        Ok(to)
    } else {
        Err(TransitionError {
            machine: S::NAME,
            from: format!("{from:?}"),
            to: format!("{to:?}"),
        })
    }
}

/// Whether a node is connected, as the broker and the node's status say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Offline,
}

impl Presence {
    pub fn as_str(self) -> &'static str {
        match self {
            Presence::Online => "online",
            Presence::Offline => "offline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Leased,
    Running,
    StopRequested,
    Completed,
    Cancelled,
    Failed,
    Lost,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Leased,
        JobState::Running,
        JobState::StopRequested,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Failed,
        JobState::Lost,
    ];
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::StopRequested => "stop_requested",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Failed => "failed",
            JobState::Lost => "lost",
        }
    }

    /// The job holds its channels on the node (it may be recording).
    pub fn occupies_channels(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Leased | JobState::Running | JobState::StopRequested
        )
    }
}

impl Lifecycle for JobState {
    const NAME: &'static str = "job";
    fn allows(self, next: Self) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, Leased)
                | (Leased, Running)
                | (Leased, Queued)
                | (Leased | Running, StopRequested)
                | (Leased, Completed)
                | (Lost, Running)
                | (Running, Completed)
                | (StopRequested, Completed)
                | (
                    Queued | Leased | Running | StopRequested,
                    Cancelled | Failed
                )
                | (Leased | Running | StopRequested, Lost)
                | (Lost, Completed | Failed | Cancelled)
        )
    }
    fn is_terminal(self) -> bool {
        // Lost is not terminal: a partitioned node may still deliver the take.
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Failed
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    Recording,
    Finalized,
    Uploading,
    Uploaded,
    Partial,
    Failed,
    Deleted,
}

impl RecordingState {
    pub const ALL: [RecordingState; 7] = [
        RecordingState::Recording,
        RecordingState::Finalized,
        RecordingState::Uploading,
        RecordingState::Uploaded,
        RecordingState::Partial,
        RecordingState::Failed,
        RecordingState::Deleted,
    ];
}

impl Lifecycle for RecordingState {
    const NAME: &'static str = "recording";
    fn allows(self, next: Self) -> bool {
        use RecordingState::*;
        matches!(
            (self, next),
            (Recording, Finalized)
                | (Recording, Failed)
                | (Finalized, Uploading)
                | (Uploading, Uploaded)
                | (Uploading, Partial)
                | (Partial, Uploading)
                | (Finalized | Uploaded | Partial, Deleted)
        )
    }
    fn is_terminal(self) -> bool {
        matches!(self, RecordingState::Failed | RecordingState::Deleted)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Open,
    Acknowledged,
    Suppressed,
    Resolved,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Open => "open",
            HealthState::Acknowledged => "acknowledged",
            HealthState::Suppressed => "suppressed",
            HealthState::Resolved => "resolved",
        }
    }

    pub const ALL: [HealthState; 4] = [
        HealthState::Open,
        HealthState::Acknowledged,
        HealthState::Suppressed,
        HealthState::Resolved,
    ];
}

impl Lifecycle for HealthState {
    const NAME: &'static str = "health event";
    fn allows(self, next: Self) -> bool {
        use HealthState::*;
        matches!(
            (self, next),
            (Open, Acknowledged | Suppressed | Resolved)
                | (Acknowledged, Suppressed)
                | (Acknowledged | Suppressed, Resolved)
                | (Resolved, Open)
        )
    }
    fn is_terminal(self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_terminal_states_are_dead_ends<S: Lifecycle>(all: &[S]) {
        for &from in all.iter().filter(|s| s.is_terminal()) {
            for &to in all {
                assert!(!from.allows(to), "{from:?} is terminal but allows {to:?}");
            }
        }
    }

    #[test]
    fn terminal_states_allow_nothing() {
        check_terminal_states_are_dead_ends(&JobState::ALL);
        check_terminal_states_are_dead_ends(&RecordingState::ALL);
        check_terminal_states_are_dead_ends(&HealthState::ALL);
    }

    #[test]
    fn no_state_transitions_to_itself() {
        for s in JobState::ALL {
            assert!(!s.allows(s));
        }
        for s in RecordingState::ALL {
            assert!(!s.allows(s));
        }
        for s in HealthState::ALL {
            assert!(!s.allows(s));
        }
    }

    #[test]
    fn the_job_happy_path_and_its_refusals() {
        use JobState::*;
        let mut s = Queued;
        for next in [Leased, Running, StopRequested, Completed] {
            s = transition(s, next).unwrap();
        }
        assert_eq!(s, Completed);
        let err = transition(Queued, Running).unwrap_err();
        assert_eq!(err.to_string(), "a job cannot go from Queued to Running");
        assert!(transition(Completed, Running).is_err());
        assert!(
            transition(Queued, Lost).is_err(),
            "an unleased job cannot be lost"
        );
        assert!(
            transition(Lost, Completed).is_ok(),
            "a returned take is accepted"
        );
    }

    #[test]
    fn health_events_reopen() {
        use HealthState::*;
        assert!(transition(Resolved, Open).is_ok());
        assert!(transition(Acknowledged, Open).is_err());
    }

    #[test]
    fn states_use_snake_case_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&JobState::StopRequested).unwrap(),
            "\"stop_requested\""
        );
    }
}
