//! Issue 16: the leader schedules and reconciles. On a 3-node lab with the real kubectl 1.32:
//! a Deployment made by `kubectl create deployment` spreads its pods, rolls within
//! `maxSurge`/`maxUnavailable` (checked from a watch), and answers every `kubectl rollout`
//! command; placement follows selectors, anti-affinity, taints and requests, and explains a
//! refusal in Kubernetes' words.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::lab::{lab, ready, Kube as Ctx};

/// Replays a `kubectl get pods --watch --output-watch-events -o json` stream: after every event,
/// how many pods exist that are not terminating, and how many of those are Ready.
fn replay(stream: &str) -> Vec<(usize, usize)> {
    let mut pods: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut moments = Vec::new();
    for event in serde_json::Deserializer::from_str(stream).into_iter::<Value>() {
        let Ok(event) = event else { break };
        let pod = &event["object"];
        let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
        if event["type"] == "DELETED" {
            pods.remove(&name);
        } else {
            let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
            pods.insert(name, (terminating, ready(pod)));
        }
        let live = pods.values().filter(|(t, _)| !t).count();
        let ready = pods.values().filter(|(t, r)| !t && *r).count();
        moments.push((live, ready));
    }
    moments
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_spread_roll_and_answer_kubectl_rollout() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());

    // The command of the issue, sent by kubectl 1.32 as protobuf.
    ctx.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=6",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ]);
    assert!(ctx
        .rollout_status("deploy/web")
        .contains("successfully rolled out"));
    let pods = ctx.pods("app=web");
    assert_eq!(pods.len(), 6, "{pods:?}");
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for (node, phase, ready) in pods.values() {
        assert!(phase == "Running" && *ready, "{pods:?}");
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    let events = ctx.kubectl(&["get", "events", "--field-selector", "reason=Scheduled"]);
    assert!(
        events.contains("Successfully assigned default/web-"),
        "{events}"
    );

    // `set image` rolls; a watch sees at most 6 + 2 pods and at least 6 - 1 Ready ones.
    let mut watch = kubectl.spawn(
        &ctx.server,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ],
    );
    let mut stdout = watch.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = std::thread::spawn({
        let seen = std::sync::Arc::clone(&seen);
        move || {
            let mut chunk = [0u8; 65536];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        }
    });
    // The watch has listed the six pods before the rollout starts.
    ctx.wait("the watch", Duration::from_secs(30), |_| {
        seen.lock().unwrap().matches("\"ADDED\"").count() >= 6
    });
    ctx.kubectl(&["set", "image", "deploy/web", "busybox=busybox:latest"]);
    assert!(ctx
        .rollout_status("deploy/web")
        .contains("successfully rolled out"));
    ctx.wait("the old pods gone", Duration::from_secs(60), |c| {
        c.pods("app=web").len() == 6
    });
    let _ = watch.kill();
    let _ = watch.wait();
    reader.join().unwrap();
    let moments = replay(&seen.lock().unwrap());
    assert!(
        moments.len() > 12,
        "the watch saw the rollout: {} events",
        moments.len()
    );
    for (live, ready) in &moments[6..] {
        assert!(*live <= 8, "{live} pods at once (maxSurge 2): {moments:?}");
        assert!(
            *ready >= 5,
            "only {ready} Ready (maxUnavailable 1): {moments:?}"
        );
    }

    // History, undo, pause and resume, restart, scale.
    let history = ctx.kubectl(&["rollout", "history", "deploy/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    ctx.kubectl(&["rollout", "undo", "deploy/web"]);
    ctx.rollout_status("deploy/web");
    let d = ctx.json(&["get", "deploy", "web"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox"
    );
    assert_eq!(
        ctx.json(&["get", "rs"])["items"].as_array().unwrap().len(),
        2
    );

    ctx.kubectl(&["rollout", "pause", "deploy/web"]);
    ctx.kubectl(&["set", "env", "deploy/web", "MODE=paused"]);
    ctx.wait(
        "the paused deployment observed",
        Duration::from_secs(30),
        |c| {
            let d = c.json(&["get", "deploy", "web"]);
            d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused")
        },
    );
    assert_eq!(
        ctx.json(&["get", "rs"])["items"].as_array().unwrap().len(),
        2,
        "paused: no new ReplicaSet"
    );
    ctx.kubectl(&["rollout", "resume", "deploy/web"]);
    ctx.rollout_status("deploy/web");
    assert_eq!(
        ctx.json(&["get", "rs"])["items"].as_array().unwrap().len(),
        3
    );

    ctx.kubectl(&["rollout", "restart", "deploy/web"]);
    ctx.rollout_status("deploy/web");
    let d = ctx.json(&["get", "deploy", "web"]);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "5"
    );

    ctx.kubectl(&["scale", "deploy/web", "--replicas=3"]);
    ctx.wait("3 replicas", Duration::from_secs(60), |c| {
        let d = c.json(&["get", "deploy", "web"]);
        c.pods("app=web").len() == 3
            && d["status"]["availableReplicas"] == 3
            && d["status"]["replicas"] == 3
    });
    let row = ctx.kubectl(&["get", "deploy", "web", "--no-headers"]);
    assert!(row.split_whitespace().nth(1) == Some("3/3"), "{row}");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn placement_follows_the_rules_and_explains_refusals() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();

    // nodeSelector: the one labelled node, or nowhere.
    ctx.kubectl(&["label", "node", &nodes[1], "disk=ssd"]);
    ctx.kubectl(&[
        "run",
        "on-ssd",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"nodeSelector":{"disk":"ssd"}}}"#,
        "--",
        "sleep",
        "3600",
    ]);
    ctx.kubectl(&[
        "run",
        "on-nvme",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"nodeSelector":{"disk":"nvme"}}}"#,
        "--",
        "sleep",
        "3600",
    ]);
    ctx.wait("on-ssd placed", Duration::from_secs(30), |c| {
        c.json(&["get", "pod", "on-ssd"])["spec"]["nodeName"] == nodes[1].as_str()
    });
    assert_eq!(
        ctx.unschedulable("on-nvme"),
        "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    );
    let events = ctx.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=on-nvme,reason=FailedScheduling",
        "--no-headers",
    ]);
    assert!(
        events.contains("didn't match Pod's node affinity/selector"),
        "{events}"
    );
    // Labelling a node to match lets it go there.
    ctx.kubectl(&["label", "node", &nodes[2], "disk=nvme"]);
    ctx.wait(
        "on-nvme placed once a node matches",
        Duration::from_secs(60),
        |c| c.json(&["get", "pod", "on-nvme"])["spec"]["nodeName"] == nodes[2].as_str(),
    );

    // Required anti-affinity on the hostname: one per node, the fourth waits.
    ctx.apply(
        "spread",
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: spread}
spec:
  replicas: 4
  selector: {matchLabels: {app: spread}}
  template:
    metadata: {labels: {app: spread}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: spread}}
            topologyKey: kubernetes.io/hostname
      containers:
      - {name: c, image: busybox, command: [sleep, "3600"]}
