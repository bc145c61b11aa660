//! The changes the proxy makes, applied to the real kernel in a network namespace of the
//! test's own: a service added, its endpoints changed, and removed, each as one transaction,
//! with the table read back after each; and the same changes sent as netlink batches leave
//! exactly the table `nft` leaves.

use std::process::Command;

use flotilla_proxy::model::{
    self, Change, Endpoint, ProxyConfig, Rendered, ServicePort, ServiceView,
};
use flotilla_proxy::{Netlink, Nft};

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        assert!(
            nix_is_root(),
            "the proxy's nftables test needs root (CI runs it as root)"
        );
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("flotilla-proxy-{}-{n}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Netns(name)
    }

    fn nft(&self) -> Nft {
        Nft {
            command: ["ip", "netns", "exec", &self.0, "nft"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn table(&self) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "list", "ruleset"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Netns {
    /// Sends `changes` as one netlink batch from inside the namespace.
    fn netlink(&self, changes: &[Change]) -> std::io::Result<()> {
        self.netlink_batches(vec![changes.to_vec()]).pop().unwrap()
    }

    /// Sends each batch in turn through one socket; what each came to.
    fn netlink_batches(&self, batches: Vec<Vec<Change>>) -> Vec<std::io::Result<()>> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut socket = Netlink::open().unwrap();
            batches.iter().map(|b| socket.apply(b)).collect()
        })
        .join()
        .unwrap()
    }

    /// The table with each map's and set's elements sorted: chains in the order they were
    /// made, and elements in the order they were added, are not what a change is about.
    fn normalized(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut block: Vec<String> = Vec::new();
        let mut sorted = false;
        for line in self.table().lines() {
            let mut t = line.trim().trim_end_matches(',');
            if sorted {
                // Elements come in hash order: one per line, without the braces.
                t = t
                    .strip_prefix("elements = { ")
                    .unwrap_or(t)
                    .trim_end_matches(" }");
            }
            let t = t.to_string();
            if line.starts_with("\tchain ")
                || line.starts_with("\tmap ")
                || line.starts_with("\tset ")
            {
                sorted = !line.starts_with("\tchain ");
                block = vec![t];
            } else if line == "\t}" {
                if sorted {
                    block[1..].sort();
                }
                out.push(block.join("\n"));
                block = Vec::new();
            } else if !block.is_empty() {
                block.push(t);
            }
        }
        out.sort();
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn view(ready: &[&str], affinity: bool) -> ServiceView {
    ServiceView {
        namespace: "shop".into(),
        name: "web".into(),
        cluster_ip: Some("10.96.3.4".parse().unwrap()),
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: "tcp".into(),
            port: 80,
            node_port: Some(30080),
        }],
        affinity_seconds: affinity.then_some(600),
        external_local: false,
        endpoints: ready
            .iter()
            .map(|ip| Endpoint {
                ip: ip.parse().unwrap(),
                node: Some("n1".into()),
                ready: true,
                ports: [(("http".to_string(), "tcp".to_string()), 8080)].into(),
            })
            .collect(),
    }
}

fn config() -> ProxyConfig {
    ProxyConfig {
        node: "n1".into(),
        cluster_cidr: "10.244.0.0/16".into(),
    }
}

fn changes(old: &Rendered, new: &Rendered) -> Vec<Change> {
    let mut out = Vec::new();
    model::diff(old, new, &mut out);
    out
}

