//! The informer: list + watch of the local replica into a typed, indexed cache.
//!
//! It watches first and lists second, so that a change made during the list is replayed on top
//! of it: events up to the revision a prefix was listed at are skipped (the list holds them),
//! later ones applied, which makes list + watch gapless with nothing replayed twice.
//! When the watch falls out of the window (`compacted`) it lists again and reports only the
//! differences. Every change to the cache is handed to the registered handlers, which should
//! only enqueue keys. Scans run on the blocking pool, never on an async worker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_store::{Engine, EventKind, Record, Revision, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One cached object with its store key and the revision that last wrote it.
#[derive(Debug, PartialEq)]
pub struct Cached<T> {
    pub key: String,
    pub revision: Revision,
    pub object: T,
}

/// A change to the cache: `old` absent for an addition, `new` absent for a removal.
pub struct Change<'a, T> {
    pub key: &'a str,
    pub old: Option<&'a Arc<Cached<T>>>,
    pub new: Option<&'a Arc<Cached<T>>>,
}

type Parse<T> = Box<dyn Fn(&str, &Record) -> Option<T> + Send + Sync>;
type IndexFn<T> = Box<dyn Fn(&Cached<T>) -> Vec<String> + Send + Sync>;
type Handler<T> = Box<dyn Fn(&Change<'_, T>) + Send + Sync>;

struct Cache<T> {
    items: BTreeMap<String, Arc<Cached<T>>>,
    /// index name → value → keys.
    indexes: HashMap<&'static str, HashMap<String, BTreeSet<String>>>,
}

struct Shared<T> {
    prefixes: Vec<String>,
    parse: Parse<T>,
    index_fns: Vec<(&'static str, IndexFn<T>)>,
    handlers: Vec<Handler<T>>,
    cache: RwLock<Cache<T>>,
    /// The revision the cache reflects; 0 until the first list.
    revision: watch::Sender<Revision>,
    /// How long to gather changes before taking them (see [`InformerBuilder::batch`]).
    batch: Duration,
}

/// Builds an [`Informer`]: what to watch, how to parse it, its indexes and handlers.
pub struct InformerBuilder<T> {
    prefixes: Vec<String>,
    parse: Parse<T>,
    index_fns: Vec<(&'static str, IndexFn<T>)>,
    handlers: Vec<Handler<T>>,
    batch: Duration,
}

impl<T: Send + Sync + 'static> InformerBuilder<T> {
    /// Adds an index: `f` gives the values an object is found under.
    pub fn index(
        mut self,
        name: &'static str,
        f: impl Fn(&Cached<T>) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.index_fns.push((name, Box::new(f)));
        self
    }

    /// Takes changes at most once per `every`, as one batch: under a heavy write load a loop
    /// that need not react within milliseconds (the garbage collector) then wakes a few times
    /// a second instead of once per applied entry. Default: at once.
    pub fn batch(mut self, every: Duration) -> Self {
        self.batch = every;
        self
    }

    /// Adds a handler, called for every change to the cache (from the informer's task).
    pub fn on_change(mut self, f: impl Fn(&Change<'_, T>) + Send + Sync + 'static) -> Self {
        self.handlers.push(Box::new(f));
        self
    }

    pub fn build(self) -> Informer<T> {
        let indexes = self
            .index_fns
            .iter()
            .map(|(name, _)| (*name, HashMap::new()))
            .collect();
        Informer {
            shared: Arc::new(Shared {
                prefixes: self.prefixes,
                parse: self.parse,
                index_fns: self.index_fns,
                handlers: self.handlers,
                cache: RwLock::new(Cache {
                    items: BTreeMap::new(),
                    indexes,
                }),
                revision: watch::channel(0).0,
                batch: self.batch,
            }),
        }
    }
}

/// A typed, indexed cache of the objects under some store prefixes, kept current from the
/// local replica. Clones share the cache.
pub struct Informer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Informer<T> {
    fn clone(&self) -> Self {
        Informer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Send + Sync + 'static> Informer<T> {
    /// An informer of the keys under `prefixes`; `parse` turns a record into the cached type
    /// (`None` leaves the key out).
    pub fn builder(
        prefixes: impl IntoIterator<Item = impl Into<String>>,
        parse: impl Fn(&str, &Record) -> Option<T> + Send + Sync + 'static,
    ) -> InformerBuilder<T> {
        InformerBuilder {
            prefixes: prefixes.into_iter().map(Into::into).collect(),
            parse: Box::new(parse),
            index_fns: Vec::new(),
            handlers: Vec::new(),
            batch: Duration::ZERO,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<T>> {
        self.shared.cache.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Arc<Cached<T>>> {
        self.read().items.get(key).cloned()
    }

    /// Every cached object, in key order.
    pub fn list(&self) -> Vec<Arc<Cached<T>>> {
        self.read().items.values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.read().items.keys().cloned().collect()
    }

    /// The objects found under `value` in index `index`, in key order.
    pub fn by_index(&self, index: &str, value: &str) -> Vec<Arc<Cached<T>>> {
        let cache = self.read();
        let Some(keys) = cache.indexes.get(index).and_then(|i| i.get(value)) else {
            return Vec::new();
        };
        keys.iter()
            .filter_map(|k| cache.items.get(k).cloned())
            .collect()
    }

    /// The revision the cache reflects (0 before the first list).
    pub fn revision(&self) -> Revision {
        *self.shared.revision.borrow()
    }

    /// Waits until the cache reflects at least `revision`.
    pub async fn wait_for(&self, revision: Revision) {
        let mut rx = self.shared.revision.subscribe();
        let _ = rx.wait_for(|r| *r >= revision).await;
    }

    /// Waits for the first list.
    pub async fn synced(&self) {
        self.wait_for(1).await;
    }

    /// Lists, then follows the watch window until `shutdown`; lists again whenever the watch
    /// falls out of the window. Ends with an error only when the store closes or fails.
    pub async fn run(
        self,
        engine: Arc<dyn Engine>,
        shutdown: CancellationToken,
    ) -> Result<(), StoreError> {
        let watch_prefix = common_prefix(&self.shared.prefixes);
        loop {
            let from = engine.applied_revision();
            let mut watcher = match engine.window().watch(watch_prefix.clone(), from) {
                Ok(w) => w,
                // The window was reset under us (a snapshot was installed): read again.
                Err(StoreError::Compacted { .. }) => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Each prefix is listed at a revision of its own, at or after `from`.
            let listed: Vec<(Revision, Vec<(String, Record)>)> = {
                let engine = Arc::clone(&engine);
                let prefixes = self.shared.prefixes.clone();
                tokio::task::spawn_blocking(move || {
                    prefixes
                        .iter()
                        .map(|prefix| {
                            let listing = engine.list(prefix, None, 0)?;
                            Ok((listing.revision, listing.items))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                })
                .await
                .map_err(StoreError::storage)??
            };
            let listed_at: Vec<Revision> = listed.iter().map(|(r, _)| (*r).max(from)).collect();
            // Complete up to the earliest of them; the watch brings the rest.
            let complete = listed_at.iter().copied().min().unwrap_or(from);
            self.replace(
                complete,
                listed.into_iter().flat_map(|(_, items)| items).collect(),
            );
            // Writes under other prefixes move the cache's revision too: it is current through
            // them once everything before them has been applied.
            watcher.on_quiet({
                let this = self.clone();
                let listed_at = listed_at.clone();
                move |revision| {
                    if listed_at.iter().all(|l| *l <= revision) {
                        this.advance(revision);
                    }
                }
            });
            loop {
                let events = if self.shared.batch.is_zero() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        events = watcher.next() => events,
                    }
                } else {
                    // Every `batch`, take what arrived meanwhile: the task does not wake for
                    // each applied entry, matching or not.
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(self.shared.batch) => {}
                    }
                    match tokio::time::timeout(Duration::ZERO, watcher.next()).await {
                        Ok(events) => events,
                        Err(_) => continue,
                    }
                };
                match events {
                    Ok(events) => {
                        for event in &events {
                            let Some(p) = self
                                .shared
                                .prefixes
                                .iter()
                                .position(|p| event.key.starts_with(p))
                            else {
                                continue;
                            };
                            // The list of its prefix already holds every change up to its
                            // revision (a key created and deleted meanwhile is not replayed).
                            if event.revision <= listed_at[p] {
                                continue;
                            }
                            let record = match event.kind {
                                EventKind::Deleted => None,
                                _ => event.record.as_ref(),
                            };
                            self.apply(&event.key, event.revision, record);
                        }
                        self.advance(watcher.cursor());
                    }
                    Err(StoreError::Compacted { requested, oldest }) => {
                        tracing::info!(
                            requested,
                            oldest,
                            "informer fell out of the watch window; listing again"
                        );
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Runs the informer on a task of its own until `shutdown`; `owner` names the loop in the
    /// warning logged if it stops on a store error.
    pub fn spawn(
        &self,
        engine: Arc<dyn Engine>,
        shutdown: CancellationToken,
        owner: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let informer = self.clone();
        tokio::spawn(async move {
            if let Err(e) = informer.run(engine, shutdown).await {
                tracing::warn!(error = %e, owner, "informer stopped");
            }
        })
    }

    fn advance(&self, revision: Revision) {
        self.shared
            .revision
            .send_if_modified(|r| std::mem::replace(r, (*r).max(revision)) < revision);
    }

    /// Replaces the cache with a listing at `revision`, reporting what differs.
    fn replace(&self, revision: Revision, items: Vec<(String, Record)>) {
        let mut fresh: BTreeMap<String, Arc<Cached<T>>> = BTreeMap::new();
        for (key, record) in items {
            if let Some(object) = (self.shared.parse)(&key, &record) {
                let cached = Arc::new(Cached {
                    key: key.clone(),
                    revision: record.mod_revision,
                    object,
                });
                fresh.insert(key, cached);
            }
        }
        let old: Vec<String> = self.read().items.keys().cloned().collect();
        for key in old.iter().filter(|k| !fresh.contains_key(*k)) {
            self.put(key, None);
        }
        for (key, cached) in fresh {
            let same = self
                .get(&key)
                .is_some_and(|c| c.revision == cached.revision);
            if !same {
                self.put(&key, Some(cached));
            }
        }
        self.advance(revision.max(1));
    }

    /// Applies one change at `revision` unless the cache already has a newer one.
    fn apply(&self, key: &str, revision: Revision, record: Option<&Record>) {
        let current = self.get(key);
        if current.as_ref().is_some_and(|c| c.revision >= revision) {
            return;
        }
        let new = record.and_then(|r| {
            let object = (self.shared.parse)(key, r)?;
            Some(Arc::new(Cached {
                key: key.to_string(),
                revision: r.mod_revision,
                object,
            }))
        });
        if current.is_none() && new.is_none() {
            return;
        }
        self.put(key, new);
    }

    /// Sets `key` to `new` (or removes it), keeps the indexes and tells the handlers.
    fn put(&self, key: &str, new: Option<Arc<Cached<T>>>) {
        let old = {
            let mut cache = self.shared.cache.write().unwrap_or_else(|p| p.into_inner());
            let old = match &new {
                Some(n) => cache.items.insert(key.to_string(), Arc::clone(n)),
                None => cache.items.remove(key),
            };
            for (name, f) in &self.shared.index_fns {
                let index = cache.indexes.entry(name).or_default();
                if let Some(o) = &old {
                    for value in f(o) {
                        if let Some(keys) = index.get_mut(&value) {
                            keys.remove(key);
                            if keys.is_empty() {
                                index.remove(&value);
                            }
                        }
                    }
                }
                if let Some(n) = &new {
                    for value in f(n) {
                        index.entry(value).or_default().insert(key.to_string());
                    }
                }
            }
            old
        };
        let change = Change {
            key,
            old: old.as_ref(),
            new: new.as_ref(),
        };
        for handler in &self.shared.handlers {
            handler(&change);
        }
    }
}

/// The longest prefix shared by every listed prefix, for one watcher over all of them.
fn common_prefix(prefixes: &[String]) -> String {
    let Some(first) = prefixes.first() else {
        return String::new();
    };
    let mut len = first.len();
    for p in &prefixes[1..] {
        len = len.min(
            first
                .bytes()
                .zip(p.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    while !first.is_char_boundary(len) {
        len -= 1;
    }
    first[..len].to_string()
}

/// Index values for Kubernetes objects held as JSON.
pub mod index {
    use serde_json::Value;

    /// The object's namespace (cluster-scoped objects have none).
    pub fn namespace(object: &Value) -> Vec<String> {
        object["metadata"]["namespace"]
            .as_str()
            .map(|s| vec![s.to_string()])
            .unwrap_or_default()
    }

    /// `key=value` for every label.
    pub fn labels(object: &Value) -> Vec<String> {
        object["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The uid of every owner.
    pub fn owners(object: &Value) -> Vec<String> {
        object["metadata"]["ownerReferences"]
            .as_array()
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| r["uid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A pod's `spec.nodeName`.
    pub fn node_name(object: &Value) -> Vec<String> {
        object["spec"]["nodeName"]
            .as_str()
            .map(|s| vec![s.to_string()])
            .unwrap_or_default()
    }
}

/// Parses a record's value as JSON.
pub fn parse_json(_key: &str, record: &Record) -> Option<serde_json::Value> {
    serde_json::from_slice(&record.value).ok()
}

/// A fast 64-bit fingerprint of `bytes` (FNV-1a over 8-byte words): it only tells apart two
/// records that already share a key and a revision, so speed matters more than strength.
fn fingerprint(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
    }
    for b in words.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(PRIME);
    }
    h
}

/// Pods parsed once per process. The leader's loops (scheduler, workload controllers, taint
/// eviction, disruption budgets) each keep an informer of pods and all of them see every
/// change: the first to parse a record shares the object with the others, through a window of
/// the most recently parsed records (keyed by key, revision and a hash of the bytes, so that
/// two stores in one process never share a pod).
pub fn parse_pod(key: &str, record: &Record) -> Option<Arc<k8s_openapi::api::core::v1::Pod>> {
    type Parsed = (String, Revision, u64);
    struct Recent {
        pods: HashMap<Parsed, Arc<k8s_openapi::api::core::v1::Pod>>,
        order: std::collections::VecDeque<Parsed>,
    }
    const KEEP: usize = 2048;
    static RECENT: std::sync::OnceLock<std::sync::Mutex<Recent>> = std::sync::OnceLock::new();
    let recent = RECENT.get_or_init(|| {
        std::sync::Mutex::new(Recent {
            pods: HashMap::new(),
            order: std::collections::VecDeque::new(),
        })
    });
    let id = (
        key.to_string(),
        record.mod_revision,
        fingerprint(&record.value),
    );
    if let Some(pod) = recent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pods
        .get(&id)
    {
        return Some(Arc::clone(pod));
    }
    let pod = Arc::new(serde_json::from_slice(&record.value).ok()?);
    let mut r = recent.lock().unwrap_or_else(|p| p.into_inner());
    if r.pods.insert(id.clone(), Arc::clone(&pod)).is_none() {
        r.order.push_back(id);
        while r.order.len() > KEEP {
            if let Some(old) = r.order.pop_front() {
                r.pods.remove(&old);
            }
        }
    }
    Some(pod)
}

#[cfg(test)]
mod tests;
