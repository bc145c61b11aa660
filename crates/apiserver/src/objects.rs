//! Reading objects: get and list of every served resource from the local replica, with label
//! and field selectors, as JSON or as a server-side Table. `metadata.resourceVersion` is the
//! revision (Raft log index) that last wrote the object; a list's is the revision it was read
//! at. Without `resourceVersion=0` a read first waits for a read barrier (linearizable), as in
//! Kubernetes.

use std::collections::BTreeMap;

use flotilla_api::{store_key, store_prefix, FieldSelector, LabelSelector, Resource};
use flotilla_store::{Engine, Record, StoreError};
use serde_json::{json, Value};

/// Where a request points, once the path is parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Target<'a> {
    pub resource: &'static Resource,
    /// Set for namespaced paths (`…/namespaces/NS/…`).
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// Parses `/api/v1/...` or `/apis/G/V/...` into a target; `None` for other paths.
pub fn parse_path<'a>(segments: &[&'a str]) -> Option<Target<'a>> {
    let (group, version, rest) = match segments {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let find = |plural: &str| flotilla_api::find(group, version, plural);
    match rest {
        // `/api/v1/namespaces/NS` is the namespace NS itself.
        ["namespaces", ns, plural, name] => Some(Target {
            resource: find(plural).filter(|r| r.namespaced)?,
            namespace: Some(ns),
            name: Some(name),
        }),
        ["namespaces", ns, plural] => Some(Target {
            resource: find(plural).filter(|r| r.namespaced)?,
            namespace: Some(ns),
            name: None,
        }),
        [plural, name] => Some(Target {
            resource: find(plural)?,
            namespace: None,
            name: Some(name),
        }),
        [plural] => Some(Target {
            resource: find(plural)?,
            namespace: None,
            name: None,
        }),
        _ => None,
    }
}

/// A failed read: HTTP status, reason and message for a `Status`.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ReadError {
    fn bad_request(message: String) -> ReadError {
        ReadError {
            code: 400,
            reason: "BadRequest",
            message,
        }
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> ReadError {
        ReadError {
            code: e.code().http_status(),
            reason: e.code().k8s_reason(),
            message: e.to_string(),
        }
    }
}

/// The query parameters a read takes.
#[derive(Debug, Default)]
pub struct ReadQuery {
    pub label_selector: String,
    pub field_selector: String,
    /// `resourceVersion=0`: any local state will do.
    pub any_version: bool,
    pub table: bool,
    /// `watch=true` (or `1`).
    pub watch: bool,
    /// The `resourceVersion` given, if any.
    pub resource_version: Option<String>,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u64>,
    /// `limit`: at most this many items in a page (0 or absent: all).
    pub limit: usize,
    /// `continue`: the token of the previous page.
    pub continue_token: Option<String>,
}

impl ReadQuery {
    pub fn parse(query: Option<&str>, accept: &str) -> ReadQuery {
        let mut q = ReadQuery {
            table: accept.contains("as=Table"),
            ..ReadQuery::default()
        };
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "labelSelector" => q.label_selector = v,
                "fieldSelector" => q.field_selector = v,
                "resourceVersion" => {
                    q.any_version = v == "0";
                    q.resource_version = Some(v);
                }
                "watch" => q.watch = v == "true" || v == "1",
                "timeoutSeconds" => q.timeout_seconds = v.parse().ok(),
                "limit" => q.limit = v.parse().unwrap_or(0),
                "continue" if !v.is_empty() => q.continue_token = Some(v),
                _ => {}
            }
        }
        q
    }
}

impl ReadQuery {
    /// The label and field selectors, parsed; a bad one is a 400.
    pub fn selectors(&self) -> Result<(LabelSelector, FieldSelector), ReadError> {
        let labels = LabelSelector::parse(&self.label_selector)
            .map_err(|e| ReadError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(&self.field_selector)
            .map_err(|e| ReadError::bad_request(e.to_string()))?;
        Ok((labels, fields))
    }
}

/// The value of `name` in a query string, decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
}

