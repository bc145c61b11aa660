//! Issue 17, must-show 5: kill the leader (its node process and its pods, SIGKILL) while pods on
//! the other two nodes look up a service and send it requests without pause. Lookups never
//! fail: every node answers them from its own replica. Requests keep succeeding every second:
//! the proxies need no leader, and each node leaves out the dead node's endpoints as soon as
//! its own gossip reports the node down, before the new leader updates the endpoints.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::lab::{lab, Kube as Ctx};
use crate::services::{client_running, exec, pod_ips, rules, APP};

/// Six loops of requests and one of lookups, each line `SECONDS what ok|fail`, in /tmp/log.
/// (This busybox's `wget -T` crashes: `timeout` bounds a request instead.)
fn client(node: &str, ip: &str) -> String {
    let script = format!(
        "for w in 1 2 3 4 5 6; do \
           (while true; do \
              if timeout 1 wget -qO- http://mydeploy.myapp-ns:8080/ >/dev/null 2>&1; \
              then echo \"$(date +%s) http ok\"; else echo \"$(date +%s) http fail\"; fi; \
              sleep 0.05; \
            done) >> /tmp/log & \
         done; \
         while true; do \
           if nslookup mydeploy.myapp-ns.svc.cluster.local 2>&1 | grep -q 'Address: {ip}$'; \
           then echo \"$(date +%s) dns ok\"; else echo \"$(date +%s) dns fail\"; fi >> /tmp/log; \
           sleep 0.05; \
         done"
    );
    client_running(node, &format!("[\"sh\", \"-c\", {script:?}]"))
}

/// Per second: (lookups ok, lookups failed, requests ok, requests failed).
type Tally = BTreeMap<u64, [usize; 4]>;

fn tally(log: &str) -> Tally {
    let mut t = Tally::new();
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let (Some(Ok(at)), Some(what), Some(verdict)) = (
            words.next().map(str::parse::<u64>),
            words.next(),
            words.next(),
        ) else {
            continue;
        };
        let slot = match (what, verdict) {
            ("dns", "ok") => 0,
            ("dns", _) => 1,
            ("http", "ok") => 2,
            _ => 3,
        };
        t.entry(at).or_default()[slot] += 1;
    }
    t
}

/// What client-`node` has logged so far.
fn log(cluster: &flotilla_tests::Cluster, c: &Ctx, node: &str) -> String {
    let (code, out) = exec(cluster, c, &format!("client-{node}"), "sh", "cat /tmp/log");
    if code == Some(0) {
        out
    } else {
        String::new()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_stops_neither_lookups_nor_service_traffic() {
    let (mut cluster, kubectl, dir) = lab().await;
    let leader = cluster.leader().await.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let lab_net = cluster.lab.clone().unwrap();
    // kubectl talks to a node that survives.
    let ctx = Ctx::new(
        format!("https://{}:6443", lab_net.addr(survivors[0])),
        &kubectl,
        dir.path(),
    );
    ctx.apply("app", APP);
    ctx.kubectl(&[
        "rollout",
        "status",
        "-n",
        "myapp-ns",
        "deploy/mydeploy",
        "--timeout=120s",
    ]);
    let dead = cluster.nodes[leader].name.clone();
    let pods = pod_ips(&ctx);
    let victims: Vec<String> = pods
        .values()
        .filter(|(_, node)| *node == dead)
        .map(|(ip, _)| ip.clone())
        .collect();
    assert!(
        !victims.is_empty(),
        "one of the service's pods runs on the leader {dead}: {pods:?}"
    );
    let ip = ctx.json(&["get", "svc", "-n", "myapp-ns", "mydeploy"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let clients: Vec<String> = survivors
        .iter()
        .map(|i| cluster.nodes[*i].name.clone())
        .collect();
    for n in &clients {
        ctx.apply(&format!("client-{n}"), &client(n, &ip));
    }
    ctx.wait(
        "both clients reach the service",
        Duration::from_secs(60),
        |c| {
            clients.iter().all(|n| {
                let text = log(&cluster, c, n);
                // Three seconds of both, so that the seconds before the kill are whole.
                tally(&text)
                    .values()
                    .filter(|s| s[0] > 0 && s[2] > 0)
                    .count()
                    >= 3
            })
        },
    );

    let killed = now_secs();
    let kill = std::time::Instant::now();
    cluster.kill_with_pods(leader);
    let new_leader = cluster.leader().await.unwrap();
    assert_ne!(new_leader, leader);
    // Each survivor's proxy leaves the dead node's endpoints out.
    ctx.wait(
        "the dead pods out of the survivors' rules",
        Duration::from_secs(30),
        |_| {
            survivors
                .iter()
                .all(|i| victims.iter().all(|v| !rules(&lab_net, *i).contains(v)))
        },
    );
    eprintln!(
        "the dead node's endpoints left the survivors' rules {:?} after the kill",
        kill.elapsed()
    );
    // And the clients go on for ten seconds after the kill.
    ctx.wait(
        "ten seconds of traffic after the kill",
        Duration::from_secs(60),
        |c| {
            clients.iter().all(|n| {
                tally(&log(&cluster, c, n))
                    .keys()
                    .any(|s| *s >= killed + 10)
            })
        },
    );
    for n in &clients {
        let t = tally(&log(&cluster, &ctx, n));
        let window: Vec<(&u64, &[usize; 4])> = t.range(killed - 2..killed + 10).collect();
        let failed_requests: usize = window.iter().map(|(_, s)| s[3]).sum();
        eprintln!(
            "{n}: per second from the kill (lookups ok/failed, requests ok/failed): {:?}; {failed_requests} requests failed",
            window.iter().map(|(at, s)| (**at as i64 - killed as i64, *s)).collect::<Vec<_>>()
        );
        for second in killed - 2..killed + 10 {
            let s = t.get(&second).copied().unwrap_or_default();
            assert!(
                s[0] > 0 && s[2] > 0,
                "{n}: second {} after the kill had {} lookups and {} requests answered: {window:?}",
                second as i64 - killed as i64,
                s[0],
                s[2]
            );
        }
        let lookups_failed: usize = t.values().map(|s| s[1]).sum();
        assert_eq!(lookups_failed, 0, "{n}: a lookup failed: {t:?}");
    }
    drop(cluster);
}
