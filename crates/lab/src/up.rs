//! `flotilla up`: a local cluster of real `flotilla node` processes, each in its own network
//! namespace of a [`LabNet`], all state under one directory.
//!
//! The directory holds `lab.json` (the slot and the nodes, written before anything is created
//! so that `--down` can undo a start that crashed half-way), one data dir per node, their
//! stdout (`nI.out`, the ready line) and logs (`nI.log`), and the admin `kubeconfig`, which
//! names every node. A start that fails removes all it made.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flotilla_pki::{Credential, Kubeconfig};
use flotilla_rpc::{StoreClient, Tls};
use serde::{Deserialize, Serialize};

use flotilla_api::cluster::{ready_status, target_voters, NODES_PREFIX};

use crate::net::{LabError, LabNet, MAX_NODES};

/// The state file inside the lab's directory.
pub const STATE_FILE: &str = "lab.json";
/// The admin kubeconfig inside the lab's directory.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// How long one node may take to print its ready line.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("--nodes must be between 1 and {MAX_NODES}, not {0}")]
    NodeCount(usize),
    #[error("{dir} already holds a lab (its {STATE_FILE}); stop it first: flotilla up --down --dir {dir}")]
    AlreadyUp { dir: String },
    #[error("cannot use {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Net(#[from] LabError),
    #[error("node {name} did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    NodeStart {
        name: String,
        reason: String,
        log: String,
        tail: String,
    },
    #[error("the cluster did not settle within {0:?}: {1}")]
    Settle(Duration, String),
    #[error("{path} is not a lab state file: {reason}")]
    State { path: String, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> UpError + '_ {
    move |source| UpError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What `lab.json` records.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    net: LabNet,
    /// Names of the nodes started so far, in order.
    nodes: Vec<String>,
}

impl State {
    fn save(&self, dir: &Path) -> Result<(), UpError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    fn load(dir: &Path) -> Result<Option<State>, UpError> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| UpError::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }
}

/// What to start.
#[derive(Clone, Debug)]
pub struct UpConfig {
    pub nodes: usize,
    pub dir: PathBuf,
    /// The `flotilla` binary the nodes run.
    pub flotilla: PathBuf,
    /// Extra flags for every `flotilla node`.
    pub node_args: Vec<String>,
    /// Images (name, archive) imported into every node's image store before it starts.
    pub images: Vec<(String, PathBuf)>,
}

/// A started lab.
#[derive(Debug, Serialize)]
pub struct Up {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub join_token: String,
    pub bridge: String,
    /// (name, address) of every node.
    pub nodes: Vec<(String, String)>,
    pub leader: Option<String>,
    pub voters: usize,
}

/// Starts the lab; on failure removes everything it made.
pub async fn up(config: UpConfig) -> Result<Up, UpError> {
    if config.nodes == 0 || config.nodes > MAX_NODES {
        return Err(UpError::NodeCount(config.nodes));
    }
    std::fs::create_dir_all(&config.dir).map_err(io_err(&config.dir))?;
    let dir = config.dir.canonicalize().map_err(io_err(&config.dir))?;
    if State::load(&dir)?.is_some() {
        return Err(UpError::AlreadyUp {
            dir: dir.display().to_string(),
        });
    }
    let started = start(&dir, &config).await;
    if started.is_err() {
        let _ = down(&dir).await;
    }
    started
}

