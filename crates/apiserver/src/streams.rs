//! The pods' streaming subresources, `log`, `exec`, `attach` and `portforward`, served by every node's API for pods on
//! any node: the request goes through the tunnel to the node the pod is bound to (its
//! address from the Node object: `InternalIP` and `daemonEndpoints.kubeletEndpoint.Port`, as
//! the Kubernetes API server reaches a kubelet).
//!
//! `log` answers `text/plain`, chunked while following. `exec` and `attach` are WebSockets
//! with the `v5.channel.k8s.io` subprotocol that kubectl 1.30 and later speak: each binary message is
//! a channel byte and data, relayed as tunnel frames. A refusal (no such pod or container, a
//! container not running, a node that cannot be reached) comes back as a Kubernetes `Status`
//! before anything is streamed.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use flotilla_tunnel::{read_frame, write_frame, Request as TunnelRequest, TunnelError};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;

use crate::objects::{query_param, query_params, Target};
use crate::{failure, ApiConfig, Body};

/// The exec subprotocol served.
const V5: &str = "v5.channel.k8s.io";
/// port-forward's subprotocol: SPDY/3.1 frames inside WebSocket messages.
const PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";

/// Whether `sub` of pods is served here.
pub fn serves(sub: &str) -> bool {
    matches!(sub, "log" | "exec" | "attach" | "portforward")
}

/// A refusal before anything is streamed (boxed: a response is large).
type Refusal = Box<Response<Body>>;

fn bad(message: &str) -> Refusal {
    refusal(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn refusal(code: StatusCode, reason: &str, message: &str) -> Refusal {
    Box::new(failure(code, reason, message))
}

/// The pod, the container named (or the only one), and where its node's tunnel is.
struct PodTarget {
    uid: String,
    container: String,
    node: SocketAddr,
}

fn find_pod(
    config: &ApiConfig,
    target: &Target<'_>,
    query: Option<&str>,
    needs_container: bool,
) -> Result<PodTarget, Refusal> {
    let (ns, name) = (target.namespace.unwrap_or(""), target.name.unwrap_or(""));
    let key = flotilla_api::store_key(target.resource, ns, name);
    let not_found = || {
        refusal(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("pods \"{name}\" not found"),
        )
    };
    let record = config
        .engine
        .get(&key)
        .ok()
        .and_then(|(_, r)| r)
        .ok_or_else(not_found)?;
    let pod: Value = serde_json::from_slice(&record.value).map_err(|_| not_found())?;
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match query_param(query, "container").filter(|c| !c.is_empty()) {
        _ if !needs_container => String::new(),
        Some(c) if names.contains(&c.as_str()) => c,
        Some(c) => return Err(bad(&format!("container {c} is not valid for pod {name}"))),
        None => match pod["spec"]["containers"].as_array().map(Vec::as_slice) {
            Some([only]) => only["name"].as_str().unwrap_or("").to_string(),
            _ => {
                return Err(bad(&format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                )))
            }
        },
    };
    let Some(node_name) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
        return Err(bad(&format!("pod {name} does not have a host assigned")));
    };
    let node = node_address(config, node_name).ok_or_else(|| {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("node {node_name} has no streaming address"),
        )
    })?;
    Ok(PodTarget {
        uid: pod["metadata"]["uid"].as_str().unwrap_or("").to_string(),
        container,
        node,
    })
}

pub(crate) fn node_address(config: &ApiConfig, node: &str) -> Option<SocketAddr> {
    let nodes = flotilla_api::find("", "v1", "nodes")?;
    let (_, record) = config
        .engine
        .get(&flotilla_api::store_key(nodes, "", node))
        .ok()?;
    let object: Value = serde_json::from_slice(&record?.value).ok()?;
    flotilla_tunnel::tunnel_address(&object)
}

fn tunnel_failure(e: TunnelError) -> Refusal {
    match e {
        TunnelError::Refused(f) => refusal(
            StatusCode::from_u16(f.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &f.reason,
            &f.message,
        ),
        other => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            &format!("error dialing backend: {other}"),
        ),
    }
}

