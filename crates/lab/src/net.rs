//! The lab's network: one Linux bridge in the host's namespace and, per node, a network
//! namespace joined to it by a veth pair, each with its own address.
//!
//! Slot `k` (0..250) owns the bridge `fltbr<k>` with `10.213.k.1/24` and, for node `i` (from
//! 0), the namespace `flt<k>n<i+1>` with `10.213.k.(i+2)`. Creating the bridge is the lock on a slot: a second lab
//! (another test, another `flotilla up`) gets the next free one. Namespaces get no default
//! route, and the host keeps an `unreachable` route for all of `10.213.0.0/16`, so traffic for
//! a lab that is gone fails at once instead of leaving the machine.
//!
//! Partitions are nftables rules inside the nodes' namespaces: a node drops every packet from
//! and to the addresses outside its own group. The host can still reach every node.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// Every lab address is inside this network.
pub const LAB_SUPERNET: &str = "10.213.0.0/16";
/// Slots: the third octet of a lab's `/24`.
const SLOTS: u8 = 250;
/// Nodes per lab: addresses `.2` to `.254`.
pub const MAX_NODES: usize = 253;
/// The nftables table partitions live in.
const NFT_TABLE: &str = "flotilla_lab";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot run `{command}`: {source} (is iproute2 installed? `make deps` installs it)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("no free lab slot: bridges fltbr0 to fltbr{} all exist (`flotilla up --down` removes a lab)", SLOTS - 1)]
    NoFreeSlot,
    #[error("a lab has at most {MAX_NODES} nodes, not {0}")]
    TooManyNodes(usize),
}

/// A lab network: its slot and how many node namespaces it has.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LabNet {
    slot: u8,
    nodes: usize,
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), LabError> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| LabError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        command: command.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LabError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    run("ip", args, None)
}

impl LabNet {
    /// Takes the first free slot: creates its bridge with the host's address on it.
    pub fn create() -> Result<LabNet, LabError> {
        // The safety net first: more specific routes of live labs win over it.
        ip(&["route", "replace", "unreachable", LAB_SUPERNET])?;
        for slot in 0..SLOTS {
            let lab = LabNet { slot, nodes: 0 };
            let bridge = lab.bridge();
            match ip(&["link", "add", "name", &bridge, "type", "bridge"]) {
                Ok(()) => {}
                Err(LabError::Command { stderr, .. }) if stderr.contains("exists") => continue,
                Err(e) => return Err(e),
            }
            let setup = ip(&[
                "addr",
                "add",
                &format!("{}/24", lab.gateway()),
                "dev",
                &bridge,
            ])
            .and_then(|()| ip(&["link", "set", &bridge, "up"]));
            if let Err(e) = setup {
                let _ = ip(&["link", "del", &bridge]);
                return Err(e);
            }
            return Ok(lab);
        }
        Err(LabError::NoFreeSlot)
    }

    /// The lab recorded in a state file, to add nodes to or tear down.
    pub fn adopt(slot: u8, nodes: usize) -> LabNet {
        LabNet { slot, nodes }
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// How many node namespaces exist.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn bridge(&self) -> String {
        format!("fltbr{}", self.slot)
    }

