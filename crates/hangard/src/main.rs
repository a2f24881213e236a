//! `hangard`: the Hangar daemon.
//!
//! Serves Fly's Machines API on `--listen` (127.0.0.1:4280 by default) and
//! runs each machine from an OCI image as a container (crun by default),
//! keeping its state in `<data-dir>/hangar.db`. Runs as root. Machines
//! outlive the daemon: stopping or killing `hangard` leaves them running, and
//! the next `hangard` adopts them.

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use hangar_agent::{Agent, AgentConfig};
use hangar_api::{ApiState, Auth};
use hangar_core::Isolation;
use hangar_image::{Credentials, ImageStore, StoreOptions};
use hangar_runtime_oci::{OciConfig, OciEngine, OciFlavor, OciRuntime, host};

mod edge;
mod traces;

/// mimalloc: the proxy allocates per request, and glibc's malloc was a
/// measurable part of its profile. Built without its transparent huge
/// pages (`no_thp`): it asked for them on its arenas, and each 2 MiB region
/// first touched became resident whole (30 MiB more RSS at rest, twice
/// the memory a machine), for no gain in the proxy's throughput.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeArg {
    Crun,
    Runc,
    /// gVisor.
    Runsc,
    /// qemu microVMs (a kernel of their own).
    Microvm,
}

/// How qemu runs microVMs' CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum VmAccel {
    /// KVM when /dev/kvm can run stock kernels, else TCG (with a warning).
    Auto,
    Kvm,
    Tcg,
}

/// gVisor's network stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RunscNetwork {
    Host,
    Sandbox,
}

/// The platform gVisor runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RunscPlatform {
    /// kvm where `/dev/kvm` can run it, ptrace otherwise.
    Auto,
    Ptrace,
    Kvm,
    Systrap,
}

