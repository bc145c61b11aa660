//! A 3-node lab with busybox in every node's image store and the real kubectl pointed at it:
//! what the end-to-end tests of pods and workloads start from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_tests::{wait_until_blocking, Cluster, Kubectl, Options};
use serde_json::Value;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the lab tests need root (CI runs them as root)"
    );
}

/// A lab of three nodes with busybox in every node's image store, and kubectl for it.
pub async fn lab() -> (Cluster, Kubectl, tempfile::TempDir) {
    require_root();
    let cluster = Cluster::start(3, Options::default().in_lab())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = flotilla_tests::busybox_archive(dir.path());
    cluster.import_image("busybox", &archive).unwrap();
    let kubectl = Kubectl {
        kubeconfig: cluster.kubeconfig.clone(),
        cache: dir.path().join("kube-cache"),
    };
    (cluster, kubectl, dir)
}

/// kubectl pointed at one node of a lab, with the waits the workload tests share.
pub struct Kube {
    pub kubectl: Kubectl,
    pub server: String,
    pub dir: PathBuf,
}

impl Kube {
    pub fn new(server: String, kubectl: &Kubectl, dir: &Path) -> Kube {
        Kube {
            kubectl: kubectl.clone(),
            server,
            dir: dir.to_path_buf(),
        }
    }

    /// kubectl pointed at the lab's first node.
    pub fn of(cluster: &Cluster, kubectl: &Kubectl, dir: &Path) -> Kube {
        let lab = cluster.lab.as_ref().expect("a lab cluster");
        Kube::new(format!("https://{}:6443", lab.addr(0)), kubectl, dir)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl.ok(&self.server, args)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    pub fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// The pods selected by `selector`: name → (node, phase, ready).
    pub fn pods(&self, selector: &str) -> BTreeMap<String, (String, String, bool)> {
        let list = self.json(&["get", "pods", "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                (
                    p["metadata"]["name"].as_str().unwrap().to_string(),
                    (
                        p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                        p["status"]["phase"].as_str().unwrap_or("").to_string(),
                        ready(p),
                    ),
                )
            })
            .collect()
    }

    pub fn wait(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Kube) -> bool) {
        let ok = wait_until_blocking(timeout, || check(self).then_some(()));
        assert!(
            ok.is_some(),
            "timed out waiting for {what}\n{}\n{}",
            self.kubectl(&["get", "deploy,rs,pods", "-o", "wide"]),
            self.kubectl(&["get", "events", "--sort-by=.lastTimestamp"])
        );
    }

    pub fn rollout_status(&self, deploy: &str) -> String {
        self.kubectl(&["rollout", "status", deploy, "--timeout=120s"])
    }

    /// The message of a pending pod's `PodScheduled=False` condition, once it has one.
    pub fn unschedulable(&self, pod: &str) -> String {
        let mut message = String::new();
        self.wait(&format!("{pod} explained"), Duration::from_secs(30), |c| {
            let p = c.json(&["get", "pod", pod]);
            let cond = p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False");
            message = cond.map_or(String::new(), |c| {
                c["message"].as_str().unwrap().to_string()
            });
            !message.is_empty()
        });
        message
    }
}

pub fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