/// Every value of a repeated query parameter (`command=sh&command=-c`), in order.
pub fn query_params(query: Option<&str>, name: &str) -> Vec<String> {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

/// Decodes `%XX` escapes and `+` in a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The object as served: its stored JSON with `resourceVersion` set.
pub(crate) fn object_of(record: &Record) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(&record.value).ok()?;
    v.get_mut("metadata")?.as_object_mut()?.insert(
        "resourceVersion".into(),
        json!(record.mod_revision.to_string()),
    );
    Some(v)
}

/// The value of a dotted field path (`spec.nodeName`), as text; missing is "".
pub(crate) fn field_value(object: &Value, path: &str) -> Option<String> {
    let mut cur = object;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    Some(match cur {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

pub(crate) fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What a read answers: a JSON value, or JSON text made without parsing the stored objects.
pub enum ReadBody {
    Json(Value),
    Raw(Vec<u8>),
}

#[cfg(test)]
impl ReadBody {
    /// The answer as a value (parsing raw text).
    pub fn into_value(self) -> Value {
        match self {
            ReadBody::Json(v) => v,
            ReadBody::Raw(text) => serde_json::from_slice(&text).expect("the server's own JSON"),
        }
    }
}

/// What a read does before it reads the local replica: checks the selectors, and waits for
/// a read barrier unless `resourceVersion=0`.
pub async fn before_read(
    proposer: &dyn flotilla_store::Proposer,
    query: &ReadQuery,
) -> Result<(), ReadError> {
    query.selectors()?;
    if !query.any_version {
        proposer.read_barrier().await?;
    }
    Ok(())
}

/// Reads the target, one object or a list (the server does the same, [`read_local`] on the
/// blocking pool).
#[cfg(test)]
pub async fn read(
    engine: &dyn Engine,
    proposer: &dyn flotilla_store::Proposer,
    target: &Target<'_>,
    query: &ReadQuery,
) -> Result<ReadBody, ReadError> {
    before_read(proposer, query).await?;
    read_local(engine, target, query)
}

/// [`read`] after its read barrier: the local replica's answer. A list scans and serialises
/// every object of the page, so the server calls it on the blocking pool.
pub fn read_local(
    engine: &dyn Engine,
    target: &Target<'_>,
    query: &ReadQuery,
) -> Result<ReadBody, ReadError> {
    let (labels, fields) = query.selectors()?;
    let r = target.resource;
    if let Some(name) = target.name {
        let key = store_key(r, target.namespace.unwrap_or(""), name);
        let (_, record) = engine.get(&key)?;
        let object = record
            .as_ref()
            .and_then(object_of)
            .ok_or_else(|| ReadError {
                code: 404,
                reason: "NotFound",
                message: format!("{} \"{name}\" not found", r.plural),
            })?;
        return Ok(ReadBody::Json(if query.table {
            table(r, vec![object], None)
        } else {
            object
        }));
    }
    let prefix = store_prefix(r, target.namespace);
    let (start, first_revision) = match &query.continue_token {
        Some(token) => {
            let (key, revision) = parse_continue(token)
                .filter(|(key, _)| key.starts_with(&prefix))
                .ok_or_else(|| {
                    ReadError::bad_request(
                        "continue key is not valid: not one this server made for this list".into(),
                    )
                })?;
            (Some(key), Some(revision))
        }
        None => (None, None),
    };
    let unfiltered = labels.is_empty() && fields.fields().next().is_none();
    if unfiltered && !query.table {
        // Every stored object as it is, with its revision spliced in.
        let page = list_page(engine, &prefix, start, query.limit, |rec| {
            crate::raw::with_resource_version(&rec.value, rec.mod_revision)
                .or_else(|| object_of(rec).map(|o| o.to_string().into_bytes()))
        })?;
        let revision = first_revision.unwrap_or(page.revision).to_string();
        let mut metadata = json!({"resourceVersion": revision});
        if let Some(k) = &page.last_key {
            metadata["continue"] = json!(make_continue(k, first_revision.unwrap_or(page.revision)));
        }
        let head = format!(
            r#"{{"kind":"{}List","apiVersion":"{}","metadata":{metadata},"items":["#,
            r.kind,
            r.api_version()
        );
        let size = head.len() + page.items.iter().map(|i| i.len() + 1).sum::<usize>() + 2;
        let mut body = Vec::with_capacity(size);
        body.extend_from_slice(head.as_bytes());
        for (i, item) in page.items.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(item);
        }
        body.extend_from_slice(b"]}");
        return Ok(ReadBody::Raw(body));
    }
    let page = list_page(engine, &prefix, start, query.limit, |rec| {
        object_of(rec)
            .filter(|o| labels.matches(&labels_of(o)) && fields.matches(|f| field_value(o, f)))
    })?;
    // Later pages are read at their own revision; the list reports the first page's.
    let revision = first_revision.unwrap_or(page.revision).to_string();
    let continue_token = page
        .last_key
        .map(|k| make_continue(&k, first_revision.unwrap_or(page.revision)));
    Ok(ReadBody::Json(if query.table {
        let mut t = table(r, page.items, Some(revision));
        if let Some(c) = continue_token {
            t["metadata"]["continue"] = json!(c);
        }
        t
    } else {
        let mut metadata = json!({"resourceVersion": revision});
        if let Some(c) = continue_token {
            metadata["continue"] = json!(c);
        }
        json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": metadata,
            "items": page.items,
        })
    }))
}

