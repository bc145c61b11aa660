//! Getting a pod's images onto this node: from a peer node that has the image (over the
//! tunnel, every blob checked against its digest, a corrupt one fetched from the next peer),
//! else from its registry. One pull per image and credentials at a time, however many pods
//! wait for it; a failed pull is tried again after a doubling backoff (10 s to 5 min, as the
//! kubelet). This node also serves its images to peers, and lists them in its Node status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use flotilla_runtime::images::{digest_of, ImageStore};
use flotilla_runtime::registry::{Credentials, Reference, Registries};
use flotilla_store::Engine;
use flotilla_tunnel::{
    read_header, write_header, BlobHeader, Failure, ImageManifest, Reply, Request, Stream, Tunnel,
    TunnelError,
};
use flotilla_util::{Backoff, Clock};
use serde_json::{json, Value};

/// The kubelet's image pull backoff.
pub const PULL_BACKOFF: Backoff =
    Backoff::doubling(Duration::from_secs(10), Duration::from_secs(300));
/// How long a finished pull satisfies `imagePullPolicy: Always` for the pods that waited on it.
const FRESH: Duration = Duration::from_secs(30);
const NODES: &str = "/core/nodes/";

/// How a pull went, for the events of the pods that waited on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullReport {
    /// `peer n1` or `registry 10.213.0.1:5000`.
    pub source: String,
    pub bytes: u64,
    pub took: Duration,
    /// What went wrong on the way (a corrupt blob from one peer, …) and was got round.
    pub notes: Vec<String>,
}

enum Pull {
    Running {
        waiters: BTreeSet<String>,
    },
    Done {
        at: SystemTime,
        report: Arc<PullReport>,
        waiters: BTreeSet<String>,
    },
    Failed {
        message: String,
        failures: u32,
        retry_at: SystemTime,
    },
}

/// Where a container's image stands on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Here: run it. With the report of the pull this pod waited for, once.
    Ready(Option<Arc<PullReport>>),
    /// Being fetched.
    Pulling,
    /// The last pull failed with `message`; the next starts at `retry_at`.
    Failed {
        message: String,
        retry_at: SystemTime,
    },
}

/// This node's image getter.
pub struct Images {
    store: PathBuf,
    registries: Registries,
    tunnel: Option<Arc<Tunnel>>,
    engine: Arc<dyn Engine>,
    node: String,
    clock: Arc<dyn Clock>,
    pulls: Mutex<HashMap<String, Pull>>,
    /// One fetch of a blob at a time (two images may share a layer), by digest.
    blobs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Images({})", self.store.display())
    }
}

impl Images {
    pub fn new(
        store: PathBuf,
        registries: Registries,
        tunnel: Option<Arc<Tunnel>>,
        engine: Arc<dyn Engine>,
        node: String,
        clock: Arc<dyn Clock>,
    ) -> Images {
        Images {
            store,
            registries,
            tunnel,
            engine,
            node,
            clock,
            pulls: Mutex::new(HashMap::new()),
            blobs: Mutex::new(HashMap::new()),
        }
    }

    fn pulls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pull>> {
        self.pulls.lock().expect("not poisoned")
    }

