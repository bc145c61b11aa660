//! Decoding the protobuf bodies kubectl 1.32 sends for `kubectl create configmap|secret|namespace`
//! into the JSON the rest of the API server works with. The envelope is the magic `k8s\0` and a
//! `runtime.Unknown` (field 1 `TypeMeta` {1 apiVersion, 2 kind}, field 2 the object's bytes);
//! the objects are decoded field by field from the upstream `generated.proto` numbering, for
//! the kinds kubectl sends this way. Empty strings are on the wire: they read as absent.

use serde_json::{json, Map, Value};

const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("the body does not start with the Kubernetes protobuf magic")]
    Magic,
    #[error("malformed protobuf: {0}")]
    Malformed(&'static str),
    #[error("protobuf bodies of kind {0:?} are not supported yet; send JSON")]
    Kind(String),
}

/// One field: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtobufError::Malformed("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = self.varint()? as usize;
                if len > self.buf.len() {
                    return Err(ProtobufError::Malformed("length past the end"));
                }
                let (bytes, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(bytes)
            }
            1 => {
                self.skip(8)?;
                Field::Varint(0)
            }
            5 => {
                self.skip(4)?;
                Field::Varint(0)
            }
            _ => return Err(ProtobufError::Malformed("unsupported wire type")),
        };
        Ok(Some((key >> 3, field)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ProtobufError> {
        if n > self.buf.len() {
            return Err(ProtobufError::Malformed("fixed field past the end"));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtobufError> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::Malformed("a string is not UTF-8"))
}

/// A `map<string, string>` entry (key 1, value 2); `base64` for `map<string, bytes>`.
fn map_entry(bytes: &[u8], base64: bool) -> Result<(String, Value), ProtobufError> {
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => k = text(b)?,
            (2, Field::Bytes(b)) if base64 => v = json!(encode_base64(b)),
            (2, Field::Bytes(b)) => v = json!(text(b)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn encode_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn insert_map(obj: &mut Map<String, Value>, name: &str, entry: (String, Value)) {
    let map = obj.entry(name).or_insert_with(|| json!({}));
    if let Some(m) = map.as_object_mut() {
        m.insert(entry.0, entry.1);
    }
}

/// `ObjectMeta`: the fields a client sets when it creates an object.
fn object_meta(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let mut m = Map::new();
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => {
                m.insert("name".into(), json!(text(b)?));
            }
            (2, Field::Bytes(b)) => {
                m.insert("generateName".into(), json!(text(b)?));
            }
            (3, Field::Bytes(b)) => {
                m.insert("namespace".into(), json!(text(b)?));
            }
            (6, Field::Bytes(b)) => {
                m.insert("resourceVersion".into(), json!(text(b)?));
            }
            (11, Field::Bytes(b)) => insert_map(&mut m, "labels", map_entry(b, false)?),
            (12, Field::Bytes(b)) => insert_map(&mut m, "annotations", map_entry(b, false)?),
            (14, Field::Bytes(b)) => {
                let list = m.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(l) = list.as_array_mut() {
                    l.push(json!(text(b)?));
                }
            }
            _ => {}
        }
    }
    m.retain(|_, v| v != &json!(""));
    Ok(Value::Object(m))
}

/// Decodes a protobuf body into JSON.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let envelope = body.strip_prefix(MAGIC).ok_or(ProtobufError::Magic)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(type_meta)) => {
                for (n, f) in fields(type_meta)? {
                    match (n, f) {
                        (1, Field::Bytes(b)) => api_version = text(b)?,
                        (2, Field::Bytes(b)) => kind = text(b)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    for (n, f) in fields(raw)? {
        let Field::Bytes(b) = f else {
            if let (Field::Varint(v), true) = (
                f,
                matches!((kind.as_str(), n), ("ConfigMap", 4) | ("Secret", 5)),
            ) {
                obj.insert("immutable".into(), json!(v != 0));
            }
            continue;
        };
        match (kind.as_str(), n) {
            (_, 1) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            ("ConfigMap", 2) => insert_map(&mut obj, "data", map_entry(b, false)?),
            ("ConfigMap", 3) => insert_map(&mut obj, "binaryData", map_entry(b, true)?),
            ("Secret", 2) => insert_map(&mut obj, "data", map_entry(b, true)?),
            ("Secret", 3) => {
                obj.insert("type".into(), json!(text(b)?));
            }
            ("Secret", 4) => insert_map(&mut obj, "stringData", map_entry(b, false)?),
            ("Namespace", 2) => {
                let mut finalizers = Vec::new();
                for (n, f) in fields(b)? {
                    if let (1, Field::Bytes(f)) = (n, f) {
                        finalizers.push(json!(text(f)?));
                    }
                }
                obj.insert("spec".into(), json!({"finalizers": finalizers}));
            }
            ("ConfigMap" | "Secret" | "Namespace", _) => {}
            (other, _) => return Err(ProtobufError::Kind(other.to_string())),
        }
    }
    if !matches!(kind.as_str(), "ConfigMap" | "Secret" | "Namespace") {
        return Err(ProtobufError::Kind(kind));
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3 | 2, &mut out);
        varint(b.len() as u64, &mut out);
        out.extend_from_slice(b);
        out
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        [bytes_field(1, k.as_bytes()), bytes_field(2, v)].concat()
    }

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let type_meta = [
            bytes_field(1, api_version.as_bytes()),
            bytes_field(2, kind.as_bytes()),
        ]
        .concat();
        [
            MAGIC.to_vec(),
            bytes_field(1, &type_meta),
            bytes_field(2, &raw),
        ]
        .concat()
    }

    #[test]
    fn decodes_a_configmap_as_kubectl_sends_it() {
        let meta = [
            bytes_field(1, b"demo"),
            bytes_field(3, b""),
            bytes_field(11, &entry("app", b"web")),
        ]
        .concat();
        let raw = [
            bytes_field(1, &meta),
            bytes_field(2, &entry("k", b"v")),
            bytes_field(2, &entry("x", b"y")),
            bytes_field(3, &entry("bin", b"\x00\xff")),
        ]
        .concat();
        let got = decode(&envelope("v1", "ConfigMap", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "demo", "labels": {"app": "web"}},
                "data": {"k": "v", "x": "y"},
                "binaryData": {"bin": "AP8="},
            })
        );
    }

    #[test]
    fn decodes_secrets_and_namespaces_and_refuses_the_rest() {
        let raw = [
            bytes_field(1, &bytes_field(1, b"s")),
            bytes_field(2, &entry("password", b"hunter2")),
            bytes_field(3, b"Opaque"),
        ]
        .concat();
        let got = decode(&envelope("v1", "Secret", raw)).unwrap();
        assert_eq!(got["data"]["password"], "aHVudGVyMg==");
        assert_eq!(got["type"], "Opaque");

        let raw = bytes_field(1, &bytes_field(1, b"team-a"));
        let got = decode(&envelope("v1", "Namespace", raw)).unwrap();
        assert_eq!(got["metadata"]["name"], "team-a");

        let raw = bytes_field(1, &bytes_field(1, b"d"));
        assert_eq!(
            decode(&envelope("apps/v1", "Deployment", raw)).unwrap_err(),
            ProtobufError::Kind("Deployment".into())
        );
        assert_eq!(decode(b"{}").unwrap_err(), ProtobufError::Magic);
        assert!(decode(&[MAGIC, &[0x0a, 0x7f]].concat()).is_err());
        assert_eq!(encode_base64(b"hunter2"), "aHVudGVyMg==");
        assert_eq!(encode_base64(b""), "");
    }
}
