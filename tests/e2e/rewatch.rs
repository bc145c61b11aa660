//! Issue 4, must-show 4: the node serving a `kubectl get -w` is killed with SIGKILL; a watch
//! on another node from the last resourceVersion seen gets every later event once, and none
//! from before.

use std::time::Duration;

use flotilla_tests::{Cluster, Kubectl, Options};
use serde_json::Value;

/// Events of a watch printed by `kubectl get -w -o json --output-watch-events` (one JSON
/// document after another), sent as they are parsed.
fn events(
    mut child: std::process::Child,
) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stream = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout))
            .into_iter::<Value>();
        for event in stream.map_while(Result::ok) {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn name_of(event: &Value) -> String {
    event["object"]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_on_another_node_after_kill_9_misses_and_repeats_nothing() {
    let mut cluster = Cluster::start(3, Options::default().in_lab())
        .await
        .unwrap();
    let leader = cluster.leader().await.unwrap();
    // Watch through a follower (killing it needs no election), write through the leader, and
    // resume on the third node.
    let watched = (leader + 1) % 3;
    let resumed = (leader + 2) % 3;
    let lab = cluster.lab.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl {
        kubeconfig: cluster.kubeconfig.clone(),
        cache: dir.path().join("cache"),
    };
    let server = move |i: usize| format!("https://{}:6443", lab.addr(i));
    let create = |k: &Kubectl, at: &str, names: std::ops::Range<usize>| {
        for n in names {
            let name = format!("c{n:02}");
            k.ok(at, &["create", "configmap", &name, "--from-literal=n=1"]);
        }
    };

    let (k2, watched_at, writer) = (k.clone(), server(watched), server(leader));
    let last_seen = tokio::task::spawn_blocking(move || {
        let child = k2.spawn(
            &watched_at,
            &["get", "cm", "-w", "--output-watch-events", "-o", "json"],
        );
        let (mut child, rx) = events(child);
        create(&k2, &writer, 0..10);
        let mut seen = Vec::new();
        let mut last = String::new();
        while seen.len() < 10 {
            let e = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the watch stopped before showing the ten configmaps");
            if name_of(&e).starts_with('c') {
                assert_eq!(e["type"], "ADDED", "{e}");
                seen.push(name_of(&e));
                last = e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string();
            }
        }
        let expected: Vec<String> = (0..10).map(|n| format!("c{n:02}")).collect();
        assert_eq!(seen, expected);
        let _ = child.kill();
        let _ = child.wait();
        last
    })
    .await
    .unwrap();

    cluster.kill(watched);
    let (k3, writer, resumed_at) = (k.clone(), server(leader), server(resumed));
    tokio::task::spawn_blocking(move || {
        // Changes while nobody watches: ten creations and an update and a delete of old ones.
        create(&k3, &writer, 10..20);
        k3.ok(&writer, &["label", "cm", "c03", "after=kill"]);
        k3.ok(&writer, &["delete", "cm", "c04"]);
        let path = format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={last_seen}&timeoutSeconds=2"
        );
        let out = k3.ok(&resumed_at, &["get", "--raw", &path]);
        let got: Vec<(String, String)> = serde_json::Deserializer::from_str(&out)
            .into_iter::<Value>()
            .map(|e| {
                let e = e.expect("watch events are JSON");
                (e["type"].as_str().unwrap().to_string(), name_of(&e))
            })
            .collect();
        let mut expected: Vec<(String, String)> = (10..20)
            .map(|n| ("ADDED".to_string(), format!("c{n:02}")))
            .collect();
        expected.push(("MODIFIED".into(), "c03".into()));
        expected.push(("DELETED".into(), "c04".into()));
        assert_eq!(got, expected, "resumed watch from {last_seen}:\n{out}");
    })
    .await
    .unwrap();
}
