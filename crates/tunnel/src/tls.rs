//! QUIC configurations: mutual TLS 1.3 with the cluster CA (every node certificate carries
//! [`flotilla_pki::NODE_SERVER_NAME`]), and keep-alives so that a quiet `logs -f` stays open.

use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::Credential;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use crate::TunnelError;

const ALPN: &[u8] = b"flotilla-tunnel/1";

fn tls_err(e: impl std::fmt::Display) -> TunnelError {
    TunnelError::Tls(e.to_string())
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(10)).expect("a small timeout"),
    ));
    t.max_concurrent_bidi_streams(4096u32.into());
    Arc::new(t)
}

pub(crate) fn configs(
    ca_pem: &str,
    identity: &Credential,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TunnelError> {
    let (mut server_tls, mut client_tls) =
        flotilla_pki::mutual::configs(ca_pem, identity).map_err(TunnelError::Tls)?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server_tls).map_err(tls_err)?,
    ));
    server.transport_config(transport());
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client_tls).map_err(tls_err)?,
    ));
    client.transport_config(transport());
    Ok((server, client))
}

/// Stateless-reset tokens derived from the node's private key, so that a node that restarts
/// resets the connections peers kept to its previous process at their first packet (they
/// then connect anew) instead of leaving them to time out.
pub(crate) fn endpoint(key_pem: &str) -> quinn::EndpointConfig {
    let secret = ring::digest::digest(
        &ring::digest::SHA256,
        format!("flotilla tunnel stateless reset\n{key_pem}").as_bytes(),
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_ref());
    quinn::EndpointConfig::new(Arc::new(key))
}
