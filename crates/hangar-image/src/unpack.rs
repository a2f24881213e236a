//! Unpacking one layer into its own directory, in the form overlayfs reads as
//! a lower layer.
//!
//! OCI whiteouts become overlayfs whiteouts: `dir/.wh.name` becomes a 0/0
//! character device `dir/name`, and `dir/.wh..wh..opq` becomes the
//! `trusted.overlay.opaque=y` xattr on `dir`. The layer's uncompressed bytes
//! are hashed on the way through and must match the `diff_id` in the image
//! config. Unpacking happens in a temporary directory that is renamed into
//! place only when everything checked out.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A reader that hashes what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads to the end and returns `sha256:<hex>` of everything read.
    pub(crate) fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// After its inner reader ends, yields the zero blocks that complete a tar
/// stream (padding plus the two-block end marker). Some writers (umoci 0.4)
/// omit them; like `umoci unpack`, Hangar accepts such layers. The zeros are
/// not part of the layer's digest: the hashing reader sits inside.
struct ZeroTail<R> {
    inner: R,
    ended: bool,
    zeros_left: usize,
}

impl<R: Read> Read for ZeroTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.ended {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            self.ended = true;
        }
        let n = buf.len().min(self.zeros_left);
        buf[..n].fill(0);
        self.zeros_left -= n;
        Ok(n)
    }
}

/// `sha256:<hex>` of a file.
pub(crate) fn file_digest(path: &Path) -> io::Result<String> {
    HashingReader::new(BufReader::new(File::open(path)?)).finish()
}

/// Opens a possibly compressed layer, choosing the decoder by magic bytes
/// (gzip, zstd, or none), whatever the media type claims.
fn decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 4];
    let n = {
        let buf = std::io::BufRead::fill_buf(&mut f)?;
        let n = buf.len().min(4);
        magic[..n].copy_from_slice(&buf[..n]);
        n
    };
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(f)?)
    } else {
        Box::new(f)
    })
}

/// Unpacks the layer blob at `blob` into `dest` (which must not exist),
/// checking that its uncompressed digest is `diff_id`.
pub(crate) fn unpack_layer(blob: &Path, diff_id: &str, dest: &Path) -> Result<(), ImageError> {
    let parent = dest
        .parent()
        .ok_or_else(|| ImageError::io("layer dir", dest, io::ErrorKind::InvalidInput.into()))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    if tmp.exists() {
        remove_tree(&tmp);
    }
    fs::create_dir_all(&tmp).map_err(|e| ImageError::io("create", &tmp, e))?;
    let result = unpack_into(blob, diff_id, &tmp);
    if let Err(e) = result {
        remove_tree(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest).map_err(|e| {
        remove_tree(&tmp);
        ImageError::io("rename", dest, e)
    })
}

fn unpack_into(blob: &Path, diff_id: &str, root: &Path) -> Result<(), ImageError> {
    let layer_err = |reason: String| ImageError::BadLayer {
        diff_id: diff_id.to_owned(),
        reason,
    };
    let reader =
        HashingReader::new(decompressed(blob).map_err(|e| ImageError::io("open layer", blob, e))?);
    let mut archive = tar::Archive::new(ZeroTail {
        inner: reader,
        ended: false,
        zeros_left: 512 + 1024,
    });
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let entries = archive
        .entries()
        .map_err(|e| layer_err(format!("not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| layer_err(format!("corrupt tar entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| layer_err(format!("bad path: {e}")))?
            .into_owned();
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(layer_err(format!(
                "entry {} escapes the layer root",
                path.display()
            )));
        }
        // The layer's own root (`./`, as umoci writes it) has nothing to unpack.
        let Some(rel) = clean_relative(&path) else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name == OPAQUE_MARKER {
            let dir = safe_parent(root, &rel).map_err(&layer_err)?;
            fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
            set_xattr(&dir, "trusted.overlay.opaque", b"y")
                .map_err(|e| ImageError::io("mark opaque", &dir, e))?;
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(layer_err(format!("bad whiteout {}", rel.display())));
            }
            let dir = safe_parent(root, &rel).map_err(&layer_err)?;
            fs::create_dir_all(&dir).map_err(|e| ImageError::io("create", &dir, e))?;
            let target = dir.join(hidden);
            if target.symlink_metadata().is_ok() {
                remove_tree(&target);
            }
            mknod_whiteout(&target).map_err(|e| ImageError::io("whiteout", &target, e))?;
        } else {
            entry.unpack_in(root).map_err(|e| {
                layer_err(format!(
                    "unpacking {}: {}",
                    rel.display(),
                    hangar_core::errors::error_chain(&e)
                ))
            })?;
        }
    }
    let digest = archive
        .into_inner()
        .inner
        .finish()
        .map_err(|e| layer_err(format!("reading layer: {e}")))?;
    if digest != diff_id {
        return Err(layer_err(format!(
            "uncompressed digest {digest} does not match the image config"
        )));
    }
    Ok(())
}

/// The entry's path without `.` components, or `None` if it is absolute or
/// climbs out with `..`.
fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    }
}

