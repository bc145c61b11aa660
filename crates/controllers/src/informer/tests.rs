use std::sync::Mutex;
use std::time::Duration;

use flotilla_store::{Command, MemoryStore, Proposer};
use serde_json::{json, Value};

use super::*;

fn pod(name: &str, node: &str, owner: &str) -> String {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
            "ownerReferences": [{"uid": owner}]},
        "spec": {"nodeName": node}})
    .to_string()
}

fn key(name: &str) -> String {
    format!("/core/pods/default/{name}")
}

type Seen = Arc<Mutex<Vec<(String, bool, bool)>>>;

fn informer(seen: &Seen) -> Informer<Value> {
    let seen = Arc::clone(seen);
    Informer::builder(["/core/pods/"], parse_json)
        .index("node", |c: &Cached<Value>| index::node_name(&c.object))
        .index("owner", |c: &Cached<Value>| index::owners(&c.object))
        .index("label", |c: &Cached<Value>| index::labels(&c.object))
        .on_change(move |c| {
            seen.lock()
                .unwrap()
                .push((c.key.to_string(), c.old.is_some(), c.new.is_some()))
        })
        .build()
}

async fn start(store: &Arc<MemoryStore>, informer: &Informer<Value>) -> CancellationToken {
    let stop = CancellationToken::new();
    let engine: Arc<dyn Engine> = Arc::clone(store) as _;
    tokio::spawn(informer.clone().run(engine, stop.clone()));
    tokio::time::timeout(Duration::from_secs(5), informer.synced())
        .await
        .expect("the first list");
    stop
}

async fn settle(informer: &Informer<Value>, revision: Revision) {
    tokio::time::timeout(Duration::from_secs(5), informer.wait_for(revision))
        .await
        .expect("the informer catches up");
}

#[tokio::test]
async fn lists_then_follows_changes_with_indexes() {
    let store = Arc::new(MemoryStore::new(1000));
    store
        .propose(Command::create(key("a"), pod("a", "n1", "rs1")))
        .await
        .unwrap();
    store
        .propose(Command::create("/core/configmaps/default/x", "{}"))
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let inf = informer(&seen);
    let stop = start(&store, &inf).await;
    assert_eq!(inf.keys(), vec![key("a")]);

    let rev = store
        .propose(Command::create(key("b"), pod("b", "n2", "rs1")))
        .await
        .unwrap();
    settle(&inf, rev).await;
    let names =
        |v: Vec<Arc<Cached<Value>>>| -> Vec<String> { v.iter().map(|c| c.key.clone()).collect() };
    assert_eq!(
        names(inf.by_index("owner", "rs1")),
        vec![key("a"), key("b")]
    );
    assert_eq!(names(inf.by_index("node", "n2")), vec![key("b")]);
    assert_eq!(names(inf.by_index("label", "app=web")).len(), 2);

    // An update moves the object between index values; a delete removes it from every index.
    let rev_b = inf.get(&key("b")).unwrap().revision;
    store
        .propose(Command::update(
            key("b"),
            pod("b", "n1", "rs2"),
            Some(rev_b),
        ))
        .await
        .unwrap();
    let rev = store
        .propose(Command::delete(key("a"), None))
        .await
        .unwrap();
    settle(&inf, rev).await;
    assert!(inf.by_index("node", "n2").is_empty());
    assert_eq!(names(inf.by_index("node", "n1")), vec![key("b")]);
    assert!(inf.by_index("owner", "rs1").is_empty());
    assert!(inf.get(&key("a")).is_none());

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (key("a"), false, true),
            (key("b"), false, true),
            (key("b"), true, true),
            (key("a"), true, false),
        ]
    );
    stop.cancel();
}