/// The Hangar daemon: Fly-compatible machines on your own Linux host.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where state, images and machines live.
    #[arg(long, env = "HANGAR_DATA_DIR", default_value = "/var/lib/hangar")]
    data_dir: PathBuf,
    /// Address of the Machines API.
    #[arg(long, env = "HANGAR_LISTEN", default_value = "127.0.0.1:4280")]
    listen: SocketAddr,
    /// This host's region code.
    #[arg(long, env = "HANGAR_REGION", default_value = "local")]
    region: String,
    /// The runtime of machines that do not ask for one (metadata
    /// `hangar_runtime`); the other OCI runtimes installed on the host can
    /// be asked for.
    #[arg(long, env = "HANGAR_RUNTIME", value_enum, default_value = "crun")]
    runtime: RuntimeArg,
    /// gVisor's platform (`auto`: kvm when /dev/kvm can run it, else
    /// ptrace; kvm hangs on PVM hosts).
    #[arg(
        long,
        env = "HANGAR_RUNSC_PLATFORM",
        value_enum,
        default_value = "auto"
    )]
    runsc_platform: RunscPlatform,
    /// gVisor's network stack: `host` passes the machine's sockets to the
    /// host kernel inside the machine's own network namespace; `sandbox`
    /// uses gVisor's netstack, which Debian's runsc (2022-12) cannot set up
    /// on kernels from 6.x on (gVisor issue 10704).
    #[arg(long, env = "HANGAR_RUNSC_NETWORK", value_enum, default_value = "host")]
    runsc_network: RunscNetwork,
    /// The microVMs' guest kernel: a directory with `vmlinuz` and its
    /// modules under `lib/modules` (scripts/vm-kernel.sh DIR fills one from
    /// Debian's cloud kernel). Default: <data-dir>/vm-kernel.
    #[arg(long, env = "HANGAR_VM_KERNEL_DIR")]
    vm_kernel_dir: Option<PathBuf>,
    /// How qemu runs microVMs (`auto`: KVM unless /dev/kvm is missing or
    /// PVM, on which stock guest kernels hang).
    #[arg(long, env = "HANGAR_VM_ACCEL", value_enum, default_value = "auto")]
    vm_accel: VmAccel,
    /// A registry (HOST:PORT) reached over plain HTTP; repeatable.
    #[arg(
        long = "insecure-registry",
        env = "HANGAR_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    insecure_registries: Vec<String>,
    /// Registry credentials in Docker's config.json format (`auths`).
    #[arg(long, env = "HANGAR_REGISTRY_AUTH_FILE")]
    registry_auth_file: Option<PathBuf>,
    /// Another name (HOST[:PORT], as in image names) that reaches this
    /// hangard's registry, e.g. a reverse proxy's; repeatable. The API
    /// listener's address, and `localhost` or this host's name and addresses
    /// where the listener takes them, are known already. Images under these
    /// names are read from the registry's storage, not over HTTP.
    #[arg(
        long = "registry-name",
        env = "HANGAR_REGISTRY_NAMES",
        value_delimiter = ','
    )]
    registry_names: Vec<String>,
    /// Size at which a machine's log file is rotated (bytes).
    #[arg(long, env = "HANGAR_LOG_MAX_BYTES", default_value_t = 10 << 20)]
    log_max_bytes: u64,
    /// Leave the host's cgroup mount options alone (by default hangard turns
    /// on cgroup2 `favordynmods`, which halves container start time).
    #[arg(long, env = "HANGAR_NO_CGROUP_TUNING")]
    no_cgroup_tuning: bool,
    /// Runtime state that must not reach a disk (secrets handed to
    /// machines); a tmpfs is mounted under it when it is not one.
    #[arg(long, env = "HANGAR_RUN_DIR", default_value = "/run/hangar")]
    run_dir: PathBuf,
    /// The key that seals app secrets (32 bytes, raw or hex); created as
    /// <data-dir>/secrets.key when not given.
    #[arg(long, env = "HANGAR_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// The IPv4 range private networks are drawn from: each network (an
    /// app `network`, `default` unless set) takes a /24 of it (a block, with
    /// a bridge of its own) for every 253 machines. Two hangards on one host
    /// need ranges that do not overlap (the second refuses to start on a
    /// clash).
    #[arg(long, env = "HANGAR_NETWORK_RANGE", default_value = "10.231.0.0/16")]
    network_range: hangar_agent::network::NetRange,
    /// Do not NAT machines' traffic to the outside (machines then reach only
    /// their private network and this host).
    #[arg(long, env = "HANGAR_NO_OUTBOUND_NAT")]
    no_outbound_nat: bool,
    /// Do not serve internal DNS (`<app>.internal`); machines keep their
    /// image's resolv.conf.
    #[arg(long, env = "HANGAR_NO_DNS")]
    no_dns: bool,
    /// The proxy's plain HTTP listener (services' port 80), or `off`.
    #[arg(long, env = "HANGAR_PROXY_HTTP", default_value = "0.0.0.0:80", value_parser = listen_or_off)]
    proxy_http: Listen,
    /// The proxy's HTTPS listener (services' port 443, TLS ends in the
    /// proxy), or `off`.
    #[arg(long, env = "HANGAR_PROXY_HTTPS", default_value = "0.0.0.0:443", value_parser = listen_or_off)]
    proxy_https: Listen,
    /// Apps are served at `<app>.<domain>` (`*.localhost` resolves to this
    /// host in browsers and curl).
    #[arg(long, env = "HANGAR_PROXY_DOMAIN", default_value = "localhost")]
    proxy_domain: String,
    /// The proxy's TLS certificate and key (PEM); a self-signed pair for
    /// the domain is made in the data dir when not given.
    #[arg(long, env = "HANGAR_PROXY_TLS_CERT", requires = "proxy_tls_key")]
    proxy_tls_cert: Option<PathBuf>,
    /// See --proxy-tls-cert.
    #[arg(long, env = "HANGAR_PROXY_TLS_KEY", requires = "proxy_tls_cert")]
    proxy_tls_key: Option<PathBuf>,
    /// Machines whose services have autostop are stopped after this long
    /// without traffic (e.g. 5m, 30s).
    #[arg(long, env = "HANGAR_PROXY_IDLE_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    proxy_idle_timeout: std::time::Duration,
    /// Addresses given to apps as dedicated IPv4s (`hangar ips allocate-v4`,
    /// the ip_assignments API): each serves every service of its app on its
    /// own ports, raw TCP and UDP included. Loopback by default; give the
    /// addresses routed to this host to serve the world.
    #[arg(long, env = "HANGAR_IP_POOL", default_value = "127.0.2.0/24")]
    ip_pool: hangar_agent::ips::IpPool,
    /// Join a cluster whose shared state is in this PostgreSQL database
    /// (`postgres://user:pass@host/db`, or `host=/run/postgresql
    /// dbname=hangar`). Without it this host stands alone on its SQLite.
    #[arg(long, env = "HANGAR_CLUSTER")]
    cluster: Option<String>,
    /// This host's id in the cluster (default: the host name).
    #[arg(long, env = "HANGAR_HOST_ID")]
    host_id: Option<String>,
    /// The URL other hosts reach this host's API at (default: http:// and
    /// the --listen address, which must then be a specific one).
    #[arg(long, env = "HANGAR_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// How long a host may stay silent before the cluster declares it down.
    #[arg(long, env = "HANGAR_CLUSTER_DOWN_AFTER", default_value = "15s", value_parser = humantime::parse_duration)]
    cluster_down_after: std::time::Duration,
    /// Where the other hosts' proxies reach this host's proxy (its plain
    /// HTTP listener), for apps whose machines run here only (default: the
    /// --proxy-http address, or its port on the --advertise-url host).
    #[arg(long, env = "HANGAR_ADVERTISE_PROXY")]
    advertise_proxy: Option<SocketAddr>,
    /// Memory (MiB) machines may reserve on this host, for placement
    /// (default: the host's memory).
    #[arg(long, env = "HANGAR_CAPACITY_MEMORY_MB")]
    capacity_memory_mb: Option<u64>,
    /// The address clients reach the proxy's shared listeners at (what
    /// `shared_v4` assignments report); the HTTP listener's address when it
    /// has a specific one, else 127.0.0.1.
    #[arg(long, env = "HANGAR_PUBLIC_IP")]
    public_ip: Option<std::net::IpAddr>,
    /// The most tasks (processes and threads) any machine may have at once.
    /// By default each machine's limit scales with its memory: 4 per MiB,
    /// at least 256 and at most 32768 (a 256 MB machine gets 1024).
    #[arg(long, env = "HANGAR_MACHINE_PIDS_LIMIT", value_parser = clap::value_parser!(u64).range(16..))]
    machine_pids_limit: Option<u64>,
    /// The UDP port of this host's end of the cluster's mesh (WireGuard),
    /// which carries machines' private traffic between hosts.
    #[arg(long, env = "HANGAR_MESH_PORT", default_value_t = 51820)]
    mesh_port: u16,
    /// Where the other hosts reach this host's end of the mesh (default:
    /// the --advertise-url host and --mesh-port).
    #[arg(long, env = "HANGAR_ADVERTISE_MESH")]
    advertise_mesh: Option<SocketAddr>,
    /// Join a cluster without the mesh: machines on different hosts do not
    /// reach each other's private addresses.
    #[arg(long, env = "HANGAR_NO_MESH")]
    no_mesh: bool,
    /// The cgroup under which machines' cgroups are made (one per
    /// hangard: two on one host give each its own).
    #[arg(long, env = "HANGAR_CGROUP_PARENT", default_value = "/hangar")]
    cgroup_parent: String,
    /// Send OpenTelemetry traces (a span per API request) over OTLP/HTTP to
    /// this collector, e.g. `http://127.0.0.1:4318` (off by default).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Do not make a stopped machine's next container ahead of its start
    /// (by default it is created and waits, so that a start only lets it
    /// go; each such machine then holds its namespaces and a waiting
    /// runtime process).
    #[arg(long, env = "HANGAR_NO_PRECREATE")]
    no_precreate: bool,
}

