//! The flags of `run`, `create` and `update`, and the config they make.

use super::*;

pub use crate::cmd::flytoml::AppArg;

/// Flags shared by `run` and `create`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The image to run (e.g. `nginx`, `registry:5000/team/app:v2`); with
    /// --shell, `ubuntu` when absent.
    #[arg(required_unless_present = "shell")]
    pub(crate) image: Option<String>,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub(crate) command: Vec<String>,
    #[command(flatten)]
    pub(crate) app: AppArg,
    /// Machine name.
    #[arg(long, short = 'n')]
    pub(crate) name: Option<String>,
    /// Region.
    #[arg(long, short = 'r')]
    pub(crate) region: Option<String>,
    #[command(flatten)]
    pub(crate) flags: ConfigFlags,
    /// For `run .`: how to build the image from the directory's Dockerfile.
    #[command(flatten)]
    pub(crate) build: crate::cmd::build::BuildFlags,
    /// Destroy the machine when its main process exits.
    #[arg(long)]
    pub(crate) rm: bool,
    /// Return once the machine is created; do not wait for it.
    #[arg(long, short = 'd')]
    pub(crate) detach: bool,
    /// Open a shell on a temporary machine, destroyed when the shell exits.
    #[arg(long, conflicts_with_all = ["detach", "command"])]
    pub(crate) shell: bool,
    /// Mount a volume: NAME_OR_ID:/path (a name picks an unattached volume).
    #[arg(long, short = 'v')]
    pub(crate) volume: Option<String>,
    /// With --shell: the shell to run.
    #[arg(long = "command", requires = "shell", default_value = "/bin/sh")]
    pub(crate) shell_command: String,
}

/// Config flags shared by `run`, `create` and `update`.
#[derive(Debug, Args, Default)]
pub struct ConfigFlags {
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub(crate) env: Vec<String>,
    /// Metadata NAME=VALUE (repeatable).
    #[arg(long = "metadata", short = 'm')]
    pub(crate) metadata: Vec<String>,
    /// The runtime to run the machine with: crun, runc, runsc (gVisor) or
    /// microvm (Hangar's extension: sets metadata `hangar_runtime`; the
    /// host must have it).
    #[arg(long)]
    pub(crate) runtime: Option<String>,
    /// Replace the image's ENTRYPOINT (shell words).
    #[arg(long)]
    pub(crate) entrypoint: Option<String>,
    /// Number of vCPUs.
    #[arg(long = "vm-cpus", alias = "cpus")]
    pub(crate) vm_cpus: Option<i64>,
    /// Memory in MB (or with a unit: 512mb, 1gb).
    #[arg(long = "vm-memory", alias = "memory")]
    pub(crate) vm_memory: Option<String>,
    /// `shared` or `performance`.
    #[arg(long = "vm-cpu-kind")]
    pub(crate) vm_cpu_kind: Option<String>,
    /// A size preset (shared-cpu-1x ... performance-16x).
    #[arg(long = "vm-size", alias = "size")]
    pub(crate) vm_size: Option<String>,
    /// Restart policy: no, always, on-fail.
    #[arg(long)]
    pub(crate) restart: Option<String>,
    /// A GPU kind (e.g. a100-pcie-40gb); refused where the host has none.
    #[arg(long = "vm-gpu-kind")]
    pub(crate) vm_gpu_kind: Option<String>,
    /// Copy a local file into the machine: /guest/path=local/path
    /// (repeatable; keeps the local file's permission bits).
    #[arg(long = "file-local")]
    pub(crate) file_local: Vec<String>,
    /// Write text into a file in the machine: /guest/path=TEXT (repeatable).
    #[arg(long = "file-literal")]
    pub(crate) file_literal: Vec<String>,
    /// Write an app secret (base64) into a file: /guest/path=SECRET_NAME.
    #[arg(long = "file-secret")]
    pub(crate) file_secret: Vec<String>,
    /// Signal that stops the machine (e.g. SIGTERM).
    #[arg(long = "kill-signal")]
    pub(crate) kill_signal: Option<String>,
    /// Time to wait for it to stop before SIGKILL (seconds, or 30s, 1m).
    #[arg(long = "kill-timeout")]
    pub(crate) kill_timeout: Option<String>,
    /// Start the machine on a schedule: hourly, daily, weekly or monthly.
    #[arg(long)]
    pub(crate) schedule: Option<String>,
    /// Make this a standby for these machines (comma list; "" clears).
    #[arg(long = "standby-for")]
    pub(crate) standby_for: Option<String>,
    /// A service for the proxy: port[:machinePort][/protocol[:handler...]],
    /// e.g. 80:8080/tcp:http or 443:8080/tcp:http:tls (repeatable; replaces
    /// the services).
    #[arg(long = "port", short = 'p')]
    pub(crate) port: Vec<String>,
    /// Let the proxy start the machine on a request (true when given
    /// without a value); needs services.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub(crate) autostart: Option<bool>,
    /// Let the proxy stop the idle machine: off, stop or suspend (stop
    /// when given without a value); needs services.
    #[arg(long, num_args = 0..=1, default_missing_value = "stop", require_equals = true)]
    pub(crate) autostop: Option<String>,
}

