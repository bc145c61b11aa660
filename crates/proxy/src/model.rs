//! What nftables holds for each service, and the change from one state to another as one
//! `nft` script (one transaction).
//!
//! The layout follows kube-proxy's nftables mode, in our own table `ip flotilla-svc`:
//! `services` dispatches through the map `service-ips` (`address . protocol . port : goto
//! svc-…`) and, for addresses of this node, `service-nodeports` (`protocol . port : goto
//! ext-…`). A service port's chain `svc-…` picks an endpoint at random (after the
//! `sessionAffinity: ClientIP` sets, one per endpoint); an endpoint's chain `ep-…` marks a pod
//! reaching itself (hairpin) for masquerade and DNATs. `ext-…` masquerades NodePort traffic,
//! or with `externalTrafficPolicy: Local` keeps the client's address and only this node's
//! endpoints. A service port with no ready endpoint drops.
//!
//! Each service renders to its own chains, sets and map elements, so a change to one service
//! touches only those: [`diff`] adds, refills and removes exactly what differs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

pub const TABLE: &str = "flotilla-svc";
const MASQUERADE_MARK: u32 = 0x4000;

/// What the node's proxy needs to know of itself.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node: String,
    /// The pods' network (`10.244.0.0/16`): its traffic to a NodePort stays unmasqueraded.
    pub cluster_cidr: String,
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: String,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// One endpoint, with its ports by name (a named target port resolves per pod).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub node: Option<String>,
    pub ready: bool,
    /// (port name, protocol) → number.
    pub ports: BTreeMap<(String, String), u16>,
}

/// A service as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: for how long a client sticks to its endpoint.
    pub affinity_seconds: Option<u32>,
    pub external_local: bool,
    pub endpoints: Vec<Endpoint>,
}

/// A service's share of the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Set name → its declaration.
    pub sets: BTreeMap<String, String>,
    /// `service-ips` elements: key → verdict.
    pub service_ips: BTreeMap<String, String>,
    /// `service-nodeports` elements: key → verdict.
    pub nodeports: BTreeMap<String, String>,
}

fn hash(parts: &[&str]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:012x}", h.finish() & 0xFFFF_FFFF_FFFF)
}

fn pick(targets: &[String]) -> String {
    let arms: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{i} : goto {t}"))
        .collect();
    format!(
        "numgen random mod {} vmap {{ {} }}",
        targets.len(),
        arms.join(", ")
    )
}

/// The chains, sets and elements of one service.
pub fn render(view: &ServiceView, config: &ProxyConfig) -> Rendered {
    let mut r = Rendered::default();
    let Some(vip) = view.cluster_ip else {
        return r;
    };
    for port in &view.ports {
        let id = [
            view.namespace.as_str(),
            view.name.as_str(),
            port.protocol.as_str(),
            port.name.as_str(),
        ];
        let svc = format!("svc-{}", hash(&id));
        // (endpoint chain, endpoint) of every ready endpoint serving this port.
        let mut endpoints: Vec<(String, &Endpoint)> = Vec::new();
        for e in view.endpoints.iter().filter(|e| e.ready) {
            let Some(target) = e.ports.get(&(port.name.clone(), port.protocol.clone())) else {
                continue;
            };
            let ip = e.ip.to_string();
            let chain = format!("ep-{}", hash(&[&svc, &ip, &target.to_string()]));
            let mut rules = vec![format!("ip saddr {ip} jump mark-for-masquerade")];
            if let Some(timeout) = view.affinity_seconds {
                let set = format!("aff-{}", &chain[3..]);
                r.sets.insert(
                    set.clone(),
                    format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"),
                );
                rules.push(format!("update @{set} {{ ip saddr }}"));
            }
            rules.push(format!(
                "meta l4proto {} dnat to {ip}:{target}",
                port.protocol
            ));
            r.chains.insert(chain.clone(), rules);
            endpoints.push((chain, e));
        }
        let mut rules = Vec::new();
        if view.affinity_seconds.is_some() {
            for (chain, _) in &endpoints {
                rules.push(format!("ip saddr @aff-{} goto {chain}", &chain[3..]));
            }
        }
        let all: Vec<String> = endpoints.iter().map(|(c, _)| c.clone()).collect();
        rules.push(if all.is_empty() {
            "drop".into()
        } else {
            pick(&all)
        });
        r.chains.insert(svc.clone(), rules);
        r.service_ips.insert(
            format!("{vip} . {} . {}", port.protocol, port.port),
            format!("goto {svc}"),
        );
        let Some(node_port) = port.node_port else {
            continue;
        };
        let ext = format!("ext-{}", &svc[4..]);
        let rules = if view.external_local {
            // From this host or a pod: as any service traffic. From outside: this node's
            // endpoints only, the client's address kept.
            let local: Vec<String> = endpoints
                .iter()
                .filter(|(_, e)| e.node.as_deref() == Some(config.node.as_str()))
                .map(|(c, _)| c.clone())
                .collect();
            vec![
                "fib saddr type local jump mark-for-masquerade".into(),
                format!("fib saddr type local goto {svc}"),
                format!("ip saddr {} goto {svc}", config.cluster_cidr),
                if local.is_empty() {
                    "drop".into()
                } else {
                    pick(&local)
                },
            ]
        } else {
            vec!["jump mark-for-masquerade".into(), format!("goto {svc}")]
        };
        r.chains.insert(ext.clone(), rules);
        r.nodeports.insert(
            format!("{} . {node_port}", port.protocol),
            format!("goto {ext}"),
        );
    }
    r
}

