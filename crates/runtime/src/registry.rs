//! Pulling from OCI distribution registries (and Docker's): image references as Docker
//! spells them, manifests and image indexes (the entry for this machine's platform), basic
//! and bearer-token authentication, blobs streamed into the store with their digests checked
//! and broken transfers resumed with a `Range` request. Registries are reached over HTTPS
//! unless their `host[:port]` is listed as insecure.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::images::{bad, digest_of, ImageStore};
use crate::RuntimeError;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker Hub: what a reference without a registry names, and where its API is.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// An image reference: `[registry/]repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`; `docker.io` when the reference names none.
    pub registry: String,
    /// `library/busybox` for Docker Hub's official images.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `text` as Docker does: the first component is a registry when it has a `.` or
    /// a `:`, or is `localhost`.
    pub fn parse(text: &str) -> Result<Reference, RuntimeError> {
        let invalid = |why: &str| bad(format!("invalid image reference {text:?}: {why}"));
        if text.is_empty() || text.contains(char::is_whitespace) {
            return Err(invalid("empty or with spaces"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| invalid("digest"))?;
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid("digest"));
                }
                (r, Some(d.to_string()))
            }
            None => (text, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path)
            }
            _ => (DOCKER_HUB.to_string(), rest),
        };
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last_slash..].rfind(':') {
            Some(i) => (
                &path[..last_slash + i],
                Some(path[last_slash + i + 1..].to_string()),
            ),
            None => (path, None),
        };
        if repository.is_empty()
            || !repository
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
        {
            return Err(invalid(
                "repository names are lowercase letters, digits and ._-/",
            ));
        }
        if tag.as_ref().is_some_and(|t| t.is_empty()) {
            return Err(invalid("empty tag"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(Reference {
            registry,
            repository,
            tag: if tag.is_none() && digest.is_none() {
                Some("latest".into())
            } else {
                tag
            },
            digest,
        })
    }

    /// What the manifest is asked for by: the digest, else the tag.
    pub fn target(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Where the registry's API is.
    fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A user name and password for a registry (from an `imagePullSecret`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// The credentials a `.dockerconfigjson` (as in a `kubernetes.io/dockerconfigjson` secret)
/// holds for `registry`: its `auths` entry keyed by the host, with or without a scheme and a
/// path (`https://index.docker.io/v1/` for Docker Hub).
pub fn credentials_for(dockerconfig: &[u8], registry: &str) -> Option<Credentials> {
    let config: Value = serde_json::from_slice(dockerconfig).ok()?;
    let auths = config["auths"].as_object()?;
    let host_of = |key: &str| -> String {
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        let host = key.split('/').next().unwrap_or(key);
        match host {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            h => h.to_string(),
        }
    };
    let (_, entry) = auths.iter().find(|(k, _)| host_of(k) == registry)?;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(Credentials {
            username: u.into(),
            password: p.into(),
        });
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str()?)
        .ok()?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(Credentials {
        username: u.into(),
        password: p.into(),
    })
}

/// `this machine`'s platform as image indexes name it.
pub fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

/// The manifest for `platform` in an image index, or why there is none.
pub fn select_platform(index: &Value, platform: (&str, &str)) -> Result<String, String> {
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .find(|m| m["platform"]["os"] == platform.0 && m["platform"]["architecture"] == platform.1)
        .and_then(|m| m["digest"].as_str().map(str::to_string))
        .ok_or_else(|| {
            let offered: Vec<String> = entries
                .iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap_or("?"),
                        m["platform"]["architecture"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            format!(
                "no manifest for {}/{} in the image index (it has {})",
                platform.0,
                platform.1,
                offered.join(", ")
            )
        })
}

/// The registry's own words for an error answer: its `errors[]` as `CODE: message`.
fn registry_error(status: u16, body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let errors = v["errors"].as_array()?.clone();
        let parts: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["code"].as_str().unwrap_or("ERROR"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    });
    let words = from_json.unwrap_or_else(|| body.trim().chars().take(200).collect());
    let status_text = match status {
        401 => "401 Unauthorized",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        429 => "429 Too Many Requests",
        _ => return format!("HTTP {status}: {words}"),
    };
    format!("{status_text}: {words}")
}

/// `WWW-Authenticate: Bearer realm="…",service="…",scope="…"`, as its parameters.
fn challenge(header: &str) -> (String, BTreeMap<String, String>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = BTreeMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key, value.to_string());
        rest = next.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

/// A registry client for one node: which registries are reached over plain HTTP.
#[derive(Clone)]
pub struct Registries {
    agent: ureq::Agent,
    insecure: Vec<String>,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registries(insecure: {:?})", self.insecure)
    }
}

/// One conversation with a registry about one reference: its credentials and the token the
/// registry gave.
pub struct Session {
    agent: ureq::Agent,
    reference: Reference,
    credentials: Option<Credentials>,
    authorization: Option<String>,
    base: String,
}

impl Registries {
    /// `insecure`: registries reached over HTTP, each `host`, `host:port` or an IPv4 CIDR
    /// (`10.0.0.0/8`) of hosts.
    pub fn new(insecure: Vec<String>) -> Registries {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(30))
            .redirects(5)
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
            .build();
        Registries { agent, insecure }
    }

    /// Whether `registry` (`host[:port]`) is reached over HTTP.
    pub fn is_insecure(&self, registry: &str) -> bool {
        let host = match registry.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
            _ => registry,
        };
        self.insecure.iter().any(|entry| {
            if let Some((net, bits)) = entry.split_once('/') {
                let (Ok(net), Ok(bits), Ok(ip)) = (
                    net.parse::<std::net::Ipv4Addr>(),
                    bits.parse::<u32>(),
                    host.parse::<std::net::Ipv4Addr>(),
                ) else {
                    return false;
                };
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits.min(32))
                };
                u32::from(ip) & mask == u32::from(net) & mask
            } else {
                entry == registry || entry == host
            }
        })
    }

    /// A session with `reference`'s registry.
    pub fn session(&self, reference: &Reference, credentials: Option<Credentials>) -> Session {
        let scheme = if self.is_insecure(&reference.registry) {
            "http"
        } else {
            "https"
        };
        Session {
            agent: self.agent.clone(),
            base: format!(
                "{scheme}://{}/v2/{}",
                reference.api_host(),
                reference.repository
            ),
            reference: reference.clone(),
            credentials,
            authorization: None,
        }
    }
}