fn flag(query: Option<&str>, name: &str) -> bool {
    query_param(query, name).is_some_and(|v| v == "true" || v == "1")
}

fn number(query: Option<&str>, name: &str) -> Result<Option<u64>, Refusal> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &format!("PodLogOptions \"\" is invalid: {name}: Invalid value: {v:?}: must be a non-negative integer"),
            )),
        },
    }
}

/// Serves `sub` of the pod `target`.
pub async fn handle(
    req: Request<Incoming>,
    config: &ApiConfig,
    target: &Target<'_>,
    sub: &str,
) -> Response<Body> {
    let Some(tunnel) = config.tunnel.clone() else {
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this node does not serve pods' streams",
        );
    };
    let query = req.uri().query().map(str::to_string);
    let pod = match find_pod(config, target, query.as_deref(), sub != "portforward") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    match sub {
        "portforward" => port_forward(req, &tunnel, pod).await.unwrap_or_else(|r| *r),
        "log" => logs(&tunnel, pod, query.as_deref())
            .await
            .unwrap_or_else(|r| *r),
        _ => remote_command(req, &tunnel, pod, query.as_deref(), sub)
            .await
            .unwrap_or_else(|r| *r),
    }
}

async fn logs(
    tunnel: &flotilla_tunnel::Tunnel,
    pod: PodTarget,
    query: Option<&str>,
) -> Result<Response<Body>, Refusal> {
    let since_seconds = number(query, "sinceSeconds")?;
    let since_time = match (since_seconds, query_param(query, "sinceTime")) {
        (Some(_), Some(_)) => {
            return Err(refusal(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "PodLogOptions \"\" is invalid: sinceSeconds: Forbidden: at most one of sinceTime or sinceSeconds may be specified",
            ))
        }
        (Some(s), None) => Some(
            humantime::format_rfc3339_nanos(
                std::time::SystemTime::now() - std::time::Duration::from_secs(s),
            )
            .to_string(),
        ),
        (None, t) => t,
    };
    let request = TunnelRequest::Logs {
        uid: pod.uid,
        container: pod.container,
        follow: flag(query, "follow"),
        previous: flag(query, "previous"),
        timestamps: flag(query, "timestamps"),
        tail_lines: number(query, "tailLines")?,
        since_time,
        limit_bytes: number(query, "limitBytes")?,
    };
    let stream = tunnel
        .open(pod.node, &request)
        .await
        .map_err(tunnel_failure)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let flotilla_tunnel::Stream { mut send, mut recv } = stream;
        loop {
            let chunk = tokio::select! {
                c = recv.read_chunk(64 * 1024, true) => c,
                // The client went away while nothing was written: end the follow.
                _ = tx.closed() => break,
            };
            match chunk {
                Ok(Some(chunk)) => {
                    if tx.send(chunk.bytes).await.is_err() {
                        break;
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
        // The client went away: end the follow on the serving node.
        let _ = send.reset(0u32.into());
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain")
        .header("Transfer-Encoding", "chunked")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(
            crate::futures_util_stream(rx),
        )))
        .expect("a valid response"))
}

/// `exec` and `attach`: a WebSocket with the `v5.channel.k8s.io` subprotocol, relayed to a
/// tunnel stream to the pod's node.
async fn remote_command(
    mut req: Request<Incoming>,
    tunnel: &Arc<flotilla_tunnel::Tunnel>,
    pod: PodTarget,
    query: Option<&str>,
    sub: &str,
) -> Result<Response<Body>, Refusal> {
    let Some(key) = websocket_key(&req, V5) else {
        return Err(bad(&format!(
            "{sub} is served over WebSocket with the {V5} subprotocol (kubectl 1.30 or later); SPDY is not served"
        )));
    };
    let (stdin, tty) = (flag(query, "stdin"), flag(query, "tty"));
    let request = if sub == "attach" {
        TunnelRequest::Attach {
            uid: pod.uid,
            container: pod.container,
            stdin,
            tty,
        }
    } else {
        let command = query_params(query, "command");
        if command.is_empty() {
            return Err(bad("you must specify at least 1 command"));
        }
        TunnelRequest::Exec {
            uid: pod.uid,
            container: pod.container,
            command,
            stdin,
            tty,
        }
    };
    let stream = tunnel
        .open(pod.node, &request)
        .await
        .map_err(tunnel_failure)?;
    Ok(accept(&mut req, &key, V5, move |ws| relay(ws, stream)))
}

/// Relays WebSocket messages and tunnel frames until the command's status has gone out.
async fn relay(ws: ServerWs, stream: flotilla_tunnel::Stream) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let flotilla_tunnel::Stream { mut send, mut recv } = stream;
    let upstream = tokio::spawn(async move {
        while let Some(Ok(message)) = ws_rx.next().await {
            match message {
                Message::Binary(data)
                    if !data.is_empty()
                        && write_frame(&mut send, data[0], &data[1..]).await.is_err() =>
                {
                    return;
                }
                // kubectl closes its side after stdin ends, and still reads the output.
                Message::Close(_) => {
                    let _ = send.finish();
                    return;
                }
                _ => {}
            }
        }
        // The connection broke: the serving node ends the command.
        let _ = send.reset(0u32.into());
    });
    while let Ok(Some((channel, data))) = read_frame(&mut recv).await {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(channel);
        message.extend_from_slice(&data);
        if ws_tx.send(Message::Binary(message.into())).await.is_err() {
            break;
        }
    }
    // A normal closure (1000): kubectl takes any other code as a broken stream.
    let normal = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    let _ = ws_tx.send(Message::Close(Some(normal))).await;
    let _ = ws_tx.close().await;
    upstream.abort();
}

