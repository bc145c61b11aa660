//! Stored values, change events and state digests.

use sha2::{Digest, Sha256};

use crate::command::Revision;

/// A stored value with the revision that created the key and the one that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub value: Vec<u8>,
}

const HEADER: usize = 16;

impl Record {
    /// The on-disk form: two big-endian revisions followed by the value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.value.len());
        out.extend_from_slice(&self.create_revision.to_be_bytes());
        out.extend_from_slice(&self.mod_revision.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    /// Parses [`Record::encode`]'s output; `None` if it is too short to be a record.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() < HEADER {
            return None;
        }
        let create_revision = u64::from_be_bytes(bytes[0..8].try_into().ok()?);
        let mod_revision = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
        Some(Record {
            create_revision,
            mod_revision,
            value: bytes[HEADER..].to_vec(),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
}

/// One applied change, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: Revision,
    pub kind: EventKind,
    pub key: String,
    /// The new record (absent for a delete).
    pub record: Option<Record>,
    /// The record before the change (absent for a create).
    pub prev: Option<Record>,
}

/// A consistent read of a key range: every item as of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    pub revision: Revision,
    pub items: Vec<(String, Record)>,
}

/// The first key a listing of `prefix` considers: just past `start_after` when it lies at or
/// after the prefix (a NUL byte sorts right after it), else the prefix itself.
pub fn list_start_key(prefix: &str, start_after: Option<&str>) -> String {
    match start_after {
        Some(after) if after >= prefix => format!("{after}\0"),
        _ => prefix.to_string(),
    }
}

/// A digest of a state: SHA-256 over every key with its revisions and value, in key order.
/// Two replicas with the same digest hold the same data at the same revisions.
pub fn digest<'a>(items: impl IntoIterator<Item = (&'a str, &'a Record)>) -> String {
    let mut hasher = Sha256::new();
    for (key, record) in items {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        let encoded = record.encode();
        hasher.update((encoded.len() as u64).to_be_bytes());
        hasher.update(&encoded);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = Record {
            create_revision: 7,
            mod_revision: 42,
            value: b"hello".to_vec(),
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"short"), None);
    }

    #[test]
    fn digest_depends_on_revisions() {
        let a = Record {
            create_revision: 1,
            mod_revision: 1,
            value: b"v".to_vec(),
        };
        let b = Record {
            mod_revision: 2,
            ..a.clone()
        };
        assert_ne!(digest([("k", &a)]), digest([("k", &b)]));
        assert_eq!(digest([("k", &a)]), digest([("k", &a.clone())]));
    }
}
