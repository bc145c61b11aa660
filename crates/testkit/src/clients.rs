//! Clients of a running cluster: the `flotilla` CLI, kubectl, the `kube` crate, and the admin's
//! TLS credentials.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Result};
use flotilla_pki::{Credential, Kubeconfig};
use flotilla_rpc::Tls;

use crate::flotilla_bin;

/// What a finished `flotilla` command printed.
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `flotilla ARGS` to completion (SIGKILL after `timeout`).
pub fn run_cli(args: &[&str], timeout: Duration) -> Result<Finished> {
    let child = Command::new(flotilla_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => {
            let output = output?;
            Ok(Finished {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            })
        }
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            bail!("flotilla {args:?} did not exit within {timeout:?}");
        }
    }
}

/// Runs `flotilla ARGS` to completion: its exit code and stderr.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Result<(Option<i32>, String)> {
    run_cli(args, timeout).map(|f| (f.code, f.stderr))
}

/// The admin's TLS credentials from a kubeconfig bootstrap wrote.
pub fn admin_tls(kubeconfig: &Path) -> Result<Tls> {
    let k = Kubeconfig::load(kubeconfig)?;
    Ok(Tls::new(
        &k.ca_pem,
        Credential {
            cert_pem: k.client.cert_pem,
            key_pem: k.client.key_pem,
        },
    ))
}

/// The real `/usr/bin/kubectl` with one kubeconfig and its own discovery cache.
#[derive(Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

impl Kubectl {
    /// Runs kubectl against `server`; returns (success, stdout, stderr).
    pub fn run(&self, server: &str, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(["--server", server, "--request-timeout", "20s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("kubectl is installed on these machines");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl against `server` and returns its output; panics (with stderr) on failure.
    pub fn ok(&self, server: &str, args: &[&str]) -> String {
        let (ok, out, err) = self.run(server, args);
        assert!(ok, "kubectl {args:?} via {server} failed: {err}");
        out
    }

    /// Starts a long-running kubectl (a watch) with its stdout piped.
    pub fn spawn(&self, server: &str, args: &[&str]) -> std::process::Child {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(["--server", server])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl is installed on these machines")
    }
}

/// A `kube` crate client of the API at `addr:6443` with the credentials of `kubeconfig`.
pub async fn kube_client(kubeconfig: &Path, addr: &str) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    config.cluster_url = format!("https://{addr}:6443").parse()?;
    Ok(kube::Client::try_from(config)?)
}
