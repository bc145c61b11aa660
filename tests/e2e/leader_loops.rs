//! Issue 14, point 2: the leader-only loops (garbage collector, node lifecycle) run on the
//! leader alone, start once per term on a new leader and stop on a deposed one; no two nodes
//! run them in the same term.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_tests::{eventually, Cluster, Kubectl, Options};
use nix::sys::signal::Signal;

/// What a node's `/metrics` says of its leader loops.
#[derive(Debug, Default, Clone, PartialEq)]
struct Loops {
    running_term: u64,
    starts: u64,
    stops: u64,
    started_terms: BTreeSet<u64>,
}

fn loops(kubectl: &Kubectl, api_addr: &str) -> Option<Loops> {
    let (ok, out, _) = kubectl.run(
        &format!("https://{api_addr}"),
        &["get", "--raw", "/metrics"],
    );
    if !ok {
        return None;
    }
    let mut l = Loops::default();
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        match name {
            "flotilla_leader_loops_running_term" => l.running_term = value as u64,
            "flotilla_leader_loops_starts_total" => l.starts = value as u64,
            "flotilla_leader_loops_stops_total" => l.stops = value as u64,
            _ => {
                if let Some(term) = name
                    .strip_prefix("flotilla_leader_loops_started_in_term{term=\"")
                    .and_then(|t| t.strip_suffix("\"}"))
                {
                    l.started_terms.insert(term.parse().ok()?);
                }
            }
        }
    }
    Some(l)
}

async fn term(cluster: &Cluster, i: usize) -> u64 {
    cluster.client(i).status().await.expect("status").term
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loops_follow_leadership_one_node_per_term() {
    let mut cluster = Cluster::start(3, Options::default()).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let kubectl = Kubectl {
        kubeconfig: cluster.kubeconfig.clone(),
        cache: cache.path().to_path_buf(),
    };
    // Every term in which each node (by name) started the loops, across restarts.
    let mut started: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut record = |cluster: &Cluster, i: usize, l: &Loops| {
        started
            .entry(cluster.nodes[i].name.clone())
            .or_default()
            .extend(l.started_terms.iter().copied());
    };
    let read = |cluster: &Cluster, i: usize| loops(&kubectl, &cluster.nodes[i].api_addr);

    // The leader runs the loops in its term, once; the followers run none.
    let first = cluster.leader().await.unwrap();
    let t1 = term(&cluster, first).await;
    assert!(
        eventually(Duration::from_secs(20), || read(&cluster, first)
            .is_some_and(|l| l.running_term == t1)),
        "the leader does not run its loops in term {t1}: {:?}",
        read(&cluster, first)
    );
    for i in 0..3 {
        let l = read(&cluster, i).expect("metrics");
        if i == first {
            assert_eq!((l.starts, l.stops), (1, 0), "{l:?}");
        } else {
            assert_eq!(l, Loops::default(), "follower n{} runs leader loops", i + 1);
        }
        record(&cluster, i, &l);
    }

    // kill -9 the leader: a new leader starts its loops once, in its own later term.
    cluster.kill(first);
    let second = cluster.leader().await.unwrap();
    let t2 = term(&cluster, second).await;
    assert!(t2 > t1);
    assert!(
        eventually(Duration::from_secs(20), || read(&cluster, second)
            .is_some_and(|l| l.running_term == t2)),
        "the new leader does not run its loops in term {t2}: {:?}",
        read(&cluster, second)
    );
    let l = read(&cluster, second).unwrap();
    assert_eq!((l.starts, l.stops), (1, 0), "{l:?}");
    record(&cluster, second, &l);

    // The old leader comes back as a follower and runs nothing.
    cluster.restart(first).await.unwrap();
    cluster.wait_voters(3).await.unwrap();
    let third_node = (0..3).find(|i| *i != first && *i != second).unwrap();
    for i in [first, third_node] {
        let l = read(&cluster, i).expect("metrics");
        assert_eq!(l.running_term, 0, "n{} runs leader loops: {l:?}", i + 1);
        record(&cluster, i, &l);
    }

    // Pause the leader (SIGSTOP): another node leads and starts its loops; resumed, the old
    // leader learns it was deposed and stops its loops.
    cluster.signal(second, Signal::SIGSTOP).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != second).collect();
    let third = flotilla_tests::wait_until(Duration::from_secs(30), || {
        let (cluster, kubectl, others) = (&cluster, &kubectl, &others);
        async move {
            others.iter().copied().find(|i| {
                loops(kubectl, &cluster.nodes[*i].api_addr).is_some_and(|l| l.running_term > t2)
            })
        }
    })
    .await
    .expect("no other node took over the loops while the leader was paused");
    let l = read(&cluster, third).unwrap();
    record(&cluster, third, &l);
    cluster.signal(second, Signal::SIGCONT).unwrap();
    assert!(
        eventually(Duration::from_secs(30), || read(&cluster, second)
            .is_some_and(|l| l.running_term == 0 && l.stops == 1)),
        "the deposed leader still runs its loops: {:?}",
        read(&cluster, second)
    );
    for i in 0..3 {
        let l = read(&cluster, i).expect("metrics");
        record(&cluster, i, &l);
    }

    // No term in which two nodes started the loops.
    let mut owner: BTreeMap<u64, &str> = BTreeMap::new();
    for (name, terms) in &started {
        for t in terms {
            if let Some(other) = owner.insert(*t, name) {
                panic!("term {t}: both {other} and {name} ran the leader loops: {started:?}");
            }
        }
    }
    assert!(owner.len() >= 3, "three leaderships expected: {started:?}");
}
