//! Mutual TLS 1.3 between nodes (gossip's QUIC, the tunnel): each side presents its node
//! certificate chain and accepts only peers whose certificate the cluster CA signed.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::certs_der;
use crate::Credential;

/// The server and client configurations for node `identity` (`cert_pem`: its certificate,
/// then the CA's) in the cluster of `ca_pem`. The error names what could not be read.
pub fn configs(
    ca_pem: &str,
    identity: &Credential,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in certs_der(ca_pem).map_err(|e| err(&e))? {
        roots.add(CertificateDer::from(der)).map_err(|e| err(&e))?;
    }
    let roots = Arc::new(roots);
    let chain: Vec<CertificateDer<'static>> = certs_der(&identity.cert_pem)
        .map_err(|e| err(&e))?
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|e| err(&e))?;
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::clone(&roots),
        Arc::clone(&provider),
    )
    .build()
    .map_err(|e| err(&e))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| err(&e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| err(&e))?;
    Ok((server, client))
}
