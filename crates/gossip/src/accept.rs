//! memberlist's QUIC stream layer with incoming handshakes completed side by side.
//!
//! memberlist's own acceptor finishes each incoming handshake before it takes the next
//! connection attempt, and quinn answers an attempt only once it is taken. One handshake that
//! never finishes (its client gave up or died halfway) then leaves every later attempt
//! unanswered until that handshake's idle timeout (3 s). Their clients give up after their own
//! 1 s connect timeout, so each of them becomes the next handshake that never finishes: the
//! node stays cut off from gossip for good, while everything else on it works. Starting a
//! cluster made this happen about one time in three (a join's attempt that arrives just as the
//! joiner gives up is enough). Here [`HANDSHAKES`] tasks take attempts from the same endpoint,
//! so a stalled handshake holds up no other.

use std::io;
use std::net::SocketAddr;

use memberlist::quic::stream_layer::quinn::{
    Options, Quinn, QuinnAcceptor, QuinnConnection, QuinnConnector, QuinnStream,
};
use memberlist::quic::stream_layer::{QuicAcceptor, StreamLayer};
use memberlist::tokio::TokioRuntime;
use tokio::sync::mpsc;

/// Handshakes in progress at once, per endpoint.
const HANDSHAKES: usize = 16;

/// The message of memberlist's acceptor once its endpoint is closed (memberlist is pinned).
const ENDPOINT_CLOSED: &str = "endpoint closed";

pub struct Layer(Quinn<TokioRuntime>);

impl StreamLayer for Layer {
    type Runtime = TokioRuntime;
    type Acceptor = Acceptor;
    type Connector = QuinnConnector<TokioRuntime>;
    type Stream = QuinnStream;
    type Connection = QuinnConnection;
    type Options = Options;

    fn max_stream_data(&self) -> usize {
        self.0.max_stream_data()
    }

    async fn new(options: Options) -> io::Result<Self> {
        Ok(Layer(Quinn::new(options).await?))
    }

    async fn bind(&self, addr: SocketAddr) -> io::Result<(SocketAddr, Acceptor, Self::Connector)> {
        let (local_addr, inner, connector) = self.0.bind(addr).await?;
        let (tx, rx) = mpsc::channel(HANDSHAKES);
        for _ in 0..HANDSHAKES {
            tokio::spawn(handshakes(inner.clone(), tx.clone()));
        }
        Ok((local_addr, Acceptor { inner, rx }, connector))
    }
}

/// Takes connection attempts one after another and hands on those whose handshake succeeds,
/// until the endpoint closes or the acceptor is gone.
async fn handshakes(mut inner: QuinnAcceptor, tx: mpsc::Sender<(QuinnConnection, SocketAddr)>) {
    loop {
        match inner.accept().await {
            Ok(accepted) => {
                if tx.send(accepted).await.is_err() {
                    return;
                }
            }
            Err(e) if e.to_string() == ENDPOINT_CLOSED => return,
            Err(e) => {
                // A peer that gave up, died or showed a certificate we do not trust.
                tracing::debug!(local = %inner.local_addr(), error = %e, "gossip handshake failed");
                if tx.is_closed() {
                    return;
                }
            }
        }
    }
}

pub struct Acceptor {
    inner: QuinnAcceptor,
    rx: mpsc::Receiver<(QuinnConnection, SocketAddr)>,
}

impl QuicAcceptor for Acceptor {
    type Connection = QuinnConnection;

    async fn accept(&mut self) -> io::Result<(QuinnConnection, SocketAddr)> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| io::Error::other(ENDPOINT_CLOSED))
    }

    async fn close(&mut self) -> io::Result<()> {
        self.inner.close().await
    }

    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
}