/// Parses flyctl's `--port`: `port[:machinePort][/protocol[:handler...]]`,
/// where `port` may be a range `start-end`. One service per flag.
pub(crate) fn parse_port(spec: &str) -> anyhow::Result<serde_json::Value> {
    let bad = |why: &str| anyhow::anyhow!("invalid --port {spec:?}: {why}");
    let (ports, proto) = match spec.split_once('/') {
        Some((p, rest)) => (p, rest),
        None => (spec, "tcp"),
    };
    let mut proto_parts = proto.split(':');
    let protocol = proto_parts.next().unwrap_or("tcp").to_ascii_lowercase();
    if protocol != "tcp" && protocol != "udp" {
        return Err(bad("the protocol must be tcp or udp"));
    }
    let handlers: Vec<String> = proto_parts.map(str::to_ascii_lowercase).collect();
    if let Some(h) = handlers.iter().find(|h| !HANDLERS.contains(&h.as_str())) {
        return Err(bad(&format!(
            "unknown handler {h:?} (one of {})",
            HANDLERS.join(", ")
        )));
    }
    if protocol == "udp" && !handlers.is_empty() {
        return Err(bad("udp services take no handlers"));
    }
    let number = |s: &str| -> anyhow::Result<u16> {
        match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(&format!("{s:?} is not a port (1-65535)"))),
        }
    };
    let (public, internal) = match ports.split_once(':') {
        Some((p, i)) => (p, Some(number(i)?)),
        None => (ports, None),
    };
    let mut port = serde_json::Map::new();
    let first = match public.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(bad("the range must go up"));
            }
            port.insert("start_port".into(), a.into());
            port.insert("end_port".into(), b.into());
            a
        }
        None => {
            let p = number(public)?;
            port.insert("port".into(), p.into());
            p
        }
    };
    if !handlers.is_empty() {
        port.insert("handlers".into(), handlers.into());
    }
    Ok(serde_json::json!({
        "protocol": protocol,
        "internal_port": internal.unwrap_or(first),
        "ports": [port],
    }))
}