/// Whether the request upgrades to WebSocket offering `protocol`, and its key.
fn websocket_key(req: &Request<Incoming>, protocol: &str) -> Option<String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let offered = header("sec-websocket-protocol")
        .split(',')
        .any(|p| p.trim() == protocol);
    (header("upgrade").eq_ignore_ascii_case("websocket") && offered)
        .then(|| header("sec-websocket-key").to_string())
}

fn switching(key: &str, protocol: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header(
            "Sec-WebSocket-Accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        )
        .header("Sec-WebSocket-Protocol", protocol)
        .body(BodyExt::boxed(http_body_util::Empty::new()))
        .expect("a valid response")
}

/// The server's side of an upgraded connection.
type ServerWs =
    tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Answers the upgrade with `101` and runs `session` on the WebSocket once it is established.
fn accept<F, Fut>(
    req: &mut Request<Incoming>,
    key: &str,
    protocol: &'static str,
    session: F,
) -> Response<Body>
where
    F: FnOnce(ServerWs) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                let ws =
                    tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None)
                        .await;
                session(ws).await;
            }
            Err(err) => tracing::debug!(%err, protocol, "the WebSocket upgrade failed"),
        }
    });
    switching(key, protocol)
}

async fn port_forward(
    mut req: Request<Incoming>,
    tunnel: &Arc<flotilla_tunnel::Tunnel>,
    pod: PodTarget,
) -> Result<Response<Body>, Refusal> {
    let Some(key) = websocket_key(&req, PORT_FORWARD) else {
        return Err(bad(&format!(
            "port-forward is served over WebSocket with the {PORT_FORWARD} subprotocol (kubectl 1.31 or later)"
        )));
    };
    let tunnel = Arc::clone(tunnel);
    Ok(accept(&mut req, &key, PORT_FORWARD, move |ws| {
        forward_session(ws, tunnel, pod)
    }))
}

