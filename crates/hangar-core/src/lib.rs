//! Hangar's domain: typed identifiers, the machine state machine and the pure
//! rules that turn a machine's configuration into a process to run.
//!
//! Nothing in this crate performs I/O or depends on an async runtime: every
//! function is deterministic given its inputs, so the rules are tested with
//! plain unit and property tests. The agent (`hangar-agent`) owns the I/O and
//! executes the [`machine::Effect`]s that [`machine::apply`] returns.

#![forbid(unsafe_code)]

pub mod checks;
pub mod duration;
pub mod errors;
pub mod exit;
pub mod guest;
pub mod guest_path;
pub mod ids;
pub mod isolation;
pub mod machine;
pub mod names;
pub mod process;
pub mod release;
pub mod schedule;
pub mod services;
pub mod signal;
pub mod spec;
pub mod user;

pub use duration::GoDuration;
pub use exit::ExitInfo;
pub use guest_path::GuestPath;
pub use ids::{AppName, EventId, InstanceId, MachineId};
pub use isolation::Isolation;
pub use machine::{MachineState, RestartPolicy};
pub use signal::Signal;
