use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::*;
use flotilla_pki::ca::Ca;

/// Echoes a port-forward's bytes; refuses everything else.
struct Echo;

#[async_trait::async_trait]
impl Handler for Echo {
    async fn handle(&self, request: Request, mut stream: Stream) {
        match request {
            Request::PortForward { port: 7, .. } => {
                write_header(&mut stream.send, &Reply::Ok).await.unwrap();
                let data = stream.recv.read_to_end(1 << 20).await.unwrap();
                stream.send.write_all(&data).await.unwrap();
                stream.send.finish().unwrap();
            }
            _ => {
                let refusal = Reply::Refused(Failure::not_found("no such pod"));
                write_header(&mut stream.send, &refusal).await.unwrap();
                stream.send.finish().unwrap();
            }
        }
    }
}

fn identity(ca: &Ca, name: &str) -> Credential {
    let node = ca
        .issue_node(name, IpAddr::V4(Ipv4Addr::LOCALHOST))
        .unwrap();
    Credential {
        cert_pem: format!("{}{}", node.cert_pem, ca.cert_pem()),
        key_pem: node.key_pem,
    }
}

fn local() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
}

#[tokio::test]
async fn a_request_reaches_the_peer_and_a_refusal_comes_back_as_its_status() {
    let ca = Ca::generate("test").unwrap();
    let server = Tunnel::bind(local(), ca.cert_pem(), &identity(&ca, "n1")).unwrap();
    let stop = CancellationToken::new();
    server.serve(Arc::new(Echo), stop.clone());
    let client = Tunnel::bind(local(), ca.cert_pem(), &identity(&ca, "n2")).unwrap();

    let forward = Request::PortForward {
        uid: "u".into(),
        port: 7,
    };
    let mut stream = client.open(server.local_addr(), &forward).await.unwrap();
    stream
        .send
        .write_all(b"hello through the tunnel")
        .await
        .unwrap();
    stream.send.finish().unwrap();
    let back = stream.recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(back, b"hello through the tunnel");

    let logs = Request::Logs {
        uid: "missing".into(),
        container: "c".into(),
        follow: false,
        previous: false,
        timestamps: false,
        tail_lines: None,
        since_time: None,
        limit_bytes: None,
    };
    match client.open(server.local_addr(), &logs).await {
        Err(TunnelError::Refused(f)) => {
            assert_eq!(
                (f.code, f.reason.as_str(), f.message.as_str()),
                (404, "NotFound", "no such pod")
            )
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    stop.cancel();
}

#[tokio::test]
async fn a_node_of_another_cluster_is_not_served() {
    let ca = Ca::generate("test").unwrap();
    let other = Ca::generate("other").unwrap();
    let server = Tunnel::bind(local(), ca.cert_pem(), &identity(&ca, "n1")).unwrap();
    let stop = CancellationToken::new();
    server.serve(Arc::new(Echo), stop.clone());
    let stranger = Tunnel::bind(local(), other.cert_pem(), &identity(&other, "x")).unwrap();
    let forward = Request::PortForward {
        uid: "u".into(),
        port: 7,
    };
    match stranger.open(server.local_addr(), &forward).await {
        Err(TunnelError::Unreachable(_)) => {}
        other => panic!("expected a failed handshake, got {:?}", other.map(|_| ())),
    }
    stop.cancel();
}

#[tokio::test]
async fn channel_frames_round_trip_and_an_oversized_frame_is_refused() {
    let mut buf = Vec::new();
    write_frame(&mut buf, 1, b"out").await.unwrap();
    write_frame(&mut buf, 3, b"{}").await.unwrap();
    let mut r = buf.as_slice();
    assert_eq!(
        read_frame(&mut r).await.unwrap(),
        Some((1, b"out".to_vec()))
    );
    assert_eq!(read_frame(&mut r).await.unwrap(), Some((3, b"{}".to_vec())));
    assert_eq!(read_frame(&mut r).await.unwrap(), None);
    let huge = ((MAX_HEADER + 1) as u32).to_be_bytes();
    let mut r = &huge[..];
    assert!(read_frame(&mut r).await.is_err());
}
