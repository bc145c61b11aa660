//! Pod sandboxes: the network, IPC and UTS namespaces a pod's containers share, held by bind
//! mounts of their `nsfs` files (`ROOT/.sandboxes/<id>/ns/{net,ipc,uts}`) rather than by a
//! pause process; an address from the node's pod CIDR on a veth into the bridge; and the
//! `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname` every container of the pod mounts.
//! A container joins a sandbox through its spec ([`Sandbox::join`]): namespace paths and bind
//! mounts, so the same mechanism works for runc and crun.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use flotilla_sys::{CloneFlags, Syscall};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder, Spec};
use serde::{Deserialize, Serialize};

use crate::ipam::Ipam;
use crate::net::{self, PodNetwork};
use crate::{Runtime, RuntimeError, Status};

/// The namespaces a sandbox holds, by their `/proc/PID/ns` names.
const SHARED: [(&str, LinuxNamespaceType); 3] = [
    ("net", LinuxNamespaceType::Network),
    ("ipc", LinuxNamespaceType::Ipc),
    ("uts", LinuxNamespaceType::Uts),
];

/// What a sandbox is made from.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub hostname: String,
    pub network: PodNetwork,
    /// Where the network's addresses are allocated (shared by every runtime on the bridge).
    pub ipam_dir: PathBuf,
    /// Name servers and search domains for `/etc/resolv.conf`; none: the host's file.
    pub dns: Vec<Ipv4Addr>,
    pub search: Vec<String>,
    /// `options` of `/etc/resolv.conf` (`ndots:5`).
    pub dns_options: Vec<String>,
    /// The pod uses the node's network and UTS namespaces (`hostNetwork`): no veth, no
    /// address of its own; only its IPC namespace is new.
    pub host_network: bool,
}

/// A created sandbox, as kept in `sandbox.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub hostname: String,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    /// The veth's host end.
    pub veth: String,
    pub ipam_dir: PathBuf,
    pub cidr: String,
    pub dir: PathBuf,
    /// On the node's network (`hostNetwork`): `ip` is unspecified and there is no veth.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

impl Sandbox {
    pub fn ns_path(&self, ns: &str) -> PathBuf {
        self.dir.join("ns").join(ns)
    }

    /// Makes `spec` a container of this sandbox: its network, IPC and UTS namespaces are the
    /// sandbox's (the hostname comes with the UTS namespace), and `/etc/hosts`,
    /// `/etc/resolv.conf` and `/etc/hostname` are the sandbox's files.
    pub fn join(&self, spec: &mut Spec) -> Result<(), RuntimeError> {
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.retain(|n| !SHARED.iter().any(|(_, t)| *t == n.typ()));
        for (name, typ) in SHARED {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(self.ns_path(name))
                    .build()
                    .map_err(|e| RuntimeError::Spec(e.to_string()))?,
            );
        }
        linux.set_namespaces(Some(namespaces));
        spec.set_hostname(None);
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for file in ["hosts", "resolv.conf", "hostname"] {
            let target = PathBuf::from("/etc").join(file);
            mounts.retain(|m| m.destination() != &target);
            mounts.push(
                MountBuilder::default()
                    .destination(target)
                    .typ("bind")
                    .source(self.dir.join(file))
                    .options(vec!["rbind".to_string(), "rprivate".to_string()])
                    .build()
                    .map_err(|e| RuntimeError::Spec(e.to_string()))?,
            );
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }
}

/// A hostname the kernel and resolvers take: 1 to 63 of letters, digits, '-' and '.', not
/// starting or ending with '-' or '.'.
fn valid_hostname(name: &str) -> Result<(), RuntimeError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Spec(format!(
            "hostname {name:?}: use 1 to 63 of letters, digits, '-' and '.', starting and ending with a letter or digit"
        )))
    }
}

fn resolv_conf(config: &SandboxConfig) -> String {
    if config.dns.is_empty() {
        return fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    }
    let mut out = String::new();
    for ns in &config.dns {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !config.search.is_empty() {
        out.push_str(&format!("search {}\n", config.search.join(" ")));
    }
    if !config.dns_options.is_empty() {
        out.push_str(&format!("options {}\n", config.dns_options.join(" ")));
    }
    out
}

/// On a thread of its own: new namespaces held at `dir/ns/*`, the hostname, the veth and the
/// pod's addresses and route.
fn build_namespaces(
    dir: &Path,
    config: &SandboxConfig,
    ip: Ipv4Addr,
    veth: &str,
) -> Result<(), RuntimeError> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<(), RuntimeError> {
            let bind = |ns: &str| -> Result<(), RuntimeError> {
                let file = dir.join("ns").join(ns);
                fs::File::create(&file)?;
                flotilla_sys::fs::bind_mount(
                    Path::new(&format!("/proc/thread-self/ns/{ns}")),
                    &file,
                )?;
                Ok(())
            };
            if config.host_network {
                // The node's network and UTS namespaces, a new IPC namespace.
                bind("net")?;
                bind("uts")?;
                flotilla_sys::fs::unshare(CloneFlags::CLONE_NEWIPC)?;
                return bind("ipc");
            }
            let rt = net::runtime()?;
            let host = net::connect(&rt)?;
            flotilla_sys::fs::unshare(
                CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
            )?;
            flotilla_sys::LinuxSyscall.sethostname(&config.hostname)?;
            for (ns, _) in SHARED {
                bind(ns)?;
            }
            let pod = net::connect(&rt)?;
            rt.block_on(async {
                net::add_veth(&host, &config.network, veth, &dir.join("ns/net")).await?;
                net::configure_pod(&pod, &config.network, ip).await
            })
        })
        .join()
        .map_err(|_| RuntimeError::Setup("the sandbox thread panicked".into()))?
    })
}

