//! The real kubectl against every node's API: version, discovery and reading objects (the
//! first steps of issue 4), and a 401 for a caller without a client certificate.

use std::path::Path;
use std::process::Command;

use flotilla_tests::{Cluster, Options};

/// Runs `/usr/bin/kubectl` with its own discovery cache; returns (success, stdout, stderr).
fn kubectl(kubeconfig: &Path, cache: &Path, server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(["--server", server, "--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("kubectl is installed on these machines");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_reads_version_and_discovery_from_every_node() {
    let cluster = Cluster::start(3, Options::default().in_lab())
        .await
        .unwrap();
    let lab = cluster.lab.clone().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let kubeconfig = cluster.kubeconfig.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..3 {
            let server = format!("https://{}:6443", lab.addr(i));
            let (ok, out, err) = kubectl(&kubeconfig, cache.path(), &server, &["version", "-o", "json"]);
            assert!(ok, "kubectl version via {server}: {err}");
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["serverVersion"]["major"], "1", "{out}");
            assert_eq!(v["serverVersion"]["minor"], "32", "{out}");

            let own_cache = cache.path().join(format!("n{i}"));
            let (ok, out, err) = kubectl(&kubeconfig, &own_cache, &server, &["api-resources"]);
            assert!(ok, "kubectl api-resources via {server}: {err}");
            for (name, short) in [("pods", "po"), ("deployments", "deploy"), ("services", "svc")] {
                assert!(
                    out.lines().any(|l| {
                        let cols: Vec<&str> = l.split_whitespace().collect();
                        cols.first() == Some(&name) && cols.get(1) == Some(&short)
                    }),
                    "{name} ({short}) missing from api-resources:\n{out}"
                );
            }
        }

        // Reading objects: the Node objects every node registers, through each node's API.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let server = |i: usize| format!("https://{}:6443", lab.addr(i));
        loop {
            let (ok, out, err) = kubectl(&kubeconfig, cache.path(), &server(0), &["get", "nodes"]);
            assert!(ok, "kubectl get nodes: {err}");
            let names: Vec<&str> = out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
            if names == ["n1", "n2", "n3"] {
                assert!(out.starts_with("NAME"), "{out}");
                // AGE is a duration as kubectl prints it (`12s`), not a timestamp.
                let age = out.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)).unwrap();
                assert!(
                    age.ends_with('s') && age[..age.len() - 1].chars().all(|c| c.is_ascii_digit()),
                    "AGE {age:?}:\n{out}"
                );
                break;
            }
            assert!(std::time::Instant::now() < deadline, "nodes never all listed:\n{out}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for i in 0..3 {
            let (ok, out, err) = kubectl(&kubeconfig, cache.path(), &server(i), &["get", "node", "n2", "-o", "json"]);
            assert!(ok, "get node n2 via node {i}: {err}");
            let node: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(node["metadata"]["name"], "n2");
            assert!(node["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty()), "{out}");
            let (ok, out, err) = kubectl(
                &kubeconfig,
                cache.path(),
                &server(i),
                &["get", "nodes", "-l", "kubernetes.io/hostname=n3", "-o", "name"],
            );
            assert!(ok, "{err}");
            assert_eq!(out.trim(), "node/n3");
        }
        let (ok, out, err) = kubectl(&kubeconfig, cache.path(), &server(2), &["get", "namespaces", "-o", "name"]);
        assert!(ok, "{err}");
        for ns in ["default", "kube-system", "kube-public"] {
            assert!(out.lines().any(|l| l == format!("namespace/{ns}")), "{ns} missing:\n{out}");
        }
        let (ok, _, err) = kubectl(&kubeconfig, cache.path(), &server(1), &["get", "node", "nope"]);
        assert!(!ok);
        assert!(err.contains("NotFound") && err.contains("nodes \"nope\" not found"), "{err}");

        // The cluster CA but no client certificate (a token the API does not know yet): 401,
        // which kubectl reports as such.
        let anonymous = cache.path().join("anonymous.kubeconfig");
        let admin = flotilla_pki::Kubeconfig::load(&kubeconfig).unwrap();
        let ca = {
            use std::io::Write;
            let path = cache.path().join("ca.crt");
            std::fs::File::create(&path)
                .unwrap()
                .write_all(admin.ca_pem.as_bytes())
                .unwrap();
            path
        };
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "a",
            "clusters": [{"name": "c", "cluster": {"server": admin.server, "certificate-authority": ca}}],
            "users": [{"name": "u", "user": {"token": "not-a-valid-token"}}],
            "contexts": [{"name": "a", "context": {"cluster": "c", "user": "u"}}],
        });
        std::fs::write(&anonymous, config.to_string()).unwrap();
        let (ok, _, err) = kubectl(
            &anonymous,
            &cache.path().join("anon"),
            &admin.server,
            &["get", "--raw", "/api"],
        );
        assert!(!ok, "an anonymous caller was served");
        assert!(err.contains("Unauthorized"), "{err}");
    })
    .await
    .unwrap();
}