/// One page of a list.
struct Page<T> {
    items: Vec<T>,
    revision: u64,
    /// Set when more may follow: the last key examined.
    last_key: Option<String>,
}

/// Up to `limit` (0: all) records under `prefix` after `start` that `convert` turns into an
/// item (`None`: filtered out), read in chunks so that a selective filter still fills the page.
fn list_page<T>(
    engine: &dyn Engine,
    prefix: &str,
    mut start: Option<String>,
    limit: usize,
    convert: impl Fn(&Record) -> Option<T>,
) -> Result<Page<T>, ReadError> {
    let mut items = Vec::new();
    let mut revision = None;
    loop {
        // One more than the page, so that a page that ends the list is known to.
        let chunk = if limit == 0 { 0 } else { (limit + 1).max(100) };
        let listing = engine.list(prefix, start.as_deref(), chunk)?;
        revision.get_or_insert(listing.revision);
        let exhausted = chunk == 0 || listing.items.len() < chunk;
        for (key, record) in &listing.items {
            start = Some(key.clone());
            if let Some(item) = convert(record) {
                items.push(item);
                if limit > 0 && items.len() == limit {
                    let more = !exhausted || listing.items.last().map(|(k, _)| k) != Some(key);
                    return Ok(Page {
                        items,
                        revision: revision.unwrap_or_default(),
                        last_key: more.then(|| key.clone()),
                    });
                }
            }
        }
        if exhausted {
            return Ok(Page {
                items,
                revision: revision.unwrap_or_default(),
                last_key: None,
            });
        }
    }
}

