//! The DNS wire format, as far as an authoritative answer needs it: one bounds-checked pass
//! over a query (header, one question, an optional EDNS OPT record), and a response made of the
//! query's own header and question followed by sections encoded in advance. Nothing here
//! allocates for a query but the response itself, and nothing can panic on any input: every
//! read goes through `get`.

pub const TYPE_A: u16 = 1;
pub const TYPE_NS: u16 = 2;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_ANY: u16 = 255;
pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;

pub const NOERROR: u16 = 0;
pub const FORMERR: u16 = 1;
pub const SERVFAIL: u16 = 2;
pub const NXDOMAIN: u16 = 3;
pub const NOTIMP: u16 = 4;
pub const REFUSED: u16 = 5;
/// An EDNS version we do not speak (extended rcode 16).
pub const BADVERS: u16 = 16;

/// Without EDNS a UDP answer has 512 bytes; with it, what the client offers, capped at the
/// 1232 bytes the DNS flag day settled on (no fragmentation on ordinary paths).
pub const UDP_PLAIN: usize = 512;
pub const UDP_EDNS_MAX: usize = 1232;
/// The longest name on the wire, RFC 1035.
pub const MAX_NAME: usize = 255;

const QR: u16 = 0x8000;
const AA: u16 = 0x0400;
const TC: u16 = 0x0200;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

/// A client's EDNS OPT record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// One parsed query.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    pub id: u16,
    pub flags: u16,
    /// The question name on the wire, lowercased (labels, then a zero byte).
    pub name: [u8; MAX_NAME],
    pub name_len: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section as sent (its case kept, as 0x20 clients want).
    pub question: &'a [u8],
    pub edns: Option<Edns>,
}

impl Query<'_> {
    pub fn name(&self) -> &[u8] {
        &self.name[..self.name_len]
    }

    /// The largest UDP answer this client takes.
    pub fn udp_limit(&self) -> usize {
        match self.edns {
            None => UDP_PLAIN,
            Some(e) => (e.payload as usize).clamp(UDP_PLAIN, UDP_EDNS_MAX),
        }
    }
}

/// What a packet is.
#[derive(Debug)]
pub enum Parsed<'a> {
    Query(Box<Query<'a>>),
    /// Not answerable as asked: an answer with only a header (and the question when it
    /// could be read) and this rcode.
    Error {
        id: u16,
        flags: u16,
        rcode: u16,
    },
    /// Not a query at all (too short, or a response): no answer.
    Drop,
}

fn u16_at(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]))
}

/// Reads the name at `at` into `out` lowercased; returns the offset after it. Compression
/// pointers are refused (no client compresses its only question).
fn read_name(p: &[u8], mut at: usize, out: &mut [u8; MAX_NAME]) -> Option<(usize, usize)> {
    let mut len = 0;
    loop {
        let label = *p.get(at)? as usize;
        if label & 0xC0 != 0 {
            return None;
        }
        if len + 1 + label > MAX_NAME {
            return None;
        }
        out[len] = label as u8;
        len += 1;
        if label == 0 {
            return Some((at + 1, len));
        }
        let bytes = p.get(at + 1..at + 1 + label)?;
        for (o, b) in out[len..len + label].iter_mut().zip(bytes) {
            *o = b.to_ascii_lowercase();
        }
        len += label;
        at += 1 + label;
    }
}

/// Skips a (possibly compressed) name; returns the offset after it.
fn skip_name(p: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let label = *p.get(at)? as usize;
        match label & 0xC0 {
            0 if label == 0 => return Some(at + 1),
            0 => at += 1 + label,
            0xC0 => return Some(at + 2),
            _ => return None,
        }
    }
    None
}

