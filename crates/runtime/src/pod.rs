//! The seam between the node agent and the runtime: [`PodRuntime`], what the agent asks of a
//! node's runtime (pod sandboxes, containers, exec, logs, state), with the real
//! [`ProcessRuntime`] and an in-memory [`FakeRuntime`] for the agent's unit tests (no root).
//!
//! **How the real one is safe in a multi-threaded node.** Creating a container or a sandbox
//! clones the calling process (or unshares a thread), and the clone runs the container's init
//! sequence, which allocates: in a process with other threads that could deadlock on a lock a
//! vanished thread held. So every operation that clones, enters namespaces or forks
//! (sandbox create and delete, container create, start and delete, exec) runs as a child
//! process, `flotilla runtime …` of the node's own binary, which is single-threaded, as
//! containerd runs its shims. What only reads the runtime's state on disk, or sends a signal,
//! runs in the node on the blocking pool. The state is on disk, so a restarted node finds its
//! sandboxes and containers again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use flotilla_sys::Signal;

use crate::container::{Runtime, Status};
use crate::images::{ImageConfig, ImageStore};
use crate::sandbox::Sandbox;
use crate::RuntimeError;

/// A sandbox to create.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SandboxRequest {
    pub hostname: String,
    /// On the node's network (`hostNetwork`).
    pub host_network: bool,
    /// The pod's `/etc/resolv.conf`; none: the node network's.
    pub dns: Option<PodDns>,
}

/// What a pod's `/etc/resolv.conf` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodDns {
    pub nameservers: Vec<std::net::Ipv4Addr>,
    pub searches: Vec<String>,
    /// `ndots:5`, `edns0`.
    pub options: Vec<String>,
}

/// A container to create: an OCI bundle (its `config.json` says what runs, with what
/// environment, mounts and limits), in a sandbox, with an image of the node's store as its
/// root when set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerRequest {
    pub bundle: PathBuf,
    pub sandbox: Option<String>,
    pub image: Option<String>,
    /// The pod's `stdin` and `stdinOnce`: a stdin that `kubectl attach -i` writes.
    pub stdin: bool,
    pub stdin_once: bool,
}

/// How a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    /// The exit code, or 128 + the signal that killed it.
    pub code: i32,
    pub oom_killed: bool,
}

/// A container as the runtime has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub status: Status,
    pub pid: i32,
    pub sandbox: Option<String>,
    /// Set once it has stopped.
    pub ended: Option<Ended>,
    /// When its process started (its init was created), and when it ended.
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
}

/// What a command run with [`PodRuntime::exec`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: i32,
    /// Its standard output and error, in order.
    pub output: Vec<u8>,
}

/// What the node agent asks of the node's runtime. Ids are the agent's (a pod's sandbox, a
/// pod's container); every call is idempotent where Kubernetes' kubelet expects it (deleting
/// what is gone is not an error).
#[async_trait]
pub trait PodRuntime: Send + Sync {
    /// Creates sandbox `id`: network, IPC and UTS namespaces and an address (IPC only, with
    /// `host_network`).
    async fn create_sandbox(
        &self,
        id: &str,
        request: &SandboxRequest,
    ) -> Result<Sandbox, RuntimeError>;
    async fn sandbox(&self, id: &str) -> Result<Option<Sandbox>, RuntimeError>;
    /// Removes sandbox `id` with its containers (killed first); nothing if it is gone.
    async fn delete_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError>;

