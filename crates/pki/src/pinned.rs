//! Verifying a seed by the CA hash in a join token, before the joining node has the CA.
//!
//! The seed sends its certificate chain (node certificate, then the CA). The verifier looks for
//! the certificate whose SHA-256 is the pinned hash and then verifies the node certificate
//! against it as a root, as any client would. A seed whose CA has another hash fails the
//! handshake, before the token's secret is sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ca::CaHash;

#[derive(Debug)]
pub struct PinnedCaVerifier {
    pinned: CaHash,
    provider: Arc<CryptoProvider>,
    /// The CA certificate found in the seed's chain, once verified.
    found: Mutex<Option<Vec<u8>>>,
    /// A seed answered with a chain that lacks the pinned CA.
    mismatch: AtomicBool,
}

impl PinnedCaVerifier {
    pub fn new(pinned: CaHash) -> Arc<Self> {
        Arc::new(PinnedCaVerifier {
            pinned,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            found: Mutex::new(None),
            mismatch: AtomicBool::new(false),
        })
    }

    /// Whether a handshake failed because the server's chain lacks the pinned CA (as opposed
    /// to the server being unreachable).
    pub fn saw_other_ca(&self) -> bool {
        self.mismatch.load(Ordering::Relaxed)
    }

    /// The pinned CA's DER, once a handshake has found and verified it.
    pub fn ca_der(&self) -> Option<Vec<u8>> {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaHash::of_der(c.as_ref()) == self.pinned)
        else {
            self.mismatch.store(true, Ordering::Relaxed);
            return Err(rustls::Error::General(format!(
                "the seed's certificate is not from the CA the token names (sha256 {})",
                self.pinned
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified =
            inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.to_vec());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration (HTTP/2, no client certificate) that trusts only the pinned CA.
pub fn client_config(verifier: Arc<PinnedCaVerifier>) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .dangerous()
    .with_custom_certificate_verifier(verifier)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}