/// Parses a query packet.
pub fn parse(p: &[u8]) -> Parsed<'_> {
    let (Some(id), Some(flags)) = (u16_at(p, 0), u16_at(p, 2)) else {
        return Parsed::Drop;
    };
    if p.len() < 12 || flags & QR != 0 {
        return Parsed::Drop;
    }
    let error = |rcode| Parsed::Error { id, flags, rcode };
    let count = |i: usize| u16_at(p, 4 + 2 * i).unwrap_or(0);
    let (qd, an, ns, ar) = (count(0), count(1), count(2), count(3));
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return error(NOTIMP);
    }
    if qd != 1 || an != 0 || ns != 0 {
        return error(FORMERR);
    }
    let mut name = [0u8; MAX_NAME];
    let Some((after, name_len)) = read_name(p, 12, &mut name) else {
        return error(FORMERR);
    };
    let (Some(qtype), Some(qclass)) = (u16_at(p, after), u16_at(p, after + 2)) else {
        return error(FORMERR);
    };
    let question = &p[12..after + 4];
    let mut edns = None;
    let mut at = after + 4;
    for _ in 0..ar {
        let Some(end) = skip_name(p, at) else {
            return error(FORMERR);
        };
        let (Some(rtype), Some(class), Some(ttl_hi), Some(rdlen)) = (
            u16_at(p, end),
            u16_at(p, end + 2),
            u16_at(p, end + 4),
            u16_at(p, end + 8),
        ) else {
            return error(FORMERR);
        };
        if rtype == TYPE_OPT {
            if edns.is_some() || end != at + 1 {
                // Two OPT records, or one not owned by the root.
                return error(FORMERR);
            }
            let do_bit = u16_at(p, end + 6).unwrap_or(0) & 0x8000 != 0;
            edns = Some(Edns {
                payload: class,
                version: (ttl_hi & 0xFF) as u8,
                dnssec_ok: do_bit,
            });
        }
        at = end + 10 + rdlen as usize;
        if at > p.len() {
            return error(FORMERR);
        }
    }
    Parsed::Query(Box::new(Query {
        id,
        flags,
        name,
        name_len,
        qtype,
        qclass,
        question,
        edns,
    }))
}

/// Records encoded in advance for one section, and how many there are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub count: u16,
    pub bytes: Vec<u8>,
}

impl Section {
    pub fn push(&mut self, record: &[u8]) {
        self.count += 1;
        self.bytes.extend_from_slice(record);
    }