"#,
    );
    ctx.wait("three spread pods placed", Duration::from_secs(60), |c| {
        let placed: BTreeSet<String> = c
            .pods("app=spread")
            .values()
            .filter(|(n, _, _)| !n.is_empty())
            .map(|(n, _, _)| n.clone())
            .collect();
        placed.len() == 3 && c.pods("app=spread").len() == 4
    });
    let pending: Vec<String> = ctx
        .pods("app=spread")
        .into_iter()
        .filter(|(_, (n, _, _))| n.is_empty())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        ctx.unschedulable(&pending[0]),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );

    // A taint without toleration, and requests larger than any node.
    ctx.kubectl(&["taint", "node", &nodes[0], "dedicated=db:NoSchedule"]);
    ctx.kubectl(&["run", "huge", "--image=busybox", "--overrides", r#"{"spec":{"containers":[{"name":"huge","image":"busybox","command":["sleep","3600"],"resources":{"requests":{"cpu":"64"}}}]}}"#]);
    assert_eq!(
        ctx.unschedulable("huge"),
        "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, 2 Insufficient cpu."
    );
    let describe = ctx.kubectl(&["describe", "pod", "huge"]);
    assert!(
        describe.contains("FailedScheduling") && describe.contains("default-scheduler"),
        "{describe}"
    );

    // Cordon: no new pod goes to a cordoned node.
    ctx.kubectl(&["cordon", &nodes[1]]);
    ctx.kubectl(&[
        "create",
        "deployment",
        "after-cordon",
        "--image=busybox",
        "--replicas=4",
        "--",
        "sleep",
        "3600",
    ]);
    ctx.wait("after-cordon placed", Duration::from_secs(60), |c| {
        let pods = c.pods("app=after-cordon");
        pods.len() == 4 && pods.values().all(|(n, _, _)| !n.is_empty())
    });
    // The taint keeps them off node 0 too: all on node 2.
    let used: BTreeSet<String> = ctx
        .pods("app=after-cordon")
        .values()
        .map(|(n, _, _)| n.clone())
        .collect();
    assert_eq!(used, BTreeSet::from([nodes[2].clone()]));
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_and_cron_jobs_run_to_completion() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    ctx.apply(
        "jobs",
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: five}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: busybox, command: [sh, -c, "sleep 1"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: failing}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: c, image: busybox, command: [sh, -c, "exit 3"]}
"#,
    );
    ctx.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/five",
        "--timeout=120s",
    ]);
    let five = ctx.json(&["get", "job", "five"]);
    assert_eq!(five["status"]["succeeded"], 5);
    let pods = ctx.json(&["get", "pods", "-l", "job-name=five"]);
    let phases: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases, ["Succeeded"; 5]);

    ctx.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/failing",
        "--timeout=120s",
    ]);
    let failing = ctx.json(&["get", "job", "failing"]);
    assert_eq!(failing["status"]["failed"], 2, "backoffLimit 1: two tries");
    let reason = failing["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .map(|c| c["reason"].clone());
    assert_eq!(reason, Some("BackoffLimitExceeded".into()));

    // kubectl 1.32 sends these as protobuf.
    ctx.kubectl(&["create", "job", "once", "--image=busybox", "--", "true"]);
    ctx.kubectl(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=*/1 * * * *",
        "--",
        "true",
    ]);
    ctx.kubectl(&["create", "job", "manual", "--from=cronjob/tick"]);
    ctx.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "job/manual",
        "--timeout=120s",
    ]);
    let manual = ctx.json(&["get", "job", "manual"]);
    assert_eq!(manual["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    // The schedule fires within the minute and its Job completes.
    let mut scheduled = String::new();
    ctx.wait("the cron job's own job", Duration::from_secs(90), |c| {
        let jobs = c.json(&["get", "jobs"]);
        scheduled = jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap().to_string())
            .find(|n| n.starts_with("tick-"))
            .unwrap_or_default();
        !scheduled.is_empty()
    });
    ctx.kubectl(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{scheduled}"),
        "--timeout=120s",
    ]);
    let cj = ctx.json(&["get", "cronjob", "tick"]);
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_sets_run_on_every_node_and_on_nodes_that_join() {
    let (mut cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    ctx.apply(
        "agent",
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - {name: c, image: busybox, command: [sleep, "3600"]}
"#,
    );
    assert!(ctx
        .rollout_status("ds/agent")
        .contains("successfully rolled out"));
    let nodes_of = |c: &Ctx| -> BTreeSet<String> {
        c.pods("app=agent")
            .values()
            .filter(|(_, phase, ready)| phase == "Running" && *ready)
            .map(|(n, _, _)| n.clone())
            .collect()
    };
    let first: BTreeSet<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(nodes_of(&ctx), first);
    assert_eq!(ctx.pods("app=agent").len(), 3);

    // A fourth node joins: it gets its daemon too.
    let i = cluster.add_node().await.unwrap();
    let archive = flotilla_tests::busybox_archive(dir.path());
    cluster.import_image("busybox", &archive).unwrap();
    let joined = cluster.nodes[i].name.clone();
    ctx.wait("a daemon on the new node", Duration::from_secs(120), |c| {
        nodes_of(c).contains(&joined) && c.pods("app=agent").len() == 4
    });
    let ds = ctx.json(&["get", "ds", "agent"]);
    assert_eq!(ds["status"]["desiredNumberScheduled"], 4);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_respects_a_disruption_budget() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    ctx.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=busybox",
        "--replicas=3",
        "--",
        "sleep",
        "3600",
    ]);
    assert!(ctx
        .rollout_status("deploy/web")
        .contains("successfully rolled out"));
    // kubectl 1.32 sends this as protobuf too.
    ctx.kubectl(&[
        "create",
        "poddisruptionbudget",
        "web",
        "--selector=app=web",
        "--min-available=3",
    ]);
    ctx.wait("the budget computed", Duration::from_secs(30), |c| {
        let pdb = c.json(&["get", "pdb", "web"]);
        pdb["status"]["currentHealthy"] == 3 && pdb["status"]["disruptionsAllowed"] == 0
    });
    let row = ctx.kubectl(&["get", "pdb", "web", "--no-headers"]);
    assert_eq!(
        row.split_whitespace().take(4).collect::<Vec<_>>(),
        ["web", "3", "N/A", "0"],
        "{row}"
    );

    // No disruption allowed: the drain cordons, then keeps being refused until its timeout.
    let victim = nodes[1].clone();
    let on_victim = |c: &Ctx| -> Vec<String> {
        c.pods("app=web")
            .into_iter()
            .filter(|(_, (n, _, _))| *n == victim)
            .map(|(p, _)| p)
            .collect()
    };
    let before = on_victim(&ctx);
    assert_eq!(
        before.len(),
        1,
        "one pod per node: {:?}",
        ctx.pods("app=web")
    );
    let (ok, out, err) = kubectl.run(
        &ctx.server,
        &["drain", &victim, "--ignore-daemonsets", "--timeout=12s"],
    );
    assert!(!ok, "the drain must fail: {out}{err}");
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{err}"
    );
    assert_eq!(on_victim(&ctx), before, "the budget kept the pod");
    assert!(ctx
        .kubectl(&["get", "node", &victim, "--no-headers"])
        .contains("SchedulingDisabled"));

    // One disruption allowed: the drain evicts it, its replacement runs elsewhere.
    ctx.kubectl(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":2}}"#,
    ]);
    let out = ctx.kubectl(&["drain", &victim, "--ignore-daemonsets", "--timeout=120s"]);
    assert!(out.contains("drained"), "{out}");
    ctx.wait(
        "3 Ready pods off the drained node",
        Duration::from_secs(60),
        |c| {
            let pods = c.pods("app=web");
            pods.len() == 3
                && pods
                    .values()
                    .all(|(n, phase, ready)| *n != victim && phase == "Running" && *ready)
        },
    );
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_higher_priority_pod_preempts_lower_ones() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    ctx.apply(
        "classes",
        r#"apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: high}
value: 1000
---
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: low}
value: 10
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: filler}
spec:
  replicas: 3
  selector: {matchLabels: {app: filler}}
  template:
    metadata: {labels: {app: filler}}
    spec:
      priorityClassName: low
      terminationGracePeriodSeconds: 0
      containers:
      - {name: c, image: busybox, command: [sleep, "3600"], resources: {requests: {cpu: 1500m}}}
