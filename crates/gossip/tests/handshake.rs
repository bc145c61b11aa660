//! A QUIC handshake that never finishes must not keep anyone else from joining: a client that
//! stops halfway (here: it hangs while checking the member's certificate) holds its handshake
//! open until the idle timeout, and a member that completed handshakes one at a time would
//! leave every later joiner unanswered meanwhile.

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use flotilla_gossip::Membership;
use flotilla_pki::{Ca, NODE_SERVER_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

mod common;
use common::member;

/// Says when the server's certificate arrived, then hangs until `release` is dropped.
#[derive(Debug)]
struct Hang {
    arrived: std_mpsc::SyncSender<()>,
    release: std::sync::Mutex<std_mpsc::Receiver<()>>,
    schemes: Vec<SignatureScheme>,
}

/// The handshake hangs before any signature is checked.
fn not_reached() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("not reached".into()))
}

impl ServerCertVerifier for Hang {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let _ = self.arrived.try_send(());
        let _ = self.release.lock().unwrap().recv();
        Err(rustls::Error::General("released".into()))
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        not_reached()
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        not_reached()
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Starts a handshake with `to` from a thread of its own and leaves it hanging halfway; returns
/// once the member has answered (so its side of the handshake is under way), with the sender
/// whose drop lets the client go.
fn hanging_client(to: SocketAddr) -> std_mpsc::Sender<()> {
    let (arrived_tx, arrived_rx) = std_mpsc::sync_channel(1);
    let (release_tx, release_rx) = std_mpsc::channel();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Hang {
        arrived: arrived_tx,
        release: std::sync::Mutex::new(release_rx),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let connecting = endpoint.connect_with(config, to, NODE_SERVER_NAME).unwrap();
            let _ = connecting.await;
        });
    });
    arrived_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the member never answered the first client");
    release_tx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_left_halfway_does_not_keep_others_out() {
    let ca = Ca::generate("gossip-test").unwrap();
    let a = member(&ca, 1).await;
    let release = hanging_client(a.addr());

    // The first client's handshake is open on a's side (and stays so for its 3 s idle timeout);
    // a joiner with its 1 s connect timeout must still get in.
    let b = member(&ca, 2).await;
    b.join(&[a.addr()])
        .await
        .expect("a joiner was kept out by a handshake left halfway");
    assert!(a.view().iter().any(|p| p.meta.name == "g2"));

    drop(release);
    b.shutdown().await;
    a.shutdown().await;
}