#[tokio::test]
async fn falling_out_of_the_window_lists_again_and_reports_only_differences() {
    // A window of two events: a burst of writes while the informer is not reading compacts it.
    let store = Arc::new(MemoryStore::new(2));
    for name in ["a", "b", "c"] {
        store
            .propose(Command::create(key(name), pod(name, "n1", "o")))
            .await
            .unwrap();
    }
    let seen: Seen = Arc::default();
    let inf = informer(&seen);
    // Keep the informer's task from running between the writes: a current-thread runtime
    // only switches tasks at an await, and proposing to the memory store never waits.
    let stop = start(&store, &inf).await;
    seen.lock().unwrap().clear();
    store
        .propose(Command::delete(key("a"), None))
        .await
        .unwrap();
    for i in 0..5 {
        store
            .propose(Command::create(format!("/core/other/{i}"), "{}"))
            .await
            .unwrap();
    }
    let rev = store
        .propose(Command::create(key("d"), pod("d", "n1", "o")))
        .await
        .unwrap();
    settle(&inf, rev).await;
    assert_eq!(inf.keys(), vec![key("b"), key("c"), key("d")]);
    // The relist reported the deletion and the addition, not the unchanged b and c.
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(key("a"), true, false), (key("d"), false, true)]
    );
    stop.cancel();
}

#[test]
fn one_watch_covers_every_prefix() {
    let p = |v: &[&str]| common_prefix(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(p(&["/core/pods/", "/core/nodes/"]), "/core/");
    assert_eq!(p(&["/core/pods/"]), "/core/pods/");
    assert_eq!(p(&["/apps/x/", "/core/y/"]), "/");
    assert_eq!(p(&[]), "");
}

/// A replica where a key is created and deleted between the informer's watch and its list.
struct RacingEngine {
    inner: Arc<MemoryStore>,
    raced: std::sync::atomic::AtomicBool,
}

impl Engine for RacingEngine {
    fn get(&self, key: &str) -> Result<(Revision, Option<Record>), StoreError> {
        self.inner.get(key)
    }
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<flotilla_store::Listing, StoreError> {
        if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // On the blocking pool, as the informer lists.
            let handle = tokio::runtime::Handle::current();
            handle
                .block_on(
                    self.inner
                        .propose(Command::create(key("ghost"), pod("ghost", "n1", "o"))),
                )
                .unwrap();
            handle
                .block_on(self.inner.propose(Command::delete(key("ghost"), None)))
                .unwrap();
        }
        self.inner.list(prefix, start_after, limit)
    }
    fn applied_revision(&self) -> Revision {
        self.inner.applied_revision()
    }
    fn window(&self) -> &Arc<flotilla_store::WatchWindow> {
        self.inner.window()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_and_deleted_during_the_list_is_never_seen() {
    let store = Arc::new(MemoryStore::new(1000));
    store
        .propose(Command::create(key("a"), pod("a", "n1", "o")))
        .await
        .unwrap();
    let engine: Arc<dyn Engine> = Arc::new(RacingEngine {
        inner: Arc::clone(&store),
        raced: Default::default(),
    });
    let seen: Seen = Arc::default();
    let inf = informer(&seen);
    let stop = CancellationToken::new();
    tokio::spawn(inf.clone().run(engine, stop.clone()));
    tokio::time::timeout(Duration::from_secs(5), inf.synced())
        .await
        .unwrap();
    let rev = store
        .propose(Command::create(key("b"), pod("b", "n1", "o")))
        .await
        .unwrap();
    settle(&inf, rev).await;
    assert_eq!(inf.keys(), vec![key("a"), key("b")]);
    let keys: Vec<String> = seen.lock().unwrap().iter().map(|s| s.0.clone()).collect();
    assert_eq!(keys, vec![key("a"), key("b")], "the ghost was replayed");
    stop.cancel();
}

#[tokio::test]
async fn writes_under_other_prefixes_move_the_revision_too() {
    let store = Arc::new(MemoryStore::new(1000));
    store
        .propose(Command::create(key("a"), pod("a", "n1", "rs1")))
        .await
        .unwrap();
    let seen: Seen = Arc::default();
    let informer = informer(&seen);
    let stop = start(&store, &informer).await;
    // A write of another kind after the list: the pods' cache is current through it.
    let other = store
        .propose(Command::create("/core/configmaps/default/x", "{}"))
        .await
        .unwrap();
    settle(&informer, other).await;
    assert!(informer.revision() >= other);
    stop.cancel();
}
