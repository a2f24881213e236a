//! A real PostgreSQL server for tests (Debian's `postgresql` package):
//! `initdb` in a temporary directory and `postgres` run as the `postgres`
//! user (it refuses root), reachable only over a unix socket in that
//! directory. Stopped, with its files, when
//! dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server.
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// The address it also listens on (TCP), which [`Postgres::url`] names.
    tcp: Option<String>,
}

/// The directory of the newest installed PostgreSQL's programs.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

impl Postgres {
    /// Initializes and starts a server; panics with an install hint when
    /// PostgreSQL is missing.
    pub fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// [`Postgres::start`] with more settings (`name`, `value`), which win
    /// over the defaults (`fsync=off`, ...): a benchmark asks for a durable
    /// server with `fsync=on`.
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        Postgres::start_full(settings, None)
    }

    /// A server that also listens on TCP at `ip` (an address of a bridge
    /// the test made) and trusts clients from `network` (`a.b.c.0/24`):
    /// hosts in network namespaces of their own reach it there, and lose
    /// it when their link is cut.
    pub fn start_on(ip: &str, network: &str) -> Postgres {
        let mut pg = Postgres::start_full(&[("listen_addresses", ip)], Some(network));
        pg.tcp = Some(ip.to_owned());
        pg
    }

    fn start_full(settings: &[(&str, &str)], trust: Option<&str>) -> Postgres {
        let bin = bin_dir().expect("PostgreSQL is required: apt-get install -y postgresql");
        let dir = tempfile::tempdir().expect("tempdir");
        // The server runs as `postgres`: it must reach its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&sock).expect("socket dir");
        std::fs::create_dir(&data).expect("data dir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let chown = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&sock)
            .arg(&data)
            .status()
            .expect("chown");
        assert!(chown.success());
        let out = as_postgres(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(net) = trust {
            use std::io::Write;
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .expect("pg_hba.conf");
            writeln!(hba, "host all all {net} trust").expect("pg_hba.conf");
        }
        let port = crate::free_port();
        let child = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&sock)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(
                settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".to_owned(), format!("{k}={v}")]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let pg = Postgres {
            dir,
            port,
            child: Some(child),
            tcp: None,
        };
        pg.wait_ready();
        pg
    }

    /// Waits until the server accepts connections: its `postmaster.pid`
    /// says `ready` (the socket appears earlier, while it still starts up).
    fn wait_ready(&self) {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.lines().nth(7).map(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "postgres did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's processes: the postmaster and its children (backends
    /// and workers, which each make a session of their own).
    pub fn pids(&self) -> Vec<i32> {
        let Some(c) = &self.child else {
            return Vec::new();
        };
        let postmaster = c.id() as i32;
        let ppid = |pid: i32| -> Option<i32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let mut pids: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|pid| ppid(*pid) == Some(postmaster))
            .collect();
        pids.push(postmaster);
        pids
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Connection settings for database `db` (key=value form, which
    /// `hangard --cluster` takes as well as URLs).
    pub fn url(&self, db: &str) -> String {
        if let Some(ip) = &self.tcp {
            return format!("host={ip} port={} user=postgres dbname={db}", self.port);
        }
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// Runs `sql` with psql (as the `postgres` user) in database `db`;
    /// returns its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let bin = bin_dir().expect("postgresql");
        let psql = if bin.join("psql").is_file() {
            bin.join("psql")
        } else {
            PathBuf::from("psql")
        };
        let out = as_postgres(&psql)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", db, "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Creates database `db`.
    pub fn create_db(&self, db: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {db}"));
    }

    /// A backup of database `db` (`pg_dump`, plain SQL).
    pub fn dump(&self, db: &str) -> String {
        let bin = bin_dir().expect("postgresql");
        let out = as_postgres(&bin.join("pg_dump"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", db])
            .output()
            .expect("pg_dump");
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Replaces database `db` by the backup `sql` (its sessions ended).
    /// The backup is loaded into a database of its own that then takes
    /// `db`'s place, so that clients reconnecting meanwhile (and making
    /// their schema in an empty `db`) find either none or the whole backup.
    pub fn restore(&self, db: &str, sql: &str) {
        let loading = format!("{db}_restoring");
        self.psql("postgres", &format!("DROP DATABASE IF EXISTS {loading}"));
        self.create_db(&loading);
        self.load(&loading, sql);
        self.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
        self.psql(
            "postgres",
            &format!("ALTER DATABASE {loading} RENAME TO {db}"),
        );
    }

    fn load(&self, db: &str, sql: &str) {
        let bin = bin_dir().expect("postgresql");
        let mut child = as_postgres(&bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(sql.as_bytes()).expect("restoring");
        }
        let out = child.wait_with_output().expect("psql");
        assert!(
            out.status.success(),
            "restoring: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Signals the server and every process of it.
    fn signal_all(&self, sig: i32) {
        for pid in self.pids() {
            // SAFETY: kill on a process of the server we started.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Stops the server (fast shutdown) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on the server we started.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let _ = c.wait();
        }
    }

    /// Pauses the server and its backends (SIGSTOP): connections hang, as
    /// with a lost network.
    pub fn pause(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Resumes a paused server.
    pub fn resume(&self) {
        self.signal_all(libc::SIGCONT);
    }
}

/// `program` to be run as the `postgres` user (with its own session, so
/// it never touches a terminal).
fn as_postgres(program: &Path) -> Command {
    use std::os::unix::process::CommandExt;
    let name = std::ffi::CString::new("postgres").expect("name");
    // SAFETY: getpwnam with a valid C string; the fields are read at once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "no postgres user: apt-get install -y postgresql"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    let mut c = Command::new(program);
    c.uid(uid)
        .gid(gid)
        .process_group(0)
        .env("HOME", "/tmp")
        .current_dir("/");
    c
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.resume();
        self.stop();
    }
}
