//! The node-to-node tunnel: QUIC (quinn) with mutual TLS 1.3 from the cluster CA, one
//! bidirectional stream per request. A node's API server reaches the node running a pod
//! through it for the pod's logs, exec and port-forward, as the Kubernetes API server reaches
//! a kubelet.
//!
//! On a stream the caller first writes a [`Request`] as a header frame (a 4-byte big-endian
//! length, then JSON); the serving node answers with a [`Reply`] header frame, then the
//! request's payload follows (see [`Request`] for each kind). Connections to a peer are kept
//! and shared by its streams.

mod frame;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_pki::{Credential, NODE_SERVER_NAME};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use frame::{read_frame, read_header, write_frame, write_header, MAX_HEADER};
pub use quinn::{RecvStream, SendStream};

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tunnel TLS setup: {0}")]
    Tls(String),
    #[error("cannot bind the tunnel on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The peer cannot be reached, or the connection broke before it answered.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with a refusal.
    #[error("{}", .0.message)]
    Refused(Failure),
    #[error("tunnel protocol: {0}")]
    Protocol(String),
}

/// Why a serving node refused a request, as a Kubernetes `Status` says it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The HTTP status code (400, 404, 500, …).
    pub code: u16,
    /// The `Status` reason (`BadRequest`, `NotFound`, `InternalError`, …).
    pub reason: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "BadRequest", message)
    }

    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure::new(404, "NotFound", message)
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(500, "InternalError", message)
    }
}

/// What a caller asks of the node that runs a pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Request {
    /// A container's log. Payload (serving node → caller): the log's text, as
    /// `pods/log` returns it; with `follow`, it goes on until the container ends or the caller
    /// closes the stream.
    #[serde(rename_all = "camelCase")]
    Logs {
        uid: String,
        container: String,
        follow: bool,
        /// The log of the container's previous instance (before its last restart).
        previous: bool,
        timestamps: bool,
        tail_lines: Option<u64>,
        /// Only lines written at or after this instant (RFC 3339).
        since_time: Option<String>,
        limit_bytes: Option<u64>,
    },
    /// A command in a running container. Payload: frames both ways, each a channel byte and
    /// data as in `v5.channel.k8s.io`: the caller sends stdin (0), resize (4, JSON
    /// `{"Width":w,"Height":h}`) and the end of stdin (255, data `[0]`); the serving node
    /// sends stdout (1), stderr (2) and, last, the command's `Status` (3).
    #[serde(rename_all = "camelCase")]
    Exec {
        uid: String,
        container: String,
        command: Vec<String>,
        stdin: bool,
        tty: bool,
    },
    /// The streams of a running container's own process (`kubectl attach`). Payload: frames
    /// as for [`Request::Exec`]: the output as it is written from now on, stdin when
    /// `stdin`, and, once the container has ended or the attach failed, a `Status` (3).
    #[serde(rename_all = "camelCase")]
    Attach {
        uid: String,
        container: String,
        stdin: bool,
        tty: bool,
    },
    /// A TCP connection to `port` in the pod's network namespace. Payload: the connection's
    /// bytes, both ways.
    #[serde(rename_all = "camelCase")]
    PortForward { uid: String, port: u16 },
    /// The node's latest resource usage. Payload: one header frame, a [`NodeUsage`].
    Metrics,
    /// The image this node has under `reference` (any of its spellings). Payload: one header
    /// frame, an [`ImageManifest`]; refused with 404 when the node has no such image.
    Manifest { reference: String },
    /// Blob `digest` of the node's image store. Payload: one header frame, a [`BlobHeader`],
    /// then the blob's bytes until the stream ends. The caller checks them against the
    /// digest: the serving node sends what it keeps.
    Blob { digest: String },
}

/// An image as a peer has it, for a node that fetches it from there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// The manifest's digest.
    pub digest: String,
    /// The manifest itself (JSON text).
    pub manifest: String,
    /// Whether the peer pulled it from a registry (otherwise it was imported into the cluster).
    pub pulled: bool,
}

/// The size of the blob that follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHeader {
    pub size: u64,
}

/// CPU and memory in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// CPU used over the sampling window, in billionths of a core.
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// A node's usage and its containers' (by runtime id, `UID_NAME`), as last sampled.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    /// When the sample was taken (RFC 3339).
    pub timestamp: String,
    /// The window the CPU rates are measured over, in seconds.
    pub window_seconds: f64,
    pub node: Usage,
    pub containers: std::collections::BTreeMap<String, Usage>,
}

/// The serving node's answer, before the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Reply {
    Ok,
    Refused(Failure),
}

/// One request's stream, after the serving node accepted it.
pub struct Stream {
    pub send: SendStream,
    pub recv: RecvStream,
}

/// What a node serves on its tunnel.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Answers `request`: writes a [`Reply`] with [`write_header`], then its payload.
    async fn handle(&self, request: Request, stream: Stream);
}