async fn start(dir: &Path, config: &UpConfig) -> Result<Up, UpError> {
    let net = tokio::task::spawn_blocking(LabNet::create)
        .await
        .expect("lab task")?;
    let mut state = State {
        net,
        nodes: Vec::new(),
    };
    state.save(dir)?;
    let mut join: Option<(String, String)> = None;
    let mut peers = Vec::new();
    let mut kubeconfig_path = None;
    for _ in 0..config.nodes {
        let mut net = state.net.clone();
        let i = tokio::task::spawn_blocking(move || net.add_node().map(|i| (i, net)))
            .await
            .expect("lab task")
            .map(|(i, net)| {
                state.net = net;
                i
            })?;
        let name = format!("n{}", i + 1);
        state.nodes.push(name.clone());
        state.save(dir)?;
        let ready = start_node(dir, config, &state.net, i, &name, join.as_ref()).await?;
        peers.push(ready.peer_addr.clone());
        if i == 0 {
            let token = ready.join_token.ok_or_else(|| UpError::NodeStart {
                name: name.clone(),
                reason: "the bootstrap node printed no join token".into(),
                log: dir.join(format!("{name}.log")).display().to_string(),
                tail: String::new(),
            })?;
            kubeconfig_path = ready.kubeconfig;
            join = Some((ready.peer_addr, token));
        }
    }
    let (_, join_token) = join.expect("at least one node");
    let source = kubeconfig_path.ok_or_else(|| UpError::NodeStart {
        name: "n1".into(),
        reason: "the bootstrap node printed no kubeconfig".into(),
        log: dir.join("n1.log").display().to_string(),
        tail: String::new(),
    })?;
    let mut kubeconfig = Kubeconfig::load(&source).map_err(|e| UpError::State {
        path: source.display().to_string(),
        reason: e.to_string(),
    })?;
    // Every node, so that the CLI finds the cluster while any one of them is up.
    kubeconfig.peers = peers;
    let kubeconfig_file = dir.join(KUBECONFIG_FILE);
    kubeconfig
        .save(&kubeconfig_file)
        .map_err(io_err(&kubeconfig_file))?;
    let (leader, voters) = settle(&kubeconfig, config.nodes, Duration::from_secs(90)).await?;
    Ok(Up {
        dir: dir.to_path_buf(),
        kubeconfig: kubeconfig_file,
        join_token,
        bridge: state.net.bridge(),
        nodes: state
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), state.net.addr(i).to_string()))
            .collect(),
        leader,
        voters,
    })
}

/// What a node prints on stdout once it is a member.
#[derive(Deserialize)]
struct Ready {
    peer_addr: String,
    join_token: Option<String>,
    kubeconfig: Option<PathBuf>,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.reverse();
    last.join("\n")
}

