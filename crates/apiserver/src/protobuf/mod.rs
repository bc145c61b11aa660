//! Decoding the protobuf bodies kubectl 1.32 sends (`kubectl create configmap|secret|namespace|
//! deployment|job|cronjob|service`, `kubectl run`, `kubectl expose`) into the JSON the rest of
//! the API server works with. The envelope is the magic `k8s\0` and a `runtime.Unknown`
//! (field 1 `TypeMeta` {1 apiVersion, 2 kind}, field 2 the object's bytes); the object is then
//! decoded by its [`schema`]: one table of field numbers, names and types per message, read by
//! one generic walker. A field the schema does not know is refused with its message and
//! number, never dropped.

mod schema;

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
    #[error("field {number} of the protobuf message {message} is not supported yet; send JSON")]
    Field { message: &'static str, number: u64 },
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

/// A map entry (key 1, value 2), the value decoded by `value`.
fn map_entry(
    bytes: &[u8],
    value: impl Fn(&[u8]) -> Result<Value, ProtobufError>,
) -> Result<(String, Value), ProtobufError> {
    let (mut k, mut v) = (String::new(), value(&[])?);
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Bytes(b)) => k = text(b)?,
            (2, Field::Bytes(b)) => v = value(b)?,
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

/// A `Quantity` message: its string (field 1).
fn quantity(bytes: &[u8]) -> Result<Value, ProtobufError> {
    for (n, f) in fields(bytes)? {
        if let (1, Field::Bytes(b)) = (n, f) {
            return Ok(json!(text(b)?));
        }
    }
    Ok(json!(""))
}

/// An `IntOrString` message: type 0 takes the integer (field 2), type 1 the string (field 3).
fn int_or_string(bytes: &[u8]) -> Result<Value, ProtobufError> {
    let (mut kind, mut int, mut string) = (0, 0i64, String::new());
    for (n, f) in fields(bytes)? {
        match (n, f) {
            (1, Field::Varint(v)) => kind = v,
            (2, Field::Varint(v)) => int = i64::from(v as u32 as i32),
            (3, Field::Bytes(b)) => string = text(b)?,
            _ => {}
        }
    }
    Ok(if kind == 1 { json!(string) } else { json!(int) })
}

/// A `Time` message (seconds since the epoch, field 1) as RFC 3339; zero is absent.
fn time(bytes: &[u8]) -> Result<Option<Value>, ProtobufError> {
    let mut seconds = 0i64;
    for (n, f) in fields(bytes)? {
        if let (1, Field::Varint(v)) = (n, f) {
            seconds = v as i64;
        }
    }
    if seconds <= 0 {
        return Ok(None);
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64);
    Ok(Some(json!(flotilla_api::meta::rfc3339(at))))
}

fn push(obj: &mut Map<String, Value>, name: &str, value: Value) {
    let list = obj.entry(name).or_insert_with(|| json!([]));
    if let Some(l) = list.as_array_mut() {
        l.push(value);
    }
}

fn insert_entry(obj: &mut Map<String, Value>, name: &str, (k, v): (String, Value)) {
    let map = obj.entry(name).or_insert_with(|| json!({}));
    if let Some(m) = map.as_object_mut() {
        m.insert(k, v);
    }
}

/// Decodes one message by its schema into `obj`.
fn message_into(
    bytes: &[u8],
    msg: &'static schema::Msg,
    obj: &mut Map<String, Value>,
) -> Result<(), ProtobufError> {
    use schema::T;
    for (n, f) in fields(bytes)? {
        let Some(field) = msg.fields.iter().find(|x| x.n == n) else {
            return Err(ProtobufError::Field {
                message: msg.name,
                number: n,
            });
        };
        let name = field.name;
        match (field.t, f) {
            (T::Skip, _) => {}
            (T::Str, Field::Bytes(b)) => {
                let s = text(b)?;
                if !s.is_empty() {
                    obj.insert(name.into(), json!(s));
                }
            }
            (T::Int, Field::Varint(v)) if v != 0 => {
                obj.insert(name.into(), json!(v as i64));
            }
            (T::Int, Field::Varint(_)) => {}
            (T::IntSet, Field::Varint(v)) => {
                obj.insert(name.into(), json!(v as i64));
            }
            (T::Bool, Field::Varint(v)) if v != 0 => {
                obj.insert(name.into(), json!(true));
            }
            (T::Bool, Field::Varint(_)) => {}
            (T::BoolSet, Field::Varint(v)) => {
                obj.insert(name.into(), json!(v != 0));
            }
            (T::Strings, Field::Bytes(b)) => push(obj, name, json!(text(b)?)),
            (T::Ints, Field::Varint(v)) => push(obj, name, json!(v as i64)),
            (T::Ints, Field::Bytes(b)) => {
                let mut r = Reader { buf: b };
                while !r.buf.is_empty() {
                    push(obj, name, json!(r.varint()? as i64));
                }
            }
            (T::Msg(m), Field::Bytes(b)) => {
                obj.insert(name.into(), message(b, m)?);
            }
            (T::Msgs(m), Field::Bytes(b)) => push(obj, name, message(b, m)?),
            (T::Inline(m), Field::Bytes(b)) => message_into(b, m, obj)?,
            (T::StrMap, Field::Bytes(b)) => {
                insert_entry(obj, name, map_entry(b, |v| Ok(json!(text(v)?)))?)
            }
            (T::BytesMap, Field::Bytes(b)) => {
                insert_entry(obj, name, map_entry(b, |v| Ok(json!(encode_base64(v))))?)
            }
            (T::QuantityMap, Field::Bytes(b)) => insert_entry(obj, name, map_entry(b, quantity)?),
            (T::Quantity, Field::Bytes(b)) => {
                obj.insert(name.into(), quantity(b)?);
            }
            (T::IntOrString, Field::Bytes(b)) => {
                obj.insert(name.into(), int_or_string(b)?);
            }
            (T::Time, Field::Bytes(b)) => {
                if let Some(t) = time(b)? {
                    obj.insert(name.into(), t);
                }
            }
            _ => return Err(ProtobufError::Malformed("a field has the wrong wire type")),
        }
    }
    Ok(())
}

fn message(bytes: &[u8], msg: &'static schema::Msg) -> Result<Value, ProtobufError> {
    let mut obj = Map::new();
    message_into(bytes, msg, &mut obj)?;
    Ok(Value::Object(obj))
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
    let msg = schema::of_kind(&kind).ok_or_else(|| ProtobufError::Kind(kind.clone()))?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    message_into(raw, msg, &mut obj)?;
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

    fn varint_field(n: u64, v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        varint(n << 3, &mut out);
        varint(v, &mut out);
        out
    }

    #[test]
    fn decodes_a_deployment_as_kubectl_create_sends_it() {
        let labels = bytes_field(11, &entry("app", b"web"));
        let container = [
            bytes_field(1, b"busybox"),
            bytes_field(2, b"busybox"),
            bytes_field(3, b"httpd"),
            bytes_field(3, b"-f"),
            bytes_field(5, b""),
            bytes_field(
                6,
                &[
                    varint_field(2, 0),
                    varint_field(3, 8080),
                    bytes_field(4, b"TCP"),
                ]
                .concat(),
            ),
            bytes_field(8, b""),
            varint_field(16, 0),
        ]
        .concat();
        let template = [
            bytes_field(1, &[labels.clone(), bytes_field(8, b"")].concat()),
            bytes_field(
                2,
                &[bytes_field(2, &container), varint_field(11, 0)].concat(),
            ),
        ]
        .concat();
        let surge = [
            varint_field(1, 1),
            varint_field(2, 0),
            bytes_field(3, b"50%"),
        ]
        .concat();
        let unavailable = [varint_field(1, 0), varint_field(2, 0), bytes_field(3, b"")].concat();
        let spec = [
            varint_field(1, 0),
            bytes_field(2, &bytes_field(1, &entry("app", b"web"))),
            bytes_field(3, &template),
            bytes_field(
                4,
                &bytes_field(
                    2,
                    &[bytes_field(1, &unavailable), bytes_field(2, &surge)].concat(),
                ),
            ),
        ]
        .concat();
        let raw = [
            bytes_field(1, &[bytes_field(1, b"web"), labels].concat()),
            bytes_field(2, &spec),
            bytes_field(3, b""),
        ]
        .concat();
        let got = decode(&envelope("apps/v1", "Deployment", raw)).unwrap();
        assert_eq!(
            got,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "busybox", "image": "busybox",
                            "command": ["httpd", "-f"],
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {}}]},
                    },
                    "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": "50%"}},
                },
            })
        );
        // A field the schema does not know is refused, naming it.
        let raw = bytes_field(2, &bytes_field(8, b""));
        assert_eq!(
            decode(&envelope("apps/v1", "Deployment", raw)).unwrap_err(),
            ProtobufError::Field {
                message: "DeploymentSpec",
                number: 8
            }
        );
    }

    #[test]
    fn decodes_a_priority_class_and_a_disruption_budget() {
        let raw = [
            bytes_field(1, &bytes_field(1, b"high")),
            varint_field(2, 1000),
            varint_field(3, 0),
            bytes_field(4, b"urgent"),
        ]
        .concat();
        let got = decode(&envelope("scheduling.k8s.io/v1", "PriorityClass", raw)).unwrap();
        assert_eq!(got["value"], 1000);
        assert_eq!(got["description"], "urgent");
        assert!(
            got.get("globalDefault").is_none(),
            "false on the wire is unset"
        );
        let max = [varint_field(1, 0), varint_field(2, 1), bytes_field(3, b"")].concat();
        let spec = [
            bytes_field(2, &bytes_field(1, &entry("app", b"web"))),
            bytes_field(3, &max),
        ]
        .concat();
        let raw = [
            bytes_field(1, &bytes_field(1, b"web")),
            bytes_field(2, &spec),
        ]
        .concat();
        let got = decode(&envelope("policy/v1", "PodDisruptionBudget", raw)).unwrap();
        assert_eq!(got["spec"]["maxUnavailable"], 1);
        assert_eq!(got["spec"]["selector"]["matchLabels"]["app"], "web");
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
            decode(&envelope("apps/v1", "StatefulSet", raw)).unwrap_err(),
            ProtobufError::Kind("StatefulSet".into())
        );
        assert_eq!(decode(b"{}").unwrap_err(), ProtobufError::Magic);
        assert!(decode(&[MAGIC, &[0x0a, 0x7f]].concat()).is_err());
        assert_eq!(encode_base64(b"hunter2"), "aHVudGVyMg==");
        assert_eq!(encode_base64(b""), "");
    }
}
