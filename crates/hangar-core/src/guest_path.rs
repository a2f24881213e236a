//! Paths inside a machine (`files[].guest_path`, later volume mount points),
//! checked before anything is written: absolute, normalized, no `.` or `..`
//! components, so a path names one place under the machine's root and
//! cannot climb out of it. (Symlinks inside the image are the runtime's to
//! resolve inside the root; this check is about the text.)

use std::fmt;

/// Longest accepted path, as Linux's `PATH_MAX`.
pub const MAX_LEN: usize = 4096;

/// A checked absolute path inside a machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GuestPath(String);

/// Why a guest path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestPathError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Does not start with `/`.
    #[error("{0:?} is not absolute (it must start with /)")]
    NotAbsolute(String),
    /// `/` itself.
    #[error("{0:?} names the root directory, not a file")]
    Root(String),
    /// Has `//`, a trailing `/`, `.` or `..`.
    #[error("{0:?} is not normalized (no //, trailing /, . or .. components)")]
    NotNormalized(String),
    /// Has a NUL byte.
    #[error("contains a NUL byte")]
    Nul,
    /// Too long.
    #[error("is longer than {MAX_LEN} bytes")]
    TooLong,
}

impl GuestPath {
    /// Checks `s`.
    pub fn parse(s: &str) -> Result<GuestPath, GuestPathError> {
        if s.is_empty() {
            return Err(GuestPathError::Empty);
        }
        if s.contains('\0') {
            return Err(GuestPathError::Nul);
        }
        if s.len() > MAX_LEN {
            return Err(GuestPathError::TooLong);
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(GuestPathError::NotAbsolute(s.to_owned()));
        };
        if rest.is_empty() {
            return Err(GuestPathError::Root(s.to_owned()));
        }
        if rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255)
        {
            return Err(GuestPathError::NotNormalized(s.to_owned()));
        }
        Ok(GuestPath(s.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_plain_absolute_paths() {
        for ok in [
            "/a",
            "/etc/app/config.json",
            "/.hidden",
            "/a/..b/c..",
            "/with space",
        ] {
            assert_eq!(GuestPath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_escapes_and_oddities() {
        for bad in [
            "",
            "/",
            "a/b",
            "./a",
            "/a/../../etc/passwd",
            "/..",
            "/a/.",
            "/a//b",
            "/a/",
            "/a\0b",
        ] {
            assert!(GuestPath::parse(bad).is_err(), "{bad:?}");
        }
        assert!(GuestPath::parse(&format!("/{}", "a".repeat(256))).is_err());
        assert!(GuestPath::parse(&"/a".repeat(3000)).is_err());
    }

    proptest! {
        /// Whatever is accepted, joined under a root, stays under that root
        /// when resolved lexically.
        #[test]
        fn accepted_paths_stay_under_the_root(s in "[/a.]{1,12}") {
            if let Ok(p) = GuestPath::parse(&s) {
                let mut depth = 0i32;
                for c in p.as_str().split('/').skip(1) {
                    depth += if c == ".." { -1 } else { 1 };
                    prop_assert!(depth > 0, "{s}");
                }
            }
        }
    }
}
