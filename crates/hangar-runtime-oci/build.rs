//! Builds `hangar-init` as a static executable and leaves it in `OUT_DIR`,
//! where `lib.rs` embeds it: the init is bind-mounted into images that have
//! no libc of their own, so it cannot be the workspace's usual dynamic build.
//! A nested `cargo rustc` with `+crt-static` (glibc's static libc) does it, in
//! its own target directory so it never contends for the outer build's lock.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(|p| p.parent())
        .expect("workspace root")
        .to_path_buf();
    for dep in ["crates/hangar-init", "crates/hangar-core"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dep).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join("init-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args([
            "rustc",
            "--quiet",
            "-p",
            "hangar-init",
            "--bin",
            "hangar-init",
            "--profile",
            "init",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--", "-C", "target-feature=+crt-static"]);
    // What the outer cargo set for this build script must not leak into the
    // nested build (wrappers such as clippy-driver, flags, the target dir).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build hangar-init");
    assert!(status.success(), "building the static hangar-init failed");
    let built = target_dir.join("init/hangar-init");
    std::fs::copy(&built, out.join("hangar-init")).expect("copying hangar-init");
}