/// Where a Node's tunnel listens: its InternalIP and `daemonEndpoints.kubeletEndpoint.Port`.
pub fn tunnel_address(node: &serde_json::Value) -> Option<std::net::SocketAddr> {
    let status = &node["status"];
    let ip = status["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .parse()
        .ok()?;
    let port = status["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64()?;
    Some(std::net::SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// How long a connection attempt to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A node's tunnel endpoint: it serves requests and opens them to peers.
pub struct Tunnel {
    endpoint: quinn::Endpoint,
    connections: Mutex<HashMap<SocketAddr, quinn::Connection>>,
}

impl Tunnel {
    /// Binds the tunnel's UDP socket at `addr` (port 0 picks one), with the node's identity
    /// (`identity.cert_pem`: its certificate, then the CA's).
    pub fn bind(
        addr: SocketAddr,
        ca_pem: &str,
        identity: &Credential,
    ) -> Result<Tunnel, TunnelError> {
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| TunnelError::Bind { addr, source })?;
        Tunnel::on_socket(socket, ca_pem, identity)
    }

    /// The tunnel on a socket bound earlier (a node binds its port before it has the
    /// credentials that joining gives it).
    pub fn on_socket(
        socket: std::net::UdpSocket,
        ca_pem: &str,
        identity: &Credential,
    ) -> Result<Tunnel, TunnelError> {
        let addr = socket.local_addr().map_err(|source| TunnelError::Bind {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let (server, client) = tls::configs(ca_pem, identity)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TunnelError::Tls("no async runtime for QUIC".into()))?;
        let mut endpoint = quinn::Endpoint::new(
            tls::endpoint(&identity.key_pem),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| TunnelError::Bind { addr, source })?;
        endpoint.set_default_client_config(client);
        Ok(Tunnel {
            endpoint,
            connections: Mutex::new(HashMap::new()),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Serves requests with `handler` until `stop` (in the background).
    pub fn serve(&self, handler: Arc<dyn Handler>, stop: CancellationToken) {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            loop {
                let incoming = tokio::select! {
                    _ = stop.cancelled() => break,
                    i = endpoint.accept() => match i {
                        Some(i) => i,
                        None => break,
                    },
                };
                let (handler, stop) = (Arc::clone(&handler), stop.clone());
                tokio::spawn(async move {
                    let connection = match incoming.await {
                        Ok(c) => c,
                        Err(err) => {
                            tracing::debug!(%err, "tunnel handshake failed");
                            return;
                        }
                    };
                    serve_connection(connection, handler, stop).await;
                });
            }
            endpoint.close(0u32.into(), b"stopping");
        });
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, TunnelError> {
        if let Some(c) = self.connections.lock().expect("not poisoned").get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            TunnelError::Unreachable(format!("cannot reach the node at {addr}: {e}"))
        };
        let connecting = self
            .endpoint
            .connect(addr, NODE_SERVER_NAME)
            .map_err(|e| unreachable(&e))?;
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer within 3s")),
        };
        self.connections
            .lock()
            .expect("not poisoned")
            .insert(addr, connection.clone());
        Ok(connection)
    }

    /// Sends `request` to the node at `addr`; its stream once the node accepted it. A kept
    /// connection that turns out broken (the peer restarted) is dropped and the request sent
    /// once more on a new one.
    pub async fn open(&self, addr: SocketAddr, request: &Request) -> Result<Stream, TunnelError> {
        match self.open_once(addr, request).await {
            Err(TunnelError::Unreachable(_)) if self.forget(addr) => {
                self.open_once(addr, request).await
            }
            other => other,
        }
    }

    /// Drops the kept connection to `addr`; whether there was one.
    fn forget(&self, addr: SocketAddr) -> bool {
        self.connections
            .lock()
            .expect("not poisoned")
            .remove(&addr)
            .is_some()
    }

    async fn open_once(&self, addr: SocketAddr, request: &Request) -> Result<Stream, TunnelError> {
        let connection = self.connection(addr).await?;
        let broken =
            |e: &dyn std::fmt::Display| TunnelError::Unreachable(format!("node at {addr}: {e}"));
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| broken(&e))?;
        write_header(&mut send, request)
            .await
            .map_err(|e| broken(&e))?;
        let reply: Reply =
            match tokio::time::timeout(CONNECT_TIMEOUT * 10, read_header(&mut recv)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(broken(&e)),
                Err(_) => return Err(broken(&"no answer within 30s")),
            };
        match reply {
            Reply::Ok => Ok(Stream { send, recv }),
            Reply::Refused(f) => Err(TunnelError::Refused(f)),
        }
    }
}

async fn serve_connection(
    connection: quinn::Connection,
    handler: Arc<dyn Handler>,
    stop: CancellationToken,
) {
    loop {
        let (send, mut recv) = tokio::select! {
            _ = stop.cancelled() => return,
            s = connection.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let request: Request = match read_header(&mut recv).await {
                Ok(r) => r,
                Err(err) => {
                    tracing::debug!(%err, "unreadable tunnel request");
                    let mut send = send;
                    let refusal = Reply::Refused(Failure::bad_request(err.to_string()));
                    let _ = write_header(&mut send, &refusal).await;
                    let _ = send.finish();
                    return;
                }
            };
            handler.handle(request, Stream { send, recv }).await;
        });
    }
}

#[cfg(test)]
mod tests;