/// The directory holding `rel` inside `root`, refusing any symlink on the way
/// (a whiteout under a symlink could otherwise land outside the layer).
fn safe_parent(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            dir.push(c);
            if let Ok(md) = dir.symlink_metadata() {
                if md.file_type().is_symlink() {
                    return Err(format!("whiteout {} lies under a symlink", rel.display()));
                }
            }
        }
    }
    Ok(dir)
}

fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path; mknod does not retain it.
    let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and `value` is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes a file or directory tree, ignoring errors (best-effort cleanup).
pub(crate) fn remove_tree(path: &Path) {
    match path.symlink_metadata() {
        Ok(md) if md.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;

    fn header() -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn tar_with(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = header();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn sha(data: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(data)))
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn unpacks_gzip_and_zstd_and_converts_whiteouts() {
        if !hangar_test_utils::host_tier("unpacks_gzip_and_zstd_and_converts_whiteouts", &[]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(&[
            ("etc/", None),
            ("etc/motd", Some(b"hi")),
            ("var/.wh..wh..opq", Some(b"")),
            ("etc/.wh.gone", Some(b"")),
        ]);
        for (i, blob) in [
            gz(&layer),
            zstd::encode_all(&layer[..], 1).unwrap(),
            layer.clone(),
        ]
        .iter()
        .enumerate()
        {
            let blob_path = dir.path().join(format!("blob{i}"));
            fs::write(&blob_path, blob).unwrap();
            let dest = dir.path().join(format!("layer{i}"));
            unpack_layer(&blob_path, &sha(&layer), &dest).unwrap();
            assert_eq!(fs::read(dest.join("etc/motd")).unwrap(), b"hi");
            let wh = dest.join("etc/gone").symlink_metadata().unwrap();
            assert!(wh.file_type().is_char_device());
            let mut buf = [0u8; 4];
            let p = CString::new(dest.join("var").as_os_str().as_bytes()).unwrap();
            let n = CString::new("trusted.overlay.opaque").unwrap();
            // SAFETY: valid C strings and buffer.
            let got =
                unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 4) };
            assert_eq!(got, 1);
            assert_eq!(buf[0], b'y');
        }
    }

    #[test]
    fn root_entry_is_skipped_and_dotdot_refused() {
        if !hangar_test_utils::host_tier("root_entry_is_skipped_and_dotdot_refused", &[]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(&[("./", None), ("./etc/", None), ("./etc/x", Some(b"1"))]);
        let blob = dir.path().join("blob");
        fs::write(&blob, &layer).unwrap();
        unpack_layer(&blob, &sha(&layer), &dir.path().join("l")).unwrap();
        assert_eq!(fs::read(dir.path().join("l/etc/x")).unwrap(), b"1");

        let mut b = tar::Builder::new(Vec::new());
        let mut h = header();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        // tar::Builder refuses `..` itself, so write the name by hand.
        h.as_gnu_mut().unwrap().name[..8].copy_from_slice(b"../evil\0");
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let evil = b.into_inner().unwrap();
        fs::write(&blob, &evil).unwrap();
        let err = unpack_layer(&blob, &sha(&evil), &dir.path().join("l2")).unwrap_err();
        assert!(err.to_string().contains("escapes"), "{err}");
        assert!(!dir.path().join("evil").exists());
    }

    #[test]
    fn accepts_a_tar_without_its_end_marker() {
        if !hangar_test_utils::host_tier("accepts_a_tar_without_its_end_marker", &[]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let full = tar_with(&[("www/", None), ("www/index.html", Some(b"<h1>hi</h1>\n"))]);
        // Cut right after the last file's bytes, as umoci 0.4 writes it.
        let cut = 512 + 512 + 12;
        let layer = &full[..cut];
        let blob = dir.path().join("blob");
        fs::write(&blob, gz(layer)).unwrap();
        unpack_layer(&blob, &sha(layer), &dir.path().join("l")).unwrap();
        assert_eq!(
            fs::read(dir.path().join("l/www/index.html")).unwrap(),
            b"<h1>hi</h1>\n"
        );
    }

    #[test]
    fn wrong_diff_id_is_refused_and_leaves_nothing() {
        if !hangar_test_utils::host_tier("wrong_diff_id_is_refused_and_leaves_nothing", &[]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layer = tar_with(&[("a", Some(b"x"))]);
        let blob = dir.path().join("blob");
        fs::write(&blob, gz(&layer)).unwrap();
        let dest = dir.path().join("layer");
        let err = unpack_layer(&blob, &sha(b"other"), &dest).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn whiteout_under_symlink_is_refused() {
        if !hangar_test_utils::host_tier("whiteout_under_symlink_is_refused", &[]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "evil", "/etc").unwrap();
        let mut h = header();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "evil/.wh.passwd", &[][..]).unwrap();
        let layer = b.into_inner().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, &layer).unwrap();
        let err = unpack_layer(&blob, &sha(&layer), &dir.path().join("l")).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(Path::new("/etc/passwd").metadata().unwrap().is_file());
    }

    #[test]
    fn clean_relative_paths() {
        if !hangar_test_utils::host_tier("clean_relative_paths", &[]) {
            return;
        }
        assert_eq!(
            clean_relative(Path::new("./a/b")),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(clean_relative(Path::new("/a")), Some(PathBuf::from("a")));
        assert_eq!(clean_relative(Path::new("a/../../b")), None);
        assert_eq!(clean_relative(Path::new(".")), None);
    }
}
