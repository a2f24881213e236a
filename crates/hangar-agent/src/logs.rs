//! An app's logs: the stdout and stderr lines of its machines, read from
//! each machine's log file (JSON lines written by the machine's shim, kept
//! across restarts, rotated once to `<file>.1`), merged by time, and
//! followed as they grow. Following polls the files every
//! [`FOLLOW_INTERVAL`]: a machine's log survives `hangard` restarts and
//! needs no connection to the shim, and a poll also picks up machines
//! created meanwhile and files rotated under it.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hangar_core::MachineId;
use tokio::sync::mpsc;

use crate::{Agent, AgentError};

/// How often a follow looks for new lines.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);
/// Most lines one request returns before following.
pub const MAX_TAIL: usize = 10_000;

/// One line of a machine's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// RFC 3339 with nanoseconds, UTC.
    pub timestamp: String,
    /// The machine.
    pub machine_id: String,
    /// Its region.
    pub region: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub message: String,
}

/// Which lines to read.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only this machine (id or name).
    pub machine: Option<String>,
    /// Only lines at or after this RFC 3339 time.
    pub since: Option<String>,
    /// At most this many of the newest lines (default 100).
    pub tail: Option<usize>,
}

/// Where reading a machine's log got to.
struct Cursor {
    inode: u64,
    offset: u64,
}