    /// Whether `image` is here for pod `waiter` under `policy` (`Always`, `IfNotPresent`;
    /// `Never` is the caller's), starting a pull when it must be fetched.
    pub fn ensure(
        self: &Arc<Self>,
        image: &str,
        policy: &str,
        credentials: Option<Credentials>,
        waiter: &str,
    ) -> Outcome {
        let now = self.clock.now();
        // Other credentials are another pull: a wrong password's back-off does not hold up
        // the right one.
        let key = match &credentials {
            Some(c) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (&c.username, &c.password).hash(&mut h);
                format!("{image}|{}|{:x}", c.username, h.finish())
            }
            None => image.to_string(),
        };
        let store = ImageStore::new(&self.store);
        let local = store.lookup(image);
        let mut pulls = self.pulls();
        let failures = match pulls.get_mut(&key) {
            Some(Pull::Running { waiters }) => {
                waiters.insert(waiter.to_string());
                return Outcome::Pulling;
            }
            Some(Pull::Done {
                at,
                report,
                waiters,
            }) if local.is_some() => {
                let mine = waiters.remove(waiter).then(|| Arc::clone(report));
                if mine.is_some() || policy != "Always" || now < *at + FRESH {
                    return Outcome::Ready(mine);
                }
                0
            }
            Some(Pull::Failed {
                message,
                retry_at,
                failures,
            }) => {
                if now < *retry_at {
                    return Outcome::Failed {
                        message: message.clone(),
                        retry_at: *retry_at,
                    };
                }
                *failures
            }
            _ => 0,
        };
        if let Some((name, _)) = &local {
            // An imported image is what its name means in this cluster; a pulled one is
            // checked at its registry again under `Always`.
            if policy != "Always" || !store.pulled().contains(name) {
                return Outcome::Ready(None);
            }
        }
        pulls.insert(
            key.clone(),
            Pull::Running {
                waiters: [waiter.to_string()].into(),
            },
        );
        drop(pulls);
        let this = Arc::clone(self);
        let image = image.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = this.fetch(&image, credentials).await;
            let now = this.clock.now();
            let mut pulls = this.pulls();
            let waiters = match pulls.remove(&key) {
                Some(Pull::Running { waiters }) => waiters,
                _ => BTreeSet::new(),
            };
            let next = match result {
                Ok(mut report) => {
                    report.took = started.elapsed();
                    tracing::info!(%image, source = %report.source, bytes = report.bytes, "image fetched");
                    Pull::Done {
                        at: now,
                        report: Arc::new(report),
                        waiters,
                    }
                }
                Err(message) => {
                    tracing::warn!(%image, %message, "image pull failed");
                    Pull::Failed {
                        message,
                        failures: failures + 1,
                        retry_at: now + PULL_BACKOFF.delay(failures + 1),
                    }
                }
            };
            pulls.insert(key, next);
            // Reports nobody came for.
            pulls.retain(|_, p| match p {
                Pull::Done { at, .. } => now.duration_since(*at).unwrap_or_default() < 10 * FRESH,
                _ => true,
            });
        });
        Outcome::Pulling
    }

    /// Fetches `image`. An image imported into the cluster comes from the peers that have it.
    /// Otherwise its registry says which manifest the reference names (and so checks the
    /// pod's credentials), and each blob comes from a peer that has that manifest when one
    /// does, else from the registry.
    async fn fetch(
        &self,
        image: &str,
        credentials: Option<Credentials>,
    ) -> Result<PullReport, String> {
        let reference = Reference::parse(image).map_err(|e| e.to_string())?;
        let mut notes = Vec::new();
        let mut holders = Vec::new();
        if let Some(tunnel) = &self.tunnel {
            for (peer, addr) in self.peers(image) {
                match peer_manifest(tunnel, addr, image).await {
                    Ok(Some(m)) => holders.push((peer, addr, m)),
                    Ok(None) => {}
                    Err(e) => notes.push(format!("from {peer}: {e}")),
                }
            }
        }
        let imported = holders
            .iter()
            .find(|(_, _, m)| !m.pulled && digest_of(m.manifest.as_bytes()) == m.digest)
            .map(|(_, _, m)| (m.digest.clone(), m.manifest.clone().into_bytes()));
        let (mut session, digest, manifest, pulled) = match imported {
            Some((digest, manifest)) => (None, digest, manifest, false),
            None => {
                let mut session = self.registries.session(&reference, credentials);
                let (session, found) = tokio::task::spawn_blocking(move || {
                    let found = session.manifest();
                    (session, found)
                })
                .await
                .map_err(|e| format!("pull task: {e}"))?;
                let (digest, manifest) = found.map_err(|e| with_notes(e.to_string(), &notes))?;
                (Some(session), digest, manifest, true)
            }
        };
        let store = ImageStore::new(&self.store);
        let blobs = ImageStore::manifest_blobs(&manifest).map_err(|e| e.to_string())?;
        let mut report = PullReport {
            source: String::new(),
            bytes: 0,
            took: Duration::ZERO,
            notes: Vec::new(),
        };
        let mut sources = BTreeSet::new();
        for (blob, size) in blobs {
            let lock = Arc::clone(
                self.blobs
                    .lock()
                    .expect("not poisoned")
                    .entry(blob.clone())
                    .or_default(),
            );
            let _fetching = lock.lock().await;
            if store.has_blob(&blob) {
                continue;
            }
            let mut got = None;
            if let Some(tunnel) = &self.tunnel {
                for (peer, addr, _) in holders.iter().filter(|(_, _, m)| m.digest == digest) {
                    match fetch_blob(tunnel, *addr, &store, &blob, size).await {
                        Ok(n) => {
                            got = Some((format!("peer {peer}"), n));
                            break;
                        }
                        Err(e) => notes.push(format!("from {peer}: {e}")),
                    }
                }
            }
            if got.is_none() {
                let Some(mut s) = session.take() else {
                    return Err(with_notes(
                        format!("no peer could provide blob {blob} of image {image}"),
                        &notes,
                    ));
                };
                let root = self.store.clone();
                let b = blob.clone();
                let (s, n) = tokio::task::spawn_blocking(move || {
                    let n = s.blob(&ImageStore::new(&root), &b, size);
                    (s, n)
                })
                .await
                .map_err(|e| format!("pull task: {e}"))?;
                let n = n.map_err(|e| with_notes(e.to_string(), &notes))?;
                got = Some((format!("registry {}", reference.registry), n));
                session = Some(s);
            }
            let (source, n) = got.expect("a source or a return");
            sources.insert(source);
            report.bytes += n;
        }
        self.blobs
            .lock()
            .expect("not poisoned")
            .retain(|_, l| Arc::strong_count(l) > 1);
        // Unpacking the layers takes a while: off the async threads.
        let name = image.to_string();
        tokio::task::spawn_blocking(move || {
            store
                .put(&digest, &manifest)
                .and_then(|()| store.name_received(&name, &digest, pulled))
        })
        .await
        .map_err(|e| format!("pull task: {e}"))?
        .map_err(|e| with_notes(e.to_string(), &[]))?;
        report.source = if sources.is_empty() {
            "the node's own blobs".into()
        } else {
            sources.into_iter().collect::<Vec<_>>().join(" and ")
        };
        report.notes = notes;
        Ok(report)
    }

    /// The other Ready nodes to ask for `image`: those whose status lists it first, then the
    /// rest, each group by name.
    fn peers(&self, image: &str) -> Vec<(String, SocketAddr)> {
        let Ok(listing) = self.engine.list(NODES, None, 0) else {
            return Vec::new();
        };
        let mut listed = Vec::new();
        let mut others = Vec::new();
        for (_, record) in listing.items {
            let Ok(node) = serde_json::from_slice::<Value>(&record.value) else {
                continue;
            };
            let name = node["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if name == self.node {
                continue;
            }
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let Some(addr) = flotilla_tunnel::tunnel_address(&node).filter(|_| ready) else {
                continue;
            };
            let has = node["status"]["images"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["names"].as_array().into_iter().flatten())
                .any(|n| n.as_str() == Some(image));
            if has {
                listed.push((name, addr));
            } else {
                others.push((name, addr));
            }
        }
        listed.sort();
        others.sort();
        listed.extend(others);
        listed
    }
}

