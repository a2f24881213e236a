//! The protocol between a microVM's `hangar-init` (PID 1 in the guest) and
//! its supervisor on the host, over one virtio-serial port: JSON, one
//! message per line, both ways.
//!
//! ```text
//! guest                                   host (the machine's vmshim)
//!   hello ───────────────────────────────►
//!        ◄──────────────────────────────── config {GuestConfig}
//!   started {pid} | failed {info} ───────►        (the start's answer)
//!   log {stream, data} ──────────────────►        (machine.log)
//!        ◄──────────────────────────────── request {id, body}
//!   reply {id, body} ────────────────────►        (exec, ps, signal, ...)
//!   exit {info} ─────────────────────────►        (exit.json)
//!        ◄──────────────────────────────── ack    (then the guest powers off)
//! ```
//!
//! `hangard` reaches a running VM through the shim's control socket: it
//! writes one [`Request`] line and reads one [`Reply`] line.

use serde::{Deserialize, Serialize};

use crate::ExitInfo;

/// The name of the virtio-serial port the guest's init talks on.
pub const AGENT_PORT: &str = "hangar.agent";

/// What the guest's init needs to run the machine, sent once it is up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    /// Program and arguments of the main process.
    pub argv: Vec<String>,
    /// Its environment (secrets included: the config travels only over the
    /// port, never to a disk).
    pub env: Vec<(String, String)>,
    /// Its working directory.
    pub cwd: String,
    /// The image's user spec (`name`, `uid:gid`...), resolved in the guest
    /// against the root filesystem's `/etc/passwd`.
    pub user: String,
    /// Run it on a terminal.
    pub tty: bool,
    /// The machine's hostname.
    pub hostname: String,
    /// Files to write before it starts.
    pub files: Vec<GuestConfigFile>,
    /// The private network, if the machine has one.
    pub net: Option<GuestNet>,
    /// Volumes: block devices to mount.
    pub volumes: Vec<GuestVolume>,
}

/// A file written into the guest's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfigFile {
    /// Absolute path.
    pub path: String,
    /// Contents.
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// The guest's `eth0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNet {
    /// `a.b.c.d/len`.
    pub address4: String,
    /// IPv4 gateway.
    pub gateway4: String,
    /// `fdaa:.../len`.
    pub address6: String,
    /// IPv6 gateway.
    pub gateway6: String,
}

/// The virtio serial of a microVM's root disk.
pub const ROOT_SERIAL: &str = "hangar-root";

/// A volume: the guest mounts the ext4 file system on the disk with
/// serial `device` and binds its `data` directory at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestVolume {
    /// The virtio serial of its disk.
    pub device: String,
    /// Where the machine sees it.
    pub path: String,
    /// The volume's encryption key: the guest adds it to the volume's
    /// file system and opens the encrypted `data` directory with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<VolumeKey>,
}

/// Bytes as one base64 string (terminal traffic is binary and frequent).
mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// A volume's raw fscrypt key, sent to the guest as base64; never shown
/// by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeKey(pub [u8; 64]);

impl std::fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VolumeKey(<redacted>)")
    }
}

impl Serialize for VolumeKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for VolumeKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let s = String::deserialize(d)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)?;
        let key: [u8; 64] = raw
            .try_into()
            .map_err(|_| serde::de::Error::custom("a volume key has 64 bytes"))?;
        Ok(VolumeKey(key))
    }
}

/// A message from the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum FromGuest {
    /// Init is up and waits for its config.
    Hello,
    /// The main process runs.
    Started {
        /// Its pid in the guest.
        pid: i32,
    },
    /// The machine could not start; how it ended.
    Failed {
        /// The error and exit code.
        info: ExitInfo,
    },
    /// Output of the main process.
    Log {
        /// `stdout` or `stderr`.
        stream: String,
        /// The bytes (lossy UTF-8).
        data: String,
    },
    /// The answer to a request.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        body: Reply,
    },
    /// The main process ended.
    Exit {
        /// How.
        info: ExitInfo,
    },
    /// Output of a terminal session ([`Request::Tty`]).
    TtyOutput {
        /// The session's request id.
        id: u64,
        /// The bytes.
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// A terminal session's command ended (after its last output).
    TtyExit {
        /// The session's request id.
        id: u64,
        /// Exit code (`128 + n` for signal `n`).
        exit_code: i32,
    },
}

/// A message to the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ToGuest {
    /// What to run (the answer to `hello`).
    Config {
        /// The machine.
        config: Box<GuestConfig>,
    },
    /// A request from `hangard`.
    Request {
        /// Matches the reply.
        id: u64,
        /// What to do.
        body: Request,
    },
    /// The exit report has been recorded: the guest may power off.
    Ack,
    /// Keystrokes for a terminal session.
    TtyInput {
        /// The session's request id.
        id: u64,
        /// The bytes.
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// A terminal session's new window size.
    TtyResize {
        /// The session's request id.
        id: u64,
        /// Height.
        rows: u16,
        /// Width.
        cols: u16,
    },
    /// The host side of a terminal session is gone: its command gets
    /// SIGHUP.
    TtyHangup {
        /// The session's request id.
        id: u64,
    },
}

