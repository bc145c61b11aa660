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
//! touches only those: [`diff`] adds, refills and removes exactly what differs, as
//! [`Change`]s that are written as an `nft` script or sent as one netlink batch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;

/// The table that masquerades what the service tables marked.
pub const TABLE: &str = "flotilla-svc";
/// Services are spread over this many tables of their own (`flotilla-svc-00` …): the kernel
/// checks a whole table's jumps on every transaction that adds a rule, so a change costs in
/// proportion to its table, not to every service of the node.
pub const SHARDS: usize = 16;

/// The name of shard `shard`'s table.
pub fn shard_table(shard: usize) -> String {
    format!("{TABLE}-{shard:02}")
}

/// The shard a service's rules live in.
pub fn shard_of(namespace: &str, name: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    (h.finish() % SHARDS as u64) as usize
}
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

/// One rule of a service's chains: its `nft` text ([`std::fmt::Display`]) and its netlink
/// expressions ([`crate::netlink`]) are written from this one description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `ip saddr IP jump mark-for-masquerade`: a pod reaching itself (hairpin).
    MarkIfFrom(Ipv4Addr),
    /// `update @SET { ip saddr }`: remember the client (`sessionAffinity: ClientIP`).
    Remember(String),
    /// `meta l4proto PROTO dnat to IP:PORT`.
    Dnat {
        protocol: String,
        ip: Ipv4Addr,
        port: u16,
    },
    /// `ip saddr @SET goto CHAIN`: a client remembered by an endpoint goes back to it.
    Sticky { set: String, chain: String },
    /// `numgen random mod N == 0 goto CHAIN`: one of a cascade that picks uniformly.
    OneIn { n: u32, chain: String },
    /// `goto CHAIN`.
    Goto(String),
    /// `jump mark-for-masquerade`.
    Mark,
    /// `fib saddr type local jump mark-for-masquerade`.
    MarkIfLocal,
    /// `fib saddr type local goto CHAIN`.
    GotoIfLocal(String),
    /// `ip saddr NET/PREFIX goto CHAIN`.
    GotoIfFrom {
        net: Ipv4Addr,
        prefix: u8,
        chain: String,
    },
    /// `drop`.
    Drop,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::MarkIfFrom(ip) => write!(f, "ip saddr {ip} jump mark-for-masquerade"),
            Rule::Remember(set) => write!(f, "update @{set} {{ ip saddr }}"),
            Rule::Dnat { protocol, ip, port } => {
                write!(f, "meta l4proto {protocol} dnat to {ip}:{port}")
            }
            Rule::Sticky { set, chain } => write!(f, "ip saddr @{set} goto {chain}"),
            Rule::OneIn { n, chain } => write!(f, "numgen random mod {n} == 0 goto {chain}"),
            Rule::Goto(chain) => write!(f, "goto {chain}"),
            Rule::Mark => write!(f, "jump mark-for-masquerade"),
            Rule::MarkIfLocal => write!(f, "fib saddr type local jump mark-for-masquerade"),
            Rule::GotoIfLocal(chain) => write!(f, "fib saddr type local goto {chain}"),
            Rule::GotoIfFrom { net, prefix, chain } => {
                write!(f, "ip saddr {net}/{prefix} goto {chain}")
            }
            Rule::Drop => write!(f, "drop"),
        }
    }
}

/// The key of a `service-ips` element (`address . protocol . port`) or, without an address,
/// of a `service-nodeports` one (`protocol . port`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub ip: Option<Ipv4Addr>,
    pub protocol: String,
    pub port: u16,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.ip {
            write!(f, "{ip} . ")?;
        }
        write!(f, "{} . {}", self.protocol, self.port)
    }
}

/// A service's share of the tables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The shard whose table holds it.
    pub shard: usize,
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Affinity set name → its timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    /// `service-ips` elements: key → the chain they go to.
    pub service_ips: BTreeMap<Key, String>,
    /// `service-nodeports` elements: key → the chain they go to.
    pub nodeports: BTreeMap<Key, String>,
}

impl Rendered {
    /// Nothing in the table.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
            && self.sets.is_empty()
            && self.service_ips.is_empty()
            && self.nodeports.is_empty()
    }
}

fn hash(parts: &[&str]) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    format!("{:012x}", h.finish() & 0xFFFF_FFFF_FFFF)
}

