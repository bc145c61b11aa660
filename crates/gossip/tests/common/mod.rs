//! A gossip member on loopback with a certificate from the test CA, for the tests of this crate.

use std::net::SocketAddr;

use flotilla_gossip::{Gossip, GossipConfig, NodeMeta, Timing};
use flotilla_pki::{Ca, Credential};

fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Member `i`: named `g{i}`, Raft id `i`, default timing.
pub async fn member(ca: &Ca, i: u64) -> Gossip {
    let cred = ca
        .issue_node(&format!("g{i}"), "127.0.0.1".parse().unwrap())
        .unwrap();
    Gossip::start(GossipConfig {
        id: format!("{i:x}"),
        bind: free_udp_port(),
        meta: NodeMeta {
            name: format!("g{i}"),
            raft_id: i,
            peer_addr: format!("127.0.0.1:{}", 7000 + i),
            role: String::new(),
            leaving: false,
        },
        ca_pem: ca.cert_pem().to_string(),
        identity: Credential {
            cert_pem: format!("{}{}", cred.cert_pem, ca.cert_pem()),
            key_pem: cred.key_pem,
        },
        timing: Timing::default(),
    })
    .await
    .unwrap()
}
