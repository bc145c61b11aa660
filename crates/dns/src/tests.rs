//! The table's answers read back with hickory-proto's decoder, a fuzzed packet path, and the
//! server over real sockets (UDP and TCP) with a stub upstream on loopback.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use proptest::prelude::*;

use crate::server::{handle, Handled, ZoneCell};
use crate::source::{build, Zones};
use crate::zone::{Endpoint, Kind, PodRecord, Port, ServiceRecord, Zone};

fn zones() -> Zones {
    Zones {
        domain: "cluster.local".into(),
        reverse: vec!["96.10.in-addr.arpa".into(), "244.10.in-addr.arpa".into()],
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port(name: &str, port: u16) -> Port {
    Port {
        name: name.into(),
        protocol: "tcp".into(),
        port,
    }
}

fn endpoint(addr: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        ip: ip(addr),
        hostname: hostname.map(str::to_string),
        ready,
        ports: vec![port("db", 5432)],
    }
}

fn table() -> Zone {
    let services = vec![
        ServiceRecord {
            namespace: "shop".into(),
            name: "web".into(),
            kind: Kind::ClusterIp(ip("10.96.3.4")),
            ports: vec![port("http", 80), port("", 81)],
            endpoints: vec![],
        },
        ServiceRecord {
            namespace: "shop".into(),
            name: "db".into(),
            kind: Kind::Headless,
            ports: vec![port("db", 5432)],
            endpoints: vec![
                endpoint("10.244.1.7", Some("db-0"), true),
                endpoint("10.244.2.7", None, true),
                endpoint("10.244.3.7", None, false),
            ],
        },
        ServiceRecord {
            namespace: "shop".into(),
            name: "ext".into(),
            kind: Kind::ExternalName("example.com".into()),
            ports: vec![],
            endpoints: vec![],
        },
    ];
    let pods = vec![PodRecord {
        namespace: "shop".into(),
        ip: ip("10.244.1.9"),
    }];
    build(&zones(), 42, &services, &pods)
}

/// A query packet for `name`/`rtype` (id 0x1234), EDNS if `edns`.
fn packet(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    crate::wire::testing::query(name, u16::from(rtype), edns.then_some((1232, 0)))
}

fn ask(zone: &Zone, name: &str, rtype: RecordType) -> Message {
    match handle(&packet(name, rtype, false), zone, true) {
        Handled::Reply(r) => Message::from_vec(&r).expect("a valid answer"),
        other => panic!("{name}: {other:?}"),
    }
}

fn data(m: &Message) -> Vec<String> {
    m.answers().iter().map(|r| r.data().to_string()).collect()
}

#[test]
fn services_answer_with_their_cluster_ip_srv_and_ptr() {
    let z = table();
    let m = ask(&z, "web.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert!(m.authoritative());
    assert_eq!(m.id(), 0x1234);
    assert_eq!(data(&m), ["10.96.3.4"]);
    assert_eq!(m.answers()[0].ttl(), 5);
    assert_eq!(
        m.answers()[0].name().to_string(),
        "web.shop.svc.cluster.local."
    );
    let m = ask(
        &z,
        "_http._tcp.web.shop.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(data(&m), ["0 100 80 web.shop.svc.cluster.local."]);
    assert_eq!(m.additionals()[0].data().to_string(), "10.96.3.4");
    let m = ask(&z, "4.3.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&m), ["web.shop.svc.cluster.local."]);
    // Case is ignored, and the question comes back as asked.
    let m = ask(&z, "WEB.Shop.svc.CLUSTER.local.", RecordType::A);
    assert_eq!(data(&m), ["10.96.3.4"]);
    assert_eq!(
        m.queries()[0].name().to_string(),
        "WEB.Shop.svc.CLUSTER.local."
    );
}

#[test]
fn nxdomain_and_nodata_are_told_apart_with_the_soa() {
    let z = table();
    for (name, rtype, code) in [
        (
            "nope.shop.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            "web.nope.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            "web.shop.svc.cluster.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
        ),
        (
            "web.shop.svc.cluster.local.",
            RecordType::SRV,
            ResponseCode::NoError,
        ),
        (
            "shop.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
        ),
        (
            "_tcp.web.shop.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
        ),
        (
            "9.9.96.10.in-addr.arpa.",
            RecordType::PTR,
            ResponseCode::NXDomain,
        ),
    ] {
        let m = ask(&z, name, rtype);
        assert_eq!(m.response_code(), code, "{name} {rtype}");
        assert!(m.answers().is_empty(), "{name}");
        let soa = &m.name_servers()[0];
        assert_eq!(soa.record_type(), RecordType::SOA, "{name}");
        let RData::SOA(s) = soa.data() else { panic!() };
        assert_eq!(s.serial(), 42);
    }
    let m = ask(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(m.answers()[0].record_type(), RecordType::SOA);
}

#[test]
fn headless_services_answer_with_ready_endpoints() {
    let z = table();
    let mut a = data(&ask(&z, "db.shop.svc.cluster.local.", RecordType::A));
    a.sort();
    assert_eq!(a, ["10.244.1.7", "10.244.2.7"]);
    assert_eq!(
        data(&ask(&z, "db-0.db.shop.svc.cluster.local.", RecordType::A)),
        ["10.244.1.7"]
    );
    assert_eq!(
        data(&ask(
            &z,
            "10-244-2-7.db.shop.svc.cluster.local.",
            RecordType::A
        )),
        ["10.244.2.7"]
    );
    let m = ask(&z, "_db._tcp.db.shop.svc.cluster.local.", RecordType::SRV);
    let mut srv = data(&m);
    srv.sort();
    assert_eq!(
        srv,
        [
            "0 50 5432 10-244-2-7.db.shop.svc.cluster.local.",
            "0 50 5432 db-0.db.shop.svc.cluster.local."
        ]
    );
    assert_eq!(m.additionals().len(), 2);
    let m = ask(&z, "7.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(data(&m), ["db-0.db.shop.svc.cluster.local."]);
    let m = ask(&z, "3-7.db.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
}

#[test]
fn external_names_pods_and_other_names() {
    let z = table();
    let m = ask(&z, "ext.shop.svc.cluster.local.", RecordType::A);
    assert_eq!(m.answers()[0].record_type(), RecordType::CNAME);
    assert_eq!(data(&m), ["example.com."]);
    assert_eq!(
        data(&ask(
            &z,
            "10-244-1-9.shop.pod.cluster.local.",
            RecordType::A
        )),
        ["10.244.1.9"]
    );
    assert_eq!(
        data(&ask(&z, "9.1.244.10.in-addr.arpa.", RecordType::PTR)),
        ["10-244-1-9.shop.pod.cluster.local."]
    );
    assert_eq!(
        handle(&packet("example.org.", RecordType::A, false), &z, true),
        Handled::Forward
    );
    let mut chaos = packet("version.bind.", RecordType::TXT, false);
    let class_at = chaos.len() - 2;
    chaos[class_at..].copy_from_slice(&3u16.to_be_bytes());
    let Handled::Reply(r) = handle(&chaos, &z, true) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&r).unwrap().response_code(),
        ResponseCode::Refused
    );
}

#[test]
fn a_service_and_its_namespace_alone_is_a_cname_to_its_full_name() {
    let z = table();
    let m = ask(&z, "web.shop.", RecordType::A);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(m.answers()[0].record_type(), RecordType::CNAME);
    assert_eq!(data(&m), ["web.shop.svc.cluster.local.", "10.96.3.4"]);
    assert_eq!(
        m.answers()[1].name().to_string(),
        "web.shop.svc.cluster.local."
    );
    let m = ask(&z, "web.shop.", RecordType::AAAA);
    assert_eq!(data(&m), ["web.shop.svc.cluster.local."]);
    // Not a service of that namespace: not ours.
    assert_eq!(
        handle(&packet("web.other.", RecordType::A, false), &z, true),
        Handled::Forward
    );
}

#[test]
fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let z = table();
    let Handled::Reply(r) = handle(
        &packet("web.shop.svc.cluster.local.", RecordType::A, true),
        &z,
        true,
    ) else {
        panic!()
    };
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(m.extensions().as_ref().unwrap().max_payload(), 1232);
    let q = crate::wire::testing::query("web.shop.svc.cluster.local.", 1, Some((1232, 1)));
    let Handled::Reply(r) = handle(&q, &z, true) else {
        panic!()
    };
    let m = Message::from_vec(&r).unwrap();
    // 16: BADVERS (which hickory names by its twin, BADSIG).
    assert_eq!(u16::from(m.response_code()), 16);
    assert!(m.answers().is_empty());
}

proptest! {
    #[test]
    fn no_packet_panics_and_every_reply_decodes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let z = table();
        if let Handled::Reply(r) = handle(&bytes, &z, true) {
            prop_assert!(r.len() >= 12);
        }
    }

    #[test]
    fn mutated_queries_get_decodable_answers(at in 0usize..60, byte in any::<u8>(), edns in any::<bool>()) {
        let z = table();
        let mut p = packet("_http._tcp.web.shop.svc.cluster.local.", RecordType::SRV, edns);
        let i = at % p.len();
        p[i] = byte;
        if let Handled::Reply(r) = handle(&p, &z, true) {
            prop_assert!(Message::from_vec(&r).is_ok(), "undecodable answer to {:?}", p);
            prop_assert!(r.len() <= 1232);
        }
    }
}

fn exchange(socket: &UdpSocket, to: SocketAddr, q: &[u8]) -> Message {
    socket.send_to(q, to).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

/// A stub upstream answering every A query with 192.0.2.1 (TTL 60); counts the queries.
fn stub_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut m = Message::new();
            m.set_id(q.id()).set_message_type(MessageType::Response);
            m.add_query(q.queries()[0].clone());
            m.add_answer(hickory_proto::rr::Record::from_rdata(
                q.queries()[0].name().clone(),
                60,
                RData::A("192.0.2.1".parse().unwrap()),
            ));
            socket.send_to(&m.to_vec().unwrap(), from).unwrap();
        }
    });
    (addr, count)
}

