//! Issue 15: the node agent runs the pods bound to its node, on a 3-node lab with the real
//! kubectl: configuration (env, configMap/secret/emptyDir volumes, init containers), restart
//! policy and backoff, OOM kills, probes, deletion with preStop and grace period, pod traffic
//! across nodes, and a node killed with SIGKILL that comes back to the same containers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flotilla_tests::{runtime_cli, wait_until_blocking, Cluster, Kubectl};

use crate::lab::lab;
use serde_json::Value;

struct Ctx {
    kubectl: Kubectl,
    server: String,
    dir: PathBuf,
    /// Each node's data dir, by name.
    data: Vec<(String, PathBuf)>,
}

impl Ctx {
    fn new(cluster: &Cluster, kubectl: &Kubectl, dir: &Path) -> Ctx {
        let lab = cluster.lab.clone().unwrap();
        Ctx {
            kubectl: kubectl.clone(),
            server: format!("https://{}:6443", lab.addr(0)),
            dir: dir.to_path_buf(),
            data: cluster
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.data_dir.clone()))
                .collect(),
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl.ok(&self.server, args)
    }

    fn apply(&self, name: &str, yaml: &str) {
        let file = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "pod", name, "-o", "json"])).unwrap()
    }

    /// `kubectl get pod NAME` as READY and STATUS.
    fn row(&self, name: &str) -> (String, String, String) {
        let out = self.kubectl(&["get", "pod", name, "--no-headers"]);
        let cols: Vec<&str> = out.split_whitespace().collect();
        (
            cols[1].to_string(),
            cols[2].to_string(),
            cols[3].to_string(),
        )
    }

    fn wait_row(&self, name: &str, timeout: Duration, f: impl Fn(&str, &str, &str) -> bool) {
        let ok = wait_until_blocking(timeout, || {
            let (ready, status, restarts) = self.row(name);
            f(&ready, &status, &restarts).then_some(())
        });
        assert!(
            ok.is_some(),
            "pod {name} never got there: {:?}\n{}",
            self.row(name),
            self.kubectl(&["describe", "pod", name])
        );
    }

    fn node_dir(&self, node: &str) -> &Path {
        &self.data.iter().find(|(n, _)| n == node).unwrap().1
    }

    /// Runs `command` in container `container` of pod `name` on `node`, with the runtime.
    fn exec(
        &self,
        node: &str,
        name: &str,
        container: &str,
        command: &str,
    ) -> (Option<i32>, String) {
        let uid = self.pod(name)["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        let root = self.node_dir(node).join("runtime");
        let id = format!("{uid}_{container}");
        let (code, out, err) = runtime_cli(&root, &["exec", &id, "--", "sh", "-c", command]);
        (code, out + &err)
    }

    fn exec_ok(&self, node: &str, name: &str, container: &str, command: &str) -> String {
        let (code, out) = self.exec(node, name, container, command);
        assert_eq!(code, Some(0), "{command} in {name}/{container}: {out}");
        out
    }

    /// The pid of container `container` of pod uid `uid` on `node`.
    fn pid(&self, node: &str, uid: &str, container: &str) -> i64 {
        let root = self.node_dir(node).join("runtime");
        let (code, out, err) = runtime_cli(&root, &["state", &format!("{uid}_{container}")]);
        assert_eq!(code, Some(0), "{err}");
        let state: Value = serde_json::from_str(&out).unwrap();
        state["pid"].as_i64().unwrap()
    }
}