/// Applies the flags to a config: env and metadata entries are added (or
/// replaced), the rest replaces what the config had.
pub(crate) fn apply_flags(c: &mut MachineConfig, f: &ConfigFlags) -> anyhow::Result<()> {
    let env = pairs(&f.env, "--env")?;
    if !env.is_empty() {
        c.env.get_or_insert_with(BTreeMap::new).extend(env);
    }
    let md = pairs(&f.metadata, "--metadata")?;
    if !md.is_empty() {
        c.metadata.get_or_insert_with(BTreeMap::new).extend(md);
    }
    if let Some(rt) = &f.runtime {
        let isolation = hangar_core::Isolation::parse(rt).with_context(|| {
            format!("invalid --runtime {rt:?}: use crun, runc, runsc or microvm")
        })?;
        c.metadata.get_or_insert_with(BTreeMap::new).insert(
            hangar_core::isolation::METADATA_KEY.into(),
            isolation.as_str().into(),
        );
    }
    if let Some(ep) = &f.entrypoint {
        c.init.get_or_insert_with(MachineInit::default).entrypoint =
            Some(shlex::split(ep).with_context(|| format!("invalid --entrypoint {ep:?}"))?);
    }
    if f.vm_cpus.is_some() || f.vm_memory.is_some() || f.vm_cpu_kind.is_some() {
        let g = c.guest.get_or_insert_with(MachineGuest::default);
        if f.vm_cpus.is_some() {
            g.cpus = f.vm_cpus;
        }
        if let Some(m) = &f.vm_memory {
            g.memory_mb = Some(parse_memory(m)?);
        }
        if f.vm_cpu_kind.is_some() {
            g.cpu_kind = f.vm_cpu_kind.clone();
        }
    }
    if let Some(size) = &f.vm_size {
        // A preset replaces the size; explicit flags above still win.
        c.size = Some(size.clone());
        if f.vm_cpus.is_none() && f.vm_memory.is_none() && f.vm_cpu_kind.is_none() {
            c.guest = None;
        }
    }
    if let Some(p) = &f.restart {
        c.restart = Some(MachineRestart {
            policy: Some(restart_policy(p)?),
            ..MachineRestart::default()
        });
    }
    if let Some(kind) = &f.vm_gpu_kind {
        c.guest.get_or_insert_with(MachineGuest::default).gpu_kind = Some(kind.clone());
    }
    apply_files(c, f)?;
    if f.kill_signal.is_some() || f.kill_timeout.is_some() {
        let stop = c.stop_config.get_or_insert_with(StopConfig::default);
        if let Some(sig) = &f.kill_signal {
            stop.signal = Some(sig.clone());
        }
        if let Some(t) = &f.kill_timeout {
            // flyctl takes seconds; a Go duration works too.
            let t = if t.chars().all(|ch| ch.is_ascii_digit()) {
                format!("{t}s")
            } else {
                t.clone()
            };
            stop.timeout = Some(
                hangar_core::GoDuration::parse(&t)
                    .map_err(|e| anyhow::anyhow!("invalid --kill-timeout {t:?}: {e}"))?,
            );
        }
    }
    if let Some(s) = &f.schedule {
        c.schedule = (!s.is_empty()).then(|| s.clone());
    }
    if !f.port.is_empty() {
        let services = f
            .port
            .iter()
            .map(|p| parse_port(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        c.extra.insert("services".into(), services.into());
    }
    if f.autostart.is_some() || f.autostop.is_some() {
        let autostop = match f.autostop.as_deref() {
            None => None,
            Some("off" | "false") => Some(serde_json::Value::Bool(false)),
            Some("stop" | "true") => Some(serde_json::Value::Bool(true)),
            Some("suspend") => Some(serde_json::Value::String("suspend".into())),
            Some(other) => anyhow::bail!("invalid --autostop {other:?}: off, stop or suspend"),
        };
        let services = c
            .extra
            .get_mut("services")
            .and_then(|s| s.as_array_mut())
            .filter(|s| !s.is_empty())
            .context("--autostart and --autostop work only on machines with services (--port)")?;
        for svc in services.iter_mut().filter_map(|s| s.as_object_mut()) {
            if let Some(v) = f.autostart {
                svc.insert("autostart".into(), v.into());
            }
            if let Some(v) = &autostop {
                svc.insert("autostop".into(), v.clone());
            }
        }
    }
    if let Some(ids) = &f.standby_for {
        let ids: Vec<String> = ids
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        c.standbys = (!ids.is_empty()).then_some(ids);
    }
    Ok(())
}

/// `--file-local`, `--file-literal`, `--file-secret`: each replaces the
/// config's file at the same guest path, or adds one.
pub(crate) fn apply_files(c: &mut MachineConfig, f: &ConfigFlags) -> anyhow::Result<()> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut new = Vec::new();
    for kv in &f.file_local {
        let (guest, local) = kv
            .split_once('=')
            .with_context(|| format!("invalid --file-local {kv:?}: use /guest/path=local/path"))?;
        let data = std::fs::read(local).with_context(|| format!("cannot read {local}"))?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(local)?.permissions().mode() & 0o777
        };
        new.push(MachineFile {
            guest_path: guest.to_owned(),
            raw_value: Some(b64(&data)),
            mode: Some(mode),
            ..MachineFile::default()
        });
    }
    for kv in &f.file_literal {
        let (guest, text) = kv
            .split_once('=')
            .with_context(|| format!("invalid --file-literal {kv:?}: use /guest/path=TEXT"))?;
        new.push(MachineFile {
            guest_path: guest.to_owned(),
            raw_value: Some(b64(text.as_bytes())),
            ..MachineFile::default()
        });
    }
    for kv in &f.file_secret {
        let (guest, secret) = kv.split_once('=').with_context(|| {
            format!("invalid --file-secret {kv:?}: use /guest/path=SECRET_NAME")
        })?;
        new.push(MachineFile {
            guest_path: guest.to_owned(),
            secret_name: Some(secret.to_owned()),
            ..MachineFile::default()
        });
    }
    if new.is_empty() {
        return Ok(());
    }
    let files = c.files.get_or_insert_with(Vec::new);
    for file in new {
        files.retain(|old| old.guest_path != file.guest_path);
        files.push(file);
    }
    Ok(())
}

