//! Watches (`?watch=true`): one JSON event per line over a chunked response, as Kubernetes
//! streams them. Without a `resourceVersion` (or with `0`) the current objects come first as
//! ADDED events, then every change after the revision they were read at; with one, every change
//! after it. A revision older than the watch window ends the stream with an ERROR event
//! carrying a 410 `Expired` Status, which makes clients list again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_api::{store_prefix, FieldSelector, LabelSelector};
use flotilla_store::{Engine, EventKind, Record, WatchWindow};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use flotilla_api::Resource;

use crate::objects::{field_value, labels_of, object_of, table};

/// What a watch request asked for.
pub struct WatchRequest {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None`: start with the current objects.
    pub after: Option<u64>,
    pub timeout: Option<Duration>,
    pub table: bool,
}

/// An event line from a stored record without parsing it (no selectors, no Table): the
/// record's bytes with `revision` spliced in as the resourceVersion.
fn raw_line(kind: &str, record: &Record, revision: u64) -> Option<Bytes> {
    let object = crate::raw::with_resource_version(&record.value, revision)?;
    let mut s = Vec::with_capacity(object.len() + 32);
    s.extend_from_slice(b"{\"type\":\"");
    s.extend_from_slice(kind.as_bytes());
    s.extend_from_slice(b"\",\"object\":");
    s.extend_from_slice(&object);
    s.extend_from_slice(b"}\n");
    Some(Bytes::from(s))
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Everything under `prefix`, scanned on the blocking pool.
async fn list_blocking(
    engine: &Arc<dyn Engine>,
    prefix: &str,
) -> Result<flotilla_store::Listing, flotilla_store::StoreError> {
    let (engine, prefix) = (Arc::clone(engine), prefix.to_string());
    tokio::task::spawn_blocking(move || engine.list(&prefix, None, 0))
        .await
        .map_err(flotilla_store::StoreError::storage)?
}

/// Streams the events into `tx` until the client goes, the timeout passes or the window ends.
pub async fn run(
    engine: Arc<dyn Engine>,
    window: Arc<WatchWindow>,
    r: &'static Resource,
    namespace: Option<String>,
    req: WatchRequest,
    tx: mpsc::Sender<Bytes>,
) {
    let prefix = store_prefix(r, namespace.as_deref());
    let unfiltered = req.labels.is_empty() && req.fields.fields().next().is_none() && !req.table;
    let matches =
        |o: &Value| req.labels.matches(&labels_of(o)) && req.fields.matches(|f| field_value(o, f));
    let shape = |o: Value| {
        if req.table {
            table(r, vec![o], None)
        } else {
            o
        }
    };
    let after = match req.after {
        Some(rv) => rv,
        None => match list_blocking(&engine, &prefix).await {
            Ok(listing) => {
                for (_, rec) in &listing.items {
                    if let Some(l) = raw_line("ADDED", rec, rec.mod_revision).filter(|_| unfiltered)
                    {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    if let Some(o) = object_of(rec).filter(&matches) {
                        if tx.send(line("ADDED", shape(o))).await.is_err() {
                            return;
                        }
                    }
                }
                listing.revision
            }
            Err(e) => {
                let _ = tx
                    .send(line(
                        "ERROR",
                        crate::status_failure(
                            hyper::StatusCode::SERVICE_UNAVAILABLE,
                            "ServiceUnavailable",
                            &e.to_string(),
                        ),
                    ))
                    .await;
                return;
            }
        },
    };
    let mut watcher = match window.watch(prefix, after) {
        Ok(w) => w,
        Err(e) => {
            let _ = tx
                .send(line(
                    "ERROR",
                    crate::status_failure(
                        hyper::StatusCode::GONE,
                        "Expired",
                        &format!("too old resource version: {e}"),
                    ),
                ))
                .await;
            return;
        }
    };
    let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, watcher.next()).await.ok(),
                None => Some(watcher.next().await),
            }
        };
        let events = tokio::select! {
            _ = tx.closed() => return,
            events = next => match events {
                None => return,
                Some(Ok(events)) => events,
                Some(Err(e)) => {
                    let _ = tx.send(line("ERROR", crate::status_failure(hyper::StatusCode::GONE, "Expired", &e.to_string()))).await;
                    return;
                }
            },
        };
        // The events of one revision (a batch of writes) leave in one chunk: a client that
        // resumes from a revision has then seen all of its events unless the connection broke
        // inside that one write.
        let mut chunk: Vec<u8> = Vec::new();
        let mut chunk_revision = None;
        for event in events {
            if chunk_revision != Some(event.revision)
                && !chunk.is_empty()
                && tx
                    .send(Bytes::from(std::mem::take(&mut chunk)))
                    .await
                    .is_err()
            {
                return;
            }
            chunk_revision = Some(event.revision);
            let (kind, record): (&str, Option<&Record>) = match event.kind {
                EventKind::Created => ("ADDED", event.record.as_ref()),
                EventKind::Updated => ("MODIFIED", event.record.as_ref()),
                EventKind::Deleted => ("DELETED", event.prev.as_ref()),
            };
            if let Some(l) = record
                .filter(|_| unfiltered)
                .and_then(|rec| raw_line(kind, rec, event.revision))
            {
                chunk.extend_from_slice(&l);
                continue;
            }
            let Some(mut object) = record.and_then(object_of) else {
                continue;
            };
            if event.kind == EventKind::Deleted {
                object["metadata"]["resourceVersion"] = json!(event.revision.to_string());
            }
            if !matches(&object) {
                continue;
            }
            chunk.extend_from_slice(&line(kind, shape(object)));
        }
        if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{Command, MemoryStore, Proposer};

    fn cm(name: &str, v: &str) -> String {
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "labels": {"app": "x"}}, "data": {"k": v}}).to_string()
    }

    async fn next_event(rx: &mut mpsc::Receiver<Bytes>) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the stream is open");
        serde_json::from_slice(&line).unwrap()
    }

    /// A watch of the configMaps in `default`, its lines in the receiver.
    fn watch_configmaps(store: &Arc<MemoryStore>, req: WatchRequest) -> mpsc::Receiver<Bytes> {
        let r = flotilla_api::find("", "v1", "configmaps").unwrap();
        let (tx, rx) = mpsc::channel(16);
        let engine: Arc<dyn Engine> = store.clone();
        tokio::spawn(run(
            engine,
            Arc::clone(store.window()),
            r,
            Some("default".into()),
            req,
            tx,
        ));
        rx
    }

    fn request(after: Option<u64>) -> WatchRequest {
        WatchRequest {
            labels: LabelSelector::parse("app=x").unwrap(),
            fields: FieldSelector::default(),
            after,
            timeout: None,
            table: false,
        }
    }

    #[tokio::test]
    async fn the_events_of_one_revision_leave_in_one_chunk() {
        let store = Arc::new(MemoryStore::new(100));
        let mut rx = watch_configmaps(&store, request(Some(store.applied_revision())));
        let ops = ["a", "b"]
            .map(|n| flotilla_store::Op::Create {
                key: format!("/core/configmaps/default/{n}"),
                value: cm(n, "1").into_bytes(),
            })
            .to_vec();
        let revision = store.propose(Command::batch(ops)).await.unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a chunk within 5 s")
            .expect("the stream is open");
        let lines: Vec<Value> = chunk
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        for (l, name) in lines.iter().zip(["a", "b"]) {
            assert_eq!(l["type"], "ADDED");
            assert_eq!(l["object"]["metadata"]["name"], name);
            assert_eq!(
                l["object"]["metadata"]["resourceVersion"],
                revision.to_string()
            );
        }
    }

    #[tokio::test]
    async fn current_objects_then_every_change_in_order() {
        let store = Arc::new(MemoryStore::new(100));
        store
            .propose(Command::create("/core/configmaps/default/a", cm("a", "1")))
            .await
            .unwrap();
        let mut rx = watch_configmaps(&store, request(None));
        let first = next_event(&mut rx).await;
        assert_eq!(
            (
                first["type"].as_str(),
                first["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("a"))
        );
        store
            .propose(Command::update(
                "/core/configmaps/default/a",
                cm("a", "2"),
                None,
            ))
            .await
            .unwrap();
        store
            .propose(Command::create("/core/configmaps/default/b", cm("b", "1")))
            .await
            .unwrap();
        store
            .propose(Command::delete("/core/configmaps/default/a", None))
            .await
            .unwrap();
        let kinds: Vec<(String, String, String)> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                let e = next_event(&mut rx).await;
                v.push((
                    e["type"].as_str().unwrap().to_string(),
                    e["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    e["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                ));
            }
            v
        };
        assert_eq!(
            kinds,
            [
                ("MODIFIED".into(), "a".into(), "2".into()),
                ("ADDED".into(), "b".into(), "3".into()),
                ("DELETED".into(), "a".into(), "4".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_revision_older_than_the_window_ends_with_410() {
        let store = Arc::new(MemoryStore::new(2));
        for i in 0..5 {
            store
                .propose(Command::create(
                    format!("/core/configmaps/default/c{i}"),
                    cm("c", "1"),
                ))
                .await
                .unwrap();
        }
        let r = flotilla_api::find("", "v1", "configmaps").unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let engine: Arc<dyn Engine> = store.clone();
        tokio::spawn(run(
            engine,
            Arc::clone(store.window()),
            r,
            None,
            request(Some(1)),
            tx,
        ));
        let e = next_event(&mut rx).await;
        assert_eq!(e["type"], "ERROR");
        assert_eq!(e["object"]["code"], 410);
        assert_eq!(e["object"]["reason"], "Expired");
    }
}
