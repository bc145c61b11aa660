//! The cluster builder for end-to-end tests: real `flotilla node` processes, each with its own
//! RocksDB in a temp dir, started, killed with SIGKILL and restarted. By default they share
//! loopback with ports picked by the kernel; in a lab ([`Options::in_lab`]) each has its own
//! network namespace and address on a bridge, so the network between them can be cut.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_lab::LabNet;
use flotilla_rpc::{StoreClient, Tls};
pub use flotilla_util::{wait_until, wait_until_blocking};

mod clients;
mod containers;
mod registry;

pub use clients::{admin_tls, kube_client, run_cli, run_to_exit, Finished, Kubectl};
pub use containers::{busybox_archive, busybox_bundle, busybox_rootfs, runtime_cli, spec_bundle};
pub use registry::Registry;

/// Whether `check` holds within `timeout`, polled from a blocking thread.
pub fn eventually(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    wait_until_blocking(timeout, || check().then_some(())).is_some()
}

/// The `flotilla` binary under test: `$FLOTILLA_BIN`, or the one built beside this test binary.
pub fn flotilla_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FLOTILLA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/flotilla
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("flotilla"))
        .expect("test binary lives in target/<profile>/deps");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bin flotilla`, as `make test` does) or set FLOTILLA_BIN",
        bin.display()
    );
    bin
}

/// Extra flags for every node of a cluster.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub extra_args: Vec<String>,
    /// Each node in its own network namespace of a lab (needs root, `ip` and `nft`).
    pub lab: bool,
    /// Environment variables for every node (`FLOTILLA_FAILPOINTS`, `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl Options {
    pub fn in_lab(mut self) -> Self {
        self.lab = true;
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.extra_args.push(flag.to_string());
        self.extra_args.push(value.to_string());
        self
    }
}

/// One node process.
pub struct NodeProc {
    pub name: String,
    pub data_dir: PathBuf,
    pub addr: String,
    /// `host:port` of the node's Kubernetes API (HTTPS).
    pub api_addr: String,
    pub node_id: u64,
    args: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }
}

/// What a node prints on stdout once it is a member.
struct Ready {
    addr: String,
    api_addr: String,
    node_id: u64,
    /// Printed by the bootstrap node only.
    join_token: Option<String>,
    kubeconfig: Option<PathBuf>,
}

/// Starts `flotilla` with `args` (inside node `netns`'s namespace of `lab`, if given);
/// returns the child once it printed its ready line.
fn spawn(
    lab: Option<(&LabNet, usize)>,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<(Child, Ready)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut command = match lab {
        Some((lab, i)) => lab.command(i, &flotilla_bin())?,
        None => Command::new(flotilla_bin()),
    };
    let mut child = command
        .args(args)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .context("spawn flotilla")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Some(Ok(line))) => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "node did not become ready ({other:?}); log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    };
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("ready line {line:?}"))?;
    Ok((
        child,
        Ready {
            addr: v["peer_addr"]
                .as_str()
                .ok_or_else(|| anyhow!("no peer_addr in {line}"))?
                .to_string(),
            api_addr: v["api_addr"]
                .as_str()
                .ok_or_else(|| anyhow!("no api_addr in {line}"))?
                .to_string(),
            node_id: v["node_id"]
                .as_u64()
                .ok_or_else(|| anyhow!("no node_id in {line}"))?,
            join_token: v["join_token"].as_str().map(str::to_string),
            kubeconfig: v["kubeconfig"].as_str().map(PathBuf::from),
        },
    ))
}

/// One `flotilla node` process started outside a [`Cluster`] (a node restored from a backup,
/// say), killed when dropped.
pub struct Standalone {
    child: Child,
    pub addr: String,
    pub api_addr: String,
    pub node_id: u64,
    /// Printed when the node wrote a new admin kubeconfig and join token.
    pub join_token: Option<String>,
    pub kubeconfig: Option<PathBuf>,
}