pub(crate) fn restart_policy(p: &str) -> anyhow::Result<String> {
    Ok(match p {
        "on-fail" | "on-failure" => "on-failure",
        "no" | "never" => "no",
        "always" => "always",
        other => bail!("invalid --restart {other:?}: use no, always or on-fail"),
    }
    .to_owned())
}

/// `30` means 30 seconds, as flyctl takes it; durations pass through.
pub(crate) fn seconds_to_duration(t: &str) -> String {
    if t.chars().all(|ch| ch.is_ascii_digit()) {
        format!("{t}s")
    } else {
        t.to_owned()
    }
}

pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid duration {s:?}"))?;
    Ok(match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "ms" => Duration::from_millis(n),
        _ => bail!("invalid duration {s:?} (use e.g. 30s, 5m)"),
    })
}

/// `512`, `512mb`, `1gb`, `1GB` as MB.
pub(crate) fn parse_memory(s: &str) -> anyhow::Result<i64> {
    let l = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = l.strip_suffix("gb").or_else(|| l.strip_suffix('g')) {
        (n, 1024)
    } else if let Some(n) = l.strip_suffix("mb").or_else(|| l.strip_suffix('m')) {
        (n, 1)
    } else {
        (l.as_str(), 1)
    };
    let n: i64 = num
        .trim()
        .parse()
        .with_context(|| format!("invalid memory size {s:?} (use MB, e.g. 512, or 1gb)"))?;
    Ok(n * mult)
}

pub(crate) fn pairs(list: &[String], what: &str) -> anyhow::Result<BTreeMap<String, String>> {
    list.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("invalid {what} {kv:?}: use NAME=VALUE"))
        })
        .collect()
}