async fn server(upstreams: &[SocketAddr]) -> (crate::Serving, tokio_util::sync::CancellationToken) {
    let stop = tokio_util::sync::CancellationToken::new();
    let cell = Arc::new(ZoneCell::new(table()));
    let fwd = crate::forward::start(upstreams, stop.clone())
        .await
        .unwrap();
    let s = crate::server::serve("127.0.0.1:0".parse().unwrap(), 2, cell, fwd, stop.clone())
        .await
        .unwrap();
    (s, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_over_udp_and_tcp_and_relays_other_names_once() {
    let (upstream, count) = stub_upstream();
    let (s, stop) = server(&[upstream]).await;
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let m = tokio::task::block_in_place(|| {
        exchange(
            &client,
            s.udp,
            &packet("web.shop.svc.cluster.local.", RecordType::A, false),
        )
    });
    assert_eq!(data(&m), ["10.96.3.4"]);
    for _ in 0..2 {
        let m = tokio::task::block_in_place(|| {
            exchange(
                &client,
                s.udp,
                &packet("Example.org.", RecordType::A, false),
            )
        });
        assert_eq!((m.id(), data(&m)), (0x1234, vec!["192.0.2.1".to_string()]));
        assert!(!m.authoritative());
    }
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second came from the cache"
    );
    // TCP: two-byte length, then the message.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(s.tcp).await.unwrap();
    let q = packet("db.shop.svc.cluster.local.", RecordType::A, false);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    tcp.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    tcp.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    tcp.read_exact(&mut body).await.unwrap();
    assert_eq!(Message::from_vec(&body).unwrap().answers().len(), 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_upstream_is_skipped_and_none_left_is_servfail() {
    // A port nothing listens on: the kernel answers ICMP port unreachable.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (upstream, count) = stub_upstream();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (s, stop) = server(&[dead, upstream]).await;
    for name in ["a.example.org.", "b.example.org."] {
        let m = tokio::task::block_in_place(|| {
            exchange(&client, s.udp, &packet(name, RecordType::A, false))
        });
        assert_eq!(data(&m), ["192.0.2.1"], "{name}");
    }
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    stop.cancel();
    for upstreams in [vec![dead], vec![]] {
        let (s, stop) = server(&upstreams).await;
        let m = tokio::task::block_in_place(|| {
            exchange(
                &client,
                s.udp,
                &packet("example.org.", RecordType::A, false),
            )
        });
        assert_eq!(m.response_code(), ResponseCode::ServFail, "{upstreams:?}");
        stop.cancel();
    }
}

#[test]
fn upstreams_come_from_resolv_conf_without_our_own_addresses() {
    let text = "search x\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nnameserver fe80::1\n";
    let got = crate::forward::upstreams_from_resolv_conf(text, &[ip("127.0.0.53")]);
    assert_eq!(
        got,
        vec![
            "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
}