fn main() -> anyhow::Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let args = Args::parse();
    let traces = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let host = args
                .host_id
                .clone()
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .unwrap_or_else(|| "hangard".into());
            Some(traces::provider(endpoint, &host, &args.region)?)
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .with(traces.as_ref().map(traces::layer))
        .init();
    // Machines' lifecycle work runs on a runtime of its own (see
    // `AgentConfig::machines_runtime`), beside the one serving the API.
    let machines = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("machines")
        .build()
        .context("starting the machines' async runtime")?;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args, traces.is_some(), machines.handle().clone()));
    machines.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(t) = traces {
        // The last spans go out before the process ends.
        if let Err(e) = t.shutdown() {
            eprintln!("sending the last traces: {e}");
        }
    }
    result
}

async fn run(args: Args, traced: bool, machines: tokio::runtime::Handle) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("hangard must run as root (it mounts file systems and creates containers)");
    }
    let data = check_data_dir(&args.data_dir)?;
    let _lock = lock(&data)?;
    let token_file = admin_token(&data)?;
    tracing::info!(path = %token_file.display(), "admin token (give it as HANGAR_API_TOKEN, or run hangar as root on this host)");
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();

    let flavor = match args.runtime {
        RuntimeArg::Crun | RuntimeArg::Microvm => OciFlavor::Crun,
        RuntimeArg::Runc => OciFlavor::Runc,
        RuntimeArg::Runsc => OciFlavor::Runsc,
    };
    let run_root = data.join("run");
    let mut engines = vec![OciEngine::new(
        flavor,
        host::find_program(flavor.binary()).with_context(|| {
            format!(
                "{} not found on PATH: apt-get install -y {}",
                flavor.binary(),
                flavor.binary()
            )
        })?,
        &run_root,
    )];
    for other in [OciFlavor::Crun, OciFlavor::Runc, OciFlavor::Runsc] {
        if other != flavor
            && let Some(path) = host::find_program(other.binary())
        {
            engines.push(OciEngine::new(other, path, &run_root));
        }
    }
    for e in &mut engines {
        if e.flavor == OciFlavor::Runsc {
            let (platform, why) = runsc_platform(args.runsc_platform);
            if let Some(why) = why {
                tracing::warn!("gVisor runs on its {platform} platform: {why}");
            }
            e.flags.push(format!("--platform={platform}"));
            e.flags.push(
                match args.runsc_network {
                    RunscNetwork::Host => "--network=host",
                    RunscNetwork::Sandbox => "--network=sandbox",
                }
                .into(),
            );
        }
    }
    if engines.iter().any(|e| e.flavor == OciFlavor::Crun) {
        let moved = host::fix_hybrid_cgroups().context("preparing cgroups for crun")?;
        if !moved.is_empty() {
            tracing::info!(controllers = ?moved, "moved cgroup controllers off cgroup2 (crun cannot run on a hybrid layout otherwise)");
        }
    }
    if !args.no_cgroup_tuning {
        match host::favor_dynamic_cgroups() {
            Ok(true) => tracing::info!(
                "enabled cgroup2 favordynmods (cheaper task migration on container start; until reboot; --no-cgroup-tuning skips this)"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not enable cgroup2 favordynmods; container starts will be slower")
            }
        }
    }
    let init_path =
        hangar_runtime_oci::install_init(&data.join("bin")).context("installing hangar-init")?;
    let secrets_dir = args.run_dir.join("secrets");
    if hangar_runtime_oci::host::ensure_tmpfs(&secrets_dir)
        .with_context(|| format!("preparing {}", secrets_dir.display()))?
    {
        tracing::info!(dir = %secrets_dir.display(), "mounted a tmpfs for machine secrets");
    }
    let volume_host = hangar_volumes::VolumeHost::new(data.join("volumes"))
        .context("preparing the volumes directory")?;
    let containers = OciRuntime::new(OciConfig {
        engines: engines.clone(),
        init_path: init_path.clone(),
        machines_dir: data.join("machines"),
        log_max_bytes: args.log_max_bytes,
        cgroup_parent: check_cgroup_parent(&args.cgroup_parent)?,
        secrets_dir,
        volumes: Some(volume_host.clone()),
        precreate: !args.no_precreate,
    })
    .context("setting up the container runtime")?;
    let default_isolation = match args.runtime {
        RuntimeArg::Microvm => Isolation::Microvm,
        _ => flavor.isolation(),
    };
    let mut runtimes: Vec<Arc<dyn hangar_runtime::Runtime>> = vec![Arc::new(containers)];
    let vm = microvm_runtime(&args, &data, &init_path, volume_host);
    let runtime = match vm {
        Ok(vm) => {
            runtimes.push(Arc::new(vm));
            hangar_runtime::Routed::new(default_isolation, runtimes)
        }
        Err(why) if args.runtime == RuntimeArg::Microvm => {
            bail!("--runtime microvm: {why}")
        }
        Err(why) => {
            tracing::info!("microVMs are not available: {why}");
            hangar_runtime::Routed::new(default_isolation, runtimes).missing(
                Isolation::Microvm,
                format!("this host cannot run microvm machines: {why}"),
            )
        }
    };

    // The installation's addressing, and the firewall for the blocks in
    // use, in place before any machine is wired. Alone, the installation's
    // id is made on first start and kept; in a cluster, it and this host's
    // number come from the cluster's database (6PN addresses say which
    // host they are on).
    let plan = {
        let store = hangar_agent::Store::open(&data.join("hangar.db"))?;
        let (installation, host) = match &args.cluster {
            None => (store.installation_id()?, 1),
            Some(url) => {
                let cfg = cluster_config(&args, url, &token, 0, None)?;
                let id = hangar_cluster::identity(&cfg, store.installation_id()?)
                    .await
                    .context("reading this host's identity from the cluster")?;
                store.set_installation_id(id.installation)?;
                (id.installation, id.host_index)
            }
        };
        hangar_agent::network::NetPlan {
            range: args.network_range,
            installation,
            host,
        }
    };
    let (first, last) = args.network_range.blocks();
    match hangar_net::remove_legacy(&args.network_range.to_string(), first, last) {
        Ok(removed) if !removed.is_empty() => tracing::info!(
            bridges = ?removed,
            "removed the bridges of an older version (machines are wired to new ones as they resume)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove an older version's bridges"),
    }
    let blocks = {
        let store = hangar_agent::Store::open(&data.join("hangar.db"))?;
        store.blocks_in_use(&plan)?
    };
    let firewall = Arc::new(std::sync::Mutex::new(
        plan.firewall(&blocks, !args.no_outbound_nat),
    ));
    // The mesh to the cluster's other hosts, before the firewall that lets
    // each network through it.
    let mesh = match (&args.cluster, args.no_mesh) {
        (Some(_), false) => {
            let m = start_mesh(&args, &data, &plan)?;
            firewall.lock().unwrap_or_else(|p| p.into_inner()).mesh = Some(m.0.ifname.clone());
            Some(m)
        }
        _ => None,
    };
    let table = firewall.lock().unwrap_or_else(|p| p.into_inner()).table();
    match apply_firewall(&firewall) {
        Ok(tool) if args.no_outbound_nat => {
            tracing::info!(?tool, %table, installation = format!("{:04x}", plan.installation), "private networks isolated; outbound NAT off")
        }
        Ok(tool) => {
            tracing::info!(?tool, %table, installation = format!("{:04x}", plan.installation), "private networks isolated; outbound NAT on (IPv4 and IPv6)")
        }
        Err(e) if args.no_outbound_nat => tracing::warn!(
            error = %e,
            "cannot install the firewall rules (apt-get install -y nftables, or iptables); networks stay isolated only while the host does not forward"
        ),
        Err(e) => bail!(
            "cannot install the firewall rules that NAT machines' traffic: {e} (apt-get install -y nftables, or run with --no-outbound-nat)"
        ),
    }

    let mut credentials = match &args.registry_auth_file {
        Some(p) => Credentials::from_docker_config(p)?,
        None => Credentials::default(),
    };
    // Its own registry: images pushed to `<listen address>/<app>` run as
    // they are (plain HTTP on the API listener, with the admin token).
    let own_registry = args.listen.to_string();
    credentials.insert(&own_registry, "hangar", &token);
    let mut insecure = args.insecure_registries.clone();
    insecure.push(own_registry);
    let registry =
        hangar_registry::Storage::open(data.join("registry")).context("opening the registry")?;
    let images = Arc::new(ImageStore::open(
        data.join("images"),
        StoreOptions {
            insecure_registries: insecure,
            credentials,
            local: Some(Arc::new(hangar_registry::LocalSource::new(
                registry.clone(),
                hangar_registry::Names::new(args.listen, args.registry_names.clone()),
            ))),
        },
    )?);
    let agent = Agent::open(
        AgentConfig {
            data_dir: data.clone(),
            region: args.region.clone(),
            clock: test_clock(),
            secrets_key_file: args.secrets_key_file.clone(),
            dns: !args.no_dns,
            network_range: args.network_range,
            host_id: plan.host,
            check_host_addresses: true,
            pids_limit: args.machine_pids_limit,
            host_memory_mb: None,
            machines_runtime: Some(machines),
            ip_pool: Some(args.ip_pool),
            shared_ip: args.public_ip.or_else(|| {
                let ip = args.proxy_http.0?.ip();
                Some(if ip.is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    ip
                })
            }),
        },
        Arc::new(runtime),
        images.clone(),
    )
    .await?;

    // Internal DNS on the gateway of every block that has machines (bound
    // ahead of the bridge, which appears with the block's first machine),
    // and each new block let into its network's rules.
    let dns = (!args.no_dns).then(|| {
        hangar_net::dns::Server::new(agent.dns_directory(), hangar_net::dns::host_resolvers(), 53)
    });
    {
        let firewall = firewall.clone();
        agent.on_network(Arc::new(move |block| {
            // The bridge at once, not at the block's first start: its
            // address tells other installations the /24 is taken.
            if let Err(e) = hangar_net::ensure_bridge(&block.bridge()) {
                tracing::warn!(bridge = %block.bridge, error = %e, "cannot make a block's bridge");
            }
            if let Some(server) = &dns {
                let gw = std::net::IpAddr::V6(block.gateway6);
                if let Err(e) = server.listen(gw) {
                    tracing::warn!(addr = %gw, error = %e, "cannot serve internal DNS on this block's gateway");
                }
            }
            let added = firewall
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add_bridge(&plan.network_prefix(block.net), &block.bridge, block.gateway6);
            if added {
                if let Err(e) = apply_firewall(&firewall) {
                    tracing::error!(error = %e, bridge = %block.bridge, "cannot let a new block into its network's rules");
                }
            }
        }))?;
    }

    let edge_machines = Arc::new(edge::AgentMachines::new(agent.clone()));
    let proxy = if args.proxy_http.0.is_none() && args.proxy_https.0.is_none() {
        None
    } else {
        let (cert, key) = match (&args.proxy_tls_cert, &args.proxy_tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => (data.join("proxy/tls.crt"), data.join("proxy/tls.key")),
        };
        let proxy = hangar_proxy::Proxy::new(
            hangar_proxy::Config {
                http: args.proxy_http.0,
                https: args.proxy_https.0,
                domain: args.proxy_domain.trim_matches('.').to_ascii_lowercase(),
                idle_timeout: args.proxy_idle_timeout,
                autostop_interval: (args.proxy_idle_timeout / 4).clamp(
                    std::time::Duration::from_millis(200),
                    std::time::Duration::from_secs(30),
                ),
                start_timeout: std::time::Duration::from_secs(60),
                tls_cert: cert,
                tls_key: key,
                region: args.region.clone(),
            },
            edge_machines.clone(),
        );
        let tasks = proxy.serve().await.context("starting the proxy")?;
        Some((proxy, tasks))
    };

    // Releases a previous hangard left unfinished go on (or roll back).
    let proxy_view = proxy
        .as_ref()
        .map(|(p, _)| Arc::new(edge::ProxyTraffic(p.clone())));
    let traffic = proxy_view
        .clone()
        .map(|p| p as Arc<dyn hangar_deploy::Traffic>);
    let deploy = hangar_deploy::Deployer::with_traffic(agent.clone(), traffic);
    let resumed = deploy.resume_all().context("resuming releases")?;
    if resumed > 0 {
        tracing::info!(releases = resumed, "resumed unfinished releases");
    }
    // The registry's garbage goes once a day (and `hangar image prune`).
    {
        let (registry, agent) = (registry.clone(), agent.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(86_400));
            every.tick().await;
            loop {
                every.tick().await;
                let keep = hangar_api::registry::in_use(&agent);
                let reg = registry.clone();
                match tokio::task::spawn_blocking(move || {
                    reg.gc(&keep, hangar_api::registry::GC_MIN_AGE)
                })
                .await
                {
                    Ok(Ok(r)) => tracing::info!(
                        manifests = r.manifests,
                        blobs = r.blobs,
                        bytes = r.bytes,
                        "registry garbage collected"
                    ),
                    Ok(Err(e)) => tracing::warn!(error = %e, "registry garbage collection failed"),
                    Err(e) => tracing::warn!(error = %e, "registry garbage collection failed"),
                }
            }
        });
    }
    let mut auth = Auth::new(token.clone());
    let cluster = match &args.cluster {
        None => None,
        Some(url) => {
            let c = join_cluster(
                &args,
                url,
                &token,
                &agent,
                mesh.as_ref().map(|m| m.1.clone()),
            )
            .await?;
            if let Some((m, _)) = &mesh {
                follow_mesh(m.clone(), c.clone(), plan.installation);
            }
            let _ = edge_machines.cluster.set(c.clone());
            // Images pushed to another host's registry are pulled from it.
            images.set_peers(Arc::new(PeerHosts {
                cluster: c.clone(),
                token: token.clone(),
            }));
            auth = auth.with_cluster(c.clone());
            Some(hangar_api::cluster::ClusterApi::new(c).with_registry(
                hangar_registry::Names::new(args.listen, args.registry_names.clone()),
            ))
        }
    };
    // The dashboard's plots: the last ten minutes, a sample every 5 s.
    hangar_api::usage::start_sampling(agent.clone(), std::time::Duration::from_secs(5));
    let mut app = hangar_api::router(ApiState {
        agent: agent.clone(),
        images: Some(images),
        auth: Arc::new(auth),
        deploy,
        registry: Some(registry),
        cluster,
        proxy: proxy_view.map(|p| p as Arc<dyn hangar_api::proxy_view::ProxyView>),
        renderings: Default::default(),
    });
    if traced {
        app = app.layer(axum::middleware::from_fn(traces::span));
        tracing::info!("sending traces over OTLP");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, region = %args.region, runtime = %default_isolation, runtimes = ?engines.iter().map(|e| e.flavor.binary()).collect::<Vec<_>>(), data_dir = %data.display(), "hangard ready");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    agent.shutdown().await;
    tracing::info!("hangard stopped; machines keep running");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// The clock of schedules and volume upkeep: the system's. Debug builds (the