/// A continue token: the list's revision and the last key served, base64url.
fn make_continue(key: &str, revision: u64) -> String {
    use base64::Engine as _;
    let text = json!({"v": 1, "rv": revision, "start": key}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn parse_continue(token: &str) -> Option<(String, u64)> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    Some((v["start"].as_str()?.to_string(), v["rv"].as_u64()?))
}

/// Seconds since the Unix epoch of an RFC 3339 UTC timestamp (`2026-12-01T03:10:48Z`).
pub(crate) fn unix_seconds(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// An age as kubectl prints it: `45s`, `3m12s`, `17m`, `5h3m`, `20h`, `3d4h`, `40d`, `2y`.
pub(crate) fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 => format!("{d}d{}h", h % 24),
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How long ago a timestamp was, as kubectl prints ages.
pub(crate) fn age_text(timestamp: &str) -> Option<String> {
    unix_seconds(timestamp).map(|t| human_age(now_unix() - t))
}

fn age_of(object: &Value) -> Value {
    match object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(age_text)
    {
        Some(age) => json!(age),
        None => json!("<unknown>"),
    }
}

/// A server-side Table: the name and age columns every resource has, and each row's object
/// metadata (kubectl needs it for `-A` and `--show-labels`). Resource-specific columns come
/// with the handlers of each resource.
pub(crate) fn table(r: &Resource, objects: Vec<Value>, revision: Option<String>) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|o| {
            let mut cells = Vec::new();
            if crate::columns::leads_with_name(r) {
                cells.push(o["metadata"]["name"].clone());
            }
            cells.extend(crate::columns::cells(r, &o, age_of(&o)));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                },
            })
        })
        .collect();
    let mut metadata = json!({});
    if let Some(rv) = revision {
        metadata["resourceVersion"] = json!(rv);
    }
    let mut columns = Vec::new();
    if crate::columns::leads_with_name(r) {
        columns.push(json!({"name": "Name", "type": "string", "format": "name", "description": format!("Name of the {}", r.singular), "priority": 0}));
    }
    columns.extend(crate::columns::columns(r).into_iter().map(|(name, kind, priority)| {
        json!({"name": name, "type": kind, "format": "", "description": name, "priority": priority})
    }));
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_store::{Command, MemoryStore, Proposer};

    /// `read`, answering a value.
    async fn read(
        engine: &dyn Engine,
        proposer: &dyn Proposer,
        target: &Target<'_>,
        query: &ReadQuery,
    ) -> Result<Value, ReadError> {
        super::read(engine, proposer, target, query)
            .await
            .map(ReadBody::into_value)
    }

    fn node(name: &str, zone: &str) -> Vec<u8> {
        json!({
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "labels": {"zone": zone}, "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"podCIDR": "10.244.0.0/24"},
        })
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn lists_page_with_limit_and_continue() {
        let store = MemoryStore::new(1000);
        for i in 0..250 {
            let zone = if i % 2 == 0 { "even" } else { "odd" };
            store
                .propose(Command::create(
                    format!("/core/nodes/n{i:03}"),
                    node(&format!("n{i:03}"), zone),
                ))
                .await
                .unwrap();
        }
        let nodes = parse_path(&["api", "v1", "nodes"]).unwrap();
        let names = |list: &Value| -> Vec<String> {
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        // Every even node, 40 at a time: the filter is applied before the limit.
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        let mut first_rv = None;
        loop {
            let query = match &token {
                Some(t) => format!("labelSelector=zone%3Deven&limit=40&continue={t}"),
                None => "labelSelector=zone%3Deven&limit=40".to_string(),
            };
            let page = read(&store, &store, &nodes, &ReadQuery::parse(Some(&query), ""))
                .await
                .unwrap();
            pages += 1;
            let rv = page["metadata"]["resourceVersion"].clone();
            assert_eq!(
                *first_rv.get_or_insert(rv.clone()),
                rv,
                "every page reports the list's revision"
            );
            let got = names(&page);
            assert!(got.len() <= 40);
            seen.extend(got);
            match page["metadata"]["continue"].as_str() {
                Some(t) => token = Some(t.to_string()),
                None => break,
            }
        }
        let expected: Vec<String> = (0..250).step_by(2).map(|i| format!("n{i:03}")).collect();
        assert_eq!(seen, expected);
        assert_eq!(pages, 4, "125 items at 40 a page");
        // An exact fit has no continue token.
        let page = read(
            &store,
            &store,
            &nodes,
            &ReadQuery::parse(Some("limit=250"), ""),
        )
        .await
        .unwrap();
        assert_eq!(names(&page).len(), 250);
        assert!(page["metadata"]["continue"].is_null());
        let bad = read(
            &store,
            &store,
            &nodes,
            &ReadQuery::parse(Some("limit=5&continue=garbage"), ""),
        )
        .await
        .unwrap_err();
        assert_eq!(bad.code, 400);
        let foreign = make_continue("/core/pods/default/x", 1);
        let q = format!("limit=5&continue={foreign}");
        assert_eq!(
            read(&store, &store, &nodes, &ReadQuery::parse(Some(&q), ""))
                .await
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(unix_seconds("2000-03-01T00:00:01Z"), Some(951_868_801));
        assert_eq!(unix_seconds("2026-12-01T03:10:48Z"), Some(1_796_094_648));
        assert_eq!(unix_seconds("yesterday"), None);
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (192, "3m12s"),
            (17 * 60, "17m"),
            (5 * 3600 + 180, "5h3m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (40 * 86_400, "40d"),
            (800 * 86_400, "2y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_age(secs), want);
        }
    }

    #[test]
    fn paths_name_the_resource_namespace_and_object() {
        let t = parse_path(&["api", "v1", "namespaces", "default", "pods", "web"]).unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace, t.name),
            ("pods", Some("default"), Some("web"))
        );
        let t = parse_path(&["api", "v1", "namespaces", "default"]).unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace, t.name),
            ("namespaces", None, Some("default"))
        );
        let t = parse_path(&["apis", "apps", "v1", "deployments"]).unwrap();
        assert_eq!(
            (t.resource.plural, t.namespace, t.name),
            ("deployments", None, None)
        );
        assert!(parse_path(&["api", "v1", "namespaces", "x", "nodes"]).is_none());
        assert!(parse_path(&["api", "v1", "frobs"]).is_none());
        assert!(parse_path(&["healthz"]).is_none());
    }

    #[tokio::test]
    async fn get_and_list_with_selectors_and_tables() {
        let store = MemoryStore::new(100);
        for (name, zone) in [("n1", "a"), ("n2", "b")] {
            store
                .propose(Command::create(
                    format!("/core/nodes/{name}"),
                    node(name, zone),
                ))
                .await
                .unwrap();
        }
        let nodes = parse_path(&["api", "v1", "nodes"]).unwrap();
        let list = read(&store, &store, &nodes, &ReadQuery::default())
            .await
            .unwrap();
        assert_eq!(list["kind"], "NodeList");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        assert_eq!(list["items"][0]["metadata"]["resourceVersion"], "1");
        assert_eq!(list["metadata"]["resourceVersion"], "2");

        let q = ReadQuery::parse(Some("labelSelector=zone%3Db&limit=500"), "application/json");
        let list = read(&store, &store, &nodes, &q).await.unwrap();
        let names: Vec<&str> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["n2"]);

        let q = ReadQuery::parse(Some("fieldSelector=metadata.name!=n2"), "application/json");
        let list = read(&store, &store, &nodes, &q).await.unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["metadata"]["name"], "n1");

        let q = ReadQuery::parse(
            None,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        );
        let table = read(&store, &store, &nodes, &q).await.unwrap();
        assert_eq!(table["kind"], "Table");
        assert_eq!(table["rows"][1]["cells"][0], "n2");
        assert_eq!(
            table["rows"][1]["object"]["metadata"]["labels"]["zone"],
            "b"
        );

        let one = parse_path(&["api", "v1", "nodes", "n1"]).unwrap();
        let got = read(&store, &store, &one, &ReadQuery::default())
            .await
            .unwrap();
        assert_eq!(got["spec"]["podCIDR"], "10.244.0.0/24");
        let missing = parse_path(&["api", "v1", "nodes", "n9"]).unwrap();
        let err = read(&store, &store, &missing, &ReadQuery::default())
            .await
            .unwrap_err();
        assert_eq!((err.code, err.reason), (404, "NotFound"));
        assert_eq!(err.message, "nodes \"n9\" not found");

        let bad = ReadQuery::parse(Some("labelSelector=a%20in%20b"), "");
        let err = read(&store, &store, &nodes, &bad).await.unwrap_err();
        assert_eq!(err.code, 400);
    }
}
