//! Pod addresses from the node's pod CIDR, kept on disk: one file per address in use, named
//! by the address and holding its owner (a sandbox id). A file is created with `O_EXCL`, so
//! two runtimes allocating at once never get the same address, and what was allocated
//! survives a restart of whoever asked.

use std::fs;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use crate::RuntimeError;

/// An IPv4 network: address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR (like 10.244.0.0/24)");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{s}: the prefix must be between /8 and /30"));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{s}: host bits are set (the network is {}/{prefix})",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Cidr {
            network: addr,
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// The first host address: the bridge's, the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The addresses pods may have: every host address but the gateway's.
    fn pod_addresses(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | (u32::MAX >> self.prefix);
        (first..broadcast).map(Ipv4Addr::from)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

/// The allocator for one network, kept in `dir`.
#[derive(Clone, Debug)]
pub struct Ipam {
    pub dir: PathBuf,
    pub cidr: Cidr,
}

impl Ipam {
    pub fn new(dir: impl Into<PathBuf>, cidr: Cidr) -> Ipam {
        Ipam {
            dir: dir.into(),
            cidr,
        }
    }

    /// Takes the lowest free address for `owner`; an owner that already has one gets it back.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, RuntimeError> {
        fs::create_dir_all(&self.dir)?;
        if let Some(ip) = self.owned_by(owner) {
            return Ok(ip);
        }
        for ip in self.cidr.pod_addresses() {
            match fs::File::options()
                .write(true)
                .create_new(true)
                .open(self.dir.join(ip.to_string()))
            {
                Ok(mut file) => {
                    file.write_all(owner.as_bytes())?;
                    file.sync_all()?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RuntimeError::Setup(format!(
            "no free address left in {}",
            self.cidr
        )))
    }

    /// The address `owner` holds, if any.
    pub fn owned_by(&self, owner: &str) -> Option<Ipv4Addr> {
        fs::read_dir(&self.dir).ok()?.flatten().find_map(|entry| {
            let ip: Ipv4Addr = entry.file_name().to_str()?.parse().ok()?;
            (fs::read(entry.path()).ok()? == owner.as_bytes() && self.cidr.contains(ip))
                .then_some(ip)
        })
    }

    /// Gives back `ip` if `owner` holds it; anything else is left alone.
    pub fn release(&self, ip: Ipv4Addr, owner: &str) -> Result<(), RuntimeError> {
        let path = self.dir.join(ip.to_string());
        match fs::read(&path) {
            Ok(held) if held == owner.as_bytes() => Ok(fs::remove_file(path)?),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// How many addresses are taken.
    pub fn used(&self) -> usize {
        fs::read_dir(&self.dir)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_refuse_host_bits_and_odd_prefixes() {
        let c: Cidr = "10.244.3.0/24".parse().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 254)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 4, 1)));
        assert!("10.244.3.1/24"
            .parse::<Cidr>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.244.3.0/31".parse::<Cidr>().is_err());
        assert!("10.244.3.0".parse::<Cidr>().is_err());
    }

    #[test]
    fn addresses_are_unique_kept_on_disk_and_reused_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let cidr: Cidr = "10.9.0.0/29".parse().unwrap();
        let ipam = Ipam::new(dir.path(), cidr);
        // .0 network, .1 gateway, .7 broadcast: five pod addresses.
        let got: Vec<_> = (0..5)
            .map(|i| ipam.allocate(&format!("pod{i}")).unwrap())
            .collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 9, 0, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 9, 0, 6));
        let err = ipam.allocate("pod5").unwrap_err().to_string();
        assert!(err.contains("no free address left in 10.9.0.0/29"), "{err}");
        // Asking again for the same owner gives the same address.
        assert_eq!(ipam.allocate("pod3").unwrap(), got[3]);
        // Another allocator on the same directory (a restarted runtime) sees the same.
        let again = Ipam::new(dir.path(), cidr);
        assert_eq!(again.owned_by("pod1"), Some(got[1]));
        // Releasing by someone else changes nothing; by the owner frees it.
        again.release(got[1], "pod2").unwrap();
        assert_eq!(again.used(), 5);
        again.release(got[1], "pod1").unwrap();
        assert_eq!(again.allocate("pod9").unwrap(), got[1]);
    }
}
