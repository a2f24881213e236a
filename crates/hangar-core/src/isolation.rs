//! Which kind of sandbox runs a machine: Hangar's extension, asked for per
//! machine with the metadata key [`METADATA_KEY`] (Fly's config has no
//! field for it, and metadata survives every client that round-trips a
//! config), or chosen for the whole host with `hangard --runtime`.

use std::fmt;

/// The metadata key that asks for a runtime: `hangar_runtime`.
pub const METADATA_KEY: &str = "hangar_runtime";

/// A machine's runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isolation {
    /// A container run by crun (sharing the host's kernel).
    Crun,
    /// A container run by runc.
    Runc,
    /// gVisor: a container whose system calls a user-space kernel serves.
    Runsc,
    /// A virtual machine with its own kernel (qemu `-M microvm`).
    Microvm,
}

impl Isolation {
    /// Every runtime, in order of strength.
    pub const ALL: [Isolation; 4] = [
        Isolation::Crun,
        Isolation::Runc,
        Isolation::Runsc,
        Isolation::Microvm,
    ];

    /// Its name (as in the metadata and `hangard --runtime`).
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Crun => "crun",
            Isolation::Runc => "runc",
            Isolation::Runsc => "runsc",
            Isolation::Microvm => "microvm",
        }
    }

    /// By name; `gvisor` names runsc too.
    pub fn parse(s: &str) -> Option<Isolation> {
        match s.trim().to_ascii_lowercase().as_str() {
            "crun" => Some(Isolation::Crun),
            "runc" => Some(Isolation::Runc),
            "runsc" | "gvisor" => Some(Isolation::Runsc),
            "microvm" => Some(Isolation::Microvm),
            _ => None,
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for i in Isolation::ALL {
            assert_eq!(Isolation::parse(i.as_str()), Some(i));
        }
        assert_eq!(Isolation::parse(" gVisor "), Some(Isolation::Runsc));
        assert_eq!(Isolation::parse("docker"), None);
    }
}
