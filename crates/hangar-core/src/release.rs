//! The release state machine.
//!
//! A release is one deploy (or secrets change, restart, rollback) of an
//! app, run by hangard. One pure function, [`apply`], decides every change
//! of its status from the status it has and one [`Input`]; the deploy
//! executor (`hangar-deploy`), the one task that owns a release, persists
//! the new status before acting on it.
//!
//! ```text
//!   POST /releases
//!        │
//!        ▼         cancel
//!     pending ─────────────────────────────────────────► interrupted
//!        │ begin                                              ▲
//!        ▼               cancel, no rollback                  │
//!     running ────────────────────────────────────────────────┘
//!      │  │  │
//!      │  │  └─ succeeded ──────────────────────────────────► complete
//!      │  │
//!      │  └─ failed, no rollback (or nothing changed yet) ───► failed
//!      │                                                         ▲
//!      └─ failed or cancel, rollback ─► rolling_back ─ failed ───┘
//!                                          │
//!                                          └─ undone ───────► rolled_back
//! ```
//!
//! [`Input::Resume`] (hangard started again with the release unfinished)
//! keeps `pending`, `running` and `rolling_back` as they are: the executor
//! picks each up where its persisted steps say it was. Finished releases
//! refuse every input.
//!
//! The `match` in [`apply`] lists every `(status, input)` pair without a
//! wildcard arm.

use serde::{Deserialize, Serialize};

/// A release's status. Wire names by [`ReleaseStatus::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Accepted, not begun.
    Pending,
    /// Changing machines.
    Running,
    /// Putting changed machines back as they were.
    RollingBack,
    /// Every machine runs the release.
    Complete,
    /// Ended with an error; machines it changed stay changed.
    Failed,
    /// Cancelled before it changed anything, or without rollback.
    Interrupted,
    /// Failed or cancelled, and every machine it changed was put back.
    RolledBack,
}

impl ReleaseStatus {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Running => "running",
            ReleaseStatus::RollingBack => "rolling_back",
            ReleaseStatus::Complete => "complete",
            ReleaseStatus::Failed => "failed",
            ReleaseStatus::Interrupted => "interrupted",
            ReleaseStatus::RolledBack => "rolled_back",
        }
    }

    /// From a wire name.
    pub fn parse(s: &str) -> Option<ReleaseStatus> {
        [
            ReleaseStatus::Pending,
            ReleaseStatus::Running,
            ReleaseStatus::RollingBack,
            ReleaseStatus::Complete,
            ReleaseStatus::Failed,
            ReleaseStatus::Interrupted,
            ReleaseStatus::RolledBack,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }

    /// Whether the release has ended.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            ReleaseStatus::Complete
                | ReleaseStatus::Failed
                | ReleaseStatus::Interrupted
                | ReleaseStatus::RolledBack
        )
    }
}

/// What happens to a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The executor takes it up.
    Begin,
    /// Every step succeeded.
    Succeeded,
    /// A step failed. `rollback`: put back what changed (false when
    /// `--no-rollback`, or nothing changed yet).
    Failed {
        /// Whether to roll back.
        rollback: bool,
    },
    /// A user cancelled it. `rollback` as for [`Input::Failed`].
    Cancel {
        /// Whether to roll back.
        rollback: bool,
    },
    /// Every changed machine is back as it was.
    Undone,
    /// hangard started again with the release unfinished.
    Resume,
}

/// Why an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The release has ended.
    #[error("release is already {}", .0.as_str())]
    Finished(ReleaseStatus),
    /// The input makes no sense in this status.
    #[error("release is {}: cannot {input}", .status.as_str())]
    NotNow {
        /// The status.
        status: ReleaseStatus,
        /// What was asked.
        input: &'static str,
    },
}

fn name(i: Input) -> &'static str {
    match i {
        Input::Begin => "begin",
        Input::Succeeded => "succeed",
        Input::Failed { .. } => "fail",
        Input::Cancel { .. } => "cancel",
        Input::Undone => "finish rolling back",
        Input::Resume => "resume",
    }
}

