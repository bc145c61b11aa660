//! [`Change`]s sent to the kernel as one nfnetlink batch (one transaction), with no `nft`
//! process in between. `nft -f` first reads every chain of the table back from the kernel to
//! resolve names: with 10,000 services (60,000 chains) that costs several hundred ms for any
//! change, however small. Here the proxy already knows every name, so a change costs what
//! the kernel takes to apply it.
//!
//! The messages are those `nft` itself sends for the same rules (`nft --debug=netlink`
//! shows them); the test in `tests/nft.rs` applies changes both ways and compares the tables.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::model::{shard_table, Change, Key, Rule};

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_IPV4: u8 = 2;

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NFTA_LIST_ELEM: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
/// nft's `ipv4_addr` data type, for `nft list` to print the set's keys as addresses.
const NFT_TYPE_IPADDR: u32 = 7;

/// A netlink message under construction: attributes appended, nests closed by length.
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Message {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Message {
            buf,
            nests: Vec::new(),
        }
    }

    fn nft(kind: u16, flags: u16, seq: u32) -> Message {
        Message::new(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_ACK | flags,
            seq,
            NFPROTO_IPV4,
            0,
        )
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.buf
            .extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    fn open(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn close(&mut self) -> &mut Self {
        let at = self.nests.pop().expect("an open nest");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// `NFTA_DATA_VALUE` nested in `kind`.
    fn value(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        self.open(kind).attr(NFTA_DATA_VALUE, value).close()
    }

    /// A verdict nested in `kind`.
    fn verdict(&mut self, kind: u16, code: i32, chain: Option<&str>) -> &mut Self {
        self.open(kind).open(NFTA_DATA_VERDICT);
        self.u32(NFTA_VERDICT_CODE, code as u32);
        if let Some(chain) = chain {
            self.str(NFTA_VERDICT_CHAIN, chain);
        }
        self.close().close()
    }

    /// One expression: `name` and its attributes, written by `data`.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Message)) -> &mut Self {
        self.open(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name);
        self.open(NFTA_EXPR_DATA);
        data(self);
        self.close().close()
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

// The expressions rules are made of (attribute numbers from nf_tables.h).
fn saddr(m: &mut Message) {
    m.expr("payload", |m| {
        m.u32(1, NFT_REG_1) // DREG
            .u32(2, 1) // BASE: network header
            .u32(3, 12) // OFFSET: the source address
            .u32(4, 4); // LEN
    });
}

fn cmp_eq(m: &mut Message, data: &[u8]) {
    m.expr("cmp", |m| {
        m.u32(1, NFT_REG_1).u32(2, 0).value(3, data); // SREG, OP eq, DATA
    });
}

fn verdict(m: &mut Message, code: i32, chain: Option<&str>) {
    m.expr("immediate", |m| {
        m.u32(1, NFT_REG_VERDICT).verdict(2, code, chain);
    });
}

fn immediate(m: &mut Message, reg: u32, data: &[u8]) {
    m.expr("immediate", |m| {
        m.u32(1, reg).value(2, data);
    });
}

/// `fib saddr type local` into register 1, compared with RTN_LOCAL.
fn source_is_local(m: &mut Message) {
    m.expr("fib", |m| {
        m.u32(1, NFT_REG_1).u32(2, 3).u32(3, 1); // DREG, RESULT addrtype, FLAGS saddr
    });
    cmp_eq(m, &2u32.to_ne_bytes());
}

fn protocol_number(name: &str) -> io::Result<u8> {
    match name {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "sctp" => Ok(132),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no protocol {other}"),
        )),
    }
}

fn rule_expressions(m: &mut Message, rule: &Rule) -> io::Result<()> {
    let masquerade = Some("mark-for-masquerade");
    match rule {
        Rule::MarkIfFrom(ip) => {
            saddr(m);
            cmp_eq(m, &ip.octets());
            verdict(m, NFT_JUMP, masquerade);
        }
        Rule::Remember(set) => {
            saddr(m);
            m.expr("dynset", |m| {
                m.str(1, set).u32(3, 1).u32(4, NFT_REG_1); // SET_NAME, OP update, SREG_KEY
            });
        }
        Rule::Dnat { protocol, ip, port } => {
            m.expr("meta", |m| {
                m.u32(1, NFT_REG_1).u32(2, 16); // DREG, KEY l4proto
            });
            cmp_eq(m, &[protocol_number(protocol)?]);
            immediate(m, NFT_REG_1, &ip.octets());
            immediate(m, NFT_REG_2, &port.to_be_bytes());
            m.expr("nat", |m| {
                m.u32(1, 1) // TYPE dnat
                    .u32(2, NFPROTO_IPV4 as u32) // FAMILY
                    .u32(3, NFT_REG_1) // REG_ADDR_MIN
                    .u32(5, NFT_REG_2); // REG_PROTO_MIN
            });
        }
        Rule::Sticky { set, chain } => {
            saddr(m);
            m.expr("lookup", |m| {
                m.str(1, set).u32(2, NFT_REG_1); // SET, SREG
            });
            verdict(m, NFT_GOTO, Some(chain));
        }
        Rule::OneIn { n, chain } => {
            m.expr("numgen", |m| {
                m.u32(1, NFT_REG_1).u32(2, *n).u32(3, 1); // DREG, MODULUS, TYPE random
            });
            cmp_eq(m, &0u32.to_ne_bytes());
            verdict(m, NFT_GOTO, Some(chain));
        }
        Rule::Goto(chain) => verdict(m, NFT_GOTO, Some(chain)),
        Rule::Mark => verdict(m, NFT_JUMP, masquerade),
        Rule::MarkIfLocal => {
            source_is_local(m);
            verdict(m, NFT_JUMP, masquerade);
        }
        Rule::GotoIfLocal(chain) => {
            source_is_local(m);
            verdict(m, NFT_GOTO, Some(chain));
        }
        Rule::GotoIfFrom { net, prefix, chain } => {
            saddr(m);
            let mask = u32::MAX.checked_shl(32 - *prefix as u32).unwrap_or(0);
            m.expr("bitwise", |m| {
                m.u32(1, NFT_REG_1) // SREG
                    .u32(2, NFT_REG_1) // DREG
                    .u32(3, 4) // LEN
                    .value(4, &Ipv4Addr::from(mask).octets()) // MASK
                    .value(5, &[0; 4]); // XOR
            });
            cmp_eq(m, &net.octets());
            verdict(m, NFT_GOTO, Some(chain));
        }
        Rule::Drop => verdict(m, NF_DROP, None),
    }
    Ok(())
}

/// A map element's key as the kernel keeps a concatenation: each part in a 32-bit word.
fn key_bytes(key: &Key) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(12);
    if let Some(ip) = key.ip {
        out.extend_from_slice(&ip.octets());
    }
    out.extend_from_slice(&[protocol_number(&key.protocol)?, 0, 0, 0]);
    out.extend_from_slice(&key.port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    Ok(out)
}

/// The batch for `changes`, sequence numbers from `seq`: (bytes, messages that are acked).
fn batch(changes: &[Change], seq: &mut u32) -> io::Result<(Vec<u8>, usize)> {
    let mut next = || {
        *seq = seq.wrapping_add(1);
        *seq
    };
    let mut out = Message::new(NFNL_MSG_BATCH_BEGIN, 0, next(), 0, NFNL_SUBSYS_NFTABLES).finish();
    let mut table = shard_table(0);
    let mut acks = 0;
    for change in changes {
        let m = match change {
            Change::Table(shard) => {
                table = shard_table(*shard);
                continue;
            }
            Change::AddSet { name, timeout } => {
                let id = next();
                let mut m = Message::nft(NFT_MSG_NEWSET, NLM_F_CREATE, id);
                m.str(NFTA_SET_TABLE, &table)
                    .str(NFTA_SET_NAME, name)
                    .u32(NFTA_SET_FLAGS, NFT_SET_TIMEOUT | NFT_SET_EVAL)
                    .u32(NFTA_SET_KEY_TYPE, NFT_TYPE_IPADDR)
                    .u32(NFTA_SET_KEY_LEN, 4)
                    .u32(NFTA_SET_ID, id)
                    .attr(
                        NFTA_SET_TIMEOUT,
                        &(u64::from(*timeout) * 1000).to_be_bytes(),
                    );
                m
            }
            Change::AddChain(name) => {
                let mut m = Message::nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, next());
                m.str(NFTA_CHAIN_TABLE, &table).str(NFTA_CHAIN_NAME, name);
                m
            }
            Change::FlushChain(name) => {
                let mut m = Message::nft(NFT_MSG_DELRULE, 0, next());
                m.str(NFTA_RULE_TABLE, &table).str(NFTA_RULE_CHAIN, name);
                m
            }
            Change::AddRule { chain, rule } => {
                let mut m = Message::nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, next());
                m.str(NFTA_RULE_TABLE, &table).str(NFTA_RULE_CHAIN, chain);
                m.open(NFTA_RULE_EXPRESSIONS);
                rule_expressions(&mut m, rule)?;
                m.close();
                m
            }
            Change::AddElement { key, chain } => {
                let mut m = Message::nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE, next());
                m.str(NFTA_SET_ELEM_LIST_TABLE, &table)
                    .str(NFTA_SET_ELEM_LIST_SET, crate::model::map_of(key))
                    .open(NFTA_SET_ELEM_LIST_ELEMENTS)
                    .open(NFTA_LIST_ELEM)
                    .value(NFTA_SET_ELEM_KEY, &key_bytes(key)?)
                    .verdict(NFTA_SET_ELEM_DATA, NFT_GOTO, Some(chain))
                    .close()
                    .close();
                m
            }
            Change::DeleteElement(key) => {
                let mut m = Message::nft(NFT_MSG_DELSETELEM, 0, next());
                m.str(NFTA_SET_ELEM_LIST_TABLE, &table)
                    .str(NFTA_SET_ELEM_LIST_SET, crate::model::map_of(key))
                    .open(NFTA_SET_ELEM_LIST_ELEMENTS)
                    .open(NFTA_LIST_ELEM)
                    .value(NFTA_SET_ELEM_KEY, &key_bytes(key)?)
                    .close()
                    .close();
                m
            }
            Change::DeleteChain(name) => {
                let mut m = Message::nft(NFT_MSG_DELCHAIN, 0, next());
                m.str(NFTA_CHAIN_TABLE, &table).str(NFTA_CHAIN_NAME, name);
                m
            }
            Change::DeleteSet(name) => {
                let mut m = Message::nft(NFT_MSG_DELSET, 0, next());
                m.str(NFTA_SET_TABLE, &table).str(NFTA_SET_NAME, name);
                m
            }
        };
        out.extend_from_slice(&m.finish());
        acks += 1;
    }
    out.extend_from_slice(
        &Message::new(NFNL_MSG_BATCH_END, 0, next(), 0, NFNL_SUBSYS_NFTABLES).finish(),
    );
    Ok((out, acks))
}

