//! Resolving an image's `User` (`""`, `name`, `uid`, `name:group`,
//! `uid:gid`) against the image's own `/etc/passwd` and `/etc/group`, as
//! Docker does.

/// A resolved identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership).
    pub groups: Vec<u32>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 || l.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
        })
    })
}

/// `(name, gid, members)` of each group.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 3 || l.starts_with('#') {
            return None;
        }
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// A user or group the image does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No such user in the image's `/etc/passwd`.
    #[error("unable to find user {0}: no matching entries in the image's /etc/passwd")]
    NoUser(String),
    /// No such group in the image's `/etc/group`.
    #[error("unable to find group {0}: no matching entries in the image's /etc/group")]
    NoGroup(String),
}

/// Resolves `spec` with the image's passwd and group files (empty when the
/// image has none).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let spec = spec.trim();
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, name) = if user.is_empty() {
        (0, 0, Some("root".to_owned()))
    } else if let Ok(uid) = user.parse::<u32>() {
        match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.to_owned())),
            None => (uid, 0, None),
        }
    } else {
        let e = passwd_entries(passwd)
            .find(|e| e.name == user)
            .ok_or_else(|| UserError::NoUser(user.to_owned()))?;
        (e.uid, e.gid, Some(user.to_owned()))
    };
    if let Some(g) = grp.filter(|g| !g.is_empty()) {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| UserError::NoGroup(g.to_owned()))?,
        };
    }
    // As initgroups(3) does: the primary group, then every group listing
    // the user as a member. An explicit group replaces them all.
    let mut groups: Vec<u32> = Vec::new();
    if grp.is_none() && uid != 0 {
        groups.push(gid);
        if let Some(name) = &name {
            for (_, id, members) in group_entries(group) {
                if members.contains(&name.as_str()) && !groups.contains(&id) {
                    groups.push(id);
                }
            }
        }
    }
    Ok(Identity { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:/bin/sh\n# comment\nbad line\n";
    const GROUP: &str = "root:x:0:\nbob:x:1000:\nstaff:x:50:bob,alice\nwheel:x:10:bob\n";

    fn id(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn docker_user_forms() {
        assert_eq!(resolve("", PASSWD, GROUP).unwrap(), id(0, 0, &[]));
        assert_eq!(
            resolve("bob", PASSWD, GROUP).unwrap(),
            id(1000, 1000, &[1000, 50, 10])
        );
        assert_eq!(
            resolve("1000", PASSWD, GROUP).unwrap(),
            id(1000, 1000, &[1000, 50, 10])
        );
        assert_eq!(
            resolve("bob:staff", PASSWD, GROUP).unwrap(),
            id(1000, 50, &[])
        );
        assert_eq!(
            resolve("4242:4343", PASSWD, GROUP).unwrap(),
            id(4242, 4343, &[])
        );
        assert_eq!(resolve("4242", "", "").unwrap(), id(4242, 0, &[0]));
        assert!(
            resolve("alice", PASSWD, GROUP)
                .unwrap_err()
                .to_string()
                .contains("alice")
        );
        assert!(resolve("bob:nogroup", PASSWD, GROUP).is_err());
    }
}