fn parse_line(line: &[u8], machine_id: &str, region: &str) -> Option<LogRecord> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(LogRecord {
        timestamp: v["time"].as_str()?.to_owned(),
        machine_id: machine_id.to_owned(),
        region: region.to_owned(),
        stream: v["stream"].as_str().unwrap_or("stdout").to_owned(),
        message: v["message"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Reads complete lines of `path` from `offset`; returns them and the
/// offset after the last complete line.
fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(64 << 20).read_to_end(&mut buf)?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(complete);
    Ok((buf, offset + complete as u64))
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

fn inode(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

impl Agent {
    /// The machines a query covers, with their log files.
    fn log_sources(
        &self,
        app: &str,
        q: &LogQuery,
    ) -> Result<Vec<(MachineId, String, PathBuf)>, AgentError> {
        let machines = match q.machine.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => vec![self.find_machine(app, m)?],
            None => self.list_machines(app, false)?,
        };
        Ok(machines
            .into_iter()
            .filter_map(|m| {
                let path = self.shared.runtime.log_path(&m.id)?;
                Some((m.id, m.region, path))
            })
            .collect())
    }

    /// A machine by id or name.
    fn find_machine(
        &self,
        app: &str,
        id_or_name: &str,
    ) -> Result<crate::MachineRecord, AgentError> {
        if let Ok(m) = self.get_machine(app, id_or_name) {
            return Ok(m);
        }
        self.list_machines(app, false)?
            .into_iter()
            .find(|m| m.name == id_or_name)
            .ok_or_else(|| AgentError::NotFound(format!("machine {id_or_name} not found")))
    }

    /// The newest lines of an app's (or one machine's) logs, oldest first.
    pub fn read_logs(&self, app: &str, q: &LogQuery) -> Result<Vec<LogRecord>, AgentError> {
        Ok(self.snapshot(app, q)?.0)
    }

    fn snapshot(
        &self,
        app: &str,
        q: &LogQuery,
    ) -> Result<(Vec<LogRecord>, HashMap<MachineId, Cursor>), AgentError> {
        if let Some(s) = q.since.as_deref() {
            humantime::parse_rfc3339_weak(s).map_err(|e| {
                AgentError::InvalidArgument(format!("invalid since {s:?}: {e} (use RFC 3339)"))
            })?;
        }
        let tail = q.tail.unwrap_or(100).min(MAX_TAIL);
        let mut all = Vec::new();
        let mut cursors = HashMap::new();
        for (id, region, path) in self.log_sources(app, q)? {
            let inode = inode(&path);
            for file in [rotated(&path), path.clone()] {
                let Ok((bytes, end)) = read_from(&file, 0) else {
                    continue;
                };
                all.extend(
                    bytes
                        .split(|b| *b == b'\n')
                        .filter_map(|l| parse_line(l, id.as_str(), &region)),
                );
                if file == path {
                    if let Some(inode) = inode {
                        cursors.insert(id.clone(), Cursor { inode, offset: end });
                    }
                }
            }
        }
        if let Some(since) = q.since.as_deref() {
            let since = normalize_time(since);
            all.retain(|r| r.timestamp.as_str() >= since.as_str());
        }
        all.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        let skip = all.len().saturating_sub(tail);
        Ok((all.split_off(skip), cursors))
    }

    /// The newest lines as [`Agent::read_logs`], then every new line as it
    /// is written, across restarts of the machines and of new machines of
    /// the app, until the receiver is dropped.
    pub fn follow_logs(
        &self,
        app: &str,
        q: LogQuery,
    ) -> Result<mpsc::Receiver<LogRecord>, AgentError> {
        let (first, mut cursors) = self.snapshot(app, &q)?;
        let (tx, rx) = mpsc::channel(1024);
        let agent = self.clone();
        let app = app.to_owned();
        tokio::spawn(async move {
            for r in first {
                if tx.send(r).await.is_err() {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_INTERVAL) => {}
                }
                let Ok(sources) = agent.log_sources(&app, &q) else {
                    // The app or machine is gone: nothing more will come.
                    return;
                };
                let mut batch = Vec::new();
                for (id, region, path) in sources {
                    batch.extend(read_new(
                        &path,
                        cursors.entry(id.clone()),
                        id.as_str(),
                        &region,
                    ));
                }
                batch.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
                for r in batch {
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// New lines of a machine's log since its cursor (a new machine's from the
/// start); a rotation is noticed by the inode, and the rest of the rotated
/// file is read first.
fn read_new(
    path: &Path,
    cursor: std::collections::hash_map::Entry<'_, MachineId, Cursor>,
    machine_id: &str,
    region: &str,
) -> Vec<LogRecord> {
    let Some(now_inode) = inode(path) else {
        return Vec::new();
    };
    let cursor = cursor.or_insert(Cursor {
        inode: now_inode,
        offset: 0,
    });
    let mut bytes = Vec::new();
    if cursor.inode != now_inode {
        let old = rotated(path);
        if inode(&old) == Some(cursor.inode) {
            if let Ok((b, _)) = read_from(&old, cursor.offset) {
                bytes.extend(b);
            }
        }
        *cursor = Cursor {
            inode: now_inode,
            offset: 0,
        };
    }
    if let Ok((b, end)) = read_from(path, cursor.offset) {
        bytes.extend(b);
        cursor.offset = end;
    }
    bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| parse_line(l, machine_id, region))
        .collect()
}

/// An RFC 3339 time in the log's own format (UTC, nanoseconds), so that
/// times compare as strings.
fn normalize_time(s: &str) -> String {
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => humantime::format_rfc3339_nanos(t).to_string(),
        Err(_) => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_lines_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine.log");
        let line = |t: &str, m: &str| {
            format!("{{\"time\":\"{t}\",\"stream\":\"stdout\",\"message\":\"{m}\"}}\n")
        };
        std::fs::write(
            &path,
            line("2026-01-01T00:00:01.000000000Z", "a") + "{\"partial",
        )
        .unwrap();
        let id: MachineId = "0123456789abcd".parse().unwrap();
        let mut cursors = HashMap::new();
        let got = read_new(&path, cursors.entry(id.clone()), id.as_str(), "local");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message, "a");
        // The partial line completes; then the file rotates and a new one
        // starts: nothing is lost or repeated.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"\",\"x\":1}\n").unwrap();
        std::io::Write::write_all(
            &mut f,
            line("2026-01-01T00:00:02.000000000Z", "b").as_bytes(),
        )
        .unwrap();
        std::fs::rename(&path, rotated(&path)).unwrap();
        std::fs::write(&path, line("2026-01-01T00:00:03.000000000Z", "c")).unwrap();
        let got = read_new(&path, cursors.entry(id.clone()), id.as_str(), "local");
        let msgs: Vec<&str> = got.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["b", "c"]);
        assert!(read_new(&path, cursors.entry(id.clone()), id.as_str(), "local").is_empty());
    }

    #[test]
    fn times_normalize_for_comparison() {
        assert_eq!(
            normalize_time("2026-01-01T00:00:01Z"),
            "2026-01-01T00:00:01.000000000Z"
        );
    }
}
