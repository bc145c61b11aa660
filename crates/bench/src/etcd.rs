//! A 3-member etcd cluster (Debian's `etcd-server`) on loopback, for comparison.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use flotilla_testkit::free_port;

pub struct EtcdCluster {
    pub endpoints: Vec<String>,
    children: Vec<Child>,
}

impl EtcdCluster {
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Starts three members under `dir` (each in `dir/NAME-i`); `gomaxprocs` limits the Go
    /// scheduler's threads of each (`GOMAXPROCS`), as a Flotilla node runs one async worker.
    pub async fn start(dir: &Path, name: &str, gomaxprocs: Option<u32>) -> Result<EtcdCluster> {
        let bin = etcd_bin()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("{name}-{i}.log")))?;
            let mut command = Command::new(&bin);
            if let Some(n) = gomaxprocs {
                command.env("GOMAXPROCS", n.to_string());
            }
            let child = command
                .args([
                    "--name",
                    &format!("e{i}"),
                    "--data-dir",
                    dir.join(format!("{name}-{i}"))
                        .to_str()
                        .expect("utf-8 path"),
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("spawn etcd")?;
            children.push(child);
            endpoints.push(format!("127.0.0.1:{client}"));
        }
        let cluster = EtcdCluster {
            endpoints,
            children,
        };
        // Ready when a write succeeds.
        let eps = cluster.endpoints.clone();
        let ready = flotilla_testkit::wait_until(Duration::from_secs(30), || {
            let eps = eps.clone();
            async move {
                let mut c = etcd_client::Client::connect(&eps, None).await.ok()?;
                c.put("ready", "1", None).await.ok().map(|_| ())
            }
        })
        .await;
        if ready.is_none() {
            bail!(
                "etcd did not accept a write within 30 s (logs in {})",
                dir.display()
            );
        }
        Ok(cluster)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn etcd_bin() -> Result<std::path::PathBuf> {
    which("etcd").context("etcd is not installed: `make deps` installs Debian's etcd-server")
}

/// The version the installed etcd reports (`etcd --version`: "etcd Version: 3.4.23").
pub fn version() -> Result<String> {
    let out = Command::new(etcd_bin()?)
        .arg("--version")
        .output()
        .context("run etcd --version")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .context("etcd --version printed no version")
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}