    /// The host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.slot, 1)
    }

    /// Node `i`'s network namespace (also the name of the host end of its veth pair), numbered
    /// from 1 like the nodes `flotilla up` names.
    pub fn netns(&self, i: usize) -> String {
        format!("flt{}n{}", self.slot, i + 1)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.slot, (i + 2) as u8)
    }

    /// Adds the next node's namespace: a veth pair to the bridge, its address, loopback up.
    /// Returns its index.
    pub fn add_node(&mut self) -> Result<usize, LabError> {
        let i = self.nodes;
        if i >= MAX_NODES {
            return Err(LabError::TooManyNodes(i + 1));
        }
        let ns = self.netns(i);
        let addr = format!("{}/24", self.addr(i));
        ip(&["netns", "add", &ns])?;
        self.nodes += 1;
        let steps: [&[&str]; 5] = [
            &[
                "link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            &["link", "set", &ns, "master", &self.bridge(), "up"],
            &["-n", &ns, "addr", "add", &addr, "dev", "eth0"],
            &["-n", &ns, "link", "set", "eth0", "up"],
            &["-n", &ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(i)
    }

    /// A command that runs `program` inside node `i`'s network namespace: the child enters it
    /// between fork and exec (so its pid is the program's), and keeps the host's mounts (its
    /// `/sys` and cgroup file systems: a node runs containers).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Result<Command, LabError> {
        let mut c = Command::new(program);
        let ns = std::path::Path::new("/run/netns").join(self.netns(i));
        flotilla_sys::spawn_in_netns(&mut c, &ns).map_err(|source| LabError::Spawn {
            command: format!("enter {}", ns.display()),
            source,
        })?;
        Ok(c)
    }

    /// Applies nftables `rules` inside node `i`'s namespace, replacing the lab table.
    fn nft(&self, i: usize, rules: &str) -> Result<(), LabError> {
        // Declaring the table first makes the delete succeed whether or not it existed.
        let script = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n{rules}");
        run(
            "ip",
            &["netns", "exec", &self.netns(i), "nft", "-f", "-"],
            Some(&script),
        )
    }

    /// Cuts the lab into `groups`: each node drops all traffic from and to the nodes of the
    /// other groups. Nodes in no group keep talking to everyone; the host reaches all.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), LabError> {
        for (g, group) in groups.iter().enumerate() {
            let others: Vec<String> = groups
                .iter()
                .enumerate()
                .filter(|(h, _)| *h != g)
                .flat_map(|(_, other)| other.iter().map(|j| self.addr(*j).to_string()))
                .collect();
            if others.is_empty() {
                continue;
            }
            let set = others.join(", ");
            let rules = format!(
                "table inet {NFT_TABLE} {{\n\
                 \tchain input {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n\
                 \tchain output {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n\
                 }}\n"
            );
            for i in group {
                self.nft(*i, &rules)?;
            }
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<(), LabError> {
        for i in 0..self.nodes {
            self.nft(i, "")?;
        }
        Ok(())
    }

    /// The pids of the processes inside node `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.netns(i)])
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Indexes of this slot's namespaces that exist, whether or not `nodes` counts them (a
    /// start that crashed between creating one and recording it leaves it uncounted).
    fn existing(&self) -> Vec<usize> {
        let prefix = format!("flt{}n", self.slot);
        let listed = Command::new("ip")
            .args(["netns", "list"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut found: Vec<usize> = listed
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .next()?
                    .strip_prefix(&prefix)?
                    .parse()
                    .ok()
            })
            .filter(|n: &usize| *n >= 1)
            .map(|n| n - 1)
            .chain(0..self.nodes)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Removes the namespaces, veth pairs and the bridge; what is already gone is skipped.
    /// Processes still inside a namespace are SIGKILLed first.
    pub fn destroy(&self) -> Result<(), LabError> {
        for i in self.existing() {
            for pid in self.pids(i) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            ignore_missing(ip(&["link", "del", &self.netns(i)]))?;
            ignore_missing(ip(&["netns", "del", &self.netns(i)]))?;
        }
        ignore_missing(ip(&["link", "del", &self.bridge()]))
    }
}

/// `ip` says "Cannot find device" or "No such file" for things already removed.
fn ignore_missing(r: Result<(), LabError>) -> Result<(), LabError> {
    match r {
        Err(LabError::Command { stderr, .. })
            if stderr.contains("Cannot find") || stderr.contains("No such file") =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_follow_the_slot() {
        let lab = LabNet::adopt(7, 3);
        assert_eq!(lab.bridge(), "fltbr7");
        assert_eq!(lab.netns(2), "flt7n3");
        assert_eq!(lab.gateway(), Ipv4Addr::new(10, 213, 7, 1));
        assert_eq!(lab.addr(0), Ipv4Addr::new(10, 213, 7, 2));
        assert_eq!(lab.addr(252), Ipv4Addr::new(10, 213, 7, 254));
        // Interface names must fit the kernel's 15 characters.
        let widest = LabNet::adopt(SLOTS - 1, MAX_NODES);
        assert!(widest.netns(MAX_NODES - 1).len() <= 15);
        assert!(widest.bridge().len() <= 15);
    }

    /// Real namespaces and links: needs root, `ip` and `nft`, as CI has.
    #[test]
    fn destroy_also_removes_what_a_crashed_start_did_not_record() {
        let mut lab = LabNet::create().expect("create a lab bridge (root and iproute2 needed)");
        lab.add_node().unwrap();
        lab.add_node().unwrap();
        lab.partition(&[vec![0], vec![1]]).unwrap();
        lab.heal().unwrap();
        // As if the state file recorded no node at all.
        LabNet::adopt(lab.slot(), 0).destroy().unwrap();
        let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let listed = String::from_utf8_lossy(&listed.stdout);
        for i in 0..2 {
            assert!(
                !listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(&lab.netns(i))),
                "{} is left: {listed}",
                lab.netns(i)
            );
        }
        let bridge = Command::new("ip")
            .args(["link", "show", &lab.bridge()])
            .output()
            .unwrap();
        assert!(!bridge.status.success(), "{} is left", lab.bridge());
    }
}
