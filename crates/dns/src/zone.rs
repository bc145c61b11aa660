//! The record table: every name of `cluster.local` (and of the service and pod reverse zones)
//! with its answers encoded in advance, built whole from the services, their endpoints and
//! the pods, as Kubernetes' DNS specification names them:
//!
//! - `svc.ns.svc.cluster.local`: A of the cluster IP; for a headless service, of its ready
//!   endpoints; CNAME of an ExternalName.
//! - `host.svc.ns.svc.cluster.local`: A of a headless service's endpoint (its hostname, else
//!   its address with dashes).
//! - `_port._proto.svc.ns.svc.cluster.local`: SRV per named port (the service, or each ready
//!   endpoint of a headless one, with their A records as additional records).
//! - `a-b-c-d.ns.pod.cluster.local`: A of a pod with that address in that namespace.
//! - PTR of cluster IPs and pod addresses.
//!
//! Every ancestor of a name is in the table too, empty, so that a name with nothing of the
//! asked type is NODATA and only a name that does not exist is NXDOMAIN; both carry the
//! zone's SOA. TTLs are 5 s, as CoreDNS's.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::wire::{
    self, name_to_wire, record, Answer, Section, NOERROR, NXDOMAIN, QUESTION_NAME, TYPE_A,
    TYPE_AAAA, TYPE_ANY, TYPE_CNAME, TYPE_PTR, TYPE_SOA, TYPE_SRV,
};

pub const TTL: u32 = 5;

/// How a service is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    ClusterIp(IpAddr),
    Headless,
    ExternalName(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub hostname: Option<String>,
    pub ready: bool,
    /// The endpoint's own ports (a named target port resolves per pod).
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRecord {
    pub namespace: String,
    pub name: String,
    pub kind: Kind,
    pub ports: Vec<Port>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    pub namespace: String,
    pub ip: IpAddr,
}

/// The answers of one name.
#[derive(Debug, Default)]
struct Node {
    /// (type, answer records, additional records).
    sets: Vec<(u16, Section, Section)>,
}

impl Node {
    fn set(&mut self, rtype: u16) -> &mut (u16, Section, Section) {
        let i = match self.sets.iter().position(|s| s.0 == rtype) {
            Some(i) => i,
            None => {
                self.sets
                    .push((rtype, Section::default(), Section::default()));
                self.sets.len() - 1
            }
        };
        &mut self.sets[i]
    }
}

/// A zone apex with its SOA record (owned by the apex, for the authority section).
#[derive(Debug)]
struct Apex {
    name: Vec<u8>,
    soa: Section,
}

/// What the table says of a name.
#[derive(Debug)]
pub enum Lookup<'z> {
    /// Ours: an authoritative answer.
    Answer(Answer<'z>),
    /// Not under any of our zones.
    NotOurs,
}

/// The record table, immutable once built; a change builds a new one.
#[derive(Debug, Default)]
pub struct Zone {
    names: HashMap<Vec<u8>, Node>,
    apexes: Vec<Apex>,
    /// Scratch: all the sets of a name, for ANY.
    any: HashMap<Vec<u8>, Section>,
    short: HashMap<Vec<u8>, Short>,
}

/// `a-b-c-d` for an address (`:` → `-` for IPv6).
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The reverse name of an address (`d.c.b.a.in-addr.arpa`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut labels: Vec<String> = v6
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xF])
                .map(|n| format!("{n:x}"))
                .collect();
            labels.reverse();
            format!("{}.ip6.arpa", labels.join("."))
        }
    }
}

fn address_record(ip: IpAddr) -> (u16, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
        IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
    }
}

/// Builds a table; names outside the apexes are left out.
pub struct Builder {
    domain: String,
    names: BTreeMap<Vec<u8>, Node>,
    apexes: Vec<Apex>,
    short: HashMap<Vec<u8>, Short>,
}

/// The answers for `svc.ns.` (a service's name with its namespace and nothing after it), which
/// resolvers that apply the search path only to names without a dot (busybox's `nslookup`)
/// send as they are: a CNAME to `svc.ns.svc.cluster.local`, with its addresses for A.
#[derive(Debug, Default)]
struct Short {
    cname: Section,
    with_addresses: Section,
}

