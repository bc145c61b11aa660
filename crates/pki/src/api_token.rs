//! API bearer tokens: `ID.SECRET` (6 and 32 characters of a-z0-9), sent by kubectl as
//! `Authorization: Bearer ID.SECRET`. The cluster stores, at `/flotilla/api-tokens/ID`, the user
//! and groups the token stands for and a SHA-256 of the secret, never the secret; every node
//! checks a token against its own replica.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::token::{constant_time_eq, random_string, secret_hash};

const ID_LEN: usize = 6;
const SECRET_LEN: usize = 32;

/// API tokens are stored under this prefix, by id.
pub const API_TOKENS_PREFIX: &str = "/flotilla/api-tokens/";

#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret by accident.
        write!(f, "ApiToken({}.****)", self.id)
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

impl FromStr for ApiToken {
    type Err = ();

    /// Parses `ID.SECRET`; anything else is not one of ours.
    fn from_str(s: &str) -> Result<Self, ()> {
        let (id, secret) = s.trim().split_once('.').ok_or(())?;
        let plain = |p: &str, len| {
            p.len() == len
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        if plain(id, ID_LEN) && plain(secret, SECRET_LEN) {
            Ok(ApiToken {
                id: id.into(),
                secret: secret.into(),
            })
        } else {
            Err(())
        }
    }
}

impl ApiToken {
    pub fn generate() -> ApiToken {
        ApiToken {
            id: random_string(ID_LEN),
            secret: random_string(SECRET_LEN),
        }
    }
}

/// What the cluster stores about an API token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub user: String,
    pub groups: Vec<String>,
    /// Unix seconds.
    pub created: u64,
}

impl ApiTokenRecord {
    pub fn new(token: &ApiToken, user: &str, groups: &[&str], now: u64) -> ApiTokenRecord {
        ApiTokenRecord {
            id: token.id.clone(),
            secret_sha256: secret_hash(&token.secret),
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            created: now,
        }
    }

    /// The store key of the token `id`.
    pub fn key(id: &str) -> String {
        format!("{API_TOKENS_PREFIX}{id}")
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a token record serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Option<ApiTokenRecord> {
        serde_json::from_slice(bytes).ok()
    }

    /// Whether `secret` is this token's (compared in constant time).
    pub fn admits(&self, secret: &str) -> bool {
        constant_time_eq(
            self.secret_sha256.as_bytes(),
            secret_hash(secret).as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_only_its_own_secret() {
        let t = ApiToken::generate();
        assert_eq!(t.to_string().parse::<ApiToken>(), Ok(t.clone()));
        assert!(!format!("{t:?}").contains(&t.secret));
        let record = ApiTokenRecord::new(&t, "admin", &["system:masters"], 1);
        let record = ApiTokenRecord::from_json(&record.to_json()).unwrap();
        assert!(record.admits(&t.secret));
        assert!(!record.admits(&ApiToken::generate().secret));
        assert_eq!(
            ApiTokenRecord::key(&t.id),
            format!("/flotilla/api-tokens/{}", t.id)
        );
        for bad in [
            "",
            "abc",
            "abcdef.short",
            "ABCDEF.0123456789abcdef0123456789abcdef",
            "not-a-valid-token",
        ] {
            assert!(bad.parse::<ApiToken>().is_err(), "{bad}");
        }
    }
}