impl Session {
    fn fail(&self, what: &str) -> RuntimeError {
        bad(format!("pulling {}: {what}", self.reference))
    }

    /// A GET of `url`, authenticating when the registry asks to (once per session).
    fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Result<ureq::Response, RuntimeError> {
        let mut authenticated = false;
        loop {
            let mut request = self.agent.get(url);
            for (k, v) in headers {
                request = request.set(k, v);
            }
            if let Some(a) = &self.authorization {
                request = request.set("Authorization", a);
            }
            match request.call() {
                Ok(response) => return Ok(response),
                Err(ureq::Error::Status(401, response)) if !authenticated => {
                    authenticated = true;
                    let header = response
                        .header("www-authenticate")
                        .unwrap_or("")
                        .to_string();
                    self.authenticate(&header, response)?;
                }
                Err(ureq::Error::Status(code, response)) => {
                    let body = response.into_string().unwrap_or_default();
                    return Err(self.fail(&registry_error(code, &body)));
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(self.fail(&format!(
                        "cannot reach registry {}: {t}",
                        self.reference.registry
                    )))
                }
            }
        }
    }

    /// Answers the registry's 401: basic credentials, or a bearer token from its realm.
    fn authenticate(&mut self, header: &str, refused: ureq::Response) -> Result<(), RuntimeError> {
        let (scheme, params) = challenge(header);
        match scheme.as_str() {
            "basic" => {
                let Some(c) = &self.credentials else {
                    let body = refused.into_string().unwrap_or_default();
                    return Err(self.fail(&format!(
                        "{} (no imagePullSecret has credentials for {})",
                        registry_error(401, &body),
                        self.reference.registry
                    )));
                };
                self.authorization = Some(c.basic());
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| self.fail("the registry's bearer challenge has no realm"))?;
                let mut request = self.agent.get(realm);
                for key in ["service", "scope"] {
                    if let Some(v) = params.get(key) {
                        request = request.query(key, v);
                    }
                }
                if let Some(c) = &self.credentials {
                    request = request.set("Authorization", &c.basic());
                }
                let response = match request.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(code, r)) => {
                        let body = r.into_string().unwrap_or_default();
                        return Err(self.fail(&format!(
                            "the token service refused: {}",
                            registry_error(code, &body)
                        )));
                    }
                    Err(ureq::Error::Transport(t)) => {
                        return Err(self.fail(&format!("cannot reach the token service: {t}")))
                    }
                };
                let body: Value = response
                    .into_json()
                    .map_err(|e| self.fail(&format!("the token service's answer: {e}")))?;
                let token = body["token"]
                    .as_str()
                    .or(body["access_token"].as_str())
                    .ok_or_else(|| self.fail("the token service gave no token"))?;
                self.authorization = Some(format!("Bearer {token}"));
                Ok(())
            }
            _ => Err(self.fail(&format!(
                "the registry asks for authentication it does not name ({header:?})"
            ))),
        }
    }

    /// The manifest for this platform: `(digest, bytes)`, checked against its digest.
    pub fn manifest(&mut self) -> Result<(String, Vec<u8>), RuntimeError> {
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let mut target = self.reference.target().to_string();
        for _ in 0..2 {
            let url = format!("{}/manifests/{target}", self.base);
            let response = self.get(&url, &[("Accept", &accept)])?;
            let announced = response.header("docker-content-digest").map(str::to_string);
            let content_type = response.content_type().to_string();
            let mut bytes = Vec::new();
            response
                .into_reader()
                .take(4 << 20)
                .read_to_end(&mut bytes)
                .map_err(|e| self.fail(&format!("reading the manifest: {e}")))?;
            let digest = digest_of(&bytes);
            let expected = if target.starts_with("sha256:") {
                Some(target.clone())
            } else {
                announced
            };
            if let Some(expected) = expected.filter(|e| *e != digest) {
                return Err(self.fail(&format!(
                    "manifest {expected} is corrupt: its content hashes to {digest}"
                )));
            }
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| self.fail(&format!("the manifest is not JSON: {e}")))?;
            let media = value["mediaType"].as_str().unwrap_or(&content_type);
            if media == OCI_INDEX || media == DOCKER_LIST || value["manifests"].is_array() {
                target = select_platform(&value, platform()).map_err(|e| self.fail(&e))?;
                continue;
            }
            if value["schemaVersion"] == 1 {
                return Err(self.fail("schema 1 manifests are not supported"));
            }
            return Ok((digest, bytes));
        }
        Err(self.fail("an image index that points to another index"))
    }

    /// Streams blob `digest` into the store, resuming what an earlier attempt left; returns
    /// the bytes received.
    pub fn blob(
        &mut self,
        store: &ImageStore,
        digest: &str,
        size: Option<u64>,
    ) -> Result<u64, RuntimeError> {
        let mut ingest = store.ingest(digest)?;
        let url = format!("{}/blobs/{digest}", self.base);
        let offset = ingest.offset();
        let range = format!("bytes={offset}-");
        let headers: Vec<(&str, &str)> = if offset > 0 {
            vec![("Range", range.as_str())]
        } else {
            Vec::new()
        };
        let response = match self.get(&url, &headers) {
            // A range past the end: what was received is the whole blob or wrong.
            Err(_) if offset > 0 && size == Some(offset) => {
                ingest.commit(size)?;
                return Ok(0);
            }
            other => other?,
        };
        if response.status() != 206 && offset > 0 {
            ingest.restart()?;
        }
        let before = ingest.offset();
        ingest
            .copy_from(&mut response.into_reader())
            .map_err(|e| self.fail(&format!("receiving blob {digest}: {e}")))?;
        let received = ingest.offset() - before;
        ingest.commit(size).map_err(|e| self.fail(&e.to_string()))?;
        Ok(received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_spells_them() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.target()),
            ("docker.io", "library/busybox", "latest")
        );
        let r = Reference::parse("10.213.0.1:5000/team/app:v2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.target()),
            ("10.213.0.1:5000", "team/app", "v2")
        );
        assert_eq!(r.to_string(), "10.213.0.1:5000/team/app:v2");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}")).unwrap();
        assert_eq!((r.registry.as_str(), r.tag.as_deref()), ("localhost", None));
        assert_eq!(r.target(), d);
        let r = Reference::parse("user/app:1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "user/app")
        );
        for wrong in ["", "Busybox", "app:", "app@sha256:12", "a b"] {
            let err = Reference::parse(wrong).unwrap_err().to_string();
            assert!(err.contains("invalid image reference"), "{wrong}: {err}");
        }
    }

    #[test]
    fn dockerconfigjson_credentials_match_the_registry_host() {
        let config = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
            "10.213.0.1:5000": {"username": "alice", "password": "pw"},
            "http://other:5000/v2/": {"auth": "Ym9iOmI6Yw=="}
        }}"#;
        let c = credentials_for(config, "docker.io").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("hub", "secret")
        );
        let c = credentials_for(config, "10.213.0.1:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("alice", "pw"));
        // A password may hold a colon.
        let c = credentials_for(config, "other:5000").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "b:c"));
        assert!(credentials_for(config, "elsewhere").is_none());
        assert!(credentials_for(b"not json", "docker.io").is_none());
        assert!(
            !format!("{c:?}").contains("b:c"),
            "passwords stay out of logs"
        );
    }

    #[test]
    fn insecure_registries_are_hosts_ports_or_networks() {
        let r = Registries::new(vec![
            "10.213.0.0/16".into(),
            "reg.local".into(),
            "other:5000".into(),
        ]);
        assert!(r.is_insecure("10.213.4.1:5000"));
        assert!(r.is_insecure("10.213.4.1"));
        assert!(!r.is_insecure("10.214.0.1:5000"));
        assert!(r.is_insecure("reg.local:443"));
        assert!(r.is_insecure("other:5000"));
        assert!(!r.is_insecure("other:5001"));
        assert!(!r.is_insecure("docker.io"));
    }

    #[test]
    fn an_index_yields_this_platforms_manifest_or_says_what_it_has() {
        let index: Value = serde_json::json!({"manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(
            select_platform(&index, ("linux", "amd64")).unwrap(),
            "sha256:amd"
        );
        let err = select_platform(&index, ("linux", "s390x")).unwrap_err();
        assert!(err.contains("linux/arm64, linux/amd64"), "{err}");
    }

    #[test]
    fn challenges_and_registry_errors_read_as_sent() {
        let (scheme, p) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:app:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:app:pull");
        let (scheme, p) = challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (scheme.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let body =
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(
            registry_error(404, body),
            "404 Not Found: MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_error(500, "oops\n"), "HTTP 500: oops");
    }
}
