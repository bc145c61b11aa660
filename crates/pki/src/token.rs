//! Join tokens: `ID.SECRET.CAHASH`.
//!
//! `ID` (6 characters) names the token, `SECRET` (16 characters) proves the holder may join,
//! and `CAHASH` (64 hex digits, the SHA-256 of the CA certificate) lets the joining node verify
//! the seed before it sends the secret, as `kubeadm join --discovery-token-ca-cert-hash` does.
//! The cluster stores only a hash of the secret.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ca::CaHash;

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 16;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_hash: CaHash,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret by accident.
        write!(f, "JoinToken({}.****.{})", self.id, self.ca_hash)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.id, self.secret, self.ca_hash)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed join token: {0} (expected ID.SECRET.CAHASH: 6 and 16 characters of a-z0-9, then 64 hex digits)")]
pub struct TokenFormatError(&'static str);

impl FromStr for JoinToken {
    type Err = TokenFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some(id), Some(secret), Some(hash), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFormatError("it does not have three parts"));
        };
        let plain = |p: &str, len| p.len() == len && p.bytes().all(|b| ALPHABET.contains(&b));
        if !plain(id, ID_LEN) {
            return Err(TokenFormatError("bad ID"));
        }
        if !plain(secret, SECRET_LEN) {
            return Err(TokenFormatError("bad SECRET"));
        }
        let mut ca = [0u8; 32];
        hex::decode_to_slice(hash, &mut ca).map_err(|_| TokenFormatError("bad CAHASH"))?;
        Ok(JoinToken {
            id: id.to_string(),
            secret: secret.to_string(),
            ca_hash: CaHash(ca),
        })
    }
}

impl JoinToken {
    pub fn generate(ca_hash: CaHash) -> JoinToken {
        JoinToken {
            id: random_string(ID_LEN),
            secret: random_string(SECRET_LEN),
            ca_hash,
        }
    }
}

pub(crate) fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(crate) fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Join tokens are stored under this prefix, by id.
pub const TOKENS_PREFIX: &str = "/flotilla/tokens/";

/// What the cluster stores about a token (at `/flotilla/tokens/ID`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds; `None` never expires.
    pub expires: Option<u64>,
    #[serde(default)]
    pub description: String,
}

/// Why a token does not admit a node. The messages go back to the joining node.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRejected {
    #[error("join token {id} is unknown (never created, or revoked)")]
    Unknown { id: String },
    #[error("join token {id} expired {ago} s ago")]
    Expired { id: String, ago: u64 },
    #[error("join token {id}: wrong secret")]
    WrongSecret { id: String },
}

impl TokenRecord {
    pub fn new(token: &JoinToken, now: u64, ttl_secs: Option<u64>, description: &str) -> Self {
        TokenRecord {
            id: token.id.clone(),
            secret_sha256: secret_hash(&token.secret),
            created: now,
            expires: ttl_secs.map(|t| now + t),
            description: description.to_string(),
        }
    }

    /// The store key of the token `id`.
    pub fn key(id: &str) -> String {
        format!("{TOKENS_PREFIX}{id}")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a token record serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, crate::PkiError> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::PkiError::Pem(format!("stored join token is unreadable: {e}")))
    }

    /// Whether `secret` is this token's and the token is still valid at `now`.
    pub fn admits(&self, secret: &str, now: u64) -> Result<(), TokenRejected> {
        if !constant_time_eq(
            self.secret_sha256.as_bytes(),
            secret_hash(secret).as_bytes(),
        ) {
            return Err(TokenRejected::WrongSecret {
                id: self.id.clone(),
            });
        }
        match self.expires {
            Some(at) if now >= at => Err(TokenRejected::Expired {
                id: self.id.clone(),
                ago: now - at,
            }),
            _ => Ok(()),
        }
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash() -> CaHash {
        CaHash([7; 32])
    }

    #[test]
    fn a_token_round_trips_through_its_text() {
        let t = JoinToken::generate(hash());
        let text = t.to_string();
        assert_eq!(text.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let h = hash().to_string();
        for (text, why) in [
            ("abc".to_string(), "three parts"),
            (format!("abcde.0123456789abcdef.{h}"), "bad ID"),
            (format!("abcdef.0123456789ABCDEF.{h}"), "bad SECRET"),
            ("abcdef.0123456789abcdef.xyz".to_string(), "bad CAHASH"),
            (format!("abcdef.0123456789abcdef.{h}.x"), "three parts"),
        ] {
            let err = text.parse::<JoinToken>().unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn a_record_admits_only_the_right_secret_until_it_expires() {
        let t = JoinToken::generate(hash());
        let r = TokenRecord::new(&t, 1000, Some(60), "");
        assert_eq!(r.admits(&t.secret, 1000), Ok(()));
        assert_eq!(r.admits(&t.secret, 1059), Ok(()));
        assert_eq!(
            r.admits(&t.secret, 1070),
            Err(TokenRejected::Expired {
                id: t.id.clone(),
                ago: 10
            })
        );
        assert!(matches!(
            r.admits("0123456789abcdef", 1000),
            Err(TokenRejected::WrongSecret { .. })
        ));
        let forever = TokenRecord::new(&t, 1000, None, "");
        assert_eq!(forever.admits(&t.secret, u64::MAX), Ok(()));
    }
}