#[tokio::test]
async fn scripts_apply_as_transactions_and_leave_only_what_they_say() {
    let ns = Netns::new();
    let nft = ns.nft();
    let one = model::render(&view(&["10.244.1.5"], true), &config());
    let script = model::base() + &model::script(&changes(&Rendered::default(), &one));
    nft.apply(&script).await.unwrap();
    let table = ns.table();
    assert!(
        table.contains("10.96.3.4 . tcp . 80 : goto svc-"),
        "{table}"
    );
    assert!(table.contains("tcp . 30080 : goto ext-"), "{table}");
    assert!(table.contains("dnat to 10.244.1.5:8080"), "{table}");
    assert!(table.contains("update @aff-"), "{table}");

    // A second endpoint: only the change goes in.
    let two = model::render(&view(&["10.244.1.5", "10.244.2.5"], true), &config());
    let script = model::script(&changes(&one, &two));
    nft.apply(&script).await.unwrap();
    let table = ns.table();
    assert!(table.contains("dnat to 10.244.2.5:8080"), "{table}");
    assert!(table.contains("numgen random mod 2"), "{table}");

    // A script that fails changes nothing (one transaction).
    let broken = format!(
        "{script}add rule ip {} nowhere drop\n",
        model::shard_table(0)
    );
    assert!(nft.apply(&broken).await.is_err());
    assert_eq!(ns.table(), table);

    // Gone: nothing of it is left, and the base is as it was.
    let script = model::script(&changes(&two, &Rendered::default()));
    nft.apply(&script).await.unwrap();
    let table = ns.table();
    for gone in [
        "chain svc-",
        "chain ep-",
        "chain ext-",
        "aff-",
        "10.96.3.4",
        "30080",
    ] {
        assert!(!table.contains(gone), "{gone} left in {table}");
    }
    assert_eq!(
        table.matches("chain services").count(),
        model::SHARDS,
        "{table}"
    );
}

#[tokio::test]
async fn netlink_batches_leave_the_table_nft_leaves() {
    let ns = Netns::new();
    let nft = ns.nft();
    let mut local = view(&["10.244.1.5", "10.244.2.5", "10.244.3.5"], false);
    local.external_local = true;
    local.name = "local".into();
    local.cluster_ip = Some("10.96.3.5".parse().unwrap());
    local.ports[0].node_port = Some(30081);
    local.endpoints[1].node = Some("n2".into());
    let states: Vec<Vec<ServiceView>> = vec![
        vec![],
        vec![view(&["10.244.1.5"], true)],
        vec![view(&["10.244.1.5", "10.244.2.5"], true), local.clone()],
        vec![view(&["10.244.2.5"], false), local],
        vec![view(&[], false)],
        vec![],
    ];
    let render = |views: &[ServiceView]| -> Vec<Rendered> {
        views.iter().map(|v| model::render(v, &config())).collect()
    };
    let mut applied: Vec<Rendered> = Vec::new();
    for (step, views) in states.iter().enumerate() {
        let next = render(views);
        // From the last state by netlink …
        let mut batch = Vec::new();
        for i in 0..applied.len().max(next.len()) {
            let old = applied.get(i).cloned().unwrap_or_default();
            let new = next.get(i).cloned().unwrap_or_default();
            model::diff(&old, &new, &mut batch);
        }
        if step == 0 {
            nft.apply(&model::base()).await.unwrap();
        } else {
            ns.netlink(&batch)
                .unwrap_or_else(|e| panic!("step {step}: {e}\n{}", model::script(&batch)));
        }
        let by_netlink = ns.normalized();
        // … and from nothing by nft.
        let mut whole = Vec::new();
        for r in &next {
            model::diff(&Rendered::default(), r, &mut whole);
        }
        nft.apply(&(model::base() + &model::script(&whole)))
            .await
            .unwrap();
        assert_eq!(by_netlink, ns.normalized(), "step {step}");
        if step == 2 {
            let all = by_netlink.join("\n");
            for seen in [
                "dnat to 10.244.2.5:8080",
                "update @aff-",
                "numgen random mod 2",
                "10.244.0.0/16",
                "30081",
            ] {
                assert!(all.contains(seen), "{seen} in {all}");
            }
        }
        applied = next;
    }

    // A batch the kernel refuses changes nothing.
    let table = ns.table();
    let refused = [
        Change::AddChain("ep-new".into()),
        Change::FlushChain("nowhere".into()),
    ];
    assert!(ns.netlink(&refused).is_err());
    assert_eq!(ns.table(), table);
    // On one socket, what a refused batch left unread is not taken for the next one's answers.
    let results = ns.netlink_batches(vec![
        refused.to_vec(),
        vec![Change::AddChain("ep-new".into())],
        refused.to_vec(),
    ]);
    assert!(
        results[0].is_err() && results[1].is_ok() && results[2].is_err(),
        "{results:?}"
    );
    assert!(ns.table().contains("chain ep-new"));
}
