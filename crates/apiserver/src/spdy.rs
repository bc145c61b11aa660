//! The server side of SPDY/3.1 that `kubectl port-forward` needs: kubectl 1.31 and later
//! tunnel it in WebSocket messages (`SPDY/3.1+portforward.k8s.io`), cut at arbitrary places,
//! so frames are parsed from a byte buffer.
//!
//! Frames: a control frame is `1 | version 3 (15 bits) | type (16) | flags (8) | length (24)`,
//! a data frame `0 | stream id (31) | flags (8) | length (24)`. Header blocks are zlib streams
//! (one per direction for the whole session) with SPDY/3's preset dictionary (the 1,423 bytes
//! of the SPDY/3 draft, §2.6.10.1, in `spdy3.dict`), each block sync-flushed. Flow control
//! is not needed: kubectl's SPDY library neither sends nor honours window updates.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// SPDY/3's header compression dictionary.
pub const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
pub const FLAG_FIN: u8 = 0x01;

/// A frame the client sent, as far as port-forward cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Vec<(String, String)>,
    },
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    RstStream {
        id: u32,
    },
    Ping {
        id: u32,
    },
    GoAway,
    /// SETTINGS, WINDOW_UPDATE, HEADERS and the like: nothing to do.
    Other,
}

/// One session's reading and writing state.
pub struct Session {
    buffer: Vec<u8>,
    inflate: Decompress,
    /// This side's header stream (`None` until its dictionary is set, on first use).
    deflate: Option<Compress>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            buffer: Vec::new(),
            inflate: Decompress::new(true),
            deflate: None,
        }
    }
}

fn be(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0, |n, b| (n << 8) | u32::from(*b))
}

impl Session {
    /// Adds bytes received.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete frame received, if any.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buffer.len() < 8 {
            return Ok(None);
        }
        let length = be(&self.buffer[5..8]) as usize;
        if self.buffer.len() < 8 + length {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buffer.drain(..8 + length).collect();
        let flags = frame[4];
        let body = &frame[8..];
        if frame[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                id: be(&frame[0..4]) & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: body.to_vec(),
            }));
        }
        let version = be(&frame[0..2]) & 0x7fff;
        if version != 3 {
            return Err(format!("SPDY version {version}, not 3"));
        }
        let id = |b: &[u8]| -> Result<u32, String> {
            b.get(0..4)
                .map(|s| be(s) & 0x7fff_ffff)
                .ok_or_else(|| "a short control frame".to_string())
        };
        Ok(Some(match be(&frame[2..4]) as u16 {
            SYN_STREAM => {
                let stream = id(body)?;
                let block = body.get(10..).ok_or("a short SYN_STREAM")?;
                Frame::SynStream {
                    id: stream,
                    fin: flags & FLAG_FIN != 0,
                    headers: self.headers(block)?,
                }
            }
            RST_STREAM => Frame::RstStream { id: id(body)? },
            PING => Frame::Ping { id: id(body)? },
            GOAWAY => Frame::GoAway,
            _ => Frame::Other,
        }))
    }

    /// Inflates a header block and reads its name/value pairs.
    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before = self.inflate.total_in();
            let status = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match status {
                Ok(Status::Ok | Status::BufError | Status::StreamEnd) => {
                    if input.is_empty() {
                        break;
                    }
                    out.reserve(out.capacity().max(1024));
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| format!("the SPDY dictionary: {e}"))?;
                }
                Err(e) => return Err(format!("a header block: {e}")),
            }
        }
        let mut pairs = Vec::new();
        let mut at = 4;
        let count = out.get(0..4).map(be).ok_or("an empty header block")?;
        let string = |at: &mut usize| -> Result<String, String> {
            let len = out
                .get(*at..*at + 4)
                .map(be)
                .ok_or("a short header block")? as usize;
            let s = out
                .get(*at + 4..*at + 4 + len)
                .ok_or("a short header block")?;
            *at += 4 + len;
            Ok(String::from_utf8_lossy(s).into_owned())
        };
        for _ in 0..count {
            let name = string(&mut at)?;
            let value = string(&mut at)?;
            pairs.push((name, value));
        }
        Ok(pairs)
    }

    /// A SYN_REPLY for stream `id`, with no headers.
    pub fn syn_reply(&mut self, id: u32, fin: bool) -> Vec<u8> {
        let deflate = self.deflate.get_or_insert_with(|| {
            let mut d = Compress::new(Compression::default(), true);
            d.set_dictionary(DICTIONARY)
                .expect("a zlib with preset dictionaries");
            d
        });
        // The header count, 0, compressed and flushed to a byte boundary.
        let mut block = Vec::with_capacity(64);
        deflate
            .compress_vec(&[0, 0, 0, 0], &mut block, FlushCompress::Sync)
            .expect("room for a few bytes");
        let mut body = id.to_be_bytes().to_vec();
        body.extend(block);
        control(SYN_REPLY, if fin { FLAG_FIN } else { 0 }, &body)
    }
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80, 0x03];
    frame.extend_from_slice(&kind.to_be_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(body);
    frame
}

