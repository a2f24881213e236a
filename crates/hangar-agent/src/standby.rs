//! Standby machines (`config.standbys`): a machine that stays stopped and
//! watches others; when the host of a watched machine fails, the standby is
//! started in its place. A standby has no services of its own (it takes
//! over its watched machine's role) and no schedule, and `hangar machine
//! update --standby-for ""` makes it an ordinary machine again.
//!
//! On one host there is no other host to fail; [`Agent::start_standbys_for`]
//! is where the multi-host control plane's host-down signal will arrive.

use hangar_api_types::MachineConfig;
use hangar_core::{MachineId, MachineState};

use crate::{Agent, AgentError};

/// Whether `c` makes its machine a standby.
pub fn is_standby(c: &MachineConfig) -> bool {
    c.standbys.as_ref().is_some_and(|s| !s.is_empty())
}

impl Agent {
    /// Checks `config.standbys` of machine `this` (none on create) in
    /// `app`: every id names another live machine of the app, at most once,
    /// and a standby has neither services nor a schedule.
    pub(crate) fn check_standbys(
        &self,
        app: &str,
        this: Option<&MachineId>,
        c: &MachineConfig,
    ) -> Result<(), AgentError> {
        let Some(ids) = c.standbys.as_ref().filter(|s| !s.is_empty()) else {
            return Ok(());
        };
        let invalid = |m: String| Err(AgentError::InvalidArgument(m));
        if ids.len() > 16 {
            return invalid("config.standbys lists more than 16 machines".into());
        }
        for (i, id) in ids.iter().enumerate() {
            if id.parse::<MachineId>().is_err() {
                return invalid(format!("config.standbys[{i}] {id:?} is not a machine id"));
            }
            if this.is_some_and(|t| t.as_str() == id) {
                return invalid(format!(
                    "config.standbys[{i}]: a machine cannot be a standby for itself"
                ));
            }
            if ids[..i].contains(id) {
                return invalid(format!("config.standbys lists {id} twice"));
            }
            match self.shared.store.get_machine(app, id)? {
                Some(m) if m.core.state != MachineState::Destroyed => {}
                _ => {
                    return invalid(format!(
                        "config.standbys[{i}]: machine {id} not found in app {app}"
                    ));
                }
            }
        }
        let services = c
            .extra
            .get("services")
            .and_then(|s| s.as_array())
            .is_some_and(|s| !s.is_empty());
        if services {
            return invalid(
                "a standby machine cannot have services: it takes over those of the machines it watches"
                    .into(),
            );
        }
        if c.schedule.as_deref().is_some_and(|s| !s.is_empty()) {
            return invalid("a standby machine cannot have a schedule".into());
        }
        Ok(())
    }

    /// The hosts of the machines `watched` (ids in `app`) have failed:
    /// starts every stopped standby of the app that watches one of them.
    /// Returns the ids of the standbys started.
    pub async fn start_standbys_for(
        &self,
        app: &str,
        watched: &[&str],
    ) -> Result<Vec<String>, AgentError> {
        let mut started = Vec::new();
        for m in self.list_machines(app, false)? {
            let watches = m
                .config
                .standbys
                .as_ref()
                .is_some_and(|s| s.iter().any(|id| watched.contains(&id.as_str())));
            if watches && m.core.state == MachineState::Stopped {
                tracing::info!(machine = %m.id, ?watched, "starting standby");
                self.start_machine(app, m.id.as_str(), None).await?;
                started.push(m.id.to_string());
            }
        }
        Ok(started)
    }
}
