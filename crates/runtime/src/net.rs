//! The pod network on a node, over rtnetlink (no `ip` commands): a bridge (`flt0`) holding the
//! gateway address of the node's pod CIDR, and per sandbox a veth pair whose pod end is
//! created directly inside the sandbox's network namespace as `eth0`, with its address, the
//! loopback up and a default route through the bridge.
//!
//! Netlink sockets belong to the network namespace of the thread that opens them, so the
//! sandbox is set up on a thread of its own: it opens the host socket, moves itself into new
//! namespaces, opens the pod socket, then drives both from a current-thread tokio runtime. The
//! caller's threads never change namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::ipam::Cidr;
use crate::RuntimeError;

/// The network a node's pods share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The bridge's name (`flt0`).
    pub bridge: String,
    pub cidr: Cidr,
}

fn err(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Setup(format!("netlink: {what}: {e}"))
}

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// A current-thread runtime, with a connection opened in the calling thread's namespace.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, RuntimeError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| err("runtime", e))
}

/// A netlink connection in the calling thread's network namespace, served on `rt`.
pub(crate) fn connect(rt: &tokio::runtime::Runtime) -> Result<Handle, RuntimeError> {
    let _in = rt.enter();
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| err("socket", e))?;
    rt.spawn(connection);
    Ok(handle)
}

/// Runs `work` with a host netlink handle, on a thread of its own (so that it may be called
/// from inside another async runtime).
pub fn on_host<T, F, Fut>(work: F) -> Result<T, RuntimeError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, RuntimeError>>,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = runtime()?;
            let handle = connect(&rt)?;
            rt.block_on(work(handle))
        })
        .join()
        .map_err(|_| RuntimeError::Setup("the netlink thread panicked".into()))?
    })
}

pub async fn link_index(h: &Handle, name: &str) -> Result<Option<u32>, RuntimeError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(err(&format!("get link {name}"), e)),
    }
}

async fn up(h: &Handle, index: u32, what: &str) -> Result<(), RuntimeError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| err(&format!("set {what} up"), e))
}

async fn add_address(
    h: &Handle,
    index: u32,
    ip: Ipv4Addr,
    prefix: u8,
    what: &str,
) -> Result<(), RuntimeError> {
    match h
        .address()
        .add(index, IpAddr::V4(ip), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(err(&format!("address {ip}/{prefix} on {what}"), e)),
    }
}

/// Makes sure the bridge exists, holds the gateway address and is up; returns its index.
pub async fn ensure_bridge(h: &Handle, net: &PodNetwork) -> Result<u32, RuntimeError> {
    if link_index(h, &net.bridge).await?.is_none() {
        match h
            .link()
            .add(LinkBridge::new(&net.bridge).build())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(err(&format!("add bridge {}", net.bridge), e)),
        }
    }
    let index = link_index(h, &net.bridge)
        .await?
        .ok_or_else(|| err("bridge", format!("{} vanished", net.bridge)))?;
    add_address(h, index, net.cidr.gateway(), net.cidr.prefix, &net.bridge).await?;
    up(h, index, &net.bridge).await?;
    Ok(index)
}

/// Creates the veth pair `host_end` (on the bridge, up) / `eth0` (in the namespace `netns`).
pub async fn add_veth(
    h: &Handle,
    net: &PodNetwork,
    host_end: &str,
    netns: &Path,
) -> Result<(), RuntimeError> {
    let bridge = ensure_bridge(h, net).await?;
    let ns = std::fs::File::open(netns).map_err(|e| err(&netns.display().to_string(), e))?;
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name("eth0")
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_end)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(veth)
        .execute()
        .await
        .map_err(|e| err(&format!("add veth {host_end}"), e))?;
    drop(ns);
    let index = link_index(h, host_end)
        .await?
        .ok_or_else(|| err("veth", format!("{host_end} vanished")))?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| err(&format!("attach {host_end} to {}", net.bridge), e))?;
    // Hairpin: a pod reaching itself through a service address gets its packets back out of
    // the port they came in by.
    // (Port settings go in RTM_NEWLINK: RTM_SETLINK ignores them without an error.)
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(|e| err(&format!("hairpin on {host_end}"), e))
}