    async fn create_container(
        &self,
        id: &str,
        request: &ContainerRequest,
    ) -> Result<(), RuntimeError>;
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    async fn container(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError>;
    async fn containers(&self) -> Result<Vec<String>, RuntimeError>;
    async fn kill_container(&self, id: &str, signal: Signal) -> Result<(), RuntimeError>;
    /// Removes container `id` (killed first if it runs); nothing if it is gone.
    async fn delete_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Runs `command` in running container `id`, for at most `timeout`.
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;
    /// What container `id` has written so far (stdout and stderr, in order).
    async fn logs(&self, id: &str) -> Result<String, RuntimeError>;

    /// The node's image named `reference`, if it has it.
    async fn image(&self, reference: &str) -> Result<Option<ImageConfig>, RuntimeError>;
}

/// The node's network for its sandboxes.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    pub bridge: String,
    /// The node's pod CIDR, `10.244.N.0/24`.
    pub pod_cidr: String,
    pub ipam_dir: PathBuf,
    /// Name servers and search domains for the pods' `/etc/resolv.conf`.
    pub dns: Vec<std::net::Ipv4Addr>,
    pub search: Vec<String>,
}

/// The real runtime: the node's own binary as a child process for what clones or forks, the
/// state on disk for the rest (see the module's doc).
#[derive(Clone, Debug)]
pub struct ProcessRuntime {
    /// The `flotilla` binary (the node's own, `std::env::current_exe()`).
    pub binary: PathBuf,
    pub root: PathBuf,
    pub images: PathBuf,
    pub network: NodeNetwork,
}

impl ProcessRuntime {
    fn runtime(&self) -> Runtime {
        Runtime::new(&self.root)
    }

    /// Runs `flotilla runtime --root ROOT ARGS`; its stdout, or its error line as an error.
    async fn cli(&self, args: &[&str], timeout: Duration) -> Result<Vec<u8>, RuntimeError> {
        let run = tokio::process::Command::new(&self.binary)
            .arg("runtime")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, run).await.map_err(|_| {
            RuntimeError::State(format!(
                "flotilla runtime {} took over {timeout:?}",
                args[0]
            ))
        })??;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("flotilla: error: "))
            .unwrap_or(stderr.trim())
            .to_string();
        Err(RuntimeError::State(message))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Runtime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, RuntimeError> {
        let rt = self.runtime();
        tokio::task::spawn_blocking(move || f(rt))
            .await
            .map_err(|e| RuntimeError::State(format!("runtime task: {e}")))?
    }
}

/// How long a runtime command may take (a sandbox's network, a container's root).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

#[async_trait]
impl PodRuntime for ProcessRuntime {
    async fn create_sandbox(
        &self,
        id: &str,
        request: &SandboxRequest,
    ) -> Result<Sandbox, RuntimeError> {
        let net = &self.network;
        let ipam = net.ipam_dir.display().to_string();
        let mut args = vec![
            "sandbox",
            "create",
            "--hostname",
            &request.hostname,
            "--bridge",
            &net.bridge,
            "--pod-cidr",
            &net.pod_cidr,
            "--ipam-dir",
            &ipam,
        ];
        let node_dns = PodDns {
            nameservers: net.dns.clone(),
            searches: net.search.clone(),
            options: Vec::new(),
        };
        let dns = request.dns.as_ref().unwrap_or(&node_dns);
        let servers: Vec<String> = dns.nameservers.iter().map(|d| d.to_string()).collect();
        for d in &servers {
            args.extend(["--dns", d.as_str()]);
        }
        for s in &dns.searches {
            args.extend(["--search", s.as_str()]);
        }
        for o in &dns.options {
            args.extend(["--dns-option", o.as_str()]);
        }
        if request.host_network {
            args.push("--host-network");
        }
        args.push(id);
        let out = self.cli(&args, COMMAND_TIMEOUT).await?;
        serde_json::from_slice(&out)
            .map_err(|e| RuntimeError::State(format!("sandbox create printed no sandbox: {e}")))
    }

    async fn sandbox(&self, id: &str) -> Result<Option<Sandbox>, RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| match rt.sandbox(&id) {
            Ok(s) => Ok(Some(s)),
            Err(RuntimeError::NoSandbox(_)) => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }

