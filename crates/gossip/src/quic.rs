//! QUIC for gossip: mutual TLS 1.3 with the cluster CA. Every node's certificate carries the
//! same server name, which memberlist's QUIC layer uses for every peer.

use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::{Credential, NODE_SERVER_NAME};
use memberlist::quic::stream_layer::quinn::Options as QuinnOptions;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::GossipError;

fn tls_err(e: impl std::fmt::Display) -> GossipError {
    GossipError::Tls(e.to_string())
}

/// `identity.cert_pem` is the node's chain (its certificate, then the CA's).
pub(crate) fn options(ca_pem: &str, identity: &Credential) -> Result<QuinnOptions, GossipError> {
    // Peers must present a certificate from the cluster CA.
    let (server_tls, client_tls) =
        flotilla_pki::mutual::configs(ca_pem, identity).map_err(GossipError::Tls)?;
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).map_err(tls_err)?,
    ));
    let client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).map_err(tls_err)?,
    ));
    Ok(QuinnOptions::new(
        NODE_SERVER_NAME,
        server,
        client,
        endpoint_config(&identity.key_pem),
    )
    .with_connect_timeout(Duration::from_secs(1))
    // A connection to a dead peer is dropped after 3 s without traffic; live ones are kept
    // alive by a ping every second.
    .with_max_idle_timeout(3_000)
    .with_keep_alive_interval(Duration::from_secs(1)))
}

/// Connection ids and stateless-reset tokens derived from the node's private key, so that they
/// stay the same when the process restarts. A peer still holding a connection to the previous
/// process then gets a valid stateless reset for its next packet and reconnects at once; with
/// random keys the new process would drop those packets silently and the peer would keep
/// sending into a dead connection until its idle timeout, missing probes meanwhile and
/// suspecting a node that is alive.
fn endpoint_config(key_pem: &str) -> quinn::EndpointConfig {
    let secret = ring::digest::digest(
        &ring::digest::SHA256,
        format!("flotilla gossip quic endpoint\n{key_pem}").as_bytes(),
    );
    let secret = secret.as_ref();
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&secret[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}