/// The whole table with nothing in it but the dispatch: the first script of a node (and of
/// a resync), replacing whatever an earlier run left.
pub fn base() -> String {
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tmap service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n\
         \tmap service-nodeports {{ type inet_proto . inet_service : verdict; }}\n\
         \tchain mark-for-masquerade {{ meta mark set meta mark | {MASQUERADE_MARK:#x}; }}\n\
         \tchain masquerading {{\n\
         \t\tmeta mark & {MASQUERADE_MARK:#x} == 0 return\n\
         \t\tmeta mark set meta mark ^ {MASQUERADE_MARK:#x}\n\
         \t\tmasquerade fully-random\n\
         \t}}\n\
         \tchain services {{\n\
         \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
         \t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\
         \t}}\n\
         \tchain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}\n\
         \tchain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n\
         \tchain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}\n\
         }}\n"
    )
}

fn elements(
    out: &mut String,
    map: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) {
    for (k, v) in old {
        if new.get(k) != Some(v) {
            let _ = writeln!(out, "delete element ip {TABLE} {map} {{ {k} }}");
        }
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            let _ = writeln!(out, "add element ip {TABLE} {map} {{ {k} : {v} }}");
        }
    }
}

/// The script that turns `old` (a service's share as applied) into `new`: new chains and
/// sets first (empty), then changed chains flushed and refilled, map elements replaced, and
/// what is gone flushed and deleted last. Nothing else of the table is touched.
pub fn diff(old: &Rendered, new: &Rendered, out: &mut String) {
    for (name, decl) in &new.sets {
        if !old.sets.contains_key(name) {
            let _ = writeln!(out, "add set ip {TABLE} {name} {{ {decl} }}");
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            let _ = writeln!(out, "add chain ip {TABLE} {name}");
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(before) if before == rules => continue,
            Some(_) => {
                let _ = writeln!(out, "flush chain ip {TABLE} {name}");
            }
            None => {}
        }
        for rule in rules {
            let _ = writeln!(out, "add rule ip {TABLE} {name} {rule}");
        }
    }
    elements(out, "service-ips", &old.service_ips, &new.service_ips);
    elements(out, "service-nodeports", &old.nodeports, &new.nodeports);
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for name in &gone {
        let _ = writeln!(out, "flush chain ip {TABLE} {name}");
    }
    for name in &gone {
        let _ = writeln!(out, "delete chain ip {TABLE} {name}");
    }
    for name in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        let _ = writeln!(out, "delete set ip {TABLE} {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProxyConfig {
        ProxyConfig {
            node: "n1".into(),
            cluster_cidr: "10.244.0.0/16".into(),
        }
    }

    fn endpoint(ip: &str, node: &str, ready: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            node: Some(node.into()),
            ready,
            ports: [(("http".to_string(), "tcp".to_string()), 8080)].into(),
        }
    }

    fn web() -> ServiceView {
        ServiceView {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ip: Some("10.96.3.4".parse().unwrap()),
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: "tcp".into(),
                port: 80,
                node_port: None,
            }],
            affinity_seconds: None,
            external_local: false,
            endpoints: vec![
                endpoint("10.244.1.5", "n1", true),
                endpoint("10.244.2.5", "n2", true),
                endpoint("10.244.3.5", "n3", false),
            ],
        }
    }

    #[test]
    fn a_service_port_dispatches_to_its_ready_endpoints() {
        let r = render(&web(), &config());
        assert_eq!(r.service_ips.len(), 1);
        let (key, verdict) = r.service_ips.iter().next().unwrap();
        assert_eq!(key, "10.96.3.4 . tcp . 80");
        let svc = verdict.strip_prefix("goto ").unwrap();
        let rules = &r.chains[svc];
        assert!(
            rules[0].starts_with("numgen random mod 2 vmap { 0 : goto ep-"),
            "{rules:?}"
        );
        let eps: Vec<&Vec<String>> = r
            .chains
            .iter()
            .filter(|(k, _)| k.starts_with("ep-"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().any(|rules| *rules
            == &vec![
                "ip saddr 10.244.1.5 jump mark-for-masquerade".to_string(),
                "meta l4proto tcp dnat to 10.244.1.5:8080".to_string()
            ]));
        let mut none = web();
        none.endpoints.clear();
        let r = render(&none, &config());
        assert_eq!(r.chains.len(), 1);
        assert_eq!(r.chains.values().next().unwrap(), &vec!["drop".to_string()]);
        let mut headless = web();
        headless.cluster_ip = None;
        assert_eq!(render(&headless, &config()), Rendered::default());
    }

    #[test]
    fn affinity_and_node_ports_with_local_policy() {
        let mut v = web();
        v.affinity_seconds = Some(10800);
        v.ports[0].node_port = Some(30080);
        v.external_local = true;
        let r = render(&v, &config());
        assert_eq!(r.sets.len(), 2);
        let svc = r.service_ips.values().next().unwrap().replace("goto ", "");
        assert!(r.chains[&svc][0].starts_with("ip saddr @aff-"));
        assert!(r.chains[&svc][2].starts_with("numgen random mod 2"));
        let ext = r.nodeports["tcp . 30080"].replace("goto ", "");
        let rules = &r.chains[&ext];
        assert_eq!(rules[2], format!("ip saddr 10.244.0.0/16 goto {svc}"));
        // Only n1's endpoint serves outside clients.
        assert!(rules[3].starts_with("numgen random mod 1 vmap { 0 : goto ep-"));
        v.external_local = false;
        let r = render(&v, &config());
        let ext = r.nodeports["tcp . 30080"].replace("goto ", "");
        assert_eq!(
            r.chains[&ext],
            vec![
                "jump mark-for-masquerade".to_string(),
                format!("goto {svc}")
            ]
        );
    }

    #[test]
    fn a_diff_touches_only_what_changed() {
        let before = render(&web(), &config());
        let mut script = String::new();
        diff(&before, &before, &mut script);
        assert_eq!(script, "");
        let mut v = web();
        v.endpoints[2].ready = true;
        let after = render(&v, &config());
        let mut script = String::new();
        diff(&before, &after, &mut script);
        let lines: Vec<&str> = script.lines().collect();
        // One new endpoint chain (added, filled) and the service chain refilled.
        assert!(
            lines[0].starts_with("add chain ip flotilla-svc ep-"),
            "{script}"
        );
        assert_eq!(
            lines
                .iter()
                .filter(|l| l.starts_with("flush chain"))
                .count(),
            1,
            "{script}"
        );
        assert!(
            lines.iter().any(|l| l.contains("numgen random mod 3")),
            "{script}"
        );
        assert!(!script.contains("element"), "{script}");
        // Gone: elements and chains deleted.
        let mut script = String::new();
        diff(&after, &Rendered::default(), &mut script);
        assert!(
            script.contains("delete element ip flotilla-svc service-ips { 10.96.3.4 . tcp . 80 }")
        );
        assert_eq!(script.matches("delete chain").count(), 4, "{script}");
        let d = script.find("delete element").unwrap();
        assert!(script.find("delete chain").unwrap() > d);
    }
}