/// The machine config flyctl's `machine run` builds from its flags.
pub(crate) fn config_from(args: &RunArgs, run: bool) -> anyhow::Result<MachineConfig> {
    let image = match (&args.image, args.shell) {
        (Some(i), _) => i.clone(),
        (None, true) => DEFAULT_SHELL_IMAGE.to_owned(),
        (None, false) => bail!("an image is required"),
    };
    let mut c = MachineConfig {
        image,
        init: Some(MachineInit {
            cmd: (!args.command.is_empty()).then(|| args.command.clone()),
            ..MachineInit::default()
        }),
        ..MachineConfig::default()
    };
    apply_flags(&mut c, &args.flags)?;
    if args.shell {
        // Something to keep the machine up while the shell is attached; the
        // machine goes when the shell ends.
        c.init.get_or_insert_with(MachineInit::default).exec = Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "while :; do sleep 3600; done".into(),
        ]);
        c.auto_destroy = Some(true);
    }
    // flyctl: `always` for `machine run`, `no` with --rm.
    if args.rm || args.shell {
        c.restart = Some(MachineRestart {
            policy: Some("no".into()),
            ..MachineRestart::default()
        });
        c.auto_destroy = Some(true);
    } else if run && c.restart.is_none() {
        // A scheduled job rests between runs, so it restarts only on failure.
        let policy = if c.schedule.is_some() {
            "on-failure"
        } else {
            "always"
        };
        c.restart = Some(MachineRestart {
            policy: Some(policy.into()),
            ..MachineRestart::default()
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> RunArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            r: RunArgs,
        }
        T::parse_from(std::iter::once("t").chain(args.iter().copied())).r
    }

    #[test]
    fn ports_parse_as_flyctl_does() {
        use serde_json::json;
        assert_eq!(
            parse_port("80/tcp:http").unwrap(),
            json!({"protocol": "tcp", "internal_port": 80, "ports": [{"port": 80, "handlers": ["http"]}]})
        );
        assert_eq!(
            parse_port("443:8080/tcp:http:tls").unwrap(),
            json!({"protocol": "tcp", "internal_port": 8080, "ports": [{"port": 443, "handlers": ["http", "tls"]}]})
        );
        assert_eq!(
            parse_port("5432").unwrap(),
            json!({"protocol": "tcp", "internal_port": 5432, "ports": [{"port": 5432}]})
        );
        assert_eq!(
            parse_port("9000-9010:9000/tcp").unwrap(),
            json!({"protocol": "tcp", "internal_port": 9000, "ports": [{"start_port": 9000, "end_port": 9010}]})
        );
        assert_eq!(
            parse_port("53/udp").unwrap(),
            json!({"protocol": "udp", "internal_port": 53, "ports": [{"port": 53}]})
        );
        for bad in [
            "",
            "0",
            "70000",
            "80/sctp",
            "80/tcp:bogus",
            "80:x",
            "90-80",
            "53/udp:http",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }

        let a = parse(&[
            "nginx",
            "--port",
            "80:80/tcp:http",
            "--port",
            "443:80/tcp:http:tls",
            "--autostop",
            "--autostart=false",
        ]);
        let mut c = MachineConfig::default();
        apply_flags(&mut c, &a.flags).unwrap();
        let services = c.extra["services"].as_array().unwrap();
        assert_eq!(services.len(), 2);
        for s in services {
            assert_eq!(s["autostop"], json!(true));
            assert_eq!(s["autostart"], json!(false));
        }
        let a = parse(&[
            "nginx",
            "--port",
            "80/tcp:http",
            "--autostop=suspend",
            "--autostart",
        ]);
        let mut c = MachineConfig::default();
        apply_flags(&mut c, &a.flags).unwrap();
        assert_eq!(c.extra["services"][0]["autostop"], json!("suspend"));
        assert_eq!(c.extra["services"][0]["autostart"], json!(true));
        // Without services, as Fly says: no autostart/autostop.
        let a = parse(&["nginx", "--autostop"]);
        let err = apply_flags(&mut MachineConfig::default(), &a.flags).unwrap_err();
        assert!(err.to_string().contains("--port"), "{err}");
    }

    #[test]
    fn file_stop_schedule_and_standby_flags() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("entry.sh");
        std::fs::write(&local, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&local, std::os::unix::fs::PermissionsExt::from_mode(0o750))
            .unwrap();
        let a = parse(&[
            "busybox",
            "--file-local",
            &format!("/entry.sh={}", local.display()),
            "--file-literal",
            "/etc/greeting=hello there",
            "--file-literal",
            "/etc/greeting=replaced",
            "--file-secret",
            "/run/key=KEY",
            "--kill-signal",
            "SIGTERM",
            "--kill-timeout",
            "30",
            "--schedule",
            "daily",
            "--standby-for",
            "0123456789abcd, 0123456789abce",
        ]);
        let c = config_from(&a, true).unwrap();
        let files = c.files.unwrap();
        let decode = |f: &MachineFile| {
            base64::engine::general_purpose::STANDARD
                .decode(f.raw_value.as_deref().unwrap())
                .unwrap()
        };
        assert_eq!(files.len(), 3, "{files:?}");
        assert_eq!(files[0].guest_path, "/entry.sh");
        assert_eq!(decode(&files[0]), b"#!/bin/sh\n");
        assert_eq!(files[0].mode, Some(0o750));
        assert_eq!(files[1].guest_path, "/etc/greeting");
        assert_eq!(decode(&files[1]), b"replaced");
        assert_eq!(files[2].secret_name.as_deref(), Some("KEY"));
        let stop = c.stop_config.unwrap();
        assert_eq!(stop.signal.as_deref(), Some("SIGTERM"));
        assert_eq!(stop.timeout.unwrap().get(), Duration::from_secs(30));
        assert_eq!(c.schedule.as_deref(), Some("daily"));
        assert_eq!(c.restart.unwrap().policy.as_deref(), Some("on-failure"));
        assert_eq!(c.standbys.unwrap(), ["0123456789abcd", "0123456789abce"]);

        let mut c = MachineConfig {
            standbys: Some(vec!["x".into()]),
            ..MachineConfig::default()
        };
        let f = ConfigFlags {
            standby_for: Some(String::new()),
            ..ConfigFlags::default()
        };
        apply_flags(&mut c, &f).unwrap();
        assert!(c.standbys.is_none());
        assert!(
            config_from(
                &parse(&["busybox", "--file-local", "/x=/no/such/file"]),
                true
            )
            .is_err()
        );
        assert!(config_from(&parse(&["busybox", "--kill-timeout", "soon"]), true).is_err());
    }

    #[test]
    fn run_flags_build_flyctl_config() {
        let a = parse(&[
            "busybox",
            "-a",
            "app",
            "-e",
            "A=1",
            "--metadata",
            "role=web",
            "--entrypoint",
            "/bin/sh -c",
            "--vm-cpus",
            "2",
            "--vm-memory",
            "1gb",
            "echo",
            "hi",
            "--there",
        ]);
        let c = config_from(&a, true).unwrap();
        assert_eq!(c.image, "busybox");
        assert_eq!(c.env.unwrap()["A"], "1");
        assert_eq!(c.metadata.unwrap()["role"], "web");
        let g = config_from(&parse(&["busybox", "--runtime", "gvisor"]), true).unwrap();
        assert_eq!(g.metadata.unwrap()["hangar_runtime"], "runsc");
        assert!(config_from(&parse(&["busybox", "--runtime", "docker"]), true).is_err());
        let init = c.init.unwrap();
        assert_eq!(init.entrypoint.unwrap(), vec!["/bin/sh", "-c"]);
        assert_eq!(init.cmd.unwrap(), vec!["echo", "hi", "--there"]);
        let g = c.guest.unwrap();
        assert_eq!((g.cpus, g.memory_mb), (Some(2), Some(1024)));
        assert_eq!(c.restart.unwrap().policy.as_deref(), Some("always"));

        let c = config_from(&parse(&["busybox", "--rm"]), true).unwrap();
        assert_eq!(c.restart.unwrap().policy.as_deref(), Some("no"));
        assert_eq!(c.auto_destroy, Some(true));
        let c = config_from(&parse(&["busybox", "--restart", "on-fail"]), true).unwrap();
        assert_eq!(c.restart.unwrap().policy.as_deref(), Some("on-failure"));
        assert!(config_from(&parse(&["busybox", "--restart", "sometimes"]), true).is_err());
        assert!(config_from(&parse(&["busybox", "-e", "NOEQUALS"]), true).is_err());
        // `machine create` leaves the API's default policy.
        assert!(
            config_from(&parse(&["busybox"]), false)
                .unwrap()
                .restart
                .is_none()
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_memory("512").unwrap(), 512);
        assert_eq!(parse_memory("2GB").unwrap(), 2048);
        assert!(parse_memory("lots").is_err());
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").is_err());
        assert_eq!(
            super::super::show::format_ms(1_700_000_000_123),
            "2023-11-14T22:13:20.123Z"
        );
    }
}