impl Builder {
    /// A table for `domain` (`cluster.local`) and the reverse zones `reverse`
    /// (`96.10.in-addr.arpa`), whose SOAs carry `serial`.
    pub fn new(domain: &str, reverse: &[&str], serial: u32) -> Builder {
        let mname = name_to_wire(&format!("ns.dns.{domain}")).expect("a valid domain");
        let rname = name_to_wire(&format!("hostmaster.{domain}")).expect("a valid domain");
        let mut apexes = Vec::new();
        for apex in std::iter::once(domain).chain(reverse.iter().copied()) {
            let name = name_to_wire(apex).expect("a valid zone");
            let mut data = mname.clone();
            data.extend_from_slice(&rname);
            for n in [serial, 7200, 1800, 86400, TTL] {
                data.extend_from_slice(&n.to_be_bytes());
            }
            let mut soa = Section::default();
            soa.push(&record(&name, TYPE_SOA, TTL, &data));
            apexes.push(Apex { name, soa });
        }
        let mut names = BTreeMap::new();
        for apex in &apexes {
            let mut node = Node::default();
            node.set(TYPE_SOA).1.append(&apex.soa);
            names.insert(apex.name.clone(), node);
        }
        Builder {
            domain: domain.to_string(),
            names,
            apexes,
            short: HashMap::new(),
        }
    }

    fn apex_of(&self, name: &[u8]) -> Option<usize> {
        self.apexes.iter().position(|a| under(name, &a.name))
    }

    /// The node of `text`, with its ancestors up to the apex (empty non-terminals).
    fn node(&mut self, text: &str) -> Option<(&mut Node, Vec<u8>)> {
        let name = name_to_wire(text)?;
        let apex = self.apex_of(&name)?;
        let apex_len = self.apexes[apex].name.len();
        let mut at = 0;
        while name.len() - at > apex_len {
            self.names.entry(name[at..].to_vec()).or_default();
            at += 1 + name[at] as usize;
        }
        Some((self.names.get_mut(&name).expect("just added"), name))
    }

    fn add(&mut self, text: &str, rtype: u16, data: &[u8], additional: Option<&Section>) {
        if let Some((node, _)) = self.node(text) {
            let set = node.set(rtype);
            set.1.push(&record(&QUESTION_NAME, rtype, TTL, data));
            if let Some(a) = additional {
                set.2.append(a);
            }
        }
    }

    fn address(&mut self, text: &str, ip: IpAddr) {
        let (rtype, data) = address_record(ip);
        self.add(text, rtype, &data, None);
    }

    fn ptr(&mut self, ip: IpAddr, target: &str) {
        if let Some(target) = name_to_wire(target) {
            self.add(&reverse_name(ip), TYPE_PTR, &target, None);
        }
    }

    /// A SRV record at `text` for `target:port`, the target's addresses as additional records.
    fn srv(&mut self, text: &str, weight: u16, port: u16, target: &str, ips: &[IpAddr]) {
        let Some(target_wire) = name_to_wire(target) else {
            return;
        };
        let mut data = Vec::with_capacity(6 + target_wire.len());
        for n in [0, weight, port] {
            data.extend_from_slice(&n.to_be_bytes());
        }
        data.extend_from_slice(&target_wire);
        let mut extra = Section::default();
        for ip in ips {
            let (rtype, a) = address_record(*ip);
            extra.push(&record(&target_wire, rtype, TTL, &a));
        }
        self.add(text, TYPE_SRV, &data, Some(&extra));
    }

    /// `svc.ns.` as a CNAME to `base`, with `ips` owned by `base`.
    fn short(&mut self, s: &ServiceRecord, base: &str, ips: &[IpAddr]) {
        let (Some(short), Some(target)) = (
            name_to_wire(&format!("{}.{}", s.name, s.namespace)),
            name_to_wire(base),
        ) else {
            return;
        };
        let mut entry = Short::default();
        entry
            .cname
            .push(&record(&QUESTION_NAME, TYPE_CNAME, TTL, &target));
        entry.with_addresses.append(&entry.cname.clone());
        for ip in ips {
            let (rtype, data) = address_record(*ip);
            if rtype == TYPE_A {
                entry
                    .with_addresses
                    .push(&record(&target, rtype, TTL, &data));
            }
        }
        self.short.insert(short, entry);
    }

