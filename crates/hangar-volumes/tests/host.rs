//! Volumes on this host for real: loop devices, ext4, fscrypt, online
//! growth, frozen snapshots. Needs root, loop devices and e2fsprogs.

use std::os::fd::AsRawFd;
use std::path::Path;

use hangar_volumes::{Fstype, GIB, VolumeHost};

/// Whether the data extents of `file` contain `needle`.
fn image_contains(file: &Path, needle: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let mut pos = 0i64;
    while pos < len {
        // SAFETY: lseek on an open fd.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: lseek on an open fd.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let mut buf = vec![0u8; (hole - data) as usize];
        f.read_exact_at(&mut buf, data as u64).unwrap();
        if buf.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        pos = hole;
    }
    false
}

fn allocated(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().blocks() * 512
}

fn loops_of(file: &Path) -> String {
    let out = std::process::Command::new("losetup")
        .args(["-j", &file.display().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_volume_lives_grows_and_snapshots() {
    if !hangar_test_utils::host_tier(
        "a_volume_lives_grows_and_snapshots",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = VolumeHost::new(dir.path()).unwrap();
    host.create("vol_plain", 1, Fstype::Ext4, false)
        .await
        .unwrap();
    let img = host.image("vol_plain");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), GIB);
    assert!(allocated(&img) < 64 << 20, "sparse: {}", allocated(&img));
    // Creating it twice is refused, and leaves the first alone.
    assert!(
        host.create("vol_plain", 1, Fstype::Ext4, false)
            .await
            .is_err()
    );
    assert!(
        host.create("../escape", 1, Fstype::Ext4, false)
            .await
            .is_err()
    );

    let data = host.attach("vol_plain", None).await.unwrap();
    std::fs::write(data.join("note"), "plain text on a volume").unwrap();
    assert_eq!(
        host.attach("vol_plain", None).await.unwrap(),
        data,
        "idempotent"
    );
    let before = host.usage("vol_plain").unwrap();

    // Growth while mounted: online where the kernel lets us (it needs
    // CAP_SYS_RESOURCE), else at the next attach.
    let online = host.extend("vol_plain", 2, Fstype::Ext4).await.unwrap();
    assert_eq!(online, !host.growth_pending("vol_plain"));
    if !online {
        host.detach("vol_plain").await.unwrap();
        host.attach("vol_plain", None).await.unwrap();
        assert!(!host.growth_pending("vol_plain"));
    }
    let after = host.usage("vol_plain").unwrap();
    assert!(
        after.blocks * after.block_size > before.blocks * before.block_size + GIB / 2,
        "{before:?} -> {after:?}"
    );
    assert!(
        host.extend("vol_plain", 1, Fstype::Ext4).await.is_err(),
        "no shrinking"
    );

    // A snapshot while mounted, restored into a new, larger volume.
    let (bytes, digest) = host.snapshot("vol_plain", "vs_one").unwrap();
    assert!(bytes > 0 && digest.len() == 64);
    let size = host
        .create_from(
            "vol_restored",
            &host.snapshot_file("vs_one"),
            None,
            3,
            Fstype::Ext4,
        )
        .await
        .unwrap();
    assert_eq!(size, 3);
    let restored = host.attach("vol_restored", None).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(restored.join("note")).unwrap(),
        "plain text on a volume"
    );
    let u = host.usage("vol_restored").unwrap();
    assert!(u.blocks * u.block_size > 2 * GIB, "{u:?}");

    // Detached and attached again, the data is still there.
    host.detach("vol_plain").await.unwrap();
    assert!(!host.is_attached("vol_plain"));
    assert!(loops_of(&img).is_empty());
    host.detach("vol_plain").await.unwrap();
    // Offline growth is immediate.
    assert!(host.extend("vol_plain", 3, Fstype::Ext4).await.unwrap());
    let data = host.attach("vol_plain", None).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("note")).unwrap(),
        "plain text on a volume"
    );
    // Unencrypted data is readable in the image (the control for the
    // encrypted case below).
    host.detach("vol_plain").await.unwrap();
    assert!(image_contains(&img, b"plain text on a volume"));

    for id in ["vol_plain", "vol_restored"] {
        host.destroy(id).await.unwrap();
        assert!(!host.image(id).exists());
        host.destroy(id).await.unwrap();
    }
    host.delete_snapshot("vs_one").unwrap();
}

#[tokio::test]
async fn encrypted_volumes_keep_data_unreadable_without_the_key() {
    if !hangar_test_utils::host_tier(
        "encrypted_volumes_keep_data_unreadable_without_the_key",
        &["losetup", "mkfs.ext4"],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = VolumeHost::new(dir.path()).unwrap();
    let key = [42u8; 64];
    host.create("vol_enc", 1, Fstype::Ext4, true).await.unwrap();
    let data = host.attach("vol_enc", Some(&key)).await.unwrap();
    std::fs::create_dir(data.join("private-dir")).unwrap();
    std::fs::write(
        data.join("private-dir/letter"),
        "meet me at noon, sincerely",
    )
    .unwrap();
    host.detach("vol_enc").await.unwrap();
    let img = host.image("vol_enc");
    assert!(!image_contains(&img, b"meet me at noon"));
    assert!(
        !image_contains(&img, b"private-dir"),
        "names are encrypted too"
    );

    // Mounted without the key: encrypted names, unreadable contents.
    let mnt = host.mountpoint("vol_enc");
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show", &img.display().to_string()])
        .output()
        .unwrap();
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some(dev.as_str()),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let names: Vec<String> = std::fs::read_dir(mnt.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1);
    assert_ne!(names[0], "private-dir");
    host.detach("vol_enc").await.unwrap();

    // With the key, all is back.
    let data = host.attach("vol_enc", Some(&key)).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(data.join("private-dir/letter")).unwrap(),
        "meet me at noon, sincerely"
    );
    // A snapshot of it stays encrypted, and opens with the same key.
    host.snapshot("vol_enc", "vs_enc").unwrap();
    assert!(!image_contains(
        &host.snapshot_file("vs_enc"),
        b"meet me at noon"
    ));
    host.create_from(
        "vol_fork",
        &host.snapshot_file("vs_enc"),
        None,
        1,
        Fstype::Ext4,
    )
    .await
    .unwrap();
    let fork = host.attach("vol_fork", Some(&key)).await.unwrap();
    assert!(fork.join("private-dir/letter").exists());
    for id in ["vol_enc", "vol_fork"] {
        host.destroy(id).await.unwrap();
    }
    host.delete_snapshot("vs_enc").unwrap();
}

#[tokio::test]
async fn raw_volumes_stay_unformatted() {
    if !hangar_test_utils::host_tier("raw_volumes_stay_unformatted", &["losetup", "mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let host = VolumeHost::new(dir.path()).unwrap();
    host.create("vol_raw", 1, Fstype::Raw, false).await.unwrap();
    assert_eq!(allocated(&host.image("vol_raw")), 0);
    host.extend("vol_raw", 2, Fstype::Raw).await.unwrap();
    assert_eq!(
        std::fs::metadata(host.image("vol_raw")).unwrap().len(),
        2 * GIB
    );
    host.destroy("vol_raw").await.unwrap();
}