    pub fn append(&mut self, other: &Section) {
        self.count += other.count;
        self.bytes.extend_from_slice(&other.bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One record: owner (wire bytes, or a pointer), type, class IN, TTL, data.
pub fn record(owner: &[u8], rtype: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(owner.len() + 10 + data.len());
    r.extend_from_slice(owner);
    r.extend_from_slice(&rtype.to_be_bytes());
    r.extend_from_slice(&CLASS_IN.to_be_bytes());
    r.extend_from_slice(&ttl.to_be_bytes());
    r.extend_from_slice(&(data.len() as u16).to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// The owner of an answer to the question: a pointer to the question's name at offset 12.
pub const QUESTION_NAME: [u8; 2] = [0xC0, 0x0C];

/// A name in text (`web.ns.svc.cluster.local`, a trailing dot optional) on the wire,
/// lowercased; `None` if a label is empty or too long, or the name too long.
pub fn name_to_wire(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut out = Vec::with_capacity(text.len() + 2);
    if !text.is_empty() {
        for label in text.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// The sections of an answer.
#[derive(Debug, Default)]
pub struct Answer<'a> {
    pub rcode: u16,
    pub authoritative: bool,
    pub answers: Option<&'a Section>,
    pub authority: Option<&'a Section>,
    pub additional: Option<&'a Section>,
}

fn header(out: &mut Vec<u8>, id: u16, query_flags: u16, rcode: u16, aa: bool, counts: [u16; 4]) {
    let mut flags = QR | (query_flags & (0xF << 11)) | (query_flags & RD) | RA | (rcode & 0xF);
    if aa {
        flags |= AA;
    }
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for c in counts {
        out.extend_from_slice(&c.to_be_bytes());
    }
}

/// The OPT record of an answer to an EDNS query: our payload size, the extended rcode, DO.
fn opt(out: &mut Vec<u8>, rcode: u16, edns: Edns) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&(UDP_EDNS_MAX as u16).to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.push(0);
    out.extend_from_slice(&(if edns.dnssec_ok { 0x8000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
}

/// The answer to `q` with `a`'s sections, cut to the question with TC set when longer than
/// `limit` (UDP).
pub fn respond(q: &Query<'_>, a: &Answer<'_>, limit: usize) -> Vec<u8> {
    let rcode = match q.edns {
        Some(e) if e.version > 0 => BADVERS,
        _ => a.rcode,
    };
    let sections = [a.answers, a.authority, a.additional];
    let body: usize = sections.iter().flatten().map(|s| s.bytes.len()).sum();
    let opt_len = if q.edns.is_some() { 11 } else { 0 };
    let mut out = Vec::with_capacity(12 + q.question.len() + body + opt_len);
    let fits = rcode == BADVERS || 12 + q.question.len() + body + opt_len <= limit;
    let include = fits && rcode != BADVERS;
    let count = |s: Option<&Section>| if include { s.map_or(0, |s| s.count) } else { 0 };
    header(
        &mut out,
        q.id,
        q.flags,
        rcode,
        a.authoritative,
        [
            1,
            count(a.answers),
            count(a.authority),
            count(a.additional) + u16::from(q.edns.is_some()),
        ],
    );
    if !fits {
        out[2] |= (TC >> 8) as u8;
    }
    out.extend_from_slice(q.question);
    if include {
        for s in sections.into_iter().flatten() {
            out.extend_from_slice(&s.bytes);
        }
    }
    if let Some(e) = q.edns {
        opt(&mut out, rcode, e);
    }
    out
}

/// An answer with only a header (and the question when there is a query): for packets that
/// cannot be answered as asked.
pub fn error(id: u16, flags: u16, rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    header(&mut out, id, flags, rcode, false, [0, 0, 0, 0]);
    out
}

/// The rcode of a response packet, and its id.
pub fn response_code(p: &[u8]) -> Option<(u16, u16)> {
    Some((u16_at(p, 0)?, u16_at(p, 2)? & 0xF))
}

/// Sets the id of a packet (a relayed answer gets the client's).
pub fn set_id(p: &mut [u8], id: u16) {
    if p.len() >= 2 {
        p[..2].copy_from_slice(&id.to_be_bytes());
    }
}

/// Cuts a relayed answer too long for a UDP client to its header and question, with TC set.
pub fn truncate(p: &[u8], q: &Query<'_>, limit: usize) -> Vec<u8> {
    if p.len() <= limit {
        return p.to_vec();
    }
    let mut out = Vec::with_capacity(12 + q.question.len());
    out.extend_from_slice(&p[..4]);
    out[2] |= (TC >> 8) as u8;
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(q.question);
    out
}

/// Raw queries for tests, the name's case kept.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A query (id 0x1234, RD) for `name` of `qtype`, with EDNS (payload, version) if set.
    pub(crate) fn query(name: &str, qtype: u16, edns: Option<(u16, u8)>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        for label in name.trim_end_matches('.').split('.') {
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some((size, version)) = edns {
            p.push(0);
            p.extend_from_slice(&TYPE_OPT.to_be_bytes());
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, version, 0x80, 0, 0, 0]);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, payload: Option<u16>) -> Vec<u8> {
        super::testing::query(name, qtype, payload.map(|p| (p, 0)))
    }

    #[test]
    fn queries_parse_lowercased_with_their_edns() {
        let p = query("Web.NS.svc.cluster.local", TYPE_A, Some(4096));
        let Parsed::Query(q) = parse(&p) else {
            panic!("not a query")
        };
        assert_eq!(q.name(), name_to_wire("web.ns.svc.cluster.local").unwrap());
        assert_eq!((q.id, q.qtype, q.qclass), (0x1234, TYPE_A, CLASS_IN));
        assert_eq!(&q.question[1..4], b"Web");
        assert_eq!(
            q.edns,
            Some(Edns {
                payload: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), UDP_EDNS_MAX);
    }

    #[test]
    fn bad_packets_are_dropped_or_refused_with_formerr() {
        assert!(matches!(parse(&[1, 2, 3]), Parsed::Drop));
        let mut response = query("a.b", TYPE_A, None);
        response[2] |= 0x80;
        assert!(matches!(parse(&response), Parsed::Drop));
        let mut two = query("a.b", TYPE_A, None);
        two[5] = 2;
        assert!(matches!(parse(&two), Parsed::Error { rcode: FORMERR, .. }));
        let mut cut = query("a.b", TYPE_A, None);
        cut.truncate(cut.len() - 3);
        assert!(matches!(parse(&cut), Parsed::Error { rcode: FORMERR, .. }));
        let mut notify = query("a.b", TYPE_A, None);
        notify[2] |= 4 << 3;
        assert!(matches!(
            parse(&notify),
            Parsed::Error { rcode: NOTIMP, .. }
        ));
        assert_eq!(name_to_wire(&"a".repeat(64)), None);
        assert_eq!(name_to_wire(&["abc"; 70].join(".")), None);
    }

    #[test]
    fn answers_too_long_for_udp_are_cut_with_tc() {
        let p = query("x.cluster.local", TYPE_A, None);
        let Parsed::Query(q) = parse(&p) else {
            panic!()
        };
        let mut big = Section::default();
        for i in 0..40u8 {
            big.push(&record(&QUESTION_NAME, TYPE_A, 5, &[10, 0, 0, i]));
        }
        let a = Answer {
            answers: Some(&big),
            authoritative: true,
            ..Default::default()
        };
        let cut = respond(&q, &a, q.udp_limit());
        assert_eq!(cut.len(), 12 + q.question.len());
        assert_ne!(cut[2] & 0x02, 0, "TC");
        let whole = respond(&q, &a, usize::MAX);
        assert_eq!(u16_at(&whole, 6), Some(40));
        assert_eq!(whole[2] & 0x02, 0);
        assert_ne!(whole[2] & 0x04, 0, "AA");
    }
}
