//! A 3-node lab with busybox in every node's image store and the real kubectl pointed at it:
//! what the end-to-end tests of pods and workloads start from.

use flotilla_tests::{Cluster, Kubectl, Options};

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
