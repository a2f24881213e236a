//! `hangar-init`: Hangar's own small process supervisor, in two roles.
//!
//! - **init** (`hangar-init [--uid N --gid N --groups G,G] -- ARGV...`): PID 1
//!   inside a machine, as Fly runs its own init inside its VMs. It starts the
//!   main process, forwards signals to it, reaps every zombie, and when the
//!   main process ends it reports how on the status fd (fd 3), kills what is
//!   left and exits with the same code. The same binary will be PID 1 of
//!   microVMs.
//! - **shim** (`hangar-init shim ...`): runs on the host, one per running
//!   machine, in its own session, so a machine outlives `hangard`. It starts
//!   the container through the OCI runtime (`run --detach`), becomes the container's
//!   parent (child subreaper), writes its stdout and stderr to a bounded,
//!   rotated JSON-lines log, and when the container ends writes `exit.json`,
//!   deletes the container and exits. `hangard` watches the shim's pid.
//!
//! - **guest** (`/init`, PID 1 of a microVM): mounts the machine's root
//!   disk, takes its config over a virtio-serial port, runs the main
//!   process as init does, and answers the host's requests on the port.
//! - **vmshim** (`hangar-init vmshim ... -- QEMU ARGS`): the host-side
//!   parent of one microVM, as the shim is of a container: runs qemu, talks
//!   to the guest's init over the port's unix socket, writes the log and
//!   `exit.json`, and relays `hangard`'s requests from `ctl.sock`.
//!
//! - **session** (`hangar-init session -- ARGV...`): inside a machine, runs
//!   an `exec`'d command as the leader of a new session, so that a timeout
//!   can end it with everything it started.
//!
//! The binary is built statically (it is bind-mounted into images that have no
//! libc of their own), so it depends on nothing but `libc` and serde.

mod guest;
mod init;
mod logfile;
mod session;
mod shim;
mod sys;
mod vmshim;

fn main() {
    if guest::is_guest_init() {
        std::process::exit(guest::main());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("shim") => shim::main(&args[1..]),
        Some("vmshim") => vmshim::main(&args[1..]),
        Some("session") => session::main(&args[1..]),
        _ => init::main(&args),
    };
    std::process::exit(code);
}
