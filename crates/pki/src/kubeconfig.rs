//! The admin kubeconfig that bootstrap writes: the API server, the cluster CA, the admin's
//! client certificate, and (in a `flotilla` extension) the nodes' peer endpoints, which the
//! `flotilla` CLI talks to. Written as JSON, which kubectl reads like YAML.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

use crate::ca::Credential;
use crate::files::write_private;
use crate::PkiError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kubeconfig {
    /// `https://HOST:PORT` of the Kubernetes API.
    pub server: String,
    /// `HOST:PORT` of nodes' peer endpoints.
    pub peers: Vec<String>,
    pub ca_pem: String,
    pub user: String,
    pub client: Credential,
    /// The user's API bearer token (`ID.SECRET`), if it has one.
    pub token: Option<String>,
}

const NAME: &str = "flotilla";

impl Kubeconfig {
    pub fn to_json(&self) -> String {
        let mut user = json!({
            "client-certificate-data": B64.encode(&self.client.cert_pem),
            "client-key-data": B64.encode(&self.client.key_pem),
        });
        if let Some(token) = &self.token {
            user["token"] = json!(token);
        }
        self.document(user)
    }

    /// The same cluster with only the bearer token as credentials (what `flotilla kubeconfig`
    /// prints for kubectl), pointed at `server`; `None` without a token.
    pub fn token_only_json(&self, server: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        let with_server = Kubeconfig {
            server: server.to_string(),
            ..self.clone()
        };
        Some(with_server.document(json!({"token": token})))
    }

    fn document(&self, user: Value) -> String {
        let v = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": NAME,
            "clusters": [{
                "name": NAME,
                "cluster": {
                    "server": self.server,
                    "certificate-authority-data": B64.encode(&self.ca_pem),
                    "extensions": [{
                        "name": NAME,
                        "extension": {"peers": self.peers},
                    }],
                },
            }],
            "users": [{
                "name": self.user,
                "user": user,
            }],
            "contexts": [{
                "name": NAME,
                "context": {"cluster": NAME, "user": self.user},
            }],
        });
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
    }

    /// Reads the current context's cluster and user.
    pub fn from_json(text: &str) -> Result<Kubeconfig, PkiError> {
        let bad = |what: &str| PkiError::Kubeconfig(what.to_string());
        let v: Value = serde_json::from_str(text).map_err(|e| {
            PkiError::Kubeconfig(format!("not a kubeconfig written by flotilla (JSON): {e}"))
        })?;
        let context_name = v["current-context"]
            .as_str()
            .ok_or_else(|| bad("no current-context"))?;
        let named = |list: &str, name: &str| -> Result<Value, PkiError> {
            v[list]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["name"] == name))
                .cloned()
                .ok_or_else(|| PkiError::Kubeconfig(format!("no {list} entry named {name}")))
        };
        let context = named("contexts", context_name)?;
        let cluster_name = context["context"]["cluster"]
            .as_str()
            .ok_or_else(|| bad("context without cluster"))?;
        let user_name = context["context"]["user"]
            .as_str()
            .ok_or_else(|| bad("context without user"))?;
        let cluster = named("clusters", cluster_name)?;
        let user = named("users", user_name)?;
        let data = |v: &Value, field: &str| -> Result<String, PkiError> {
            let text = v[field]
                .as_str()
                .ok_or_else(|| PkiError::Kubeconfig(format!("no {field}")))?;
            let bytes = B64
                .decode(text)
                .map_err(|e| PkiError::Kubeconfig(format!("{field} is not base64: {e}")))?;
            String::from_utf8(bytes)
                .map_err(|_| PkiError::Kubeconfig(format!("{field} is not PEM")))
        };
        let peers = cluster["cluster"]["extensions"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == NAME))
            .and_then(|e| e["extension"]["peers"].as_array())
            .map(|l| {
                l.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Kubeconfig {
            server: cluster["cluster"]["server"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            peers,
            ca_pem: data(&cluster["cluster"], "certificate-authority-data")?,
            user: user_name.to_string(),
            client: Credential {
                cert_pem: data(&user["user"], "client-certificate-data")?,
                key_pem: data(&user["user"], "client-key-data")?,
            },
            token: user["user"]["token"].as_str().map(str::to_string),
        })
    }

    pub fn load(path: &Path) -> Result<Kubeconfig, PkiError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PkiError::Kubeconfig(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| PkiError::Kubeconfig(format!("{}: {e}", path.display())))
    }

    /// Saves it owner-readable only: it holds the admin's private key.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_private(path, self.to_json().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_round_trips() {
        let k = Kubeconfig {
            server: "https://10.0.0.1:6443".into(),
            peers: vec!["10.0.0.1:7443".into(), "10.0.0.2:7443".into()],
            ca_pem: "-----BEGIN CERTIFICATE-----\nCA\n".into(),
            user: "admin".into(),
            client: Credential {
                cert_pem: "CERT".into(),
                key_pem: "KEY".into(),
            },
            token: Some("abcdef.0123".into()),
        };
        assert_eq!(Kubeconfig::from_json(&k.to_json()).unwrap(), k);
        let plain: Value =
            serde_json::from_str(&k.token_only_json("https://10.0.0.2:6443").unwrap()).unwrap();
        assert_eq!(plain["users"][0]["user"], json!({"token": "abcdef.0123"}));
        assert_eq!(
            plain["clusters"][0]["cluster"]["server"],
            "https://10.0.0.2:6443"
        );
        assert!(Kubeconfig::from_json("apiVersion: v1").is_err());
    }
}
