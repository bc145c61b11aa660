//! A real OCI registry for tests and benchmarks: Debian's `docker-registry` (the CNCF
//! distribution registry) on loopback with htpasswd auth, images pushed by `skopeo`, and a
//! TCP relay on an address the nodes reach that counts the bytes the registry sends (its
//! egress).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::wait_until_blocking;

/// A running registry.
pub struct Registry {
    child: Child,
    /// Where the registry itself listens (loopback).
    pub direct: SocketAddr,
    /// The relay nodes pull through: `host:port` is the registry's name in image references.
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    egress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

fn need(tool: &str, package: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !found {
        bail!("{tool} is missing: `make deps` installs the Debian package {package}");
    }
    Ok(())
}

impl Registry {
    /// Starts a registry whose relay listens on `relay_ip` (a port the kernel picks), with
    /// the user `user`/`password`.
    pub fn start(relay_ip: Ipv4Addr, user: &str, password: &str) -> Result<Registry> {
        need("docker-registry", "docker-registry")?;
        need("htpasswd", "apache2-utils")?;
        need("skopeo", "skopeo")?;
        let dir = tempfile::tempdir()?;
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()?;
        if !htpasswd.status.success() {
            bail!("htpasswd: {}", String::from_utf8_lossy(&htpasswd.stderr));
        }
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout)?;
        let port = crate::free_port();
        let direct = SocketAddr::from(([127, 0, 0, 1], port));
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {direct}\nauth:\n  htpasswd:\n    realm: flotilla-test\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start docker-registry")?;
        let listener = TcpListener::bind((relay_ip, 0)).context("bind the registry relay")?;
        let addr = listener.local_addr()?;
        let egress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        relay(listener, direct, Arc::clone(&egress), Arc::clone(&stop));
        let registry = Registry {
            child,
            direct,
            addr,
            user: user.into(),
            password: password.into(),
            egress,
            stop,
            _dir: dir,
        };
        if wait_until_blocking(Duration::from_secs(20), || {
            TcpStream::connect(direct).ok().map(|_| ())
        })
        .is_none()
        {
            bail!("docker-registry did not listen on {direct}");
        }
        Ok(registry)
    }

    /// `host:port` as image references name this registry.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Pushes the OCI archive `archive` as `name` (`repo:tag`) with skopeo.
    pub fn push(&self, archive: &Path, name: &str) -> Result<()> {
        let out = Command::new("skopeo")
            .args([
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{}:{}", self.user, self.password),
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{name}", self.direct))
            .output()?;
        if !out.status.success() {
            bail!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Bytes the registry sent through the relay so far.
    pub fn egress(&self) -> u64 {
        self.egress.load(Ordering::Relaxed)
    }

    /// A `.dockerconfigjson` with `user`/`password` for this registry.
    pub fn dockerconfigjson(&self, user: &str, password: &str) -> String {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        serde_json::json!({"auths": {self.host(): {"auth": auth}}}).to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Relays every connection to `listener` to `target`, counting the bytes `target` sends.
fn relay(listener: TcpListener, target: SocketAddr, egress: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                (Ok(c), Ok(s)) => (c, s),
                _ => continue,
            };
            std::thread::spawn(move || pump(client, server, None));
            let egress = Arc::clone(&egress);
            std::thread::spawn(move || pump(s2, c2, Some(egress)));
        }
    });
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
