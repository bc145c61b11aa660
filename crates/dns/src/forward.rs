//! Names that are not ours go to the host's resolvers: the client's packet is relayed as it
//! is under an id of ours, and the answer relayed back under the client's (so NXDOMAIN with
//! its SOA, CNAME chains and TC reach the client untouched), and kept for its TTL. An
//! upstream that refuses (ICMP port unreachable) or stays silent for a second is skipped for a
//! few seconds; with none left the client gets SERVFAIL at once, never a hang.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::wire::{self, Answer, Parsed, NOERROR, NXDOMAIN, SERVFAIL};

/// How long one upstream has to answer before the next is asked.
const ATTEMPT: Duration = Duration::from_secs(1);
/// How long an upstream that refused or timed out is skipped.
const DEAD_FOR: Duration = Duration::from_secs(5);
const CACHE_ENTRIES: usize = 10_000;
const MAX_POSITIVE_TTL: u32 = 300;
const MAX_NEGATIVE_TTL: u32 = 30;

/// Where an answer goes.
pub enum ReplyTo {
    /// A UDP client of one of the server's sockets, and the largest answer it takes.
    Udp(Arc<StdUdpSocket>, SocketAddr, usize),
    Tcp(oneshot::Sender<Vec<u8>>),
}

impl ReplyTo {
    fn send(self, packet: &[u8], query: &wire::Query<'_>) {
        match self {
            ReplyTo::Udp(socket, to, limit) => {
                let _ = socket.send_to(&wire::truncate(packet, query, limit), to);
            }
            ReplyTo::Tcp(tx) => {
                let _ = tx.send(packet.to_vec());
            }
        }
    }
}

/// A query for the forwarder.
pub struct Request {
    pub packet: Vec<u8>,
    pub reply: ReplyTo,
}

/// The forwarder's queue; a full queue answers SERVFAIL.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Request>,
}

impl Forwarder {
    pub fn forward(&self, request: Request) {
        if let Err(e) = self.tx.try_send(request) {
            let r = match e {
                mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
            };
            fail(r);
        }
    }
}

/// Answers `r` with SERVFAIL.
fn fail(r: Request) {
    if let Parsed::Query(q) = wire::parse(&r.packet) {
        let answer = Answer {
            rcode: SERVFAIL,
            ..Default::default()
        };
        let packet = wire::respond(&q, &answer, usize::MAX);
        r.reply.send(&packet, &q);
    }
}

type CacheKey = (Vec<u8>, u16, u16, bool);

fn cache_key(q: &wire::Query<'_>) -> CacheKey {
    (
        q.name().to_vec(),
        q.qtype,
        q.qclass,
        q.edns.is_some_and(|e| e.dnssec_ok),
    )
}

struct Pending {
    request: Request,
    client_id: u16,
    upstream: usize,
    deadline: Instant,
    tried: usize,
}

/// How long an upstream answer may be kept: its smallest TTL, or for a negative answer its
/// SOA's minimum; `None` for answers not to keep (SERVFAIL, truncated, unparsable).
fn cache_ttl(packet: &[u8]) -> Option<u32> {
    let m = Message::from_vec(packet).ok()?;
    if m.truncated() {
        return None;
    }
    let code = u16::from(m.response_code());
    match code {
        NOERROR if !m.answers().is_empty() => m
            .answers()
            .iter()
            .map(|r| r.ttl())
            .min()
            .map(|t| t.min(MAX_POSITIVE_TTL)),
        NOERROR | NXDOMAIN => m
            .name_servers()
            .iter()
            .find_map(|r| match r.data() {
                hickory_proto::rr::RData::SOA(soa) => Some(soa.minimum().min(r.ttl())),
                _ => None,
            })
            .map(|t| t.min(MAX_NEGATIVE_TTL)),
        _ => None,
    }
}

struct State {
    sockets: Vec<Arc<UdpSocket>>,
    dead_until: Vec<Option<Instant>>,
    pending: HashMap<(usize, u16), Pending>,
    cache: HashMap<CacheKey, (Vec<u8>, Instant)>,
}

impl State {
    fn alive(&self, from: usize, now: Instant) -> Option<usize> {
        let n = self.sockets.len();
        (0..n)
            .map(|i| (from + i) % n)
            .find(|i| self.dead_until[*i].is_none_or(|t| t <= now))
    }

    /// Sends `request` to the first live upstream from `from` (SERVFAIL when none is).
    async fn send(&mut self, mut request: Request, client_id: u16, from: usize, tried: usize) {
        let now = Instant::now();
        let Some(upstream) = self.alive(from, now).filter(|_| tried < self.sockets.len()) else {
            return fail(request);
        };
        let mut id = rand::random::<u16>();
        while self.pending.contains_key(&(upstream, id)) {
            id = id.wrapping_add(1);
        }
        wire::set_id(&mut request.packet, id);
        if self.sockets[upstream].send(&request.packet).await.is_err() {
            self.dead_until[upstream] = Some(now + DEAD_FOR);
            wire::set_id(&mut request.packet, client_id);
            return Box::pin(self.send(request, client_id, upstream + 1, tried + 1)).await;
        }
        self.pending.insert(
            (upstream, id),
            Pending {
                request,
                client_id,
                upstream,
                deadline: now + ATTEMPT,
                tried: tried + 1,
            },
        );
    }