/// A data frame on stream `id`.
pub fn data(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut frame = (id & 0x7fff_ffff).to_be_bytes().to_vec();
    frame.push(if fin { FLAG_FIN } else { 0 });
    frame.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(data);
    frame
}

/// The answer to a PING.
pub fn ping(id: u32) -> Vec<u8> {
    control(PING, 0, &id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block as a client compresses it: with the dictionary, sync-flushed.
    fn client_block(deflate: &mut Compress, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        deflate
            .compress_vec(&raw, &mut out, FlushCompress::Sync)
            .unwrap();
        out
    }

    fn syn_stream(deflate: &mut Compress, id: u32, fin: bool, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        body.extend(client_block(deflate, pairs));
        control(SYN_STREAM, if fin { FLAG_FIN } else { 0 }, &body)
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let (mut a, mut b) = (1u32, 0u32);
        for byte in DICTIONARY {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((DICTIONARY.len(), (b << 16) | a), (1423, 0xe3c6_a7c2));
    }

    #[test]
    fn frames_cut_anywhere_are_read_with_their_headers() {
        let mut deflate = Compress::new(Compression::best(), true);
        deflate.set_dictionary(DICTIONARY).unwrap();
        let mut wire = syn_stream(
            &mut deflate,
            1,
            true,
            &[
                ("streamtype", "error"),
                ("port", "8080"),
                ("requestid", "0"),
            ],
        );
        wire.extend(syn_stream(
            &mut deflate,
            3,
            false,
            &[("streamtype", "data"), ("port", "8080"), ("requestid", "0")],
        ));
        wire.extend(data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(ping(7));
        let mut session = Session::default();
        let mut frames = Vec::new();
        for piece in wire.chunks(3) {
            session.feed(piece);
            while let Some(f) = session.next_frame().unwrap() {
                frames.push(f);
            }
        }
        let pairs = |t: &str| {
            vec![
                ("streamtype".to_string(), t.to_string()),
                ("port".to_string(), "8080".to_string()),
                ("requestid".to_string(), "0".to_string()),
            ]
        };
        assert_eq!(
            frames,
            vec![
                Frame::SynStream {
                    id: 1,
                    fin: true,
                    headers: pairs("error")
                },
                Frame::SynStream {
                    id: 3,
                    fin: false,
                    headers: pairs("data")
                },
                Frame::Data {
                    id: 3,
                    fin: false,
                    data: b"GET / HTTP/1.0\r\n\r\n".to_vec()
                },
                Frame::Ping { id: 7 },
            ]
        );
    }

    #[test]
    fn replies_carry_a_header_block_compressed_with_the_dictionary() {
        let mut session = Session::default();
        let mut inflate = Decompress::new(true);
        for id in [1u32, 3] {
            let frame = session.syn_reply(id, false);
            assert_eq!(&frame[..4], &[0x80, 0x03, 0x00, 0x02]);
            let mut block = &frame[12..];
            let mut out = Vec::with_capacity(64);
            loop {
                let before = inflate.total_in();
                let result = inflate.decompress_vec(block, &mut out, FlushDecompress::Sync);
                block = &block[(inflate.total_in() - before) as usize..];
                match result {
                    Err(e) if e.needs_dictionary().is_some() => {
                        inflate.set_dictionary(DICTIONARY).unwrap();
                    }
                    other => {
                        other.unwrap();
                        break;
                    }
                }
            }
            assert!(block.is_empty(), "the whole block is read");
            assert_eq!(out, [0, 0, 0, 0], "no headers in the reply to {id}");
        }
    }
}
