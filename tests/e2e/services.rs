//! Issue 17: services and DNS on every node, on a 3-node lab with the real kubectl 1.32 and
//! `dig`. A deployment with a readiness probe behind a service: from a pod on each node the
//! service's name resolves (short and long), HTTP through its address reaches pods on other
//! nodes; `dig` against a node shows SRV, PTR, headless answers and NXDOMAIN/NODATA; a
//! NodePort answers on every node's address; a pod that turns unready leaves the endpoints and
//! the headless answer; 100 concurrent creates through all three nodes get 100 addresses.
//!
//! Commands run inside the client pods through the node's runtime (`flotilla runtime exec`),
//! as the agent's exec does: `kubectl exec` is issue 18.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use flotilla_tests::{runtime_cli, wait_until_blocking, Cluster};
use serde_json::Value;

use crate::lab::{lab, Kube as Ctx};

pub(crate) const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: myapp-ns}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mydeploy, namespace: myapp-ns}
spec:
  replicas: 3
  selector: {matchLabels: {app: mydeploy}}
  template:
    metadata: {labels: {app: mydeploy}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && touch /www/ready && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /ready, port: 8080}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Service
metadata: {name: mydeploy, namespace: myapp-ns}
spec:
  selector: {app: mydeploy}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: mydeploy-pods, namespace: myapp-ns}
spec:
  clusterIP: None
  selector: {app: mydeploy}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: mydeploy-np, namespace: myapp-ns}
spec:
  type: NodePort
  selector: {app: mydeploy}
  ports: [{name: http, port: 8080, targetPort: http}]
"#;

/// A client pod `client-NODE` pinned to `node`, running `command` (a YAML list).
pub(crate) fn client_running(node: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client-{node}, namespace: myapp-ns}}
spec:
  nodeName: {node}
  containers:
  - {{name: sh, image: busybox, command: {command}}}
"#
    )
}