/// A uniform pick among `targets` with no set: the first with probability 1/n, else the
/// second with 1/(n-1), …, else the last. (An anonymous verdict map per service would cost
/// the kernel a scan of every set of the table to name each new one.)
fn pick(targets: &[String]) -> Vec<Rule> {
    let n = targets.len() as u32;
    let mut rules: Vec<Rule> = targets[..targets.len() - 1]
        .iter()
        .enumerate()
        .map(|(i, chain)| Rule::OneIn {
            n: n - i as u32,
            chain: chain.clone(),
        })
        .collect();
    rules.push(Rule::Goto(targets[targets.len() - 1].clone()));
    rules
}

/// `10.244.0.0/16` → (network, prefix length); a bare address is a /32.
fn cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (net, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0);
    Some((
        Ipv4Addr::from(u32::from(net.parse::<Ipv4Addr>().ok()?) & mask),
        prefix,
    ))
}

/// The chains, sets and elements of one service.
pub fn render(view: &ServiceView, config: &ProxyConfig) -> Rendered {
    let mut r = Rendered {
        shard: shard_of(&view.namespace, &view.name),
        ..Rendered::default()
    };
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
            let mut rules = vec![Rule::MarkIfFrom(e.ip)];
            if let Some(timeout) = view.affinity_seconds {
                let set = format!("aff-{}", &chain[3..]);
                r.sets.insert(set.clone(), timeout);
                rules.push(Rule::Remember(set));
            }
            rules.push(Rule::Dnat {
                protocol: port.protocol.clone(),
                ip: e.ip,
                port: *target,
            });
            r.chains.insert(chain.clone(), rules);
            endpoints.push((chain, e));
        }
        let mut rules = Vec::new();
        if view.affinity_seconds.is_some() {
            for (chain, _) in &endpoints {
                rules.push(Rule::Sticky {
                    set: format!("aff-{}", &chain[3..]),
                    chain: chain.clone(),
                });
            }
        }
        let all: Vec<String> = endpoints.iter().map(|(c, _)| c.clone()).collect();
        if all.is_empty() {
            rules.push(Rule::Drop);
        } else {
            rules.extend(pick(&all));
        }
        r.chains.insert(svc.clone(), rules);
        r.service_ips.insert(
            Key {
                ip: Some(vip),
                protocol: port.protocol.clone(),
                port: port.port,
            },
            svc.clone(),
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
            let mut rules = vec![Rule::MarkIfLocal, Rule::GotoIfLocal(svc.clone())];
            if let Some((net, prefix)) = cidr(&config.cluster_cidr) {
                rules.push(Rule::GotoIfFrom {
                    net,
                    prefix,
                    chain: svc.clone(),
                });
            }
            if local.is_empty() {
                rules.push(Rule::Drop);
            } else {
                rules.extend(pick(&local));
            }
            rules
        } else {
            vec![Rule::Mark, Rule::Goto(svc.clone())]
        };
        r.chains.insert(ext.clone(), rules);
        r.nodeports.insert(
            Key {
                ip: None,
                protocol: port.protocol.clone(),
                port: node_port,
            },
            ext,
        );
    }
    r
}

/// The tables with nothing in them but the dispatch: the first script of a node (and of a
/// resync), replacing whatever an earlier run left. Each shard dispatches its own services
/// (a connection that matches none falls through to the next shard's chains) and marks what
/// needs masquerading; the main table masquerades.
pub fn base() -> String {
    let mut out = format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
         \tchain masquerading {{\n\
         \t\tmeta mark & {MASQUERADE_MARK:#x} == 0 return\n\
         \t\tmeta mark set meta mark ^ {MASQUERADE_MARK:#x}\n\
         \t\tmasquerade fully-random\n\
         \t}}\n\
         \tchain nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; jump masquerading; }}\n\
         }}\n"
    );
    for shard in 0..SHARDS {
        let t = shard_table(shard);
        let _ = write!(
            out,
            "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
             \tmap service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n\
             \tmap service-nodeports {{ type inet_proto . inet_service : verdict; }}\n\
             \tchain mark-for-masquerade {{ meta mark set meta mark | {MASQUERADE_MARK:#x}; }}\n\
             \tchain services {{\n\
             \t\tip daddr . meta l4proto . th dport vmap @service-ips\n\
             \t\tfib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports\n\
             \t}}\n\
             \tchain nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; jump services; }}\n\
             \tchain nat-output {{ type nat hook output priority -100; policy accept; jump services; }}\n\
             }}\n"
        );
    }
    out
}

