//! The session role (`hangar-init session -- ARGV...`), run inside a machine
//! for `exec`: it makes the command the leader of a new session and process
//! group, then becomes it. Everything the command starts, background
//! children included, stays in that group, so a timeout ends all of it with
//! one signal to the group.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Runs the role; returns only when the command cannot be run.
pub fn main(args: &[String]) -> i32 {
    let argv = match args.split_first() {
        Some((dashes, argv)) if dashes == "--" && !argv.is_empty() => argv,
        _ => {
            eprintln!("hangar-init session: usage: session -- COMMAND [ARG...]");
            return 2;
        }
    };
    // SAFETY: setsid has no memory-safety preconditions. It fails only for
    // a process group leader, which crun's exec'd process is not.
    unsafe { libc::setsid() };
    let err = Command::new(&argv[0]).args(&argv[1..]).exec();
    eprintln!("{}: {err}", argv[0]);
    match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}