/// What the peer at `addr` has as `image`: `None` when nothing.
async fn peer_manifest(
    tunnel: &Tunnel,
    addr: SocketAddr,
    image: &str,
) -> Result<Option<ImageManifest>, String> {
    let request = Request::Manifest {
        reference: image.to_string(),
    };
    let mut stream = match tunnel.open(addr, &request).await {
        Ok(s) => s,
        Err(TunnelError::Refused(f)) if f.code == 404 => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    read_header(&mut stream.recv)
        .await
        .map(Some)
        .map_err(|e| e.to_string())
}

/// `message`, "image: " off, with what went wrong with peers on the way.
fn with_notes(message: String, notes: &[String]) -> String {
    let mut message = message
        .strip_prefix("image: ")
        .unwrap_or(&message)
        .to_string();
    if !notes.is_empty() {
        message.push_str(&format!(" (peers: {})", notes.join("; ")));
    }
    message
}

/// Streams blob `digest` from the peer at `addr` into `store`; the bytes received.
async fn fetch_blob(
    tunnel: &Tunnel,
    addr: SocketAddr,
    store: &ImageStore,
    digest: &str,
    size: Option<u64>,
) -> Result<u64, String> {
    let request = Request::Blob {
        digest: digest.to_string(),
    };
    let mut stream = tunnel
        .open(addr, &request)
        .await
        .map_err(|e| e.to_string())?;
    let header: BlobHeader = read_header(&mut stream.recv)
        .await
        .map_err(|e| e.to_string())?;
    if size.is_some_and(|s| s != header.size) {
        return Err(format!(
            "blob {digest} is {} bytes there, not the {} its manifest says",
            header.size,
            size.unwrap_or_default()
        ));
    }
    let mut ingest = store.ingest(digest).map_err(|e| e.to_string())?;
    ingest.restart().map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.recv.read(&mut buf).await {
            Ok(Some(n)) => ingest.write(&buf[..n]).map_err(|e| e.to_string())?,
            Ok(None) => break,
            Err(e) => return Err(format!("receiving blob {digest}: {e}")),
        }
    }
    let received = ingest.offset();
    ingest
        .commit(Some(header.size))
        .map_err(|e| with_notes(e.to_string(), &[]))?;
    Ok(received)
}