/// What `hangard` asks of a running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Send a signal to the main process.
    Signal {
        /// The signal number.
        signal: i32,
    },
    /// Run a command and collect its output.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// Bytes for its stdin.
        #[serde(default)]
        stdin: Option<Vec<u8>>,
        /// Kill it after this long.
        timeout_ms: u64,
    },
    /// Run a command on a new terminal: the guest replies once it runs,
    /// then streams [`FromGuest::TtyOutput`] and ends with
    /// [`FromGuest::TtyExit`], all under this request's id.
    Tty {
        /// Program and arguments.
        argv: Vec<String>,
        /// Extra environment (e.g. `TERM`).
        #[serde(default)]
        env: Vec<(String, String)>,
        /// Height.
        rows: u16,
        /// Width.
        cols: u16,
    },
    /// List the processes.
    Ps,
    /// Memory in use.
    Memory,
    /// Freeze the file system of the volume mounted at `path` (FIFREEZE),
    /// for a consistent copy of its disk; it thaws itself after
    /// `timeout_ms` unless thawed before.
    FreezeVolume {
        /// Where the machine sees the volume.
        path: String,
        /// The longest the freeze may last.
        timeout_ms: u64,
    },
    /// Thaw the file system of the volume mounted at `path` (FITHAW).
    ThawVolume {
        /// Where the machine sees the volume.
        path: String,
    },
    /// Grow the ext4 file system of the volume mounted at `path` online to
    /// fill its disk, once the disk shows `bytes`.
    GrowVolume {
        /// Where the machine sees the volume.
        path: String,
        /// The disk's new size.
        bytes: u64,
    },
    /// Resize the VM's disk `drive` (qemu's drive id) to `bytes`. Handled
    /// by the vmshim over QMP.
    BlockResize {
        /// The drive.
        drive: String,
        /// Its new size.
        bytes: u64,
    },
    /// Suspend the VM to a file: its vCPUs stop, its state (memory and
    /// devices) is saved to the snapshot file and qemu exits. Handled by
    /// the host's vmshim, never sent to the guest.
    Suspend,
    /// Resume a suspended VM from its snapshot file. Handled by the vmshim.
    Resume,
}

/// A process of the guest, for `ps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProcess {
    /// Pid in the guest.
    pub pid: i32,
    /// Seconds since boot at which it started, in milliseconds.
    pub start_ms: u64,
    /// Command line.
    pub command: String,
    /// Working directory.
    pub directory: String,
    /// CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Resident memory, bytes.
    pub rss: u64,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Ok,
    /// It failed.
    Error {
        /// Why.
        message: String,
    },
    /// How an exec ended.
    Exec {
        /// Exit code (`128 + n` for signal `n`).
        exit_code: i32,
        /// The signal that killed it.
        exit_signal: Option<i32>,
        /// Its stdout (capped).
        stdout: Vec<u8>,
        /// Its stderr (capped).
        stderr: Vec<u8>,
        /// It ran out of time.
        timed_out: bool,
    },
    /// The processes, and the guest's uptime in milliseconds.
    Ps {
        /// Uptime of the guest, milliseconds.
        uptime_ms: u64,
        /// The processes.
        processes: Vec<GuestProcess>,
    },
    /// Memory of the guest, MiB.
    Memory {
        /// Total.
        total_mb: u64,
        /// In use.
        used_mb: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_keys_travel_as_base64_and_are_never_shown() {
        let v = GuestVolume {
            device: "hangar-vol0".into(),
            path: "/data".into(),
            key: Some(VolumeKey([7; 64])),
        };
        let json = serde_json::to_string(&v).unwrap();
        assert!(json.contains(r#""key":"BwcH"#), "{json}");
        assert_eq!(serde_json::from_str::<GuestVolume>(&json).unwrap(), v);
        assert!(!format!("{v:?}").contains("7, 7"), "{v:?}");
        let plain = r#"{"device":"d","path":"/p"}"#;
        assert_eq!(
            serde_json::from_str::<GuestVolume>(plain).unwrap().key,
            None
        );
        let short = r#"{"device":"d","path":"/p","key":"BwcH"}"#;
        assert!(serde_json::from_str::<GuestVolume>(short).is_err());
    }

    #[test]
    fn messages_round_trip_as_single_lines() {
        let msgs = vec![
            FromGuest::Hello,
            FromGuest::Log {
                stream: "stdout".into(),
                data: "a\nb".into(),
            },
            FromGuest::Reply {
                id: 7,
                body: Reply::Exec {
                    exit_code: 3,
                    exit_signal: None,
                    stdout: b"x".to_vec(),
                    stderr: vec![],
                    timed_out: false,
                },
            },
            FromGuest::TtyOutput {
                id: 9,
                data: b"\x1b[1m\r\n\xff".to_vec(),
            },
            FromGuest::TtyExit {
                id: 9,
                exit_code: 3,
            },
        ];
        for m in msgs {
            let line = serde_json::to_string(&m).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<FromGuest>(&line).unwrap(), m);
        }
        let r: Request =
            serde_json::from_str(r#"{"op":"exec","argv":["ls"],"timeout_ms":5}"#).unwrap();
        assert_eq!(
            r,
            Request::Exec {
                argv: vec!["ls".into()],
                stdin: None,
                timeout_ms: 5
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        let input = ToGuest::TtyInput {
            id: 9,
            data: b"ls\r".to_vec(),
        };
        let line = serde_json::to_string(&input).unwrap();
        assert_eq!(line, r#"{"t":"tty_input","id":9,"data":"bHMN"}"#);
        assert_eq!(serde_json::from_str::<ToGuest>(&line).unwrap(), input);
    }
}
