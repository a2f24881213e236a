//! End to end: what installs Hangar on a host. The systemd unit passes
//! `systemd-analyze verify` without a warning; the logrotate rule rotates a
//! log with the real `logrotate`; `scripts/deb.sh` builds a Debian package
//! that `dpkg` installs (hangard and hangar in /usr/bin, the unit, the
//! settings and logrotate files) and removes again.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("running a packaging tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_unit_logrotate_rule_and_debian_package_install_and_go() {
    if !hangar_test_utils::host_tier(
        "the_unit_logrotate_rule_and_debian_package_install_and_go",
        &["systemd-analyze", "logrotate", "dpkg-deb", "dpkg"],
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    // The unit, pointing at the built hangard: no warning at all.
    let unit = std::fs::read_to_string(repo().join("packaging/hangard.service")).unwrap();
    let bindir = hangar_test_utils::daemon::binaries()
        .0
        .parent()
        .unwrap()
        .to_owned();
    let path = tmp.path().join("hangard.service");
    std::fs::write(
        &path,
        unit.replace("@BINDIR@", &bindir.display().to_string()),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(ok && err.trim().is_empty(), "{out}\n{err}");
    assert!(
        unit.contains("KillMode=process"),
        "machines outlive hangard"
    );
    // A broken copy is caught (the check can fail).
    std::fs::write(&path, unit.replace("@BINDIR@", "/nonexistent")).unwrap();
    let (ok, _, err) = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(
        !ok || !err.trim().is_empty(),
        "a missing hangard went unnoticed"
    );

    // The logrotate rule, on a log of the test's own.
    let rule = std::fs::read_to_string(repo().join("packaging/hangard.logrotate")).unwrap();
    let log = tmp.path().join("hangard.log");
    std::fs::write(&log, "a line hangard wrote\n").unwrap();
    let conf = tmp.path().join("logrotate.conf");
    std::fs::write(
        &conf,
        rule.replace("/var/log/hangard.log", &log.display().to_string()),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(tmp.path().join("state"))
        .arg(&conf));
    assert!(ok, "{out}\n{err}");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("hangard.log.1")).unwrap(),
        "a line hangard wrote\n"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "", "copytruncate");

    // The package.
    let (hangard, _) = hangar_test_utils::daemon::binaries();
    let (ok, out, err) = run(Command::new(repo().join("scripts/deb.sh"))
        .env("HANGAR_BIN_DIR", hangard.parent().unwrap())
        .current_dir(repo()));
    assert!(ok, "{out}\n{err}");
    let deb = repo().join(out.lines().last().unwrap().trim());
    let (ok, contents, err) = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    assert!(ok, "{err}");
    for file in [
        "./usr/bin/hangard",
        "./usr/bin/hangar",
        "./lib/systemd/system/hangard.service",
        "./etc/logrotate.d/hangard",
        "./etc/default/hangard",
    ] {
        assert!(contents.contains(file), "no {file} in\n{contents}");
    }
    let (_, info, _) = run(Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .arg("Package"));
    assert_eq!(info.trim(), "hangar");
    // Installed for real (unless this host has it installed already).
    let (installed, _, _) = run(Command::new("dpkg").args(["-s", "hangar"]));
    if installed {
        eprintln!("the hangar package is installed on this host: not installing over it");
        return;
    }
    let data_before = Path::new("/var/lib/hangar").exists();
    let (ok, out, err) = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(ok, "{out}\n{err}");
    let version = env!("CARGO_PKG_VERSION");
    for bin in ["/usr/bin/hangard", "/usr/bin/hangar"] {
        let (ok, out, err) = run(Command::new(bin).arg("--version"));
        assert!(ok && out.contains(version), "{bin}: {out}{err}");
    }
    let unit = std::fs::read_to_string("/lib/systemd/system/hangard.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/hangard $HANGARD_ARGS"),
        "{unit}"
    );
    assert!(Path::new("/var/lib/hangar").is_dir());
    let (ok, out, err) = run(Command::new("dpkg").args(["--purge", "hangar"]));
    assert!(ok, "{out}\n{err}");
    for gone in [
        "/usr/bin/hangard",
        "/usr/bin/hangar",
        "/lib/systemd/system/hangard.service",
        "/etc/default/hangard",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    // The data dir is the user's and stays; the one made here goes.
    if !data_before {
        let _ = std::fs::remove_dir("/var/lib/hangar");
    }
}
