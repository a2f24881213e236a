//! Standby machines (`config.standbys`): a machine that stays stopped and
//! watches others; when the host of a watched machine fails, the standby is
//! started in its place. A standby has no services of its own (it takes
//! over its watched machine's role) and no schedule, and `hangar machine
//! update --standby-for ""` makes it an ordinary machine again.
//!
//! On one host there is no other host to fail; in a cluster the host-down
//! signal arrives at [`Agent::start_standbys_for`], and a host that comes
//! back after its machines' standbys took over stops those machines
//! ([`Agent::fence`]).

use hangar_core::spec::MachineSpec;
use hangar_core::{MachineId, MachineState};

use crate::{Agent, AgentError};

impl Agent {
    /// Checks `config.standbys` of machine `this` (none on create) in `app`
    /// against the app: every id names another live machine of it (the
    /// spec has checked the ids, and that a standby has neither services
    /// nor a schedule).
    pub(crate) fn check_standbys(
        &self,
        app: &str,
        this: Option<&MachineId>,
        spec: &MachineSpec,
    ) -> Result<(), AgentError> {
        for (i, id) in spec.standbys.iter().enumerate() {
            if this.is_some_and(|t| t == id) {
                return Err(AgentError::InvalidArgument(format!(
                    "config.standbys[{i}]: a machine cannot be a standby for itself"
                )));
            }
            match self.shared.store.get_machine(app, id.as_str())? {
                Some(m) if m.core.state != MachineState::Destroyed => {}
                // A machine another host of the cluster runs.
                _ if self
                    .shared
                    .remote
                    .get()
                    .is_some_and(|r| r.exists(app, id.as_str())) => {}
                _ => {
                    return Err(AgentError::InvalidArgument(format!(
                        "config.standbys[{i}]: machine {id} not found in app {app}"
                    )));
                }
            }
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
                .spec
                .standbys
                .iter()
                .any(|id| watched.contains(&id.as_str()));
            if watches && m.core.state == MachineState::Stopped {
                tracing::info!(machine = %m.id, ?watched, "starting standby");
                self.start_machine(app, m.id.as_str(), None).await?;
                started.push(m.id.to_string());
            }
        }
        Ok(started)
    }

    /// This host was declared down and its machines' standbys may have
    /// started elsewhere: stops each of `ids` (its machines that a started
    /// standby watches) so that nothing runs twice; they stay stopped until
    /// someone starts them. Returns the ids stopped.
    pub async fn fence(&self, ids: &[String]) -> Result<Vec<String>, AgentError> {
        let stopped = self
            .fence_now(
                ids,
                None,
                "its standby took over while this host was down: stopping it",
            )
            .await?;
        Ok(stopped.into_iter().map(|(_, id)| id).collect())
    }

    /// Stops those of `ids` that run here, whatever leases say (the
    /// cluster may start their standbys elsewhere); `timeout` bounds each
    /// stop's wait for the machine to end. Returns `(app, id)` of those it
    /// stopped.
    pub async fn fence_now(
        &self,
        ids: &[String],
        timeout: Option<std::time::Duration>,
        why: &str,
    ) -> Result<Vec<(String, String)>, AgentError> {
        let mut stopped = Vec::new();
        for s in self.machine_summaries()? {
            if ids.contains(&s.id) && matches!(s.state.as_str(), "started" | "starting") {
                tracing::warn!(machine = %s.id, "{why}");
                match self
                    .request(
                        &s.app,
                        &s.id,
                        crate::machine::Input::Stop {
                            signal: None,
                            timeout,
                        },
                        None,
                    )
                    .await
                {
                    Ok(_) => stopped.push((s.app, s.id)),
                    Err(e) => tracing::warn!(machine = %s.id, error = %e, "cannot stop it"),
                }
            }
        }
        Ok(stopped)
    }

    /// Starts machines [`Agent::fence_now`] stopped again (their standbys
    /// did not take over after all), whatever leases say.
    pub async fn unfence(&self, machines: &[(String, String)]) {
        for (app, id) in machines {
            tracing::info!(machine = %id, "the cluster is back and nobody took over: starting it again");
            if let Err(e) = self
                .request(app, id, crate::machine::Input::Start, None)
                .await
            {
                tracing::warn!(machine = %id, error = %e, "cannot start it again");
            }
        }
    }
}