    async fn delete_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        if self.sandbox(id).await?.is_none() {
            return Ok(());
        }
        self.cli(&["sandbox", "delete", "--force", id], COMMAND_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        self.blocking(|rt| {
            let dir = rt.root.join(".sandboxes");
            let mut ids: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            ids.sort();
            Ok(ids)
        })
        .await
    }

    async fn create_container(
        &self,
        id: &str,
        request: &ContainerRequest,
    ) -> Result<(), RuntimeError> {
        let bundle = request.bundle.display().to_string();
        let images = self.images.display().to_string();
        let mut args = vec!["create", "--bundle", &bundle];
        if let Some(s) = &request.sandbox {
            args.extend(["--sandbox", s.as_str()]);
        }
        if let Some(i) = &request.image {
            args.extend(["--image", i.as_str(), "--images", &images]);
        }
        if request.stdin {
            args.push("--stdin");
        }
        if request.stdin_once {
            args.push("--stdin-once");
        }
        args.push(id);
        self.cli(&args, COMMAND_TIMEOUT).await.map(|_| ())
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.cli(&["start", id], COMMAND_TIMEOUT).await.map(|_| ())
    }

    async fn container(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| {
            let (state, status) = match rt.state(&id) {
                Ok(s) => s,
                Err(RuntimeError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            let ended = rt.exit(&id)?.map(|e| Ended {
                code: e.status.code(),
                oom_killed: e.oom_killed,
            });
            let finished_at = ended
                .and_then(|_| rt.root.join(&id).join("exit.json").metadata().ok())
                .and_then(|m| m.modified().ok());
            Ok(Some(ContainerState {
                id,
                status,
                pid: state.pid,
                sandbox: state.sandbox,
                ended,
                started_at: flotilla_sys::ticks_to_time(state.start_ticks),
                finished_at,
            }))
        })
        .await
    }

    async fn containers(&self) -> Result<Vec<String>, RuntimeError> {
        self.blocking(|rt| Ok(rt.list())).await
    }

    async fn kill_container(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| rt.kill(&id, signal)).await
    }

    async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        if self.container(id).await?.is_none() {
            return Ok(());
        }
        self.cli(&["delete", "--force", id], COMMAND_TIMEOUT)
            .await
            .map(|_| ())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let run = tokio::process::Command::new(&self.binary)
            .arg("runtime")
            .arg("--root")
            .arg(&self.root)
            .args(["exec", id, "--"])
            .args(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| RuntimeError::State(format!("exec in {id} took over {timeout:?}")))??;
        let mut output = out.stdout;
        output.extend(out.stderr);
        Ok(ExecOutput {
            code: out.status.code().unwrap_or(128 + 9),
            output,
        })
    }

    async fn logs(&self, id: &str) -> Result<String, RuntimeError> {
        let id = id.to_string();
        self.blocking(move |rt| {
            let path = rt.log_path(&id)?;
            let (lines, _) = crate::logs::read_from(&path, 0, false)?;
            Ok(lines.into_iter().map(|l| l + "\n").collect())
        })
        .await
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageConfig>, RuntimeError> {
        let store = ImageStore::new(&self.images);
        let reference = reference.to_string();
        tokio::task::spawn_blocking(move || store.image_config(&reference))
            .await
            .map_err(|e| RuntimeError::State(format!("runtime task: {e}")))?
    }
}

/// An in-memory runtime for the agent's unit tests: it records what it was asked, runs
/// nothing, and lets the test end containers and fail calls.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<FakeState>>,
}

