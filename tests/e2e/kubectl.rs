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
        let server = |i: usize| format!("https://{}:6443", lab.addr(i));
        let listed = flotilla_tests::wait_until_blocking(std::time::Duration::from_secs(30), || {
            let (ok, out, err) = kubectl(&kubeconfig, cache.path(), &server(0), &["get", "nodes"]);
            assert!(ok, "kubectl get nodes: {err}");
            let names: Vec<&str> = out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
            (names == ["n1", "n2", "n3"]).then_some(out)
        });
        let out = listed.expect("nodes never all listed");
        assert!(out.starts_with("NAME"), "{out}");
        // NAME STATUS ROLES AGE VERSION, as Kubernetes prints nodes; AGE is a duration.
        assert!(out.lines().next().unwrap().split_whitespace().eq(["NAME", "STATUS", "ROLES", "AGE", "VERSION"]), "{out}");
        let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(row[1..3], ["Ready", "<none>"], "{out}");
        let age = row[3];
        assert!(
            age.ends_with('s') && age[..age.len() - 1].chars().all(|c| c.is_ascii_digit()),
            "AGE {age:?}:\n{out}"
        );
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

        // Writing: create, label, the three patch types and delete, each through another node,
        // and each read back through a third.
        let manifest = cache.path().join("cm.yaml");
        std::fs::write(
            &manifest,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n  labels:\n    app: demo\ndata:\n  k: v1\n",
        )
        .unwrap();
        let run = |i: usize, args: &[&str]| {
            let (ok, out, err) = kubectl(&kubeconfig, cache.path(), &server(i), args);
            assert!(ok, "kubectl {args:?} via node {i}: {err}");
            out
        };
        let m = manifest.to_str().unwrap();
        assert_eq!(run(0, &["create", "-f", m]).trim(), "configmap/demo created");
        assert_eq!(run(1, &["get", "cm", "demo", "-o", "jsonpath={.data.k}"]), "v1");
        run(2, &["label", "cm", "demo", "tier=web"]);
        assert_eq!(run(0, &["get", "cm", "-l", "tier=web", "-o", "name"]).trim(), "configmap/demo");
        run(1, &["patch", "cm", "demo", "--type", "merge", "-p", r#"{"data":{"k":"v2"}}"#]);
        run(2, &["patch", "cm", "demo", "--type", "json", "-p", r#"[{"op":"add","path":"/data/j","value":"x"}]"#]);
        run(0, &["patch", "cm", "demo", "-p", r#"{"data":{"s":"y"}}"#]);
        let data = run(1, &["get", "cm", "demo", "-o", "jsonpath={.data}"]);
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data, serde_json::json!({"k": "v2", "j": "x", "s": "y"}));

        // kubectl 1.32 sends protobuf bodies for `create configmap|secret|namespace`.
        assert_eq!(
            run(0, &["create", "configmap", "lit", "--from-literal=a=1", "--from-literal=b=2"]).trim(),
            "configmap/lit created"
        );
        let data = run(1, &["get", "cm", "lit", "-o", "jsonpath={.data}"]);
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data, serde_json::json!({"a": "1", "b": "2"}));
        assert_eq!(run(2, &["create", "namespace", "team-a"]).trim(), "namespace/team-a created");
        assert_eq!(
            run(0, &["create", "secret", "generic", "pw", "-n", "team-a", "--from-literal=p=x"]).trim(),
            "secret/pw created"
        );
        assert_eq!(run(1, &["get", "secret", "pw", "-n", "team-a", "-o", "jsonpath={.data.p}"]), "eA==");
        run(2, &["delete", "cm", "lit"]);

        // A deployment: apply, scale through the scale subresource, describe, delete.
        let deploy = cache.path().join("deploy.yaml");
        std::fs::write(
            &deploy,
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: web\n        image: busybox\n",
        )
        .unwrap();
        let d = deploy.to_str().unwrap();
        assert_eq!(run(0, &["apply", "-f", d]).trim(), "deployment.apps/web created");
        assert_eq!(run(1, &["scale", "deploy", "web", "--replicas=3"]).trim(), "deployment.apps/web scaled");
        assert_eq!(run(2, &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]), "3");
        let described = run(0, &["describe", "deploy", "web"]);
        assert!(described.contains("Name:") && described.contains("web"), "{described}");
        assert_eq!(run(1, &["delete", "-f", d]).trim(), "deployment.apps \"web\" deleted");

        // Who the admin kubeconfig is, and what it may do (everything, until RBAC).
        let who: serde_json::Value = serde_json::from_str(&run(1, &["auth", "whoami", "-o", "json"])).unwrap();
        assert_eq!(who["status"]["userInfo"]["username"], "admin", "{who}");
        assert!(
            who["status"]["userInfo"]["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == flotilla_pki::ADMINS_GROUP)),
            "{who}"
        );
        assert_eq!(run(2, &["auth", "can-i", "create", "pods"]).trim(), "yes");

        // `apply` (with OpenAPI v3 served, no --validate=false): create, then a three-way merge
        // that removes a key dropped from the file, then nothing to do.
        let applied = cache.path().join("applied.yaml");
        let write_manifest = |data: &str| {
            std::fs::write(
                &applied,
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\ndata:\n{data}"),
            )
            .unwrap()
        };
        let a = applied.to_str().unwrap();
        write_manifest("  a: \"1\"\n  b: \"2\"\n");
        assert_eq!(run(0, &["apply", "-f", a]).trim(), "configmap/applied created");
        write_manifest("  a: \"3\"\n");
        assert_eq!(run(1, &["apply", "-f", a]).trim(), "configmap/applied configured");
        let data = run(2, &["get", "cm", "applied", "-o", "jsonpath={.data}"]);
        let data: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(data, serde_json::json!({"a": "3"}));
        assert_eq!(run(2, &["apply", "-f", a]).trim(), "configmap/applied unchanged");
        run(0, &["delete", "-f", a]);

        // `get -w` through one node sees a change made through another.
        let mut watch = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(cache.path())
            .args(["--server", &server(2), "get", "cm", "-w", "--output-watch-events"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        let stdout = watch.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(l).is_err() {
                    break;
                }
            }
        });
        // The watch is running once its first line (the table header or an object) arrives.
        let first = lines_rx.recv_timeout(std::time::Duration::from_secs(20));
        assert!(first.is_ok(), "kubectl get -w printed nothing");
        let watched = cache.path().join("watched.yaml");
        std::fs::write(&watched, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n").unwrap();
        run(0, &["create", "-f", watched.to_str().unwrap()]);
        let seen = loop {
            match lines_rx.recv_timeout(std::time::Duration::from_secs(20)) {
                Ok(l) if l.contains("watched") => break Some(l),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        let _ = watch.kill();
        let _ = watch.wait();
        let seen = seen.expect("the watch never showed the new configmap");
        assert!(seen.starts_with("ADDED"), "{seen}");
        run(1, &["delete", "cm", "watched"]);

        // An invalid manifest: kubectl prints the field error, and nothing is stored.
        let bad = cache.path().join("bad.yaml");
        std::fs::write(&bad, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: Bad_Name\n").unwrap();
        let (ok, _, err) = kubectl(&kubeconfig, cache.path(), &server(2), &["apply", "-f", bad.to_str().unwrap()]);
        assert!(!ok);
        assert!(err.contains("metadata.name: Invalid value: \"Bad_Name\""), "{err}");
        assert_eq!(run(0, &["get", "cm", "-o", "name"]).trim(), "configmap/demo");

        assert_eq!(run(2, &["delete", "cm", "demo"]).trim(), "configmap \"demo\" deleted");
        let (ok, _, err) = kubectl(&kubeconfig, cache.path(), &server(0), &["get", "cm", "demo"]);
        assert!(!ok && err.contains("NotFound"), "{err}");

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

        // Pages: kubectl follows continue tokens (here 2 objects a page).
        for i in 0..5 {
            run(i % 3, &["create", "configmap", &format!("page-{i}"), "--from-literal=a=1"]);
        }
        let paged = run(1, &["get", "cm", "--chunk-size=2", "-o", "name"]);
        let pages: Vec<&str> = paged.lines().filter(|l| l.starts_with("configmap/page-")).collect();
        assert_eq!(pages.len(), 5, "{paged}");

        // Events: a repeat of a stored event is folded into it.
        let event = cache.path().join("event.yaml");
        for name in ["boot.1", "boot.2"] {
            std::fs::write(
                &event,
                format!("apiVersion: v1\nkind: Event\nmetadata:\n  name: {name}\ninvolvedObject:\n  kind: ConfigMap\n  name: page-0\n  namespace: default\nreason: Tested\ntype: Normal\nmessage: seen twice\n"),
            )
            .unwrap();
            run(0, &["create", "-f", event.to_str().unwrap()]);
        }
        let events = run(2, &["get", "events", "-o", "wide"]);
        let rows: Vec<&str> = events.lines().filter(|l| l.contains("seen twice")).collect();
        assert_eq!(rows.len(), 1, "{events}");
        assert!(events.lines().next().unwrap().starts_with("LAST SEEN"), "{events}");
        assert!(rows[0].contains("configmap/page-0") && rows[0].split_whitespace().any(|c| c == "2"), "{events}");

        // Prometheus metrics, behind authentication like the rest.
        let metrics = run(0, &["get", "--raw", "/metrics"]);
        assert!(metrics.contains("apiserver_request_total{verb=\"LIST\",resource=\"configmaps\",code=\"200\"}"), "{metrics}");
        assert!(metrics.contains("apiserver_request_duration_seconds_bucket{verb=\"POST\",resource=\"configmaps\",le=\"+Inf\"}"), "{metrics}");
        assert!(metrics.contains("flotilla_raft_is_leader "), "{metrics}");
        assert!(metrics.contains("flotilla_raft_members 3"), "{metrics}");

        // `flotilla kubeconfig` prints a kubeconfig with the admin's bearer token and no
        // certificate: kubectl is the admin with it, through any node.
        let printed = flotilla_tests::run_cli(
            &["kubeconfig", "--kubeconfig", kubeconfig.to_str().unwrap(), "--server", &server(2)],
            std::time::Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(printed.code, Some(0), "{}", printed.stderr);
        let with_token: serde_json::Value = serde_json::from_str(&printed.stdout).unwrap();
        let user = &with_token["users"][0]["user"];
        assert!(user["client-certificate-data"].is_null(), "{user}");
        let token = user["token"].as_str().expect("a token").to_string();
        let token_config = cache.path().join("token.kubeconfig");
        std::fs::write(&token_config, &printed.stdout).unwrap();
        let (ok, out, err) = kubectl(&token_config, &cache.path().join("tok"), &server(2), &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
        assert!(ok, "{err}");
        assert_eq!(out, "admin");
        let (ok, out, err) = kubectl(&token_config, &cache.path().join("tok"), &server(0), &["get", "nodes", "-o", "name"]);
        assert!(ok && out.lines().count() == 3, "{out}{err}");
        // The same token id with another secret is refused.
        let (id, _) = token.split_once('.').unwrap();
        let forged = printed.stdout.replace(&token, &format!("{id}.{}", "a".repeat(32)));
        std::fs::write(&token_config, forged).unwrap();
        let (ok, _, err) = kubectl(&token_config, &cache.path().join("tok"), &server(1), &["get", "nodes"]);
        assert!(!ok && err.contains("You must be logged in to the server"), "a forged token was accepted: {err}");
        let bad = flotilla_tests::run_cli(
            &["kubeconfig", "--kubeconfig", kubeconfig.to_str().unwrap(), "--server", "http://x:6443"],
            std::time::Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(bad.code, Some(1));
        assert!(bad.stderr.contains("--server \"http://x:6443\": must be an https:// URL"), "{}", bad.stderr);
    })
    .await
    .unwrap();
}