/// tests') take `HANGAR_TEST_CLOCK=SCALE@ORIGIN_MS`, a clock running SCALE
/// times faster from ORIGIN_MS on, so that an "hour" passes in a second.
fn test_clock() -> Arc<dyn hangar_agent::clock::Clock> {
    #[cfg(debug_assertions)]
    if let Some(c) = std::env::var("HANGAR_TEST_CLOCK")
        .ok()
        .and_then(|v| hangar_agent::clock::ScaledClock::parse(&v))
    {
        tracing::warn!(
            scale = c.scale,
            "schedules run on a test clock (HANGAR_TEST_CLOCK)"
        );
        return Arc::new(c);
    }
    Arc::new(hangar_agent::clock::SystemClock)
}

/// Installs the firewall as it is now.
fn apply_firewall(
    fw: &std::sync::Mutex<hangar_net::firewall::Firewall>,
) -> Result<hangar_net::firewall::Tool, hangar_net::NetError> {
    let fw = fw.lock().unwrap_or_else(|p| p.into_inner()).clone();
    fw.apply()
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn listen_or_off(s: &str) -> Result<Listen, String> {
    if s.eq_ignore_ascii_case("off") || s.is_empty() {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is not an address like 0.0.0.0:80 (or off)"))
}

/// The data dir must be absolute, and free of `,` and `:` (overlayfs mount
/// options cannot carry them).
fn check_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if !dir.is_absolute() {
        bail!("--data-dir must be an absolute path, not {}", dir.display());
    }
    let s = dir.to_string_lossy();
    if s.contains(',') || s.contains(':') {
        bail!("--data-dir must not contain ',' or ':' ({s})");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir.to_owned())
}

/// One hangard per data dir. A hangard killed an instant ago may still
/// hold the lock for a few milliseconds more, through a child it had forked
/// that has not yet exec'd (the child shares the lock's open file until
/// then): the lock is waited for a little before another hangard is
/// assumed.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
    lock_within(dir, LOCK_WAIT)
}