impl Standalone {
    /// Runs `flotilla ARGS` (a `node` command) with its stderr in `log`; returns once it
    /// printed its ready line.
    pub async fn start(args: Vec<String>, log: PathBuf) -> Result<Standalone> {
        let (child, ready) =
            tokio::task::spawn_blocking(move || spawn(None, &args, &[], &log)).await??;
        Ok(Standalone {
            child,
            addr: ready.addr,
            api_addr: ready.api_addr,
            node_id: ready.node_id,
            join_token: ready.join_token,
            kubeconfig: ready.kubeconfig,
        })
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free on 127.0.0.1 when asked (for a flag that must name a port before the process
/// that binds it starts; the kernel picks it, no number is fixed).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on loopback")
}

/// A cluster of real node processes.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub options: Options,
    dir: tempfile::TempDir,
    /// The bootstrap token, for joining nodes.
    pub join_token: String,
    /// The admin kubeconfig bootstrap wrote.
    pub kubeconfig: PathBuf,
    /// The admin's credentials, for clients.
    pub tls: Option<Tls>,
    /// The lab network, when the nodes run in namespaces.
    pub lab: Option<LabNet>,
}

impl Cluster {
    /// Starts `n` nodes: the first bootstraps, the others join through it. Waits until the
    /// cluster has its full voter count (1 or 3 or 5).
    pub async fn start(n: usize, options: Options) -> Result<Cluster> {
        let lab = if options.lab {
            Some(tokio::task::spawn_blocking(LabNet::create).await??)
        } else {
            None
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            options,
            dir: tempfile::Builder::new().prefix("flotilla-e2e-").tempdir()?,
            join_token: String::new(),
            kubeconfig: PathBuf::new(),
            tls: None,
            lab,
        };
        for _ in 0..n {
            cluster.add_node().await?;
        }
        let voters = match n {
            0..=2 => 1,
            3 | 4 => 3,
            _ => 5,
        };
        cluster.wait_voters(voters).await?;
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts one more node, joining through the first.
    pub async fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        let name = format!("n{}", i + 1);
        let data_dir = self.dir.path().join(&name);
        let mut args: Vec<String> = [
            "node",
            "--name",
            &name,
            "--data-dir",
            data_dir.to_str().expect("utf-8 temp path"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(lab) = &mut self.lab {
            // Its own address: the default ports.
            let mut grown = lab.clone();
            let j =
                tokio::task::spawn_blocking(move || grown.add_node().map(|j| (j, grown))).await??;
            *lab = j.1;
            anyhow::ensure!(j.0 == i, "lab node {} for cluster node {i}", j.0);
            args.extend(["--advertise".into(), lab.addr(i).to_string()]);
        } else {
            args.extend(
                [
                    "--advertise",
                    "127.0.0.1",
                    "--peer-port",
                    "0",
                    "--gossip-port",
                    "0",
                    "--api-port",
                    "0",
                    "--dns-port",
                    "0",
                    "--tunnel-port",
                    "0",
                ]
                .map(String::from),
            );
        }
        // Names outside the cluster are never sent to the host's resolvers from a test (a
        // test that wants forwarding adds a stub upstream of its own).
        args.extend(["--dns-upstream".into(), "none".into()]);
        if i > 0 {
            args.push("--join".into());
            args.push(self.nodes[0].addr.clone());
            args.push("--token".into());
            args.push(self.join_token.clone());
        }
        args.extend(self.options.extra_args.iter().cloned());
        let log = data_dir.with_extension("log");
        let lab = self.lab.clone();
        let env = self.options.env.clone();
        let (child, ready) = tokio::task::spawn_blocking({
            let args = args.clone();
            move || spawn(lab.as_ref().map(|l| (l, i)), &args, &env, &log)
        })
        .await??;
        if i == 0 {
            self.join_token = ready
                .join_token
                .ok_or_else(|| anyhow!("the bootstrap node printed no join token"))?;
            self.kubeconfig = ready
                .kubeconfig
                .ok_or_else(|| anyhow!("the bootstrap node printed no kubeconfig"))?;
            self.tls = Some(admin_tls(&self.kubeconfig)?);
        }
        self.nodes.push(NodeProc {
            name,
            data_dir,
            addr: ready.addr,
            api_addr: ready.api_addr,
            node_id: ready.node_id,
            args,
            child: Some(child),
        });
        Ok(i)
    }

    pub fn client(&self, i: usize) -> StoreClient {
        let tls = self.tls.as_ref().expect("the cluster has a bootstrap node");
        StoreClient::new(&self.nodes[i].addr, Duration::from_secs(15), tls)
            .expect("valid node address")
    }

    /// Clients of the running nodes.
    pub fn live_clients(&self) -> Vec<StoreClient> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .map(|i| self.client(i))
            .collect()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for node `i` to exit by itself (up to `timeout`); returns its exit status.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let child = self.nodes[i]
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("node {i} not running"))?;
        let status = wait_until(timeout, || {
            let exited = child.try_wait().ok().flatten();
            async move { exited }
        })
        .await;
        match status {
            Some(status) => {
                self.nodes[i].child = None;
                Ok(status)
            }
            None => bail!("node {i} still runs after {timeout:?}"),
        }
    }

