//! The scripts the proxy writes, applied by the real `nft` in a network namespace of the
//! test's own: a service added, its endpoints changed, and removed, each as one transaction,
//! with the table read back after each.

use std::process::Command;

use flotilla_proxy::model::{self, Endpoint, ProxyConfig, Rendered, ServicePort, ServiceView};
use flotilla_proxy::Nft;

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        assert!(
            nix_is_root(),
            "the proxy's nftables test needs root (CI runs it as root)"
        );
        let name = format!("flotilla-proxy-{}", std::process::id());
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
            .args([
                "netns",
                "exec",
                &self.0,
                "nft",
                "list",
                "table",
                "ip",
                model::TABLE,
            ])
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

#[tokio::test]
async fn scripts_apply_as_transactions_and_leave_only_what_they_say() {
    let ns = Netns::new();
    let nft = ns.nft();
    let config = ProxyConfig {
        node: "n1".into(),
        cluster_cidr: "10.244.0.0/16".into(),
    };
    let one = model::render(&view(&["10.244.1.5"], true), &config);
    let mut script = model::base();
    model::diff(&Rendered::default(), &one, &mut script);
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
    let two = model::render(&view(&["10.244.1.5", "10.244.2.5"], true), &config);
    let mut script = String::new();
    model::diff(&one, &two, &mut script);
    nft.apply(&script).await.unwrap();
    let table = ns.table();
    assert!(table.contains("dnat to 10.244.2.5:8080"), "{table}");
    assert!(table.contains("numgen random mod 2 vmap"), "{table}");

    // A script that fails changes nothing (one transaction).
    let broken = format!("{script}add rule ip {} nowhere drop\n", model::TABLE);
    assert!(nft.apply(&broken).await.is_err());
    assert_eq!(ns.table(), table);

    // Gone: nothing of it is left, and the base is as it was.
    let mut script = String::new();
    model::diff(&two, &Rendered::default(), &mut script);
    nft.apply(&script).await.unwrap();
    let table = ns.table();
    for gone in ["svc-", "ep-", "ext-", "aff-", "10.96.3.4", "30080"] {
        assert!(!table.contains(gone), "{gone} left in {table}");
    }
    assert!(table.contains("chain services"), "{table}");
}