    async fn request(&mut self, request: Request) {
        let Parsed::Query(q) = wire::parse(&request.packet) else {
            return;
        };
        let key = cache_key(&q);
        if let Some((bytes, expiry)) = self.cache.get(&key) {
            if *expiry > Instant::now() {
                let mut answer = bytes.clone();
                wire::set_id(&mut answer, q.id);
                return request.reply.send(&answer, &q);
            }
        }
        let id = q.id;
        if self.sockets.is_empty() {
            return fail(request);
        }
        self.send(request, id, 0, 0).await;
    }

    fn answered(&mut self, upstream: usize, mut packet: Vec<u8>) {
        let Some((id, _)) = wire::response_code(&packet) else {
            return;
        };
        let Some(p) = self.pending.remove(&(upstream, id)) else {
            return;
        };
        wire::set_id(&mut packet, p.client_id);
        let Parsed::Query(q) = wire::parse(&p.request.packet) else {
            return;
        };
        if let Some(ttl) = cache_ttl(&packet) {
            if self.cache.len() >= CACHE_ENTRIES {
                let now = Instant::now();
                self.cache.retain(|_, (_, expiry)| *expiry > now);
                if self.cache.len() >= CACHE_ENTRIES {
                    self.cache.clear();
                }
            }
            self.cache.insert(
                cache_key(&q),
                (
                    packet.clone(),
                    Instant::now() + Duration::from_secs(ttl.into()),
                ),
            );
        }
        let mut q = q;
        q.id = p.client_id;
        p.request.reply.send(&packet, &q);
    }

    /// Moves the queries of a refusing or silent upstream on to the next.
    async fn retry(&mut self, which: impl Fn(&Pending) -> bool) {
        let keys: Vec<(usize, u16)> = self
            .pending
            .iter()
            .filter(|(_, p)| which(p))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(mut p) = self.pending.remove(&k) {
                wire::set_id(&mut p.request.packet, p.client_id);
                self.send(p.request, p.client_id, p.upstream + 1, p.tried)
                    .await;
            }
        }
    }
}

/// Starts the forwarder to `upstreams` (none: every forwarded query gets SERVFAIL).
pub async fn start(
    upstreams: &[SocketAddr],
    stop: CancellationToken,
) -> std::io::Result<Forwarder> {
    let (tx, mut rx) = mpsc::channel::<Request>(4096);
    let (answers_tx, mut answers) = mpsc::channel::<(usize, std::io::Result<Vec<u8>>)>(4096);
    let mut sockets = Vec::new();
    for upstream in upstreams {
        let bind: SocketAddr = if upstream.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        if let Err(e) = socket.connect(upstream).await {
            // No route to it from here (a lab's namespace): its queries get SERVFAIL.
            tracing::warn!(%upstream, error = %e, "dns: cannot reach an upstream resolver; skipping it");
            continue;
        }
        let i = sockets.len();
        let (s, tx, stop) = (Arc::clone(&socket), answers_tx.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let got = tokio::select! {
                    _ = stop.cancelled() => return,
                    got = s.recv(&mut buf) => got.map(|n| buf[..n].to_vec()),
                };
                if tx.send((i, got)).await.is_err() {
                    return;
                }
            }
        });
        sockets.push(socket);
    }
    let mut state = State {
        dead_until: vec![None; sockets.len()],
        sockets,
        pending: HashMap::new(),
        cache: HashMap::new(),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(r) = rx.recv() => state.request(r).await,
                Some((i, got)) = answers.recv() => match got {
                    Ok(packet) => state.answered(i, packet),
                    // Refused (ICMP port unreachable): skip it for a while, now.
                    Err(_) => {
                        state.dead_until[i] = Some(Instant::now() + DEAD_FOR);
                        state.retry(|p| p.upstream == i).await;
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    let silent: Vec<usize> = state
                        .pending
                        .values()
                        .filter(|p| p.deadline <= now)
                        .map(|p| p.upstream)
                        .collect();
                    for i in &silent {
                        state.dead_until[*i] = Some(now + DEAD_FOR);
                    }
                    state.retry(|p| p.deadline <= now).await;
                }
            }
        }
    });
    Ok(Forwarder { tx })
}

/// The name servers of a `resolv.conf` text, on port 53, without `exclude` (our own
/// addresses, which would loop).
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[std::net::IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next()? == "nameserver").then(|| words.next())?
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .filter(|ip| !exclude.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}