    pub fn service(&mut self, s: &ServiceRecord) {
        let base = format!("{}.{}.svc.{}", s.name, s.namespace, self.domain);
        let ips: Vec<IpAddr> = match &s.kind {
            Kind::ClusterIp(ip) => vec![*ip],
            Kind::Headless => s
                .endpoints
                .iter()
                .filter(|e| e.ready)
                .map(|e| e.ip)
                .collect(),
            Kind::ExternalName(_) => Vec::new(),
        };
        self.short(s, &base, &ips);
        match &s.kind {
            Kind::ClusterIp(ip) => {
                self.address(&base, *ip);
                self.ptr(*ip, &base);
                for p in s.ports.iter().filter(|p| !p.name.is_empty()) {
                    let at = format!("_{}._{}.{base}", p.name, p.protocol);
                    self.srv(&at, 100, p.port, &base, &[*ip]);
                }
                // The port names exist even without endpoints.
            }
            Kind::Headless => {
                let ready: Vec<&Endpoint> = s.endpoints.iter().filter(|e| e.ready).collect();
                let weight = (100 / ready.len().max(1)) as u16;
                for e in &ready {
                    let host = e.hostname.clone().unwrap_or_else(|| dashed(e.ip));
                    let target = format!("{host}.{base}");
                    self.address(&base, e.ip);
                    self.address(&target, e.ip);
                    self.ptr(e.ip, &target);
                    for p in e.ports.iter().filter(|p| !p.name.is_empty()) {
                        let at = format!("_{}._{}.{base}", p.name, p.protocol);
                        self.srv(&at, weight, p.port, &target, &[e.ip]);
                    }
                }
                // The service's name exists with no endpoint ready: NODATA, not NXDOMAIN.
                self.node(&base);
            }
            Kind::ExternalName(target) => {
                if let Some(wire) = name_to_wire(target) {
                    self.add(&base, TYPE_CNAME, &wire, None);
                }
            }
        }
    }

    pub fn pod(&mut self, p: &PodRecord) {
        let name = format!("{}.{}.pod.{}", dashed(p.ip), p.namespace, self.domain);
        self.address(&name, p.ip);
        // A headless endpoint's name wins the PTR (it was added first).
        let reverse = reverse_name(p.ip);
        let known = name_to_wire(&reverse).is_some_and(|r| self.names.contains_key(&r));
        if !known {
            self.ptr(p.ip, &name);
        }
    }

    pub fn build(self) -> Zone {
        let mut any = HashMap::new();
        for (name, node) in &self.names {
            let mut all = Section::default();
            for (_, answers, _) in &node.sets {
                all.append(answers);
            }
            any.insert(name.clone(), all);
        }
        Zone {
            names: self.names.into_iter().collect(),
            apexes: self.apexes,
            any,
            short: self.short,
        }
    }
}

/// Whether the wire name `name` is `apex` or under it (at a label boundary).
fn under(name: &[u8], apex: &[u8]) -> bool {
    let mut at = 0;
    while at < name.len() {
        if name[at..] == *apex {
            return true;
        }
        at += 1 + name[at] as usize;
    }
    false
}

impl Zone {
    /// The table with only the apexes.
    pub fn empty(domain: &str, reverse: &[&str]) -> Zone {
        Builder::new(domain, reverse, 0).build()
    }

    /// The answer for `name` (wire, lowercased) and `qtype`.
    pub fn lookup(&self, name: &[u8], qtype: u16) -> Lookup<'_> {
        let Some(apex) = self.apexes.iter().find(|a| under(name, &a.name)) else {
            return match self.short.get(name) {
                Some(short) => Lookup::Answer(Answer {
                    rcode: NOERROR,
                    authoritative: false,
                    answers: Some(if matches!(qtype, TYPE_A | TYPE_ANY) {
                        &short.with_addresses
                    } else {
                        &short.cname
                    }),
                    ..Default::default()
                }),
                None => Lookup::NotOurs,
            };
        };
        let negative = |rcode| Answer {
            rcode,
            authoritative: true,
            authority: Some(&apex.soa),
            ..Default::default()
        };
        let Some(node) = self.names.get(name) else {
            return Lookup::Answer(negative(NXDOMAIN));
        };
        if qtype == TYPE_ANY {
            let all = &self.any[name];
            if all.is_empty() {
                return Lookup::Answer(negative(NOERROR));
            }
            return Lookup::Answer(Answer {
                rcode: NOERROR,
                authoritative: true,
                answers: Some(all),
                ..Default::default()
            });
        }
        let set = node
            .sets
            .iter()
            .find(|s| s.0 == qtype)
            .or_else(|| node.sets.iter().find(|s| s.0 == TYPE_CNAME));
        match set {
            Some((_, answers, additional)) => Lookup::Answer(Answer {
                rcode: NOERROR,
                authoritative: true,
                answers: Some(answers),
                additional: Some(additional).filter(|a| !a.is_empty()),
                ..Default::default()
            }),
            None => Lookup::Answer(negative(NOERROR)),
        }
    }

    /// How many names the table holds.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// A parsed query answered from `zone`: `None` when the name is not ours.
pub fn answer(zone: &Zone, q: &wire::Query<'_>, limit: usize) -> Option<Vec<u8>> {
    match zone.lookup(q.name(), q.qtype) {
        Lookup::NotOurs => None,
        Lookup::Answer(a) => Some(wire::respond(q, &a, limit)),
    }
}