#[derive(Default)]
struct FakeState {
    sandboxes: BTreeMap<String, Sandbox>,
    containers: BTreeMap<String, ContainerState>,
    logs: BTreeMap<String, String>,
    /// Every call, as `verb id`.
    calls: Vec<String>,
    /// The next call of this verb fails with this message.
    failures: BTreeMap<String, String>,
    next_pid: i32,
    images: BTreeMap<String, ImageConfig>,
    /// The output and code of `exec`, by the command's first word.
    exec_results: BTreeMap<String, ExecOutput>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, as `verb id` (`create-sandbox p1`, `start c1`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The next call of `verb` fails with `message`.
    pub fn fail_next(&self, verb: &str, message: &str) {
        self.lock()
            .failures
            .insert(verb.to_string(), message.to_string());
    }

    /// Container `id` ends with `code` (as if its process exited).
    pub fn end(&self, id: &str, code: i32, oom_killed: bool) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.status = Status::Stopped;
            c.ended = Some(Ended { code, oom_killed });
            c.finished_at = Some(SystemTime::now());
        }
    }

    /// The node has image `reference`, running `cmd` by default.
    pub fn add_image(&self, reference: &str, cmd: &[&str]) {
        let config = ImageConfig {
            manifest: format!("sha256:{:064x}", self.lock().images.len() + 1),
            config_digest: format!("sha256:{:064x}", self.lock().images.len() + 100),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            ..ImageConfig::default()
        };
        self.lock().images.insert(reference.to_string(), config);
    }

    /// From now on `exec` of a command whose first word is `program` answers `code`, `output`.
    pub fn exec_answers(&self, program: &str, code: i32, output: &str) {
        self.lock().exec_results.insert(
            program.to_string(),
            ExecOutput {
                code,
                output: output.as_bytes().to_vec(),
            },
        );
    }

    /// Appends to container `id`'s log.
    pub fn write_log(&self, id: &str, text: &str) {
        self.lock()
            .logs
            .entry(id.to_string())
            .or_default()
            .push_str(text);
    }

    fn call(&self, verb: &str, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        s.calls.push(format!("{verb} {id}"));
        match s.failures.remove(verb) {
            Some(message) => Err(RuntimeError::State(message)),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl PodRuntime for FakeRuntime {
    async fn create_sandbox(
        &self,
        id: &str,
        request: &SandboxRequest,
    ) -> Result<Sandbox, RuntimeError> {
        self.call("create-sandbox", id)?;
        let mut s = self.lock();
        if s.sandboxes.contains_key(id) {
            return Err(RuntimeError::SandboxExists(id.to_string()));
        }
        let n = s.sandboxes.len() as u8 + 2;
        let sandbox = Sandbox {
            id: id.to_string(),
            hostname: request.hostname.clone(),
            ip: if request.host_network {
                std::net::Ipv4Addr::UNSPECIFIED
            } else {
                std::net::Ipv4Addr::new(10, 244, 0, n)
            },
            gateway: std::net::Ipv4Addr::new(10, 244, 0, 1),
            bridge: "flt0".into(),
            veth: format!("veth{n}"),
            ipam_dir: PathBuf::from("/fake/ipam"),
            cidr: "10.244.0.0/24".into(),
            dir: PathBuf::from("/fake/sandboxes").join(id),
            host_network: request.host_network,
        };
        s.sandboxes.insert(id.to_string(), sandbox.clone());
        Ok(sandbox)
    }

    async fn sandbox(&self, id: &str) -> Result<Option<Sandbox>, RuntimeError> {
        Ok(self.lock().sandboxes.get(id).cloned())
    }

    async fn delete_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("delete-sandbox", id)?;
        let mut s = self.lock();
        s.sandboxes.remove(id);
        s.containers.retain(|_, c| c.sandbox.as_deref() != Some(id));
        Ok(())
    }

    async fn sandboxes(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.lock().sandboxes.keys().cloned().collect())
    }

    async fn create_container(
        &self,
        id: &str,
        request: &ContainerRequest,
    ) -> Result<(), RuntimeError> {
        self.call("create", id)?;
        let mut s = self.lock();
        if s.containers.contains_key(id) {
            return Err(RuntimeError::Exists(id.to_string()));
        }
        if let Some(sb) = request
            .sandbox
            .as_deref()
            .filter(|sb| !s.sandboxes.contains_key(*sb))
        {
            return Err(RuntimeError::NoSandbox(sb.to_string()));
        }
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        s.containers.insert(
            id.to_string(),
            ContainerState {
                id: id.to_string(),
                status: Status::Created,
                pid,
                sandbox: request.sandbox.clone(),
                ended: None,
                started_at: None,
                finished_at: None,
            },
        );
        Ok(())
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("start", id)?;
        match self.lock().containers.get_mut(id) {
            Some(c) if c.status == Status::Created => {
                c.status = Status::Running;
                c.started_at = Some(SystemTime::now());
                Ok(())
            }
            Some(_) => Err(RuntimeError::State(format!(
                "container {id} is not created"
            ))),
            None => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn container(&self, id: &str) -> Result<Option<ContainerState>, RuntimeError> {
        Ok(self.lock().containers.get(id).cloned())
    }

    async fn containers(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self.lock().containers.keys().cloned().collect())
    }

    async fn kill_container(&self, id: &str, signal: Signal) -> Result<(), RuntimeError> {
        self.call("kill", id)?;
        let running = self
            .lock()
            .containers
            .get(id)
            .map(|c| c.status == Status::Running)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if running {
            self.end(id, 128 + signal as i32, false);
        }
        Ok(())
    }

    async fn delete_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("delete", id)?;
        self.lock().containers.remove(id);
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        self.call("exec", id)?;
        let s = self.lock();
        match s.containers.get(id) {
            Some(c) if c.status == Status::Running => Ok(command
                .first()
                .and_then(|p| s.exec_results.get(p))
                .cloned()
                .unwrap_or_else(|| ExecOutput {
                    code: 0,
                    output: command.join(" ").into_bytes(),
                })),
            Some(_) => Err(RuntimeError::State(format!(
                "container {id} is not running"
            ))),
            None => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn logs(&self, id: &str) -> Result<String, RuntimeError> {
        Ok(self.lock().logs.get(id).cloned().unwrap_or_default())
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageConfig>, RuntimeError> {
        Ok(self.lock().images.get(reference).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_follows_a_pods_lifecycle_and_fails_on_request() {
        let rt = FakeRuntime::new();
        let sb = rt
            .create_sandbox(
                "pod-a",
                &SandboxRequest {
                    hostname: "web".into(),
                    host_network: false,
                    dns: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(sb.hostname, "web");
        let request = ContainerRequest {
            bundle: "/b".into(),
            sandbox: Some("pod-a".into()),
            image: Some("busybox".into()),
            ..Default::default()
        };
        rt.create_container("pod-a-app", &request).await.unwrap();
        rt.start_container("pod-a-app").await.unwrap();
        let state = rt.container("pod-a-app").await.unwrap().unwrap();
        assert_eq!((state.status, state.ended), (Status::Running, None));

        rt.end("pod-a-app", 1, false);
        let state = rt.container("pod-a-app").await.unwrap().unwrap();
        assert_eq!(
            state.ended,
            Some(Ended {
                code: 1,
                oom_killed: false
            })
        );

        // A container in a missing sandbox, and a failure the test asked for.
        let orphan = ContainerRequest {
            sandbox: Some("gone".into()),
            ..request.clone()
        };
        assert!(matches!(
            rt.create_container("x", &orphan).await,
            Err(RuntimeError::NoSandbox(_))
        ));
        rt.fail_next("start", "exec: no such file");
        rt.create_container("pod-a-bad", &request).await.unwrap();
        assert!(rt.start_container("pod-a-bad").await.is_err());

        rt.delete_sandbox("pod-a").await.unwrap();
        assert!(rt.containers().await.unwrap().is_empty());
        assert!(rt.sandboxes().await.unwrap().is_empty());
        assert_eq!(
            rt.calls()[..2],
            ["create-sandbox pod-a", "create pod-a-app"]
        );
    }
}
