//! The server: UDP workers on threads of their own (one `SO_REUSEPORT` socket each, a
//! blocking receive, the answer built from the current table and sent back from the same
//! thread), and TCP on the async runtime with the same answer function. Names that are not
//! ours go to the [`forward`](crate::forward) relay.

use std::io;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::forward::{Forwarder, ReplyTo, Request};
use crate::wire::{self, Answer, Parsed, CLASS_ANY, CLASS_IN, REFUSED};
use crate::zone::{self, Zone};

/// The current table: swapped whole on a change; workers notice by the generation.
pub struct ZoneCell {
    zone: RwLock<Arc<Zone>>,
    generation: AtomicU64,
}

impl ZoneCell {
    pub fn new(zone: Zone) -> ZoneCell {
        ZoneCell {
            zone: RwLock::new(Arc::new(zone)),
            generation: AtomicU64::new(0),
        }
    }

    pub fn load(&self) -> Arc<Zone> {
        Arc::clone(&self.zone.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn store(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    Reply(Vec<u8>),
    Forward,
    Drop,
}

/// Answers `packet` from `zone` (`udp`: cut to the client's size).
pub fn handle(packet: &[u8], zone: &Zone, udp: bool) -> Handled {
    match wire::parse(packet) {
        Parsed::Drop => Handled::Drop,
        Parsed::Error { id, flags, rcode } => Handled::Reply(wire::error(id, flags, rcode)),
        Parsed::Query(q) => {
            let limit = if udp { q.udp_limit() } else { usize::MAX };
            if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
                let refused = Answer {
                    rcode: REFUSED,
                    ..Default::default()
                };
                return Handled::Reply(wire::respond(&q, &refused, limit));
            }
            match zone::answer(zone, &q, limit) {
                Some(reply) => Handled::Reply(reply),
                None => Handled::Forward,
            }
        }
    }
}

fn udp_socket(addr: SocketAddr) -> io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.bind(&addr.into())?;
    // Woken now and then to notice a stop.
    socket.set_read_timeout(Some(Duration::from_millis(250)))?;
    Ok(socket.into())
}

fn udp_worker(
    socket: Arc<StdUdpSocket>,
    cell: Arc<ZoneCell>,
    fwd: Forwarder,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65535];
    let mut zone = cell.load();
    let mut generation = cell.generation();
    while !stop.is_cancelled() {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(error = %e, "dns: receive failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if cell.generation() != generation {
            generation = cell.generation();
            zone = cell.load();
        }
        match handle(&buf[..n], &zone, true) {
            Handled::Reply(reply) => {
                let _ = socket.send_to(&reply, from);
            }
            Handled::Forward => {
                let limit = match wire::parse(&buf[..n]) {
                    Parsed::Query(q) => q.udp_limit(),
                    _ => wire::UDP_PLAIN,
                };
                fwd.forward(Request {
                    packet: buf[..n].to_vec(),
                    reply: ReplyTo::Udp(Arc::clone(&socket), from, limit),
                });
            }
            Handled::Drop => {}
        }
    }
}

/// Most TCP clients at once; more wait for a slot.
const TCP_CLIENTS: usize = 256;
const TCP_IDLE: Duration = Duration::from_secs(10);

async fn tcp_client(mut stream: TcpStream, cell: Arc<ZoneCell>, fwd: Forwarder) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let zone = cell.load();
        let reply = match handle(&packet, &zone, false) {
            Handled::Reply(reply) => reply,
            Handled::Forward => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                fwd.forward(Request {
                    packet,
                    reply: ReplyTo::Tcp(tx),
                });
                match rx.await {
                    Ok(reply) => reply,
                    Err(_) => return Ok(()),
                }
            }
            Handled::Drop => return Ok(()),
        };
        let mut framed = Vec::with_capacity(2 + reply.len());
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

/// A running server's addresses.
pub struct Serving {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

/// Serves `cell` on `listen` (UDP with `workers` threads, and TCP) until `stop`; names not
/// ours go to `fwd`. Port 0 takes a free port (the same one for UDP and TCP).
pub async fn serve(
    listen: SocketAddr,
    workers: usize,
    cell: Arc<ZoneCell>,
    fwd: Forwarder,
    stop: CancellationToken,
) -> io::Result<Serving> {
    // With port 0 the kernel picks TCP's port, which UDP may hold for another process: then
    // another port is tried.
    let mut attempts = 0;
    let (tcp, tcp_addr, udp_addr, sockets) = loop {
        let tcp = TcpListener::bind(listen).await?;
        let tcp_addr = tcp.local_addr()?;
        let udp_addr = SocketAddr::new(listen.ip(), tcp_addr.port());
        match (0..workers.max(1))
            .map(|_| udp_socket(udp_addr))
            .collect::<io::Result<Vec<_>>>()
        {
            Ok(sockets) => break (tcp, tcp_addr, udp_addr, sockets),
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse && listen.port() == 0 && attempts < 20 =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    };
    for (i, socket) in sockets.into_iter().enumerate() {
        let socket = Arc::new(socket);
        let (cell, fwd, stop) = (Arc::clone(&cell), fwd.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("dns-udp-{i}"))
            .spawn(move || udp_worker(socket, cell, fwd, stop))?;
    }
    let slots = Arc::new(Semaphore::new(TCP_CLIENTS));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = tcp.accept() => a,
            };
            let Ok((stream, _)) = accepted else { continue };
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (cell, fwd) = (Arc::clone(&cell), fwd.clone());
            tokio::spawn(async move {
                let _ = tcp_client(stream, cell, fwd).await;
                drop(permit);
            });
        }
    });
    Ok(Serving {
        udp: udp_addr,
        tcp: tcp_addr,
    })
}