"#,
    );
    assert!(ctx
        .rollout_status("deploy/filler")
        .contains("successfully rolled out"));
    let filler = ctx.json(&["get", "pods", "-l", "app=filler"]);
    assert_eq!(
        filler["items"][0]["spec"]["priority"], 10,
        "admission set the class's value"
    );

    // Every node is full: the urgent pod evicts one filler and takes its place.
    ctx.kubectl(&["run", "urgent", "--image=busybox", "--overrides", r#"{"spec":{"priorityClassName":"high","containers":[{"name":"urgent","image":"busybox","command":["sleep","3600"],"resources":{"requests":{"cpu":"1500m"}}}]}}"#]);
    ctx.wait("the urgent pod running", Duration::from_secs(90), |c| {
        let p = c.json(&["get", "pod", "urgent"]);
        p["status"]["phase"] == "Running"
    });
    let preempted = ctx.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=Preempted",
        "--no-headers",
    ]);
    assert!(preempted.contains("Preempted by pod"), "{preempted}");
    // The evicted filler's replacement waits: nothing of lower priority is left to evict for it.
    ctx.wait("a filler pending", Duration::from_secs(60), |c| {
        c.pods("app=filler")
            .values()
            .filter(|(n, _, _)| n.is_empty())
            .count()
            == 1
    });

    // A class that does not exist is refused, as Kubernetes refuses it.
    let (ok, _, err) = kubectl.run(
        &ctx.server,
        &[
            "run",
            "nope",
            "--image=busybox",
            "--overrides",
            r#"{"spec":{"priorityClassName":"nope"}}"#,
        ],
    );
    assert!(
        !ok && err.contains("no PriorityClass with name nope was found"),
        "{err}"
    );
    drop(cluster);
}