/// Starts node `i` detached (its own process group, output to files) and waits for its ready
/// line.
async fn start_node(
    dir: &Path,
    config: &UpConfig,
    net: &LabNet,
    i: usize,
    name: &str,
    join: Option<&(String, String)>,
) -> Result<Ready, UpError> {
    use std::os::unix::process::CommandExt;
    let images = flotilla_runtime::images::ImageStore::new(dir.join(name).join("images"));
    for (image, archive) in &config.images {
        images.import(archive, image).map_err(|e| UpError::Io {
            path: archive.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let out_path = dir.join(format!("{name}.out"));
    let log_path = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&out_path).map_err(io_err(&out_path))?;
    let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
    let mut command = net.command(i, &config.flotilla)?;
    command
        .arg("node")
        .arg("--name")
        .arg(name)
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg("--advertise")
        .arg(net.addr(i).to_string());
    if let Some((seed, token)) = join {
        command.args(["--join", seed, "--token", token]);
    }
    command
        .args(&config.node_args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log)
        // Its own process group: a Ctrl-C at `flotilla up` must not reach the nodes.
        .process_group(0);
    let mut child = command.spawn().map_err(|e| UpError::NodeStart {
        name: name.into(),
        reason: format!("cannot run {}: {e}", config.flotilla.display()),
        log: log_path.display().to_string(),
        tail: String::new(),
    })?;
    let failed = |reason: String| UpError::NodeStart {
        name: name.into(),
        reason,
        log: log_path.display().to_string(),
        tail: tail(&log_path, 15),
    };
    let deadline = Instant::now() + NODE_START_TIMEOUT;
    loop {
        if let Ok(file) = std::fs::File::open(&out_path) {
            if let Some(Ok(line)) = BufReader::new(file).lines().next() {
                if line.ends_with('}') {
                    return serde_json::from_str(&line)
                        .map_err(|e| failed(format!("unreadable ready line {line:?}: {e}")));
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(format!("it exited ({status})")));
        }
        if Instant::now() > deadline {
            return Err(failed(format!(
                "no ready line within {NODE_START_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the cluster has its voters, every node's Node object is Ready and the first
/// node's gossip sees every member alive; returns the leader's name and the voter count.
async fn settle(
    kubeconfig: &Kubeconfig,
    nodes: usize,
    timeout: Duration,
) -> Result<(Option<String>, usize), UpError> {
    let tls = Tls::new(
        &kubeconfig.ca_pem,
        Credential {
            cert_pem: kubeconfig.client.cert_pem.clone(),
            key_pem: kubeconfig.client.key_pem.clone(),
        },
    );
    let client = StoreClient::new(&kubeconfig.peers[0], Duration::from_secs(5), &tls)
        .map_err(|e| UpError::Settle(timeout, e.to_string()))?;
    let want = target_voters(nodes);
    let last = std::sync::Mutex::new(String::from("no answer yet"));
    let settled = flotilla_util::wait_until(timeout, || {
        let client = client.clone();
        let last = &last;
        async move {
            let note = |s: String| *last.lock().unwrap_or_else(|p| p.into_inner()) = s;
            let status = match client.status().await {
                Ok(s) => s,
                Err(e) => {
                    note(e.to_string());
                    return None;
                }
            };
            let voters = status.members.iter().filter(|m| m.voter).count();
            let ready = client
                .list_all(NODES_PREFIX, true)
                .await
                .map(|objects| {
                    objects
                        .iter()
                        .filter_map(|(_, r)| serde_json::from_slice(&r.value).ok())
                        .filter(|v: &serde_json::Value| {
                            ready_status(v) == Some("True")
                        })
                        .count()
                })
                .unwrap_or(0);
            let alive = status
                .members
                .iter()
                .filter(|m| m.gossip == "alive")
                .count();
            note(format!(
                "{voters} of {want} voters, {ready} of {nodes} nodes Ready, {alive} of {nodes} alive in gossip"
            ));
            if voters != want || ready != nodes || alive != nodes {
                return None;
            }
            let leader = status
                .leader_id
                .and_then(|id| status.members.iter().find(|m| m.id == id))
                .map(|m| m.name.clone());
            Some((leader, voters))
        }
    })
    .await;
    settled.ok_or_else(|| {
        UpError::Settle(
            timeout,
            last.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        )
    })
}

/// Stops and removes the lab in `dir`: kills its nodes, removes its namespaces and bridge,
/// and the files it made (not `dir` itself unless that ends up empty). Returns the number of
/// nodes it had, or `None` when `dir` holds no lab.
pub async fn down(dir: &Path) -> Result<Option<usize>, UpError> {
    let Some(state) = State::load(dir)? else {
        return Ok(None);
    };
    let net = state.net.clone();
    tokio::task::spawn_blocking(move || net.destroy())
        .await
        .expect("lab task")?;
    let flotilla = std::env::current_exe().map_err(io_err(dir))?;
    for name in &state.nodes {
        clean_pods(&flotilla, &dir.join(name));
        remove(&dir.join(name))?;
        remove(&dir.join(format!("{name}.out")))?;
        remove(&dir.join(format!("{name}.log")))?;
    }
    remove(&dir.join(KUBECONFIG_FILE))?;
    remove(&dir.join(STATE_FILE))?;
    // Only if nothing of the user's is in it.
    let _ = std::fs::remove_dir(dir);
    Ok(Some(state.nodes.len()))
}

/// Removes what node `data_dir`'s agent left running (containers, sandboxes, volume mounts),
/// once the node is stopped: `flotilla runtime clean`. Best effort: a failure is printed.
pub fn clean_pods(flotilla: &Path, data_dir: &Path) {
    let root = data_dir.join("runtime");
    if !root.exists() {
        return;
    }
    let out = std::process::Command::new(flotilla)
        .arg("runtime")
        .arg("--root")
        .arg(&root)
        .arg("clean")
        .arg("--volumes")
        .arg(data_dir.join("pods"))
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "cannot clean up the pods of {}: {}",
            data_dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("cannot clean up the pods of {}: {e}", data_dir.display()),
    }
}

fn remove(path: &Path) -> Result<(), UpError> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn down_without_a_lab_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine"), "keep").unwrap();
        assert!(down(dir.path()).await.unwrap().is_none());
        assert!(dir.path().join("mine").exists());
    }

    #[tokio::test]
    async fn a_second_up_in_the_same_dir_is_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            net: LabNet::adopt(3, 0),
            nodes: vec![],
        };
        state.save(dir.path()).unwrap();
        let err = up(UpConfig {
            nodes: 3,
            dir: dir.path().to_path_buf(),
            flotilla: PathBuf::from("/nonexistent/flotilla"),
            node_args: vec![],
            images: vec![],
        })
        .await
        .unwrap_err();
        assert!(matches!(err, UpError::AlreadyUp { .. }), "{err}");
        // The state file is untouched.
        assert!(dir.path().join(STATE_FILE).exists());
    }
}