fn lock_within(dir: &Path, wait: std::time::Duration) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("hangard.lock"))?;
    let deadline = std::time::Instant::now() + wait;
    // SAFETY: flock on an fd we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        if std::time::Instant::now() >= deadline {
            bail!(
                "another hangard is using {} (its lock was held for {wait:?})",
                dir.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(f)
}

/// How long a new hangard waits for the data dir's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The other hosts' registries, as the image store reaches them: plain
/// HTTP on their API address, with this host's admin token (every host
/// accepts every host's).
struct PeerHosts {
    cluster: hangar_cluster::Cluster,
    token: String,
}

impl std::fmt::Debug for PeerHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHosts").finish_non_exhaustive()
    }
}

impl hangar_image::PeerRegistries for PeerHosts {
    fn credentials(&self, registry: &str) -> Option<(String, String)> {
        self.cluster
            .is_peer_registry(registry)
            .then(|| ("hangar".to_owned(), self.token.clone()))
    }
}

/// This host's end of the cluster's mesh: the interface made (or found
/// from before a restart) and its public key with the address the other
/// hosts reach it at.
fn start_mesh(
    args: &Args,
    data: &Path,
    plan: &hangar_agent::network::NetPlan,
) -> anyhow::Result<(hangar_net::mesh::Mesh, (String, SocketAddr))> {
    use hangar_net::mesh::Mesh;
    Mesh::tools().context("the cluster's mesh (or run with --no-mesh)")?;
    let mesh = Mesh::new(data, plan.installation, plan.host, args.mesh_port);
    let key = mesh.public_key().context("the mesh's key")?;
    let kind = mesh
        .ensure()
        .context("making the mesh interface (or run with --no-mesh)")?;
    let endpoint = match args.advertise_mesh {
        Some(a) => a,
        None => {
            let url = args
                .advertise_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", args.listen));
            let host = url::Url::parse(&url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().with_context(|| {
                format!("the mesh needs an address the other hosts reach this one at: --advertise-mesh IP:PORT (the --advertise-url host {host:?} is not an address)")
            })?;
            if ip.is_unspecified() {
                bail!(
                    "the mesh needs an address the other hosts reach this one at: --advertise-mesh IP:PORT or --advertise-url"
                );
            }
            SocketAddr::new(ip, args.mesh_port)
        }
    };
    tracing::info!(interface = %mesh.ifname, ?kind, %endpoint, "mesh to the cluster's hosts up");
    Ok((mesh, (key, endpoint)))
}

/// Keeps the mesh's peers as the cluster says: every other host with a
/// mesh end, answering for its /64 of every network.
fn follow_mesh(mesh: hangar_net::mesh::Mesh, cluster: hangar_cluster::Cluster, installation: u16) {
    tokio::spawn(async move {
        let mut applied: Option<Vec<hangar_net::mesh::Peer>> = None;
        loop {
            let networks = cluster.networks();
            let mut peers: Vec<hangar_net::mesh::Peer> = cluster
                .hosts()
                .into_iter()
                .filter(|h| h.id != cluster.host_id() && !h.mesh_key.is_empty() && h.host_index > 0)
                .filter_map(|h| {
                    Some(hangar_net::mesh::Peer {
                        public_key: h.mesh_key.clone(),
                        endpoint: h.mesh_endpoint?,
                        allowed_ips: networks
                            .iter()
                            .map(|(_, n)| {
                                hangar_net::mesh::host_prefix(installation, *n, h.host_index)
                            })
                            .collect(),
                    })
                })
                .collect();
            peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            if applied.as_ref() != Some(&peers) {
                let m = mesh.clone();
                let p = peers.clone();
                match tokio::task::spawn_blocking(move || m.ensure().and_then(|_| m.set_peers(&p)))
                    .await
                {
                    Ok(Ok(())) => {
                        tracing::info!(
                            peers = peers.len(),
                            networks = networks.len(),
                            "mesh peers set"
                        );
                        applied = Some(peers);
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot set the mesh's peers"),
                    Err(e) => tracing::warn!(error = %e, "cannot set the mesh's peers"),
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

/// A cgroup path under the root: absolute, without `..`.
fn check_cgroup_parent(p: &str) -> anyhow::Result<String> {
    let ok = p.starts_with('/')
        && p.len() > 1
        && p.split('/').all(|c| c != ".." && c != ".")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if !ok {
        bail!(
            "--cgroup-parent {p:?}: an absolute cgroup path like /hangar (letters, digits, - _ . and /)"
        );
    }
    Ok(p.trim_end_matches('/').to_owned())
}

/// How this host joins the cluster at `url`.
fn cluster_config(
    args: &Args,
    url: &str,
    token: &str,
    memory_mb: u64,
    mesh: Option<(String, SocketAddr)>,
) -> anyhow::Result<hangar_cluster::ClusterConfig> {
    let host_id = match &args.host_id {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_ascii_lowercase())
            .unwrap_or_default(),
    };
    let api_url = match &args.advertise_url {
        Some(u) => u.clone(),
        None if !args.listen.ip().is_unspecified() => format!("http://{}", args.listen),
        None => bail!(
            "--listen {} takes every address: say which one other hosts reach this API at with --advertise-url",
            args.listen
        ),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let proxy_addr = args.advertise_proxy.or_else(|| {
        let http = args.proxy_http.0?;
        if !http.ip().is_unspecified() {
            return Some(http);
        }
        let host = url::Url::parse(&api_url).ok()?.host_str()?.to_owned();
        let ip: std::net::IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
        Some(SocketAddr::new(ip, http.port()))
    });
    Ok(hangar_cluster::ClusterConfig {
        url: url.to_owned(),
        host_id,
        region: args.region.clone(),
        api_url,
        proxy_addr,
        cpus,
        memory_mb,
        admin_token_hash: hangar_cluster::token_hash(token),
        down_after: args.cluster_down_after,
        mesh,
        admin_token: hangar_cluster::AdminToken(token.to_owned()),
    })
}

/// Joins the cluster at `url` as this host.
async fn join_cluster(
    args: &Args,
    url: &str,
    token: &str,
    agent: &Agent,
    mesh: Option<(String, SocketAddr)>,
) -> anyhow::Result<hangar_cluster::Cluster> {
    let memory_mb = args
        .capacity_memory_mb
        .or_else(|| agent.host_memory_mb())
        .unwrap_or(1024);
    let cfg = cluster_config(args, url, token, memory_mb, mesh)?;
    hangar_cluster::Cluster::join(cfg, agent.clone())
        .await
        .context("joining the cluster")
}

/// Creates the admin token on first start (0600); returns its path.
fn admin_token(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join("admin-token");
    if !path.exists() {
        let bytes: [u8; 24] = rand::random();
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        writeln!(f, "hangar_{}", hex::encode(bytes))?;
        f.sync_all()?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// The microVM runtime, or why this host has none (no qemu, no guest
/// kernel...).
fn microvm_runtime(
    args: &Args,
    data: &Path,
    init_path: &Path,
    volumes: hangar_volumes::VolumeHost,
) -> Result<hangar_runtime_vm::VmRuntime, String> {
    use hangar_runtime_vm::{Accel, VmConfig, VmRuntime, kernel};
    let need = |prog: &str, package: &str| {
        host::find_program(prog).ok_or_else(|| {
            format!("{prog} is not installed (apt-get install -y {package}; see docs/isolation.md)")
        })
    };
    let qemu = need("qemu-system-x86_64", "qemu-system-x86")?;
    let qemu_img = need("qemu-img", "qemu-utils")?;
    let mkfs_ext4 = need("mkfs.ext4", "e2fsprogs")?;
    let busybox = need("busybox", "busybox-static")?;
    if !kernel::is_static_elf(&busybox) {
        return Err(format!(
            "{} is not statically linked (apt-get install -y busybox-static)",
            busybox.display()
        ));
    }
    let dir = args
        .vm_kernel_dir
        .clone()
        .unwrap_or_else(|| data.join("vm-kernel"));
    let guest = kernel::GuestKernel::find(&dir)?;
    let vm_dir = data.join("vm");
    std::fs::create_dir_all(&vm_dir).map_err(|e| e.to_string())?;
    let initrd = vm_dir.join("initrd.cpio");
    kernel::build_initrd(init_path, &busybox, &guest, &initrd)
        .map_err(|e| format!("building the initramfs: {e}"))?;
    let accel = match args.vm_accel {
        VmAccel::Kvm => Accel::Kvm,
        VmAccel::Tcg => Accel::Tcg,
        VmAccel::Auto => {
            let (accel, why) = Accel::detect();
            if let Some(why) = why {
                tracing::warn!("{why}");
            }
            accel
        }
    };
    VmRuntime::new(VmConfig {
        qemu,
        qemu_img,
        mkfs_ext4,
        kernel: guest.vmlinuz,
        initrd,
        accel,
        init_path: init_path.to_path_buf(),
        machines_dir: vm_dir.join("machines"),
        images_dir: vm_dir.join("images"),
        log_max_bytes: args.log_max_bytes,
        volumes: Some(volumes),
        boot_timeout: std::time::Duration::from_secs(120),
    })
    .map_err(|e| e.to_string())
}

/// gVisor's platform, and why `auto` chose it when it is not the
/// fastest. Its kvm platform hangs where /dev/kvm is PVM (`kvm_pvm`, which
/// runs only PVM-built guests), as on the machines Hangar is built on.
fn runsc_platform(arg: RunscPlatform) -> (&'static str, Option<&'static str>) {
    match arg {
        RunscPlatform::Ptrace => ("ptrace", None),
        RunscPlatform::Kvm => ("kvm", None),
        RunscPlatform::Systrap => ("systrap", None),
        RunscPlatform::Auto if !std::path::Path::new("/dev/kvm").exists() => (
            "ptrace",
            Some("there is no /dev/kvm (slower system calls than with kvm)"),
        ),
        RunscPlatform::Auto if std::path::Path::new("/sys/module/kvm_pvm").exists() => (
            "ptrace",
            Some("/dev/kvm is PVM (kvm_pvm), on which gVisor's kvm platform hangs"),
        ),
        RunscPlatform::Auto => ("kvm", None),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    /// A lock still shared by a child of a hangard that is gone (forked,
    /// not yet exec'd) is taken once the child lets go; a lock held on is
    /// refused.
    #[test]
    fn the_data_dir_lock_outwaits_a_dead_hangards_children_only() {
        let dir = tempfile::tempdir().unwrap();
        let held = super::lock_within(dir.path(), Duration::ZERO).unwrap();
        let raw = held.as_raw_fd();
        // A child sharing the lock's open file for a while (its copy of
        // the fd survives its exec here, where a real one's would not).
        let mut child = std::process::Command::new("sleep");
        child.arg("0.3");
        // SAFETY: fcntl on an fd number between fork and exec.
        unsafe {
            child.pre_exec(move || {
                libc::fcntl(raw, libc::F_SETFD, 0);
                Ok(())
            });
        }
        let mut child = child.spawn().unwrap();
        drop(held);
        let e = super::lock_within(dir.path(), Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("another hangard is using"), "{e}");
        let t = Instant::now();
        let _again = super::lock_within(dir.path(), Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        child.wait().unwrap();
        assert!(super::lock_within(dir.path(), Duration::from_millis(50)).is_err());
    }
}
