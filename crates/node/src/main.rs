//! `flotilla`: one binary for every node.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: flotilla_sys::alloc::ByRole = flotilla_sys::alloc::ByRole;

use flotilla_cluster::{admin, Member, MemberConfig};
use flotilla_controllers::nodes::NodeInfo;
use flotilla_gossip::Timing;
use flotilla_pki::JoinToken;
use flotilla_raft::{NodeConfig, RaftNode};
use flotilla_util::GroupStatusHandle;

mod agent;
mod client;
mod image_cli;
mod kubeconfig;
mod leave;
mod runtime_cli;
mod snapshot_cli;
mod status;
mod token;
mod up;

/// The Raft state and the leader loops, for `/metrics`.
fn node_gauges(node: Arc<RaftNode>, leader_loops: GroupStatusHandle) -> flotilla_apiserver::Gauges {
    use flotilla_apiserver::Gauge;
    Arc::new(move || {
        let s = node.status();
        let group = leader_loops.get();
        let gauge = |name, help, value: f64| Gauge {
            name,
            help,
            labels: String::new(),
            value,
        };
        vec![
            gauge(
                "flotilla_raft_term",
                "The Raft term this node is in.",
                s.term as f64,
            ),
            gauge(
                "flotilla_raft_is_leader",
                "1 if this node is the Raft leader.",
                f64::from(u8::from(s.role == "leader")),
            ),
            Gauge {
                name: "flotilla_raft_role",
                help: "This node's Raft role (1 for the current one).",
                labels: format!("role=\"{}\"", s.role),
                value: 1.0,
            },
            gauge(
                "flotilla_raft_applied_index",
                "The last log index applied to this node's store.",
                s.applied as f64,
            ),
            gauge(
                "flotilla_raft_last_log_index",
                "The last log index this node has.",
                s.last_log as f64,
            ),
            gauge(
                "flotilla_raft_snapshot_index",
                "The log index of this node's last snapshot.",
                s.snapshot_index as f64,
            ),
            gauge(
                "flotilla_raft_members",
                "Members (voters and learners) in the Raft membership.",
                s.members.len() as f64,
            ),
            gauge(
                "flotilla_leader_loops_running_term",
                "The term whose leader-only loops run on this node (0: none).",
                group.running_term.unwrap_or(0) as f64,
            ),
            gauge(
                "flotilla_leader_loops_starts_total",
                "How often this node started its leader-only loops.",
                group.starts as f64,
            ),
            gauge(
                "flotilla_leader_loops_stops_total",
                "How often this node stopped its leader-only loops.",
                group.stops as f64,
            ),
        ]
        .into_iter()
        .chain(group.started_terms.iter().map(|term| Gauge {
            name: "flotilla_leader_loops_started_in_term",
            help: "1 for each term in which this node started its leader-only loops.",
            labels: format!("term=\"{term}\""),
            value: 1.0,
        }))
        .collect()
    })
}

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A container orchestrator: one binary, Raft inside"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: bootstrap a new cluster, join one through a seed, or resume from the data dir.
    Node(Box<NodeArgs>),
    /// Create, list and revoke join tokens.
    Token(token::TokenArgs),
    /// The cluster: its leader, voters and members.
    Status(status::StatusArgs),
    /// The members: address, Raft role, last contact, applied index.
    Members(status::StatusArgs),
    /// Make a node leave the cluster for good: it hands leadership over, is removed from the
    /// membership, says goodbye in gossip and exits.
    Leave(leave::LeaveArgs),
    /// Start a local cluster on this machine, each node in its own network namespace.
    Up(up::UpArgs),
    /// Print a kubeconfig with the admin's API token (for kubectl and other clients).
    Kubeconfig(kubeconfig::KubeconfigArgs),
    /// Run containers from OCI bundles, as runc and crun do.
    Runtime(runtime_cli::RuntimeArgs),
    /// The node's image store: import archives, list and remove images.
    Image(image_cli::ImageArgs),
    /// Back the cluster state up to a file, and make a new cluster from one.
    Snapshot(snapshot_cli::SnapshotArgs),
}