impl Runtime {
    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.root.join(".sandboxes").join(id)
    }

    /// Creates the sandbox `id`; on failure nothing of it remains.
    pub fn create_sandbox(
        &self,
        id: &str,
        config: &SandboxConfig,
    ) -> Result<Sandbox, RuntimeError> {
        crate::container::valid_id(id)?;
        valid_hostname(&config.hostname)?;
        if !flotilla_sys::can_administer() {
            return Err(RuntimeError::Privilege);
        }
        let dir = self.sandbox_dir(id);
        fs::create_dir_all(dir.parent().expect("sandboxes dir"))?;
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::SandboxExists(id.to_string()))
            }
            Err(e) => return Err(e.into()),
        }
        let ipam = Ipam::new(&config.ipam_dir, config.network.cidr);
        let owner = dir.display().to_string();
        let sandbox = (|| {
            fs::create_dir(dir.join("ns"))?;
            let ip = if config.host_network {
                Ipv4Addr::UNSPECIFIED
            } else {
                ipam.allocate(&owner)?
            };
            let sandbox = Sandbox {
                id: id.to_string(),
                hostname: config.hostname.clone(),
                ip,
                gateway: config.network.cidr.gateway(),
                bridge: config.network.bridge.clone(),
                veth: if config.host_network {
                    String::new()
                } else {
                    net::host_end(ip)
                },
                ipam_dir: config.ipam_dir.clone(),
                cidr: config.network.cidr.to_string(),
                dir: dir.clone(),
                host_network: config.host_network,
            };
            // Written first, so that a failure below can be undone by `delete_sandbox`.
            fs::write(
                dir.join("sandbox.json"),
                serde_json::to_vec_pretty(&sandbox).expect("JSON"),
            )?;
            let hosts = if config.host_network {
                fs::read_to_string("/etc/hosts").unwrap_or_default()
            } else {
                format!(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                    config.hostname
                )
            };
            fs::write(dir.join("hosts"), hosts)?;
            fs::write(dir.join("resolv.conf"), resolv_conf(config))?;
            fs::write(dir.join("hostname"), format!("{}\n", config.hostname))?;
            build_namespaces(&dir, config, ip, &sandbox.veth)?;
            Ok(sandbox)
        })();
        if sandbox.is_err() {
            if self.load_sandbox(id).is_ok() {
                let _ = self.delete_sandbox(id, true);
            } else {
                if let Some(ip) = ipam.owned_by(&owner) {
                    let _ = ipam.release(ip, &owner);
                }
                let _ = fs::remove_dir_all(&dir);
            }
        }
        sandbox
    }

    pub fn load_sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        crate::container::valid_id(id)?;
        let bytes = fs::read(self.sandbox_dir(id).join("sandbox.json"))
            .map_err(|_| RuntimeError::NoSandbox(id.to_string()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RuntimeError::Setup(format!("sandbox {id}: {e}")))
    }

    pub fn sandbox(&self, id: &str) -> Result<Sandbox, RuntimeError> {
        self.load_sandbox(id)
    }

    /// The ids of the containers created in sandbox `id`.
    pub fn containers_of(&self, id: &str) -> Vec<String> {
        self.list()
            .into_iter()
            .filter(|c| self.load(c).is_ok_and(|s| s.sandbox.as_deref() == Some(id)))
            .collect()
    }

    /// Removes the sandbox: the veth, the namespaces, the address. Its containers must be
    /// stopped; with `force` they are killed and deleted first.
    pub fn delete_sandbox(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let sandbox = self.load_sandbox(id)?;
        for c in self.containers_of(id) {
            let stopped = self
                .state(&c)
                .map(|(_, s)| s == Status::Stopped)
                .unwrap_or(true);
            if !stopped && !force {
                return Err(RuntimeError::State(format!(
                    "container {c} of sandbox {id} is running; delete it first or use --force"
                )));
            }
            self.delete(&c, true)?;
        }
        if !sandbox.host_network {
            let veth = sandbox.veth.clone();
            net::on_host(|h| async move { net::delete_link(&h, &veth).await })?;
        }
        for (ns, _) in SHARED {
            flotilla_sys::fs::unmount(&sandbox.ns_path(ns))?;
        }
        if !sandbox.host_network {
            let cidr = sandbox.cidr.parse().map_err(RuntimeError::Spec)?;
            Ipam::new(&sandbox.ipam_dir, cidr)
                .release(sandbox.ip, &sandbox.dir.display().to_string())?;
        }
        fs::remove_dir_all(&sandbox.dir)?;
        Ok(())
    }

    /// The containers of this runtime.
    pub fn list(&self) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_checked_before_anything_is_made() {
        for good in ["web-0", "a", "pod.example"] {
            assert!(valid_hostname(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "has space", "under_score", &"x".repeat(64)] {
            let err = valid_hostname(bad).unwrap_err().to_string();
            assert!(err.contains("hostname"), "{bad}: {err}");
        }
        // Refused before a directory, an address or a namespace exists.
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(dir.path().join("rt"));
        let config = SandboxConfig {
            hostname: "bad name".into(),
            network: PodNetwork {
                bridge: "fltunit0".into(),
                cidr: "10.9.9.0/24".parse().unwrap(),
            },
            ipam_dir: dir.path().join("ipam"),
            dns: Vec::new(),
            search: Vec::new(),
            dns_options: Vec::new(),
            host_network: false,
        };
        assert!(rt.create_sandbox("p", &config).is_err());
        assert!(!dir.path().join("rt").exists() && !dir.path().join("ipam").exists());
    }
}