    /// SIGSTOP (`pause`) or SIGCONT node `i`: a hung process that keeps its sockets.
    pub fn signal(&self, i: usize, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.nodes[i]
            .pid()
            .ok_or_else(|| anyhow!("node {i} not running"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// SIGTERM node `i` and wait for it to exit; returns its exit status.
    pub fn terminate(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let mut child = self.nodes[i]
            .child
            .take()
            .ok_or_else(|| anyhow!("node {i} not running"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(child.wait()?)
    }

    /// Restarts node `i` from its data dir with its original flags.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        anyhow::ensure!(!self.nodes[i].is_running(), "node {i} is still running");
        let args = self.nodes[i].args.clone();
        let log = self.nodes[i].log_path();
        let lab = self.lab.clone();
        let env = self.options.env.clone();
        let (child, ready) = tokio::task::spawn_blocking(move || {
            spawn(lab.as_ref().map(|l| (l, i)), &args, &env, &log)
        })
        .await??;
        anyhow::ensure!(
            ready.node_id == self.nodes[i].node_id,
            "restart changed the node id"
        );
        self.nodes[i].addr = ready.addr;
        self.nodes[i].api_addr = ready.api_addr;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// The index of the running node that every running node agrees is the leader.
    pub async fn leader(&self) -> Result<usize> {
        let clients = self.live_clients();
        let running: Vec<(u64, usize)> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .map(|i| (self.nodes[i].node_id, i))
            .collect();
        wait_until(Duration::from_secs(30), || {
            let clients = clients.clone();
            let running = running.clone();
            async move {
                let mut leader = None;
                for c in &clients {
                    let l = c.status().await.ok()?.leader_id?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                // Right after a kill the survivors may still name the dead leader.
                running
                    .iter()
                    .find(|(id, _)| Some(*id) == leader)
                    .map(|(_, i)| *i)
            }
        })
        .await
        .ok_or_else(|| anyhow!("the running nodes did not agree on a running leader within 30 s"))
    }

    /// Waits until the membership has `n` voters.
    pub async fn wait_voters(&self, n: usize) -> Result<()> {
        let client = self.client(
            self.nodes
                .iter()
                .position(|n| n.is_running())
                .expect("a running node"),
        );
        wait_until(Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let s = client.status().await.ok()?;
                (s.members.iter().filter(|m| m.voter).count() == n).then_some(())
            }
        })
        .await
        .ok_or_else(|| anyhow!("the cluster did not reach {n} voters within 30 s"))
    }

    /// Waits until every running node's gossip sees every member alive.
    pub async fn wait_gossip_alive(&self, timeout: Duration) -> Result<()> {
        let clients = self.live_clients();
        let members = self.nodes.len();
        wait_until(timeout, || {
            let clients = clients.clone();
            async move {
                for c in &clients {
                    let s = c.status().await.ok()?;
                    let all =
                        s.members.len() == members && s.members.iter().all(|m| m.gossip == "alive");
                    if !all {
                        return None;
                    }
                }
                Some(())
            }
        })
        .await
        .ok_or_else(|| anyhow!("gossip did not see every member alive within {timeout:?}"))
    }

    /// Waits until every running node has applied the same index and holds the same data;
    /// returns the digest.
    pub async fn converged(&self) -> Result<flotilla_rpc::pb::DigestResponse> {
        let clients = self.live_clients();
        wait_until(Duration::from_secs(60), || {
            let clients = clients.clone();
            async move {
                let mut first: Option<flotilla_rpc::pb::DigestResponse> = None;
                for c in &clients {
                    let d = c.digest().await.ok()?;
                    match &first {
                        None => first = Some(d),
                        Some(f) if f.revision == d.revision && f.digest == d.digest => {}
                        Some(_) => return None,
                    }
                }
                first
            }
        })
        .await
        .ok_or_else(|| anyhow!("the nodes did not converge on one digest within 60 s"))
    }

    /// The last lines of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default();
        let mut tail: Vec<&str> = text.lines().rev().take(lines).collect();
        tail.reverse();
        tail.join("\n")
    }
}

impl Cluster {
    /// Cuts the lab's network into `groups` of node indexes (see [`LabNet::partition`]).
    pub async fn partition(&self, groups: &[Vec<usize>]) -> Result<()> {
        let lab = self
            .lab
            .clone()
            .ok_or_else(|| anyhow!("partitions need a lab cluster"))?;
        let groups = groups.to_vec();
        Ok(tokio::task::spawn_blocking(move || lab.partition(&groups)).await??)
    }

    /// Removes every partition.
    pub async fn heal(&self) -> Result<()> {
        let lab = self
            .lab
            .clone()
            .ok_or_else(|| anyhow!("partitions need a lab cluster"))?;
        Ok(tokio::task::spawn_blocking(move || lab.heal()).await??)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for n in &self.nodes {
            flotilla_lab::clean_pods(&flotilla_bin(), &n.data_dir);
        }
        if let Some(lab) = &self.lab {
            if let Err(e) = lab.destroy() {
                eprintln!("cannot remove lab {}: {e}", lab.bridge());
            }
        }
    }
}