#[derive(clap::Args)]
struct NodeArgs {
    /// This node's name, unique in the cluster.
    #[arg(long)]
    name: String,
    /// Threads of the node's async runtime (default: `TOKIO_WORKER_THREADS`, else half the
    /// cores, at least one; gossip has a thread of its own).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// Where the node keeps its state (RocksDB, snapshots).
    #[arg(long)]
    data_dir: PathBuf,
    /// The IP address other nodes reach this one at.
    #[arg(long)]
    advertise: IpAddr,
    /// Port of the node-to-node gRPC endpoint (0 picks a free one on first start).
    #[arg(long, default_value_t = 7443)]
    peer_port: u16,
    /// HOST:PORT of a node of the cluster to join. Ignored when the data dir has state.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// Join token (ID.SECRET.CAHASH) from `flotilla token create` or the bootstrap node's
    /// `join-token` file. Needed with --join by a node without state.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "FLOTILLA_TOKEN",
        hide_env_values = true
    )]
    token: Option<JoinToken>,
    /// Port of the Kubernetes API (HTTPS) on the advertised address; 0 picks a free one.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// UDP port of the node-to-node tunnel (QUIC: pods' logs and exec); 0 picks a free one.
    #[arg(long, default_value_t = 7443)]
    tunnel_port: u16,
    /// A registry reached over plain HTTP instead of HTTPS, as HOST[:PORT] (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// Fetch a missing image's blobs from peer nodes that have it before its registry
    /// (`false`: registries only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    peer_fetch: bool,
    /// Remove unused images when the image store's disk is at least this full (percent).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    image_gc_high_threshold: u8,
    /// ... until it is below this (percent).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=99))]
    image_gc_low_threshold: u8,
    /// An image used more recently than this is never removed.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    image_minimum_gc_age: Duration,
    /// UDP port for gossip (QUIC); 0 uses the peer port's number.
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
    /// How long gossip must report a voter dead before the leader replaces it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stabilization: Duration,
    /// How long gossip must report a learner dead before the leader removes it.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    dead_learner_timeout: Duration,
    /// A label for this node's Node object (repeatable): `--label zone=a`.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Gossip: how often each node probes one other (failure detection) [default: 160ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    gossip_probe_interval: Option<Duration>,
    /// Gossip: how long a direct probe waits for its ack before others are asked to probe
    /// [default: 100ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    gossip_probe_timeout: Option<Duration>,
    /// Gossip: a suspected node is declared dead after at least this many probe intervals
    /// (scaled by log10 of the cluster size) unless it refutes [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u64).range(3..=20))]
    gossip_suspicion_mult: Option<u64>,
    /// How long to keep trying to reach the seed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    join_timeout: Duration,
    /// Build a snapshot after this many log entries.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_threshold: u64,
    /// Log entries kept after a snapshot for followers that lag a little.
    #[arg(long, default_value_t = 5_000)]
    snapshot_keep_logs: u64,
    /// Pods the agent works on at once (creating, starting, stopping their containers).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pod_workers: u16,
    /// How long pods tolerate, by default, their node being unreachable or not ready before
    /// they are evicted and replaced elsewhere (Kubernetes: 300 s).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    default_toleration_seconds: u64,
    /// Changes kept in memory for watchers; an older watch start gets "compacted".
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    watch_window: u64,
    /// Port of the node's DNS server (UDP and TCP) on the advertised address; 0 picks a
    /// free one. Pods reach it at 10.96.0.10:53.
    #[arg(long, default_value_t = 53)]
    dns_port: u16,
    /// A resolver for names outside cluster.local, IP or IP:PORT (repeatable; default: the
    /// name servers of the host's /etc/resolv.conf; `none`: answer them SERVFAIL).
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]|none", value_parser = parse_upstream)]
    dns_upstreams: Vec<Option<std::net::SocketAddr>>,
}