/// Answers a peer's [`Request::Manifest`] from the store at `root`.
pub async fn serve_manifest(root: PathBuf, reference: String, mut stream: Stream) {
    let found = tokio::task::spawn_blocking(move || {
        let store = ImageStore::new(&root);
        let (name, digest) = store.lookup(&reference)?;
        let manifest = String::from_utf8(store.blob(&digest).ok()?).ok()?;
        Some(ImageManifest {
            pulled: store.pulled().contains(&name),
            digest,
            manifest,
        })
    })
    .await
    .ok()
    .flatten();
    match found {
        Some(m) => {
            if write_header(&mut stream.send, &Reply::Ok).await.is_ok() {
                let _ = write_header(&mut stream.send, &m).await;
            }
        }
        None => {
            let failure = Failure::not_found("this node has no such image".to_string());
            let _ = write_header(&mut stream.send, &Reply::Refused(failure)).await;
        }
    }
    let _ = stream.send.finish();
}

/// Answers a peer's [`Request::Blob`]: the blob as kept (the peer checks it).
pub async fn serve_blob(root: PathBuf, digest: String, mut stream: Stream) {
    use tokio::io::AsyncReadExt;
    let store = ImageStore::new(&root);
    let (file, size) = match store.open_blob(&digest) {
        Ok(f) => f,
        Err(e) => {
            let failure = Failure::not_found(e.to_string());
            let _ = write_header(&mut stream.send, &Reply::Refused(failure)).await;
            let _ = stream.send.finish();
            return;
        }
    };
    if write_header(&mut stream.send, &Reply::Ok).await.is_err()
        || write_header(&mut stream.send, &BlobHeader { size })
            .await
            .is_err()
    {
        return;
    }
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if stream.send.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => {
                // The caller sees a short blob and refuses it.
                let _ = stream.send.reset(1u32.into());
                return;
            }
        }
    }
    let _ = stream.send.finish();
}