/// The release's next status.
pub fn apply(status: ReleaseStatus, input: Input) -> Result<ReleaseStatus, Denied> {
    use Input as I;
    use ReleaseStatus as S;
    let not_now = || Denied::NotNow {
        status,
        input: name(input),
    };
    match (status, input) {
        (S::Pending, I::Begin) => Ok(S::Running),
        (S::Pending, I::Cancel { .. }) => Ok(S::Interrupted),
        (S::Pending, I::Resume) => Ok(S::Pending),
        (S::Pending, I::Succeeded | I::Failed { .. } | I::Undone) => Err(not_now()),

        (S::Running, I::Succeeded) => Ok(S::Complete),
        (S::Running, I::Failed { rollback: true }) => Ok(S::RollingBack),
        (S::Running, I::Failed { rollback: false }) => Ok(S::Failed),
        (S::Running, I::Cancel { rollback: true }) => Ok(S::RollingBack),
        (S::Running, I::Cancel { rollback: false }) => Ok(S::Interrupted),
        (S::Running, I::Resume) => Ok(S::Running),
        (S::Running, I::Begin | I::Undone) => Err(not_now()),

        (S::RollingBack, I::Undone) => Ok(S::RolledBack),
        (S::RollingBack, I::Failed { .. }) => Ok(S::Failed),
        (S::RollingBack, I::Resume) => Ok(S::RollingBack),
        (S::RollingBack, I::Begin | I::Succeeded | I::Cancel { .. }) => Err(not_now()),

        (
            S::Complete | S::Failed | S::Interrupted | S::RolledBack,
            I::Begin | I::Succeeded | I::Failed { .. } | I::Cancel { .. } | I::Undone | I::Resume,
        ) => Err(Denied::Finished(status)),
    }
}

/// Why a release was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// `hangar deploy`.
    Deploy,
    /// `hangar secrets set/unset`.
    Secrets,
    /// `hangar apps restart`.
    Restart,
    /// `hangar releases rollback`.
    Rollback,
    /// `hangar scale`.
    Scale,
}

impl ReleaseReason {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Deploy => "deploy",
            ReleaseReason::Secrets => "secrets",
            ReleaseReason::Restart => "restart",
            ReleaseReason::Rollback => "rollback",
            ReleaseReason::Scale => "scale",
        }
    }

    /// From a wire name.
    pub fn parse(s: &str) -> Option<ReleaseReason> {
        [
            ReleaseReason::Deploy,
            ReleaseReason::Secrets,
            ReleaseReason::Restart,
            ReleaseReason::Rollback,
            ReleaseReason::Scale,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATUSES: [ReleaseStatus; 7] = [
        ReleaseStatus::Pending,
        ReleaseStatus::Running,
        ReleaseStatus::RollingBack,
        ReleaseStatus::Complete,
        ReleaseStatus::Failed,
        ReleaseStatus::Interrupted,
        ReleaseStatus::RolledBack,
    ];
    const ALL_INPUTS: [Input; 8] = [
        Input::Begin,
        Input::Succeeded,
        Input::Failed { rollback: true },
        Input::Failed { rollback: false },
        Input::Cancel { rollback: true },
        Input::Cancel { rollback: false },
        Input::Undone,
        Input::Resume,
    ];

    #[test]
    fn a_deploy_runs_to_complete_or_back() {
        use Input::*;
        let run = |inputs: &[Input]| {
            inputs
                .iter()
                .try_fold(ReleaseStatus::Pending, |s, i| apply(s, *i))
        };
        assert_eq!(run(&[Begin, Succeeded]), Ok(ReleaseStatus::Complete));
        assert_eq!(
            run(&[Begin, Failed { rollback: true }, Undone]),
            Ok(ReleaseStatus::RolledBack)
        );
        assert_eq!(
            run(&[Begin, Failed { rollback: true }, Failed { rollback: true }]),
            Ok(ReleaseStatus::Failed),
            "a rollback that fails ends failed"
        );
        assert_eq!(
            run(&[Begin, Failed { rollback: false }]),
            Ok(ReleaseStatus::Failed)
        );
        assert_eq!(
            run(&[Cancel { rollback: true }]),
            Ok(ReleaseStatus::Interrupted)
        );
        assert_eq!(
            run(&[Begin, Resume, Cancel { rollback: true }, Resume, Undone]),
            Ok(ReleaseStatus::RolledBack)
        );
    }

    #[test]
    fn finished_releases_refuse_everything_and_names_round_trip() {
        for s in ALL_STATUSES {
            assert_eq!(ReleaseStatus::parse(s.as_str()), Some(s));
            for i in ALL_INPUTS {
                let r = apply(s, i);
                if s.is_finished() {
                    assert_eq!(r, Err(Denied::Finished(s)));
                } else if let Ok(next) = r {
                    // Resume never moves a release; nothing goes back to pending.
                    if i == Input::Resume {
                        assert_eq!(next, s);
                    } else {
                        assert_ne!(next, ReleaseStatus::Pending);
                    }
                }
            }
        }
        assert_eq!(
            apply(ReleaseStatus::Complete, Input::Begin)
                .unwrap_err()
                .to_string(),
            "release is already complete"
        );
        assert_eq!(
            apply(ReleaseStatus::Pending, Input::Undone)
                .unwrap_err()
                .to_string(),
            "release is pending: cannot finish rolling back"
        );
    }
}
