//! The guest kernel and the initramfs Hangar boots it with.
//!
//! A kernel directory (`hangard --vm-kernel-dir`, filled by
//! `scripts/vm-kernel.sh` from Debian's cloud kernel package) holds
//! `vmlinuz` and, under `lib/modules`, the kernel's modules. Debian's
//! kernels build virtio as modules, so the initramfs carries the ones the
//! VM's devices need, loaded in [`MODULES`] order by the guest's init (a
//! module the kernel has built in is simply not found, and not needed).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The modules the VM's devices need, in load order (each after what it
/// depends on).
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "failover",
    "net_failover",
    "virtio_net",
    // fscrypt's ciphers for encrypted volumes: AES-256-XTS (over ECB) for
    // contents, AES-256-CTS for names, HKDF-SHA512 for its keys.
    "ecb",
    "xts",
    "cts",
    "sha512_generic",
];

/// A kernel to boot machines with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The modules found, in load order: `(name, file)`.
    pub modules: Vec<(String, PathBuf)>,
}

impl GuestKernel {
    /// The kernel in `dir` (`vmlinuz`, modules under `lib/modules`); the
    /// error says what is missing and how to get it.
    pub fn find(dir: &Path) -> Result<GuestKernel, String> {
        let vmlinuz = dir.join("vmlinuz");
        if !vmlinuz.is_file() {
            return Err(format!(
                "no guest kernel at {} (run scripts/vm-kernel.sh {} to fetch Debian's cloud kernel, or put a bzImage there)",
                vmlinuz.display(),
                dir.display()
            ));
        }
        let mut found = Vec::new();
        collect_modules(&dir.join("lib/modules"), &mut found, 0);
        let modules = MODULES
            .iter()
            .filter_map(|m| {
                found
                    .iter()
                    .find(|p| p.file_name().is_some_and(|f| *f == *format!("{m}.ko")))
                    .map(|p| (m.to_string(), p.clone()))
            })
            .collect();
        Ok(GuestKernel { vmlinuz, modules })
    }
}

fn collect_modules(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 8 {
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => collect_modules(&p, out, depth + 1),
            Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "ko") => out.push(p),
            _ => {}
        }
    }
}

/// Whether `path` is a statically linked ELF executable (no program
/// interpreter): the initramfs has no libc for anything else.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    // 64-bit little-endian ELF only.
    if data.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        // PT_INTERP = 3.
        u32_at(at).is_some_and(|t| t != 3)
    })
}

/// A `newc` cpio archive, as the kernel unpacks an initramfs.
struct Cpio<W: Write> {
    out: W,
    ino: u32,
    written: usize,
}

impl<W: Write> Cpio<W> {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len();
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.write(&[0u8; 3][..n])
    }

    fn finish(mut self) -> io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        Ok(self.out)
    }
}

/// Writes the initramfs to `out` (atomically): `hangar-init` as `/init`,
/// busybox (for `ip`), the kernel's modules and their load order.
pub fn build_initrd(
    init: &Path,
    busybox: &Path,
    kernel: &GuestKernel,
    out: &Path,
) -> io::Result<()> {
    const DIR: u32 = 0o040755;
    const EXE: u32 = 0o100755;
    const FILE: u32 = 0o100644;
    let tmp = out.with_extension("tmp");
    let file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut c = Cpio {
        out: file,
        ino: 0,
        written: 0,
    };
    for d in [
        "dev",
        "proc",
        "sys",
        "newroot",
        "volumes",
        "bin",
        "lib",
        "lib/modules",
    ] {
        c.entry(d, DIR, &[])?;
    }
    c.entry("init", EXE, &std::fs::read(init)?)?;
    c.entry("bin/busybox", EXE, &std::fs::read(busybox)?)?;
    let mut order = String::new();
    for (name, path) in &kernel.modules {
        c.entry(
            &format!("lib/modules/{name}.ko"),
            FILE,
            &std::fs::read(path)?,
        )?;
        order.push_str(name);
        order.push('\n');
    }
    c.entry("lib/modules/order", FILE, order.as_bytes())?;
    c.finish()?
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    std::fs::rename(&tmp, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_modules_in_order_and_says_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let err = GuestKernel::find(d.path()).unwrap_err();
        assert!(err.contains("scripts/vm-kernel.sh"), "{err}");
        std::fs::write(d.path().join("vmlinuz"), b"k").unwrap();
        let m = d.path().join("lib/modules/6.1/kernel/drivers");
        std::fs::create_dir_all(m.join("block")).unwrap();
        for f in [
            "virtio.ko",
            "block/virtio_blk.ko",
            "virtio_ring.ko",
            "other.ko",
        ] {
            std::fs::write(m.join(f), b"m").unwrap();
        }
        let k = GuestKernel::find(d.path()).unwrap();
        let names: Vec<&str> = k.modules.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["virtio_ring", "virtio", "virtio_blk"]);
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio {
            out: Vec::new(),
            ino: 0,
            written: 0,
        };
        c.entry("init", 0o100755, b"abc").unwrap();
        let out = c.finish().unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        // header (110) + "init\0" padded to 116, data padded to 120.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..119], b"abc");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn tells_static_executables() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("x");
        std::fs::write(&f, b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&f));
        // The test binary itself is dynamically linked.
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me));
    }
}