/// One step of a change to the tables, in the order a transaction applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The steps after this one are in this shard's table.
    Table(usize),
    AddSet {
        name: String,
        timeout: u32,
    },
    AddChain(String),
    FlushChain(String),
    AddRule {
        chain: String,
        rule: Rule,
    },
    /// In `service-ips` (a key with an address) or `service-nodeports`.
    AddElement {
        key: Key,
        chain: String,
    },
    DeleteElement(Key),
    DeleteChain(String),
    DeleteSet(String),
}

/// The map an element key belongs to.
pub fn map_of(key: &Key) -> &'static str {
    if key.ip.is_some() {
        "service-ips"
    } else {
        "service-nodeports"
    }
}

impl Change {
    /// The `nft` command for this step in `table` (nothing for [`Change::Table`]).
    fn command(&self, table: &str) -> Option<String> {
        Some(match self {
            Change::Table(_) => return None,
            Change::AddSet { name, timeout } => format!(
                "add set ip {table} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
            ),
            Change::AddChain(name) => format!("add chain ip {table} {name}"),
            Change::FlushChain(name) => format!("flush chain ip {table} {name}"),
            Change::AddRule { chain, rule } => format!("add rule ip {table} {chain} {rule}"),
            Change::AddElement { key, chain } => format!(
                "add element ip {table} {} {{ {key} : goto {chain} }}",
                map_of(key)
            ),
            Change::DeleteElement(key) => {
                format!("delete element ip {table} {} {{ {key} }}", map_of(key))
            }
            Change::DeleteChain(name) => format!("delete chain ip {table} {name}"),
            Change::DeleteSet(name) => format!("delete set ip {table} {name}"),
        })
    }
}

/// `changes` as an `nft -f` script.
pub fn script(changes: &[Change]) -> String {
    let mut out = String::new();
    let mut table = shard_table(0);
    for c in changes {
        if let Change::Table(shard) = c {
            table = shard_table(*shard);
        }
        if let Some(command) = c.command(&table) {
            let _ = writeln!(out, "{command}");
        }
    }
    out
}

fn elements(out: &mut Vec<Change>, old: &BTreeMap<Key, String>, new: &BTreeMap<Key, String>) {
    for (k, v) in old {
        if new.get(k) != Some(v) {
            out.push(Change::DeleteElement(k.clone()));
        }
    }
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(Change::AddElement {
                key: k.clone(),
                chain: v.clone(),
            });
        }
    }
}

