//! Linux native file encryption (fscrypt, policy v2) for a volume's data
//! directory: the raw key is added to the mounted filesystem, and the empty
//! data directory gets a policy naming it (AES-256-XTS for contents,
//! AES-256-CTS for names). Without the key the directory's files read as
//! ciphertext with encrypted names.
//!
//! Used by the host's volumes (`hangar-volumes`) and, inside a microVM, by
//! the guest's init, which opens an encrypted volume's data directory with
//! the key the host sends over the agent port.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A volume's raw encryption key.
pub const KEY_LEN: usize = 64;

const FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
const FSCRYPT_POLICY_V2: u8 = 2;
const FSCRYPT_MODE_AES_256_XTS: u8 = 1;
const FSCRYPT_MODE_AES_256_CTS: u8 = 4;
const FSCRYPT_POLICY_FLAGS_PAD_32: u8 = 0x03;

#[repr(C)]
struct KeySpecifier {
    kind: u32,
    reserved: u32,
    identifier: [u8; 32],
}

#[repr(C)]
struct AddKeyArg {
    key_spec: KeySpecifier,
    raw_size: u32,
    key_id: u32,
    reserved: [u32; 8],
    raw: [u8; KEY_LEN],
}

#[repr(C)]
struct RemoveKeyArg {
    key_spec: KeySpecifier,
    removal_status_flags: u32,
    reserved: [u32; 5],
}

#[repr(C)]
struct PolicyV2 {
    version: u8,
    contents_mode: u8,
    filenames_mode: u8,
    flags: u8,
    log2_data_unit_size: u8,
    reserved: [u8; 3],
    identifier: [u8; 16],
}

/// `_IOWR('f', 23, struct fscrypt_add_key_arg)` (the header, 80 bytes).
const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong = 0xC050_6617;
/// `_IOWR('f', 24, struct fscrypt_remove_key_arg)` (64 bytes).
const FS_IOC_REMOVE_ENCRYPTION_KEY: libc::c_ulong = 0xC040_6618;
/// `_IOR('f', 19, struct fscrypt_policy_v1)`: also takes v2 policies.
const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong = 0x800C_6613;

fn ioctl<T>(file: &std::fs::File, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, correctly laid out (repr(C)) argument for
    // `request`, and `file` is an open descriptor.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg as *mut T) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_dir(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// Adds `key` to the filesystem mounted at `mountpoint`; returns its
/// identifier. Adding the same key again is harmless.
pub fn add_key(mountpoint: &Path, key: &[u8; KEY_LEN]) -> io::Result<[u8; 16]> {
    let dir = open_dir(mountpoint)?;
    let mut arg = AddKeyArg {
        key_spec: KeySpecifier {
            kind: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
            reserved: 0,
            identifier: [0; 32],
        },
        raw_size: KEY_LEN as u32,
        key_id: 0,
        reserved: [0; 8],
        raw: *key,
    };
    let r = ioctl(&dir, FS_IOC_ADD_ENCRYPTION_KEY, &mut arg);
    arg.raw = [0; KEY_LEN];
    r?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&arg.key_spec.identifier[..16]);
    Ok(id)
}

/// Removes the key `identifier` from the filesystem at `mountpoint`
/// (files using it become unreadable).
pub fn remove_key(mountpoint: &Path, identifier: &[u8; 16]) -> io::Result<()> {
    let dir = open_dir(mountpoint)?;
    let mut spec = KeySpecifier {
        kind: FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER,
        reserved: 0,
        identifier: [0; 32],
    };
    spec.identifier[..16].copy_from_slice(identifier);
    let mut arg = RemoveKeyArg {
        key_spec: spec,
        removal_status_flags: 0,
        reserved: [0; 5],
    };
    ioctl(&dir, FS_IOC_REMOVE_ENCRYPTION_KEY, &mut arg)
}

/// Gives the empty directory `dir` an encryption policy with key
/// `identifier`. Setting the same policy again is harmless.
pub fn set_policy(dir: &Path, identifier: &[u8; 16]) -> io::Result<()> {
    let d = open_dir(dir)?;
    let mut policy = PolicyV2 {
        version: FSCRYPT_POLICY_V2,
        contents_mode: FSCRYPT_MODE_AES_256_XTS,
        filenames_mode: FSCRYPT_MODE_AES_256_CTS,
        flags: FSCRYPT_POLICY_FLAGS_PAD_32,
        log2_data_unit_size: 0,
        reserved: [0; 3],
        identifier: *identifier,
    };
    ioctl(&d, FS_IOC_SET_ENCRYPTION_POLICY, &mut policy)
}

/// The directory machines get on the volume filesystem mounted at
/// `mountpoint`: its `data` directory, encrypted under `key` when given.
/// The key is added to the filesystem first; a missing `data` directory is
/// made aside, given the policy and renamed into place, so `data` never
/// exists unencrypted.
pub fn open_data_dir(
    mountpoint: &Path,
    key: Option<&[u8; KEY_LEN]>,
) -> io::Result<std::path::PathBuf> {
    let data = mountpoint.join("data");
    let identifier = match key {
        Some(k) => Some(
            add_key(mountpoint, k)
                .map_err(|e| io::Error::new(e.kind(), format!("adding the volume key: {e}")))?,
        ),
        None => None,
    };
    if !data.exists() {
        let fresh = mountpoint.join("data.new");
        let _ = std::fs::remove_dir(&fresh);
        std::fs::create_dir(&fresh)
            .map_err(|e| io::Error::new(e.kind(), format!("creating the data directory: {e}")))?;
        if let Some(identifier) = &identifier {
            set_policy(&fresh, identifier).map_err(|e| {
                io::Error::new(e.kind(), format!("encrypting the data directory: {e}"))
            })?;
        }
        std::fs::rename(&fresh, &data)
            .map_err(|e| io::Error::new(e.kind(), format!("creating the data directory: {e}")))?;
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<KeySpecifier>(), 40);
        assert_eq!(std::mem::size_of::<AddKeyArg>(), 80 + KEY_LEN);
        assert_eq!(std::mem::size_of::<RemoveKeyArg>(), 64);
        assert_eq!(std::mem::size_of::<PolicyV2>(), 24);
        // The ioctl numbers encode the header sizes.
        assert_eq!((FS_IOC_ADD_ENCRYPTION_KEY >> 16) & 0x3fff, 80);
        assert_eq!((FS_IOC_REMOVE_ENCRYPTION_KEY >> 16) & 0x3fff, 64);
        assert_eq!((FS_IOC_SET_ENCRYPTION_POLICY >> 16) & 0x3fff, 12);
    }
}