/// A client pod pinned to `node`, idle.
fn client(node: &str) -> String {
    client_running(node, r#"["sleep", "3600"]"#)
}

/// Runs `script` in container `container` of pod `pod` (namespace myapp-ns) through its node's
/// runtime; returns (exit code, output).
pub(crate) fn exec(
    cluster: &Cluster,
    ctx: &Ctx,
    pod: &str,
    container: &str,
    script: &str,
) -> (Option<i32>, String) {
    let p = ctx.json(&["get", "pod", "-n", "myapp-ns", pod]);
    let uid = p["metadata"]["uid"].as_str().unwrap();
    let node = p["spec"]["nodeName"].as_str().unwrap();
    let dir = &cluster
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap()
        .data_dir;
    let id = format!("{uid}_{container}");
    let (code, out, err) = runtime_cli(
        &dir.join("runtime"),
        &["exec", &id, "--", "sh", "-c", script],
    );
    (code, out + &err)
}

fn dig(server: &str, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([&format!("@{server}"), "+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig (apt-get install bind9-dnsutils)");
    assert!(
        out.status.success(),
        "dig {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The `+short` answer lines, sorted.
fn short(server: &str, args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.push("+short");
    let mut lines: Vec<String> = dig(server, &all).lines().map(str::to_string).collect();
    lines.sort();
    lines
}

fn status(server: &str, args: &[&str]) -> (String, usize) {
    let text = dig(server, args);
    let rcode = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let answers = text
        .split("ANSWER: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    assert!(text.contains("flags: qr aa"), "{text}");
    (rcode, answers)
}

/// GET / from `addr` with a plain socket: the body.
fn http_get(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

/// The nftables rules of lab node `i` (the service tables among them).
pub(crate) fn rules(lab: &flotilla_lab::LabNet, i: usize) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.netns(i), "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn pod_ips(ctx: &Ctx) -> BTreeMap<String, (String, String)> {
    let list = ctx.json(&["get", "pods", "-n", "myapp-ns", "-l", "app=mydeploy"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| crate::lab::ready(p))
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                (
                    p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn services_are_found_by_name_and_reached_from_every_node() {
    let (cluster, kubectl, dir) = lab().await;
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    let lab = cluster.lab.as_ref().unwrap();
    ctx.apply("app", APP);
    ctx.kubectl(&[
        "rollout",
        "status",
        "-n",
        "myapp-ns",
        "deploy/mydeploy",
        "--timeout=120s",
    ]);
    let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &nodes {
        ctx.apply(&format!("client-{n}"), &client(n));
    }
    ctx.wait("the clients running", Duration::from_secs(60), |c| {
        let list = c.json(&["get", "pods", "-n", "myapp-ns"]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("client-")
                    && p["status"]["phase"] == "Running"
            })
            .count()
            == 3
    });

    // kubectl shows the address and ports; the endpoints are the three ready pods.
    let svc = ctx.json(&["get", "svc", "-n", "myapp-ns", "mydeploy"]);
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.96."), "{svc}");
    let table = ctx.kubectl(&["get", "svc", "-n", "myapp-ns"]);
    assert!(table.contains(&ip) && table.contains("8080/TCP"), "{table}");
    assert!(table.contains("8080:3"), "the NodePort's PORT(S): {table}");
    let pods = pod_ips(&ctx);
    assert_eq!(pods.len(), 3, "{pods:?}");
    ctx.wait("the endpoints", Duration::from_secs(10), |c| {
        let eps = c.kubectl(&["get", "endpoints", "-n", "myapp-ns", "mydeploy"]);
        pods.values()
            .all(|(ip, _)| eps.contains(&format!("{ip}:8080")))
    });
    let slices = ctx.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        "myapp-ns",
        "-l",
        "kubernetes.io/service-name=mydeploy",
    ]);
    assert!(
        slices.contains("IPv4") && slices.contains("8080"),
        "{slices}"
    );

    // From a pod on each node: the names resolve and HTTP reaches pods on other nodes.
    let by_name: BTreeMap<String, String> = pods
        .iter()
        .map(|(name, (_, node))| (name.clone(), node.clone()))
        .collect();
    for n in &nodes {
        let pod = format!("client-{n}");
        // busybox's nslookup tries every search domain and exits 1 when any of them is
        // NXDOMAIN, as it does against CoreDNS: the answer is what counts for the short name.
        for name in ["mydeploy.myapp-ns", "mydeploy"] {
            let (code, out) = exec(&cluster, &ctx, &pod, "sh", &format!("nslookup {name}"));
            assert!(code == Some(0) || name == "mydeploy", "{out}");
            assert!(out.contains(&format!("Address: {ip}")), "{name}: {out}");
        }
        let (code, out) = exec(
            &cluster,
            &ctx,
            &pod,
            "sh",
            "for i in $(seq 12); do timeout 5 wget -qO- http://mydeploy.myapp-ns:8080/; done",
        );
        assert_eq!(code, Some(0), "{out}");
        let served: BTreeSet<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert!(served.iter().all(|s| by_name.contains_key(*s)), "{out}");
        assert!(
            served.iter().any(|s| by_name[*s] != *n),
            "no request from {n} reached another node: {out}"
        );
        // The cluster's own services: the API and DNS, served by every node.
        let (code, out) = exec(
            &cluster,
            &ctx,
            &pod,
            "sh",
            "nslookup kubernetes.default.svc.cluster.local && nslookup kube-dns.kube-system",
        );
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains("10.96.0.1") && out.contains("10.96.0.10"),
            "{out}"
        );
    }

    // A pod reaching itself through the service (hairpin) is answered too.
    let (own, _) = pods.iter().next().unwrap();
    let (code, out) = exec(
        &cluster,
        &ctx,
        own,
        "web",
        "for i in $(seq 30); do timeout 5 wget -qO- http://mydeploy:8080/; done",
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.lines().any(|l| l.trim() == own),
        "{own} never answered itself: {out}"
    );

    // dig against each node: SRV, PTR, headless, NXDOMAIN and NODATA.
    for i in 0..nodes.len() {
        let server = lab.addr(i).to_string();
        assert_eq!(
            short(
                &server,
                &["_http._tcp.mydeploy.myapp-ns.svc.cluster.local", "SRV"]
            ),
            ["0 100 8080 mydeploy.myapp-ns.svc.cluster.local."]
        );
        let octets: Vec<&str> = ip.split('.').rev().collect();
        assert_eq!(
            short(
                &server,
                &[&format!("{}.in-addr.arpa", octets.join(".")), "PTR"]
            ),
            ["mydeploy.myapp-ns.svc.cluster.local."]
        );
        let mut want: Vec<String> = pods.values().map(|(ip, _)| ip.clone()).collect();
        want.sort();
        assert_eq!(
            short(&server, &["mydeploy-pods.myapp-ns.svc.cluster.local", "A"]),
            want
        );
        let srv = short(
            &server,
            &["_http._tcp.mydeploy-pods.myapp-ns.svc.cluster.local", "SRV"],
        );
        assert_eq!(srv.len(), 3, "{srv:?}");
        assert_eq!(
            status(&server, &["nope.myapp-ns.svc.cluster.local", "A"]),
            ("NXDOMAIN".to_string(), 0)
        );
        assert_eq!(
            status(&server, &["mydeploy.myapp-ns.svc.cluster.local", "AAAA"]),
            ("NOERROR".to_string(), 0)
        );
        // A NodePort answers on every node's address.
        let np = ctx.json(&["get", "svc", "-n", "myapp-ns", "mydeploy-np"]);
        let port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        let body = http_get(&format!("{server}:{port}"));
        assert!(
            body.as_deref().is_some_and(|b| by_name.contains_key(b)),
            "{server}:{port}: {body:?}"
        );
    }

    // One pod turns unready: it leaves the endpoints and the headless answer, and comes back.
    let (victim, (victim_ip, _)) = pods.iter().next().unwrap();
    let (code, out) = exec(&cluster, &ctx, victim, "web", "rm /www/ready");
    assert_eq!(code, Some(0), "{out}");
    let server = lab.addr(1).to_string();
    let gone = wait_until_blocking(Duration::from_secs(10), || {
        let a = short(&server, &["mydeploy-pods.myapp-ns.svc.cluster.local", "A"]);
        (!a.contains(victim_ip) && a.len() == 2).then_some(())
    });
    assert!(gone.is_some(), "{victim_ip} still answered");
    let eps = ctx.kubectl(&["get", "endpoints", "-n", "myapp-ns", "mydeploy"]);
    assert!(!eps.contains(&format!("{victim_ip}:8080")), "{eps}");
    // And every node's rules.
    let dnat = format!("dnat to {victim_ip}:8080");
    for i in 0..nodes.len() {
        let left = wait_until_blocking(Duration::from_secs(10), || {
            (!rules(lab, i).contains(&dnat)).then_some(())
        });
        assert!(
            left.is_some(),
            "{dnat} still on node {i}: {}",
            rules(lab, i)
        );
    }
    let (code, out) = exec(&cluster, &ctx, victim, "web", "touch /www/ready");
    assert_eq!(code, Some(0), "{out}");
    let back = wait_until_blocking(Duration::from_secs(10), || {
        short(&server, &["mydeploy-pods.myapp-ns.svc.cluster.local", "A"])
            .contains(victim_ip)
            .then_some(())
    });
    assert!(back.is_some(), "{victim_ip} not answered again");
    for i in 0..nodes.len() {
        let again = wait_until_blocking(Duration::from_secs(10), || {
            rules(lab, i).contains(&dnat).then_some(())
        });
        assert!(again.is_some(), "{dnat} not back on node {i}");
    }

    // Deleting the service removes its records everywhere and frees its address.
    ctx.kubectl(&["delete", "svc", "-n", "myapp-ns", "mydeploy"]);
    for i in 0..nodes.len() {
        let server = lab.addr(i).to_string();
        let removed = wait_until_blocking(Duration::from_secs(10), || {
            (status(&server, &["mydeploy.myapp-ns.svc.cluster.local", "A"]).0 == "NXDOMAIN")
                .then_some(())
        });
        assert!(removed.is_some(), "mydeploy still answered by {server}");
    }
    let again = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: again, namespace: myapp-ns}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
    );
    ctx.apply("again", &again);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_through_every_node_get_distinct_addresses() {
    let (cluster, kubectl, dir) = lab().await;
    let lab = cluster.lab.as_ref().unwrap();
    let servers: Vec<String> = (0..3)
        .map(|i| format!("https://{}:6443", lab.addr(i)))
        .collect();
    let creates: Vec<std::thread::JoinHandle<(bool, String, String)>> = (0..100)
        .map(|i| {
            let (kubectl, server) = (kubectl.clone(), servers[i % 3].clone());
            std::thread::spawn(move || {
                kubectl.run(
                    &server,
                    &[
                        "create",
                        "service",
                        "clusterip",
                        &format!("s{i}"),
                        "--tcp=80",
                    ],
                )
            })
        })
        .collect();
    for c in creates {
        let (ok, _, err) = c.join().unwrap();
        assert!(ok, "{err}");
    }
    let ctx = Ctx::of(&cluster, &kubectl, dir.path());
    let list: Value = ctx.json(&["get", "svc"]);
    let ips: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["metadata"]["name"].as_str().unwrap().starts_with('s'))
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips.len(), 100, "{ips:?}");
}