/// Inside the pod's namespace: loopback up, `eth0` with `ip`, up, default route.
pub async fn configure_pod(h: &Handle, net: &PodNetwork, ip: Ipv4Addr) -> Result<(), RuntimeError> {
    let lo = link_index(h, "lo")
        .await?
        .ok_or_else(|| err("lo", "missing"))?;
    up(h, lo, "lo").await?;
    let eth0 = link_index(h, "eth0")
        .await?
        .ok_or_else(|| err("eth0", "missing in the pod"))?;
    add_address(h, eth0, ip, net.cidr.prefix, "eth0").await?;
    up(h, eth0, "eth0").await?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(net.cidr.gateway())
        .output_interface(eth0)
        .build();
    h.route()
        .add(route)
        .execute()
        .await
        .map_err(|e| err("default route", e))
}

/// Deletes the link `name` (both ends, for a veth); a missing link is fine.
pub async fn delete_link(h: &Handle, name: &str) -> Result<(), RuntimeError> {
    let Some(index) = link_index(h, name).await? else {
        return Ok(());
    };
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(err(&format!("delete {name}"), e)),
    }
}

/// The host end's name for a pod address: `flt` and the address in hex (11 characters, under
/// the kernel's 15), unique as long as the address is.
pub fn host_end(ip: Ipv4Addr) -> String {
    format!("flt{:08x}", u32::from(ip))
}

/// The routing protocol number that tags the routes to other nodes' pod CIDRs, so that a sync
/// tells them from everyone else's routes (`ip route` shows `proto 241`).
pub const POD_ROUTE_PROTOCOL: u8 = 241;

/// Makes this namespace's main-table routes tagged [`POD_ROUTE_PROTOCOL`] exactly `wanted`
/// (pod CIDR → the node address it is reached through, host-gw): adds or replaces what is
/// missing or different, deletes the rest. Returns how many routes changed.
pub async fn sync_pod_routes(
    h: &Handle,
    wanted: &std::collections::BTreeMap<Cidr, Ipv4Addr>,
) -> Result<usize, RuntimeError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
    let protocol = RouteProtocol::Other(POD_ROUTE_PROTOCOL);
    let mut have: std::collections::BTreeMap<
        Cidr,
        (
            Option<Ipv4Addr>,
            rtnetlink::packet_route::route::RouteMessage,
        ),
    > = Default::default();
    let mut routes = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(route) = routes.try_next().await.map_err(|e| err("list routes", e))? {
        if route.header.protocol != protocol {
            continue;
        }
        let mut dest = None;
        let mut gateway = None;
        for a in &route.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => dest = Some(*d),
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                _ => {}
            }
        }
        if let Some(d) = dest {
            let cidr = Cidr {
                network: d,
                prefix: route.header.destination_prefix_length,
            };
            have.insert(cidr, (gateway, route));
        }
    }
    let mut changed = 0;
    for (cidr, via) in wanted {
        if have.get(cidr).map(|(g, _)| *g) == Some(Some(*via)) {
            continue;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network, cidr.prefix)
            .gateway(*via)
            .protocol(protocol)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| err(&format!("route {cidr} via {via}"), e))?;
        changed += 1;
    }
    for (cidr, (_, route)) in have {
        if !wanted.contains_key(&cidr) {
            match h.route().del(route).execute().await {
                Ok(()) => changed += 1,
                Err(e) if errno(&e) == Some(3) => {}
                Err(e) => return Err(err(&format!("delete route {cidr}"), e)),
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ends_are_short_and_follow_the_address() {
        let name = host_end(Ipv4Addr::new(10, 244, 3, 17));
        assert_eq!(name, "flt0af40311");
        assert!(name.len() <= 15);
    }
}