/// The Node status `images` list of the store at `root`: each image's names (its name and
/// `name@digest`) and size, largest first, as the kubelet reports them.
pub fn status_images(root: &std::path::Path) -> Value {
    let store = ImageStore::new(root);
    let mut by_manifest: BTreeMap<String, (Vec<String>, u64)> = BTreeMap::new();
    for image in store.list().unwrap_or_default() {
        let entry = by_manifest.entry(image.manifest.clone()).or_default();
        entry.0.push(image.name.clone());
        let repo = image
            .name
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'));
        entry.0.push(format!(
            "{}@{}",
            repo.map_or(image.name.as_str(), |(r, _)| r),
            image.manifest
        ));
        entry.1 = image.size;
    }
    let mut list: Vec<(Vec<String>, u64)> = by_manifest.into_values().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Value::Array(
        list.into_iter()
            .map(|(mut names, size)| {
                names.sort();
                names.dedup();
                json!({"names": names, "sizeBytes": size})
            })
            .collect(),
    )
}

/// Every `every`, removes the images the store at `root` can spare by `policy`, until `stop`.
pub async fn collect_garbage(
    root: PathBuf,
    policy: flotilla_runtime::gc::GcPolicy,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let root = root.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let capacity = flotilla_sys::fs::capacity(&root).ok_or_else(|| {
                flotilla_runtime::RuntimeError::State(format!(
                    "cannot read the capacity of {}",
                    root.display()
                ))
            })?;
            ImageStore::new(&root).collect_garbage(policy, capacity, SystemTime::now())
        })
        .await;
        match removed {
            Ok(Ok(names)) if !names.is_empty() => {
                tracing::info!(
                    ?names,
                    "unused images removed: the image disk was above its high threshold"
                )
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "image garbage collection failed"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_util::ManualClock;

    /// A "registry" that accepts connections and closes them at once; it counts them.
    fn closing_registry() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        std::thread::spawn(move || {
            for c in listener.incoming() {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(c);
            }
        });
        (addr, count)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pods_of_one_image_share_a_pull_and_a_failure_backs_off_doubling() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, connections) = closing_registry();
        let connections = move || connections.load(std::sync::atomic::Ordering::SeqCst);
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Arc::new(ManualClock::new(start));
        let images = Arc::new(Images::new(
            dir.path().to_path_buf(),
            Registries::new(vec![registry.to_string()]),
            None,
            Arc::new(flotilla_store::MemoryStore::new(100)),
            "n1".into(),
            Arc::clone(&clock) as Arc<dyn Clock>,
        ));
        let image = format!("{registry}/app:v1");
        let ensure = |pod: &str| images.ensure(&image, "IfNotPresent", None, pod);
        assert_eq!(ensure("default/a"), Outcome::Pulling);
        assert_eq!(ensure("default/b"), Outcome::Pulling, "b waits on a's pull");
        let failed = |images: &Arc<Images>| {
            flotilla_util::wait_until_blocking(Duration::from_secs(20), || {
                match images.ensure(&image, "IfNotPresent", None, "default/a") {
                    Outcome::Failed { message, retry_at } => Some((message, retry_at)),
                    _ => None,
                }
            })
            .expect("the pull fails")
        };
        let (message, retry_at) = failed(&images);
        assert!(
            message.contains(&format!("cannot reach registry {registry}")),
            "{message}"
        );
        assert_eq!(retry_at, start + Duration::from_secs(10));
        assert_eq!(connections(), 1, "two pods, one pull");
        // Before the back-off ends, no new pull; after it, one, whose failure waits twice as long.
        clock.advance(Duration::from_secs(9));
        assert!(matches!(ensure("default/b"), Outcome::Failed { .. }));
        clock.advance(Duration::from_secs(2));
        assert_eq!(ensure("default/b"), Outcome::Pulling);
        let (_, retry_at) = failed(&images);
        assert_eq!(retry_at, start + Duration::from_secs(11 + 20));
        assert_eq!(connections(), 2);
        // An imported image is ready under `Always`: no registry is asked.
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::write(rootfs.join("hello"), "hi").unwrap();
        ImageStore::new(dir.path())
            .import(&rootfs, "local:v1")
            .unwrap();
        assert_eq!(
            images.ensure("local:v1", "Always", None, "default/c"),
            Outcome::Ready(None)
        );
    }
}