/// One port-forward session: each local connection kubectl accepted is a pair of SPDY streams
/// (`error` and `data`, with one `requestid`); a data stream becomes a tunnel stream to the
/// pod's port. The error stream stays empty on success and carries the message otherwise.
async fn forward_session(ws: ServerWs, tunnel: Arc<flotilla_tunnel::Tunnel>, pod: PodTarget) {
    use crate::spdy::{self, Frame};
    use std::collections::HashMap;
    use tokio::sync::mpsc;

    let (mut ws_tx, mut ws_rx) = ws.split();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if ws_tx.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
        let _ = ws_tx.close().await;
    });
    let mut session = spdy::Session::default();
    // requestid → the error stream's id; data stream id → what it sends to the pod.
    let mut errors: HashMap<String, u32> = HashMap::new();
    let mut to_pod: HashMap<u32, mpsc::UnboundedSender<Option<Vec<u8>>>> = HashMap::new();
    'session: while let Some(Ok(message)) = ws_rx.next().await {
        let Message::Binary(bytes) = message else {
            if matches!(message, Message::Close(_)) {
                break;
            }
            continue;
        };
        session.feed(&bytes);
        loop {
            let frame = match session.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(%err, "port-forward: an unreadable SPDY frame");
                    break 'session;
                }
            };
            match frame {
                Frame::Ping { id } => {
                    let _ = out_tx.send(spdy::ping(id));
                }
                Frame::GoAway => break 'session,
                Frame::RstStream { id } => {
                    to_pod.remove(&id);
                }
                Frame::Data { id, fin, data } => {
                    if let Some(tx) = to_pod.get(&id) {
                        if !data.is_empty() {
                            let _ = tx.send(Some(data));
                        }
                        if fin {
                            let _ = tx.send(None);
                            to_pod.remove(&id);
                        }
                    }
                }
                Frame::SynStream { id, headers, .. } => {
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(k, _)| k == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    let _ = out_tx.send(session.syn_reply(id, false));
                    let request = header("requestid");
                    if header("streamtype") == "error" {
                        errors.insert(request, id);
                        continue;
                    }
                    let error_stream = errors.remove(&request);
                    let Ok(port) = header("port").parse::<u16>() else {
                        fail_stream(&out_tx, id, error_stream, "invalid port");
                        continue;
                    };
                    let (tx, rx) = mpsc::unbounded_channel();
                    to_pod.insert(id, tx);
                    tokio::spawn(forward_connection(
                        Arc::clone(&tunnel),
                        pod.node,
                        TunnelRequest::PortForward {
                            uid: pod.uid.clone(),
                            port,
                        },
                        id,
                        error_stream,
                        rx,
                        out_tx.clone(),
                    ));
                }
                Frame::Other => {}
            }
        }
    }
    drop(to_pod);
    drop(out_tx);
    let _ = writer.await;
}

/// Ends data stream `id` after writing `message` on its error stream.
fn fail_stream(
    out: &tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    id: u32,
    error_stream: Option<u32>,
    message: &str,
) {
    if let Some(e) = error_stream {
        let _ = out.send(crate::spdy::data(e, true, message.as_bytes()));
    }
    let _ = out.send(crate::spdy::data(id, true, &[]));
}

/// Relays one forwarded connection between SPDY data stream `id` and a tunnel stream.
async fn forward_connection(
    tunnel: Arc<flotilla_tunnel::Tunnel>,
    node: SocketAddr,
    request: TunnelRequest,
    id: u32,
    error_stream: Option<u32>,
    mut from_client: tokio::sync::mpsc::UnboundedReceiver<Option<Vec<u8>>>,
    out: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) {
    let stream = match tunnel.open(node, &request).await {
        Ok(s) => s,
        Err(e) => return fail_stream(&out, id, error_stream, &e.to_string()),
    };
    let flotilla_tunnel::Stream { mut send, mut recv } = stream;
    let upstream = tokio::spawn(async move {
        while let Some(Some(data)) = from_client.recv().await {
            if send.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    while let Ok(Some(chunk)) = recv.read_chunk(32 * 1024, true).await {
        if out
            .send(crate::spdy::data(id, false, &chunk.bytes))
            .is_err()
        {
            break;
        }
    }
    let _ = out.send(crate::spdy::data(id, true, &[]));
    if let Some(e) = error_stream {
        let _ = out.send(crate::spdy::data(e, true, &[]));
    }
    upstream.abort();
}
