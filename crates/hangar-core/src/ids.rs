//! Typed identifiers, generated the way Fly generates them: 14 lowercase hex
//! characters for machines, 26-character ULIDs for instances (versions) and
//! events.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A machine id must be 14 lowercase hex characters.
    #[error("invalid machine id {0:?}: expected 14 lowercase hex characters")]
    MachineId(String),
    /// An app name breaks the naming rules.
    #[error("invalid app name {name:?}: {reason}")]
    AppName {
        /// The rejected name.
        name: String,
        /// What rule it broke.
        reason: &'static str,
    },
    /// A ULID is malformed.
    #[error("invalid id {0:?}: expected a 26-character ULID")]
    Ulid(String),
}

/// A machine's identifier: 14 lowercase hex characters, e.g. `3d8d413b29d089`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineId(String);

impl MachineId {
    /// A fresh random machine id.
    pub fn generate() -> Self {
        let n: u64 = rand::random::<u64>() & 0x00ff_ffff_ffff_ffff;
        MachineId(format!("{n:014x}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MachineId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 14
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(MachineId(s.to_owned()))
        } else {
            Err(IdError::MachineId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for MachineId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MachineId> for String {
    fn from(id: MachineId) -> String {
        id.0
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An application name: 1 to 63 characters of lowercase letters, digits and
/// dashes, starting with a letter or digit and not ending with a dash (a DNS
/// label, since `<app>.internal` names are built from it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl AppName {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AppName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IdError::AppName {
            name: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(err("must not be empty"));
        }
        if s.len() > 63 {
            return Err(err("must be at most 63 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(err("may contain only lowercase letters, digits and dashes"));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(err("must not start or end with a dash"));
        }
        Ok(AppName(s.to_owned()))
    }
}

impl TryFrom<String> for AppName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AppName> for String {
    fn from(n: AppName) -> String {
        n.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(ulid::Ulid);

        impl $name {
            /// A fresh ULID (monotonic in its millisecond timestamp).
            pub fn generate() -> Self {
                $name(ulid::Ulid::new())
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                ulid::Ulid::from_string(s)
                    .map($name)
                    .map_err(|_| IdError::Ulid(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

ulid_id!(
    /// The id of one version of a machine's configuration (Fly's `instance_id`
    /// and `version`); it changes on every update.
    InstanceId
);
ulid_id!(
    /// The id of a machine event.
    EventId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_14_hex() {
        for _ in 0..100 {
            let id = MachineId::generate();
            assert_eq!(id.as_str().len(), 14);
            assert_eq!(id.as_str().parse::<MachineId>().unwrap(), id);
        }
        assert!("3D8D413B29D089".parse::<MachineId>().is_err());
        assert!("3d8d413b29d08".parse::<MachineId>().is_err());
        assert!("../../etc/pas".parse::<MachineId>().is_err());
    }

    #[test]
    fn app_names() {
        assert!("my-app-1".parse::<AppName>().is_ok());
        for bad in ["", "-a", "a-", "My", "a_b", "a.b", "../x", &"a".repeat(64)] {
            assert!(bad.parse::<AppName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ulids_roundtrip() {
        let id = InstanceId::generate();
        let s = id.to_string();
        assert_eq!(s.len(), 26);
        assert_eq!(s.parse::<InstanceId>().unwrap(), id);
        assert!("nope".parse::<InstanceId>().is_err());
    }
}