/// The changes that turn `old` (a service's share as applied) into `new`: new chains and
/// sets first (empty), then changed chains flushed and refilled, map elements replaced, and
/// what is gone flushed and deleted last, all after a [`Change::Table`] naming the service's
/// shard. Nothing else of the table is touched.
pub fn diff(old: &Rendered, new: &Rendered, out: &mut Vec<Change>) {
    let start = out.len();
    out.push(Change::Table(if new.is_empty() {
        old.shard
    } else {
        new.shard
    }));
    for (name, timeout) in &new.sets {
        if !old.sets.contains_key(name) {
            out.push(Change::AddSet {
                name: name.clone(),
                timeout: *timeout,
            });
        }
    }
    for name in new.chains.keys() {
        if !old.chains.contains_key(name) {
            out.push(Change::AddChain(name.clone()));
        }
    }
    for (name, rules) in &new.chains {
        match old.chains.get(name) {
            Some(before) if before == rules => continue,
            Some(_) => out.push(Change::FlushChain(name.clone())),
            None => {}
        }
        for rule in rules {
            out.push(Change::AddRule {
                chain: name.clone(),
                rule: rule.clone(),
            });
        }
    }
    elements(out, &old.service_ips, &new.service_ips);
    elements(out, &old.nodeports, &new.nodeports);
    let gone: Vec<&String> = old
        .chains
        .keys()
        .filter(|c| !new.chains.contains_key(*c))
        .collect();
    for name in &gone {
        out.push(Change::FlushChain((*name).clone()));
    }
    for name in &gone {
        out.push(Change::DeleteChain((*name).clone()));
    }
    for name in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        out.push(Change::DeleteSet(name.clone()));
    }
    if out.len() == start + 1 {
        out.truncate(start);
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
        let (key, svc) = r.service_ips.iter().next().unwrap();
        assert_eq!(key.to_string(), "10.96.3.4 . tcp . 80");
        let rules = &r.chains[svc];
        // Two ready endpoints: the first with probability 1/2, else the second.
        assert!(
            matches!(&rules[..], [Rule::OneIn { n: 2, .. }, Rule::Goto(_)]),
            "{rules:?}"
        );
        assert!(rules[0]
            .to_string()
            .starts_with("numgen random mod 2 == 0 goto ep-"));
        let eps: Vec<&Vec<Rule>> = r
            .chains
            .iter()
            .filter(|(k, _)| k.starts_with("ep-"))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(eps.len(), 2);
        let text = |rules: &Vec<Rule>| rules.iter().map(Rule::to_string).collect::<Vec<_>>();
        assert!(eps.iter().any(|rules| text(rules)
            == [
                "ip saddr 10.244.1.5 jump mark-for-masquerade",
                "meta l4proto tcp dnat to 10.244.1.5:8080"
            ]));
        let mut none = web();
        none.endpoints.clear();
        let r = render(&none, &config());
        assert_eq!(r.chains.len(), 1);
        assert_eq!(r.chains.values().next().unwrap(), &vec![Rule::Drop]);
        let mut headless = web();
        headless.cluster_ip = None;
        assert!(render(&headless, &config()).is_empty());
    }

    #[test]
    fn the_cascade_picks_each_endpoint_with_equal_chance() {
        let targets: Vec<String> = (0..5).map(|i| format!("ep-{i}")).collect();
        let rules = pick(&targets);
        // The chance of reaching rule i and taking it: 1/5 for each.
        let mut reach = 1.0;
        for rule in &rules {
            let take = match rule {
                Rule::OneIn { n, .. } => 1.0 / *n as f64,
                Rule::Goto(_) => 1.0,
                other => panic!("{other:?}"),
            };
            assert!((reach * take - 0.2).abs() < 1e-9, "{rules:?}");
            reach *= 1.0 - take;
        }
        assert_eq!(
            cidr("10.244.7.1/16"),
            Some(("10.244.0.0".parse().unwrap(), 16))
        );
        assert_eq!(cidr("10.244.7.1/33"), None);
    }

    #[test]
    fn affinity_and_node_ports_with_local_policy() {
        let mut v = web();
        v.affinity_seconds = Some(10800);
        v.ports[0].node_port = Some(30080);
        v.external_local = true;
        let r = render(&v, &config());
        assert_eq!(r.sets.len(), 2);
        let svc = r.service_ips.values().next().unwrap().clone();
        assert!(r.chains[&svc][0].to_string().starts_with("ip saddr @aff-"));
        assert!(matches!(r.chains[&svc][2], Rule::OneIn { n: 2, .. }));
        let node_port = Key {
            ip: None,
            protocol: "tcp".into(),
            port: 30080,
        };
        let ext = r.nodeports[&node_port].clone();
        let rules = &r.chains[&ext];
        assert_eq!(
            rules[2].to_string(),
            format!("ip saddr 10.244.0.0/16 goto {svc}")
        );
        // Only n1's endpoint serves outside clients.
        assert!(
            matches!(&rules[3..], [Rule::Goto(c)] if c.starts_with("ep-")),
            "{rules:?}"
        );
        v.external_local = false;
        let r = render(&v, &config());
        let ext = r.nodeports[&node_port].clone();
        assert_eq!(r.chains[&ext], vec![Rule::Mark, Rule::Goto(svc)]);
    }

    #[test]
    fn a_diff_touches_only_what_changed() {
        let before = render(&web(), &config());
        let mut changes = Vec::new();
        diff(&before, &before, &mut changes);
        assert_eq!(changes, []);
        let mut v = web();
        v.endpoints[2].ready = true;
        let after = render(&v, &config());
        let mut changes = Vec::new();
        diff(&before, &after, &mut changes);
        // All in the service's shard.
        let shard = shard_of("shop", "web");
        assert_eq!(changes[0], Change::Table(shard));
        let script = script(&changes);
        let lines: Vec<&str> = script.lines().collect();
        // One new endpoint chain (added, filled) and the service chain refilled.
        let table = shard_table(shard);
        assert!(
            lines[0].starts_with(&format!("add chain ip {table} ep-")),
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
        assert!(script.contains("numgen random mod 3 == 0"), "{script}");
        assert!(!script.contains("element"), "{script}");
        // Gone: elements and chains deleted.
        let mut changes = Vec::new();
        diff(&after, &Rendered::default(), &mut changes);
        let script = super::script(&changes);
        assert!(script.contains(&format!(
            "delete element ip {table} service-ips {{ 10.96.3.4 . tcp . 80 }}"
        )));
        assert_eq!(script.matches("delete chain").count(), 4, "{script}");
        let d = script.find("delete element").unwrap();
        assert!(script.find("delete chain").unwrap() > d);
    }
}