fn events(ctx: &Ctx, pod: &str) -> String {
    ctx.kubectl(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
        "-o",
        "custom-columns=REASON:.reason,COUNT:.count,MESSAGE:.message",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_configured_restart_by_policy_and_follow_their_probes() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::new(&cluster, &kubectl, dir.path());
    tokio::task::spawn_blocking(move || {
        // 1. Two containers, an init container, env from a configMap and a secret, a configMap
        //    volume, a secret volume and an emptyDir both containers share.
        ctx.apply(
            "web",
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {COLOR: blue, app.conf: "port=80\n"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: hunter2}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: n2
  initContainers:
  - name: init
    image: busybox
    command: ["sh", "-c", "echo initialized > /shared/init.txt"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "echo $(COLOR) $PASSWORD $POD_NAME > /shared/app.txt; exec sleep 3600"]
    env:
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: cfg, key: COLOR}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: config, mountPath: /etc/app}
    - {name: secret, mountPath: /etc/creds}
  - name: sidecar
    image: busybox
    command: ["sleep", "3600"]
    volumeMounts: [{name: shared, mountPath: /shared}]
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: config, configMap: {name: cfg}}
  - {name: secret, secret: {secretName: creds, defaultMode: 0400}}
"#,
        );
        ctx.wait_row("web", Duration::from_secs(60), |ready, status, _| {
            ready == "2/2" && status == "Running"
        });
        let pod = ctx.pod("web");
        assert_eq!(pod["status"]["phase"], "Running");
        assert!(pod["status"]["podIP"].as_str().unwrap().starts_with("10.244."));
        assert_eq!(
            pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        // What the containers see: the init container's file, the env, the files.
        let seen = ctx.exec_ok(
            "n2",
            "web",
            "sidecar",
            "cat /shared/init.txt /shared/app.txt",
        );
        assert_eq!(seen, "initialized\nblue hunter2 web\n");
        assert_eq!(
            ctx.exec_ok("n2", "web", "app", "echo $COLOR; cat /etc/app/app.conf /etc/creds/password"),
            "blue\nport=80\nhunter2"
        );
        assert_eq!(
            ctx.exec_ok("n2", "web", "app", "stat -L -c %a /etc/creds/password"),
            "400\n"
        );
        // The secret is on a tmpfs of the node, never its disk.
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        // So are the bundles, whose configs hold the environment (the password too).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        for dir in ["volumes/secret", "bundles"] {
            let path = ctx.node_dir("n2").join(format!("pods/{uid}/{dir}"));
            assert!(
                mounts.lines().any(|l| {
                    l.split(' ').nth(1) == path.to_str() && l.split(' ').nth(2) == Some("tmpfs")
                }),
                "no tmpfs at {}",
                path.display()
            );
        }
        // A configMap update reaches the mounted file.
        ctx.kubectl(&["patch", "configmap", "cfg", "-p", r#"{"data":{"app.conf":"port=8080\n"}}"#]);
        let updated = wait_until_blocking(Duration::from_secs(30), || {
            let (_, out) = ctx.exec("n2", "web", "app", "cat /etc/app/app.conf");
            (out == "port=8080\n").then_some(())
        });
        assert!(updated.is_some(), "the configMap update never reached the file");

        // 2. Exit 1 with restartPolicy Always: restarts with growing backoff; a memory hog
        //    over its limit is OOMKilled.
        ctx.apply(
            "crash",
            r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  nodeName: n3
  containers:
  - {name: app, image: busybox, command: ["sh", "-c", "echo bye; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  nodeName: n1
  restartPolicy: Never
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
    resources: {limits: {memory: 32Mi}}
"#,
        );
        let mut messages = Vec::new();
        let grown = wait_until_blocking(Duration::from_secs(60), || {
            let s = &ctx.pod("crash")["status"]["containerStatuses"][0];
            if let Some(m) = s["state"]["waiting"]["message"].as_str() {
                if !messages.iter().any(|x: &String| x == m) {
                    messages.push(m.to_string());
                }
            }
            (s["restartCount"].as_i64().unwrap_or(0) >= 2
                && messages.iter().any(|m| m.starts_with("back-off 20s")))
            .then(|| s.clone())
        });
        let s = grown.unwrap_or_else(|| panic!("no growing backoff: {messages:?}"));
        assert!(
            messages.iter().any(|m| m.starts_with("back-off 10s")),
            "{messages:?}"
        );
        assert_eq!(s["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["lastState"]["terminated"]["reason"], "Error");
        ctx.wait_row("crash", Duration::from_secs(30), |_, status, _| {
            status == "CrashLoopBackOff"
        });
        assert!(events(&ctx, "crash").contains("BackOff"), "{}", events(&ctx, "crash"));
        ctx.wait_row("hog", Duration::from_secs(60), |_, status, _| status == "OOMKilled");
        let hog = ctx.pod("hog");
        assert_eq!(hog["status"]["phase"], "Failed");
        assert_eq!(
            hog["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            137
        );

        // Bad input is a status, not a crash: a missing key, a program that is not there.
        ctx.apply(
            "bad",
            r#"
apiVersion: v1
kind: Pod
metadata: {name: badkey}
spec:
  nodeName: n1
  containers:
  - name: app
    image: busybox
    command: ["sleep", "3600"]
    env: [{name: X, valueFrom: {configMapKeyRef: {name: cfg, key: NOPE}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: badcmd}
spec:
  nodeName: n1
  containers:
  - {name: app, image: busybox, command: ["/nope", "x"]}
"#,
        );
        ctx.wait_row("badkey", Duration::from_secs(60), |_, status, _| {
            status == "CreateContainerConfigError"
        });
        assert_eq!(
            ctx.pod("badkey")["status"]["containerStatuses"][0]["state"]["waiting"]["message"],
            "couldn't find key NOPE in ConfigMap default/cfg"
        );
        let failed = wait_until_blocking(Duration::from_secs(60), || {
            let s = ctx.pod("badcmd")["status"]["containerStatuses"][0].clone();
            (s["state"]["waiting"]["reason"] == "RunContainerError").then_some(s)
        })
        .expect("badcmd never showed RunContainerError");
        let message = failed["state"]["waiting"]["message"].as_str().unwrap();
        assert!(
            message.contains(r#"exec: "/nope": stat /nope: no such file or directory"#),
            "{message}"
        );
        assert_eq!(failed["lastState"]["terminated"]["reason"], "StartError");

        // 3. Liveness over HTTP restarts the container; readiness follows a file.
        ctx.apply(
            "probed",
            r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  nodeName: n3
  terminationGracePeriodSeconds: 2
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"]
    livenessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
      failureThreshold: 2
    readinessProbe:
      exec: {command: ["cat", "/tmp/ready"]}
      periodSeconds: 1
"#,
        );
        ctx.wait_row("probed", Duration::from_secs(60), |ready, status, _| {
            ready == "0/1" && status == "Running"
        });
        ctx.exec_ok("n3", "probed", "web", "touch /tmp/ready");
        ctx.wait_row("probed", Duration::from_secs(30), |ready, _, _| ready == "1/1");
        let pod = ctx.pod("probed");
        let ready = |p: &Value| {
            p["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(ready(&pod), "True");
        ctx.exec_ok("n3", "probed", "web", "rm /tmp/ready");
        ctx.wait_row("probed", Duration::from_secs(30), |ready, _, _| ready == "0/1");
        assert_eq!(ready(&ctx.pod("probed")), "False");
        ctx.exec_ok("n3", "probed", "web", "rm /www/healthz");
        ctx.wait_row("probed", Duration::from_secs(60), |_, _, restarts| {
            restarts.starts_with('1')
        });
        let ev = events(&ctx, "probed");
        assert!(ev.contains("Liveness probe failed: HTTP probe failed with statuscode: 404"), "{ev}");
        assert!(ev.contains("failed liveness probe, will be restarted"), "{ev}");
        assert!(ev.contains("Readiness probe failed"), "{ev}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_runs_pre_stop_honours_the_grace_period_and_leaves_nothing() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::new(&cluster, &kubectl, dir.path());
    let lab = cluster.lab.clone().unwrap();
    tokio::task::spawn_blocking(move || {
        // 5. Pods on different nodes reach each other by pod IP.
        ctx.apply(
            "net",
            r#"
apiVersion: v1
kind: Pod
metadata: {name: server}
spec:
  nodeName: n1
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-n1 > /www/index.html && exec httpd -f -p 8080 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: n3
  containers:
  - {name: c, image: busybox, command: ["sleep", "3600"]}
"#,
        );
        for p in ["server", "client"] {
            ctx.wait_row(p, Duration::from_secs(60), |ready, _, _| ready == "1/1");
        }
        let server_ip = ctx.pod("server")["status"]["podIP"].as_str().unwrap().to_string();
        let got = wait_until_blocking(Duration::from_secs(30), || {
            let (code, out) = ctx.exec(
                "n3",
                "client",
                "c",
                &format!("wget -O - http://{server_ip}:8080/ 2>/dev/null"),
            );
            (code == Some(0)).then_some(out)
        });
        assert_eq!(got.as_deref(), Some("hello-from-n1\n"), "n3 → n1 by pod IP");

        // A hostNetwork pod listens on its node's address.
        let port = flotilla_tests::free_port();
        ctx.apply(
            "hostnet",
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostnet}}
spec:
  nodeName: n2
  hostNetwork: true
  containers:
  - name: web
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo on-the-node > /www/index.html && exec httpd -f -p {port} -h /www"]
"#
            ),
        );
        ctx.wait_row("hostnet", Duration::from_secs(60), |ready, _, _| ready == "1/1");
        let n2_addr = lab.addr(1).to_string();
        assert_eq!(ctx.pod("hostnet")["status"]["podIP"], n2_addr.as_str());
        let got = wait_until_blocking(Duration::from_secs(30), || {
            let out = std::process::Command::new("busybox")
                .args(["wget", "-q", "-O", "-", &format!("http://{n2_addr}:{port}/")])
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        });
        assert_eq!(got.as_deref(), Some("on-the-node\n"));

        // 4. Deletion: the preStop hook runs (into a hostPath), then SIGTERM, then SIGKILL
        //    once the grace period is over; nothing of the pod remains on the node.
        let host = ctx.dir.join("hostpath");
        let netns = lab.netns(0);
        let veths = || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &netns, "ip", "-o", "link"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).matches("flt0a").count()
        };
        let veths_before = veths();
        ctx.apply(
            "stopper",
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: stopper}}
spec:
  nodeName: n1
  terminationGracePeriodSeconds: 4
  containers:
  - name: app
    image: busybox
    command: ["sh", "-c", "trap 'date +%s > /host/term; sleep 3600' TERM; sleep 3600 & wait"]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "date +%s > /host/prestop"]}}
    volumeMounts: [{{name: host, mountPath: /host}}]
  volumes:
  - {{name: host, hostPath: {{path: {}, type: DirectoryOrCreate}}}}
"#,
                host.display()
            ),
        );
        ctx.wait_row("stopper", Duration::from_secs(60), |ready, _, _| ready == "1/1");
        let pod = ctx.pod("stopper");
        let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
        let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
        let pid = ctx.pid("n1", &uid, "app");
        let n1 = ctx.node_dir("n1").to_path_buf();
        let cgroups = || {
            std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .flatten()
                .filter(|c| {
                    std::fs::read_dir(c.path().join("flotilla"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(&uid))
                })
                .count()
        };
        let mounts = || {
            std::fs::read_to_string("/proc/self/mounts")
                .unwrap()
                .lines()
                .filter(|l| l.contains(&uid))
                .count()
        };
        assert!(veths() == veths_before + 1 && cgroups() >= 1 && mounts() >= 1);
        assert!(Path::new(&format!("/proc/{pid}")).exists());

        let started = Instant::now();
        ctx.kubectl(&["delete", "pod", "stopper", "--timeout=60s"]);
        let took = started.elapsed();
        let prestop: u64 = std::fs::read_to_string(host.join("prestop")).unwrap().trim().parse().unwrap();
        let term: u64 = std::fs::read_to_string(host.join("term")).unwrap().trim().parse().unwrap();
        assert!(term >= prestop, "SIGTERM ({term}) before the preStop hook ({prestop})");
        // The trap ignores SIGTERM: only SIGKILL, after the grace period, ends it.
        assert!(
            took >= Duration::from_secs(3),
            "deleted after {took:?}, before the 4 s grace period ran out"
        );
        assert!(took < Duration::from_secs(20), "deletion took {took:?}");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived");
        assert_eq!(veths(), veths_before, "stopper's veth remains");
        assert_eq!(cgroups(), 0, "cgroups of {uid} remain");
        assert_eq!(mounts(), 0, "mounts of {uid} remain");
        assert!(!n1.join(format!("pods/{uid}")).exists());
        assert!(!n1.join(format!("runtime/.sandboxes/{uid}")).exists());
        let ipam = std::fs::read_dir(n1.join("ipam")).unwrap().flatten().any(|e| {
            std::fs::read_to_string(e.path()).unwrap_or_default().contains(&uid)
                || e.file_name().to_string_lossy() == ip
        });
        assert!(!ipam, "the address {ip} is still allocated");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_keeps_its_containers_and_cleans_up_deleted_pods() {
    let (mut cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::new(&cluster, &kubectl, dir.path());
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata: {name: keeper}
spec:
  nodeName: n2
  # The node is down for longer than the default 1 s toleration: this test is about the
  # agent finding its containers again, not about eviction (node_failover.rs is).
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 600}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 600}
  containers:
  - {name: app, image: busybox, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: doomed}
spec:
  nodeName: n2
  containers:
  - {name: app, image: busybox, command: ["sleep", "3600"]}
"#;
    let (keeper_uid, keeper_pid, doomed_uid, doomed_pid, started_at) =
        tokio::task::spawn_blocking({
            let ctx = Ctx::new(&cluster, &kubectl, dir.path());
            move || {
                ctx.apply("restart", yaml);
                for p in ["keeper", "doomed"] {
                    ctx.wait_row(p, Duration::from_secs(60), |ready, _, _| ready == "1/1");
                }
                let keeper = ctx.pod("keeper");
                let doomed = ctx.pod("doomed");
                let uid = |p: &Value| p["metadata"]["uid"].as_str().unwrap().to_string();
                let (ku, du) = (uid(&keeper), uid(&doomed));
                (
                    ku.clone(),
                    ctx.pid("n2", &ku, "app"),
                    du.clone(),
                    ctx.pid("n2", &du, "app"),
                    keeper["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
                        .clone(),
                )
            }
        })
        .await
        .unwrap();

    // kill -9 the node; while it is down, doomed is deleted (forced: no node runs it now).
    cluster.kill(1);
    tokio::task::spawn_blocking({
        let ctx = Ctx::new(&cluster, &kubectl, dir.path());
        move || {
            ctx.kubectl(&["delete", "pod", "doomed", "--grace-period=0", "--force"]);
        }
    })
    .await
    .unwrap();
    assert!(Path::new(&format!("/proc/{keeper_pid}")).exists());
    cluster.restart(1).await.unwrap();

    tokio::task::spawn_blocking(move || {
        // doomed's container and sandbox go; keeper's container is the same process.
        let gone = wait_until_blocking(Duration::from_secs(60), || {
            (!Path::new(&format!("/proc/{doomed_pid}")).exists()
                && !ctx
                    .node_dir("n2")
                    .join(format!("runtime/.sandboxes/{doomed_uid}"))
                    .exists()
                && !ctx
                    .node_dir("n2")
                    .join(format!("pods/{doomed_uid}"))
                    .exists())
            .then_some(())
        });
        assert!(
            gone.is_some(),
            "the deleted pod's container, sandbox or volumes remained"
        );
        assert_eq!(ctx.pid("n2", &keeper_uid, "app"), keeper_pid);
        assert!(Path::new(&format!("/proc/{keeper_pid}")).exists());
        let keeper = ctx.pod("keeper");
        let s = &keeper["status"]["containerStatuses"][0];
        assert_eq!(s["restartCount"], 0);
        assert_eq!(s["state"]["running"]["startedAt"], started_at);
        assert_eq!(ctx.row("keeper").1, "Running");
        assert_eq!(ctx.exec_ok("n2", "keeper", "app", "echo alive"), "alive\n");
    })
    .await
    .unwrap();
}