fn parse_upstream(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "none" {
        return Ok(None);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Some(std::net::SocketAddr::new(ip, 53)));
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("expected IP, IP:PORT or none, got {s:?}"))
}

impl NodeArgs {
    /// The node's DNS server: cluster.local and the reverse zones of the service and pod
    /// networks.
    fn dns(&self, advertise: IpAddr) -> flotilla_dns::DnsConfig {
        let upstreams = if self.dns_upstreams.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            flotilla_dns::forward::upstreams_from_resolv_conf(&text, &[advertise])
        } else {
            self.dns_upstreams.iter().flatten().copied().collect()
        };
        flotilla_dns::DnsConfig {
            listen: std::net::SocketAddr::new(advertise, self.dns_port),
            upstreams,
            zones: flotilla_dns::Zones {
                domain: flotilla_dns::CLUSTER_DOMAIN.into(),
                reverse: vec!["96.10.in-addr.arpa".into(), "244.10.in-addr.arpa".into()],
            },
            workers: 2,
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    let valid_key = !k.is_empty()
        && k.len() <= 253
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let valid_value = v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_key || !valid_value {
        return Err(format!(
            "{s:?} is not a valid label (KEY=VALUE of letters, digits, '-', '_', '.')"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

impl NodeArgs {
    fn config(&self) -> Result<NodeConfig, String> {
        if let Some(seed) = &self.join {
            let port_ok = seed
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!(
                    "invalid value '{seed}' for '--join <HOST:PORT>': expected HOST:PORT"
                ));
            }
        }
        let mut c = NodeConfig::new(&self.name, &self.data_dir, self.advertise);
        c.peer_port = self.peer_port;
        c.join = self.join.clone();
        c.token = self.token.clone();
        c.gossip_port = self.gossip_port;
        c.autopilot = flotilla_raft::AutopilotConfig {
            stabilization: self.stabilization,
            dead_learner_timeout: self.dead_learner_timeout,
        };
        c.join_timeout = self.join_timeout;
        c.snapshot_threshold = self.snapshot_threshold;
        c.snapshot_keep_logs = self.snapshot_keep_logs;
        c.watch_window = self.watch_window as usize;
        Ok(c)
    }
}

/// The node's runtime threads: the flag, else `TOKIO_WORKER_THREADS`, else half the cores (at
/// least one). A node shares its machine with the pods it runs, and every worker thread more
/// than the work needs costs wake-ups and context switches. Gossip has a thread of its own
/// (see `gossip.rs`), so failure detection does not wait on this runtime.
fn node_worker_threads(flag: Option<u16>) -> Option<usize> {
    if let Some(n) = flag {
        return Some(n.into());
    }
    // Set, tokio reads it itself.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Some((cores / 2).max(1))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: creating a container clones this process.
    let cli = match cli.command {
        Command::Runtime(args) => {
            let code = runtime_cli::run(args);
            let _ = std::io::Write::flush(&mut std::io::stdout());
            // Skips the exit handlers: RocksDB's C++ static destructors cost every container
            // command a little, and nothing is left to flush.
            flotilla_sys::exit_now(code)
        }
        command => Cli { command },
    };
    flotilla_util::init_tracing("info,openraft=error,h2=warn,tower=warn");
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Node(args) = &cli.command {
        if let Some(n) = node_worker_threads(args.worker_threads) {
            builder.worker_threads(n);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("flotilla: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Node(args) => runtime.block_on(run_node(*args)),
        Command::Token(args) => runtime.block_on(token::run(args)),
        Command::Status(args) => runtime.block_on(status::status(args)),
        Command::Members(args) => runtime.block_on(status::members(args)),
        Command::Up(args) => runtime.block_on(up::run(args)),
        Command::Leave(args) => runtime.block_on(leave::run(args)),
        Command::Kubeconfig(args) => kubeconfig::run(args),
        Command::Image(args) => image_cli::run(args),
        Command::Snapshot(args) => runtime.block_on(snapshot_cli::run(args)),
        Command::Runtime(_) => unreachable!("handled before the async runtime starts"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("flotilla: error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(args: NodeArgs) -> Result<(), String> {
    let defaults = Timing::default();
    let timing = Timing {
        probe_interval: args
            .gossip_probe_interval
            .unwrap_or(defaults.probe_interval),
        probe_timeout: args.gossip_probe_timeout.unwrap_or(defaults.probe_timeout),
        suspicion_mult: args
            .gossip_suspicion_mult
            .map_or(defaults.suspicion_mult, |m| m as usize),
        ..defaults
    };
    if timing.probe_timeout >= timing.probe_interval {
        return Err(
            "--gossip-probe-timeout must be shorter than --gossip-probe-interval (indirect probes need the rest of the interval)"
                .into(),
        );
    }
    if args.image_gc_low_threshold >= args.image_gc_high_threshold {
        return Err(format!(
            "--image-gc-low-threshold ({}) must be below --image-gc-high-threshold ({})",
            args.image_gc_low_threshold, args.image_gc_high_threshold
        ));
    }
    let config = args.config()?;
    let data_dir = config.data_dir.clone();
    let advertise = config.advertise;
    // Bound before anything is written, so that a port in use changes nothing.
    let api_bind = std::net::SocketAddr::new(advertise, args.api_port);
    let api_listener =
        tokio::net::TcpListener::bind(api_bind)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => format!("API port {api_bind} is already in use"),
                _ => format!("cannot listen on {api_bind} for the API: {e}"),
            })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| format!("cannot read the API address: {e}"))?;
    let dns_stop = tokio_util::sync::CancellationToken::new();
    let _stop_dns = dns_stop.clone().drop_guard();
    let dns_listen = std::net::SocketAddr::new(advertise, args.dns_port);
    let dns = flotilla_dns::Dns::bind(args.dns(advertise), dns_stop)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => format!("DNS port {dns_listen} is already in use"),
            _ => format!("cannot listen on {dns_listen} for DNS: {e}"),
        })?;
    let tunnel_bind = std::net::SocketAddr::new(advertise, args.tunnel_port);
    let tunnel_socket = std::net::UdpSocket::bind(tunnel_bind).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("tunnel port {tunnel_bind}/udp is already in use (--tunnel-port)")
        }
        _ => format!("cannot listen on {tunnel_bind}/udp for the tunnel: {e}"),
    })?;
    let tunnel_port = tunnel_socket
        .local_addr()
        .map_err(|e| format!("cannot read the tunnel address: {e}"))?
        .port();
    let mut info = NodeInfo::of_host(
        &config.name,
        &advertise.to_string(),
        args.labels.iter().cloned().collect(),
    );
    info.agent = flotilla_sys::can_administer();
    info.stream_port = tunnel_port;
    flotilla_api::kinds::set_default_toleration_seconds(args.default_toleration_seconds as i64);
    let _ = std::fs::create_dir_all(&data_dir);
    info.storage_bytes = flotilla_sys::fs::capacity(&data_dir).map_or(0, |(total, _)| total);
    let member = Member::start(MemberConfig {
        raft: config,
        timing,
        info: info.clone(),
        api_addr,
    })
    .await?;
    let node = Arc::clone(&member.node);
    dns.follow(Arc::new(node.replica.clone()));
    let pki = flotilla_pki::NodePki::load(&data_dir)
        .map_err(|e| format!("cannot read the node's credentials: {e}"))?
        .ok_or("no credentials under the data dir")?;
    let identity = flotilla_pki::Credential {
        cert_pem: pki.chain_pem(),
        key_pem: pki.node.key_pem.clone(),
    };
    let tunnel = Arc::new(
        flotilla_tunnel::Tunnel::on_socket(tunnel_socket, &pki.ca_pem, &identity)
            .map_err(|e| format!("cannot start the tunnel: {e}"))?,
    );
    agent::spawn(
        Arc::clone(&node),
        &data_dir,
        &info,
        args.pod_workers as usize,
        agent::ProxyInputs {
            // Pods reach the cluster's DNS and API at this node's own servers.
            local: [
                (
                    ("kube-system".to_string(), "kube-dns".to_string()),
                    dns.serving.udp,
                ),
                (("default".to_string(), "kubernetes".to_string()), api_addr),
            ]
            .into(),
            members: member.members.clone(),
        },
        agent::ImageSources {
            tunnel: Arc::clone(&tunnel),
            peers: args.peer_fetch,
            insecure_registries: args.insecure_registries.clone(),
            gc: flotilla_runtime::gc::GcPolicy {
                high_percent: args.image_gc_high_threshold,
                low_percent: args.image_gc_low_threshold,
                min_age: args.image_minimum_gc_age,
            },
        },
        member.stopping(),
    );
    if info.agent {
        let binary =
            std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let root = agent::Layout::of(&data_dir).runtime;
        let usage = Arc::new(flotilla_agent::metrics::Sampler::default());
        tokio::spawn(Arc::clone(&usage).run(
            root.clone(),
            Duration::from_secs(5),
            member.stopping(),
        ));
        tunnel.serve(
            Arc::new(flotilla_agent::streams::PodStreams {
                binary,
                root,
                usage,
                images: agent::Layout::of(&data_dir).images,
            }),
            member.stopping(),
        );
    }
    let api_config = flotilla_apiserver::ApiConfig {
        engine: Arc::new(node.replica.clone()),
        proposer: Arc::clone(&node) as Arc<dyn flotilla_store::Proposer>,
        window: Arc::clone(flotilla_store::Engine::window(&node.replica)),
        ca_pem: pki.ca_pem.clone(),
        identity,
        advertise: api_addr,
        metrics: Arc::default(),
        gauges: node_gauges(Arc::clone(&node), member.leader_loops.clone()),
        tunnel: Some(Arc::clone(&tunnel)),
    };
    tokio::spawn({
        let stop = member.stopping();
        async move {
            if let Err(err) = flotilla_apiserver::serve(api_listener, api_config, stop).await {
                tracing::error!(%err, "the API server stopped");
            }
        }
    });
    let status = node.status();
    tracing::info!(name = %node.name, id = %node.id, addr = %node.addr, cluster = %node.cluster_id, role = %status.role, allocator = flotilla_sys::alloc::name(), "node ready");
    // One machine-readable line on stdout for tools and tests.
    let mut ready = serde_json::json!({
        "event": "ready",
        "name": node.name,
        "node_id": node.id,
        "peer_addr": node.addr,
        "api_addr": api_addr.to_string(),
        "dns_addr": dns.serving.udp.to_string(),
        "cluster_id": node.cluster_id,
    });
    if let Some(token) = &member.join_token {
        // Printed once, when bootstrap creates it, as `kubeadm init` prints its join command.
        ready["join_token"] = token.to_string().into();
        ready["kubeconfig"] = admin::kubeconfig_path(&data_dir)
            .display()
            .to_string()
            .into();
    }
    println!("{ready}");

    let step_down = tokio::select! {
        signal = wait_for_signal() => {
            signal.map_err(|e| format!("cannot listen for signals: {e}"))?;
            tracing::info!("shutting down");
            true
        }
        // `flotilla leave`: leadership is handed over and the membership changed already.
        _ = node.left.cancelled() => {
            tracing::info!("left the cluster; shutting down");
            false
        }
    };
    member.shutdown(step_down).await;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
