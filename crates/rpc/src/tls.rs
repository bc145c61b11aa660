//! TLS for every gRPC connection: mutual TLS with the cluster CA, and the pinned connection a
//! joining node uses before it has the CA.

use std::sync::Arc;
use std::time::Duration;

use flotilla_pki::pinned::{self, PinnedCaVerifier};
use flotilla_pki::{Credential, NODE_SERVER_NAME};
use tonic::codegen::http::Uri;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

/// This process's credentials in the cluster: the CA it trusts and the certificate (chain) and
/// key it presents. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    ca_pem: Arc<str>,
    identity: Arc<Credential>,
}

impl Tls {
    /// `identity.cert_pem` may hold a chain (the node's certificate, then the CA's).
    pub fn new(ca_pem: &str, identity: Credential) -> Tls {
        Tls {
            ca_pem: ca_pem.into(),
            identity: Arc::new(identity),
        }
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.identity.cert_pem, &self.identity.key_pem)
    }

    /// Clients verify the server's certificate against the CA, for the node name, and present
    /// their own.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem.as_bytes()))
            .identity(self.identity())
            .domain_name(NODE_SERVER_NAME)
    }

    /// The server asks for a client certificate from the CA but admits callers without one at
    /// the TLS level; the services decide (only `Admission` serves them).
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(self.ca_pem.as_bytes()))
            .client_auth_optional(true)
    }

    /// A lazily connecting mutual-TLS channel to `addr` (`host:port`).
    pub fn channel(
        &self,
        addr: &str,
        timeout: Option<Duration>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(format!("https://{addr}"))?
            .tls_config(self.client_config())?
            .connect_timeout(Duration::from_millis(1000))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(t) = timeout {
            endpoint = endpoint.timeout(t);
        }
        Ok(endpoint.connect_lazy())
    }
}

/// A channel to `addr` that trusts only a server whose chain holds the CA `verifier` pins, and
/// presents no client certificate: for `Admission` calls before this node has credentials.
pub async fn pinned_channel(
    addr: &str,
    verifier: Arc<PinnedCaVerifier>,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let config = Arc::new(pinned::client_config(verifier));
    let connector = tower::service_fn(move |uri: Uri| {
        let config = Arc::clone(&config);
        async move {
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(7443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(NODE_SERVER_NAME)
                .expect("the node server name is a valid DNS name");
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(connector)
        .await
}