/// A netfilter netlink socket, in the network namespace of the thread that opened it.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        socket::bind(fd.as_raw_fd(), &socket::NetlinkAddr::new(0, 0))?;
        // Room for a large change and its acks (each ack repeats its message).
        let size = 16 << 20;
        socket::setsockopt(&fd, sockopt::SndBufForce, &size)
            .or_else(|_| socket::setsockopt(&fd, sockopt::SndBuf, &size))?;
        socket::setsockopt(&fd, sockopt::RcvBufForce, &size)
            .or_else(|_| socket::setsockopt(&fd, sockopt::RcvBuf, &size))?;
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(10, 0),
        )?;
        Ok(Netlink {
            fd,
            seq: std::process::id().wrapping_mul(1 << 16),
        })
    }

    /// Applies `changes` as one transaction: all of them, or none and the kernel's error.
    pub fn apply(&mut self, changes: &[Change]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let first = self.seq.wrapping_add(1);
        let (bytes, acks) = batch(changes, &mut self.seq)?;
        let span = self.seq.wrapping_sub(first);
        use nix::sys::socket::{recv, send, MsgFlags};
        let sent = send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty())?;
        if sent != bytes.len() {
            return Err(io::Error::other("netlink: a short send"));
        }
        let mut seen = 0;
        let mut buf = vec![0u8; 1 << 16];
        while seen < acks {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut at = 0;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                if len < 16 || at + len > n {
                    break;
                }
                // Only this batch's answers count (an earlier refused batch may have left some).
                if kind == NLMSG_ERROR && len >= 20 && seq.wrapping_sub(first) <= span {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4"));
                    if code != 0 {
                        // The batch was refused whole: its other answers are left unread.
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    seen += 1;
                }
                at += (len + 3) & !3;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_nests_hold_their_length() {
        let mut seq = 0;
        let changes = vec![
            Change::AddChain("ep-1".into()),
            Change::AddRule {
                chain: "ep-1".into(),
                rule: Rule::Dnat {
                    protocol: "tcp".into(),
                    ip: "10.244.1.5".parse().unwrap(),
                    port: 8080,
                },
            },
        ];
        let (bytes, acks) = batch(&changes, &mut seq).unwrap();
        assert_eq!(acks, 2);
        // Walk the messages: begin, two, end; each length a multiple of 4 inside the batch.
        let mut at = 0;
        let mut kinds = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            assert!(len >= 20 && len % 4 == 0 && at + len <= bytes.len());
            kinds.push(u16::from_ne_bytes(
                bytes[at + 4..at + 6].try_into().unwrap(),
            ));
            at += len;
        }
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN,
                (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE,
                NFNL_MSG_BATCH_END
            ]
        );
        assert_eq!(seq, 4);
        assert_eq!(
            key_bytes(&Key {
                ip: Some("10.96.3.4".parse().unwrap()),
                protocol: "tcp".into(),
                port: 80
            })
            .unwrap(),
            [10, 96, 3, 4, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        assert!(batch(
            &[Change::AddRule {
                chain: "x".into(),
                rule: Rule::Dnat {
                    protocol: "icmp".into(),
                    ip: "10.0.0.1".parse().unwrap(),
                    port: 1
                }
            }],
            &mut seq
        )
        .is_err());
    }
}
