//! Machines kept rendered as JSON.
//!
//! Rendering a machine means parsing its stored config, reading its events
//! and serializing all of it: tens of microseconds, which is most of what a
//! `GET` of a machine costs and a hundred times that for a list. A
//! rendering depends only on the machine's stored row and events, which
//! its revision covers (the database bumps it on every change, whoever
//! makes it), and on its check results. So it is kept beside those two and
//! used again while they are equal: a list reads each machine's id and
//! revision, and renders only the machines that changed. Nothing has to
//! remember to invalidate anything.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use hangar_agent::checks::CheckResult;
use hangar_agent::{Agent, AgentError, MachineFilter, MachineRow};

use crate::error::ApiResult;
use crate::views;

/// Beyond this many machines the renderings are dropped and made again
/// as asked for (a list of more machines than this still works, each
/// rendered on every request).
const CAPACITY: usize = 16_384;

/// What a rendering was made from: the machine's revision and checks.
type Source = (i64, Vec<CheckResult>);

/// The renderings, by machine id.
#[derive(Default)]
pub struct Renderings {
    map: Mutex<HashMap<String, (Source, Bytes)>>,
}

impl Renderings {
    /// The machine as Fly renders it in full (config, events, checks):
    /// the kept rendering if the machine has not changed since it was
    /// made, a new one otherwise.
    pub fn machine(&self, agent: &Agent, row: MachineRow) -> ApiResult<Bytes> {
        let checks = agent.checks(row.rec.id.as_str());
        if let Some(json) = self.kept(row.rec.id.as_str(), row.rev, &checks) {
            return Ok(json);
        }
        self.render(agent, row, checks)
    }

    /// An app's machines that pass `filter`, as a JSON array: the kept
    /// renderings of the machines that have not changed, new ones of the
    /// others.
    pub fn list(&self, agent: &Agent, app: &str, filter: &MachineFilter) -> ApiResult<Bytes> {
        let parts = match agent.find_machine_revs(app, filter)? {
            Some(revs) => revs
                .into_iter()
                .filter_map(|m| {
                    let checks = agent.checks(m.id.as_str());
                    match self.kept(m.id.as_str(), m.rev, &checks) {
                        Some(json) => Some(Ok(json)),
                        // Changed since: read it whole (unless it is
                        // gone since, as if listed a moment later).
                        None => match agent.get_machine_row(app, m.id.as_str()) {
                            Ok(row) => Some(self.render(agent, row, checks)),
                            Err(AgentError::NotFound(_)) => None,
                            Err(e) => Some(Err(e.into())),
                        },
                    }
                })
                .collect::<ApiResult<Vec<_>>>()?,
            None => agent
                .find_machine_rows(app, filter)?
                .into_iter()
                .map(|row| self.machine(agent, row))
                .collect::<ApiResult<Vec<_>>>()?,
        };
        let mut out = BytesMut::with_capacity(2 + parts.iter().map(|p| p.len() + 1).sum::<usize>());
        out.put_u8(b'[');
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(p);
        }
        out.put_u8(b']');
        Ok(out.freeze())
    }

    fn kept(&self, id: &str, rev: i64, checks: &[CheckResult]) -> Option<Bytes> {
        self.lock()
            .get(id)
            .filter(|((r, c), _)| *r == rev && c == checks)
            .map(|(_, json)| json.clone())
    }

    fn render(&self, agent: &Agent, row: MachineRow, checks: Vec<CheckResult>) -> ApiResult<Bytes> {
        let id = row.rec.id.to_string();
        let rev = row.rev;
        let rec = row.finish()?;
        let events = agent.events_of(&rec, views::MACHINE_EVENTS)?;
        let json = Bytes::from(
            serde_json::to_vec(&views::with_checks(
                views::machine(rec, Some(events)),
                checks.clone(),
            ))
            .map_err(|e| AgentError::Internal(format!("rendering a machine: {e}")))?,
        );
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(id, ((rev, checks), json.clone()));
        Ok(json)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Source, Bytes)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}
