//! A service's cluster IP and node ports at admission: picked (or checked) in the local
//! replica by `flotilla_api::services`, and held by keys written in the same Raft command as
//! the service. A key someone took meanwhile refuses the whole command; the write is then
//! planned again from a fresh read, so nothing is ever given twice.

use flotilla_api::services::{self, Holder};
use flotilla_api::Resource;
use flotilla_store::{Command, Engine, Op, Proposer, StoreError};
use serde_json::{json, Value};

use crate::writes::{invalid, kept_changing, store_failure, WriteError, Written};

pub(crate) fn is_service(r: &Resource) -> bool {
    r.kind == "Service" && r.group.is_empty()
}

/// Fills in the addresses of the admitted `service` (`old`: the stored one of an update) and
/// gives the operations that take and release their keys beside the service's own write.
pub(crate) fn allocation_ops(
    engine: &dyn Engine,
    r: &Resource,
    name: &str,
    service: &mut Value,
    old: Option<&Value>,
) -> Result<Vec<Op>, WriteError> {
    let uid = service["metadata"]["uid"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let holder = |key: &str| match engine.get(key) {
        Ok((_, Some(record))) => match services::held_by(&record.value) {
            Some((_, _, held)) if held == uid => Holder::This,
            _ => Holder::Other,
        },
        Ok((_, None)) => Holder::Free,
        // Unreadable: never hand it out.
        Err(_) => Holder::Other,
    };
    let allocation = services::allocate(service, old, &holder, &mut rand::rng())
        .map_err(|causes| invalid(r, name, causes))?;
    let value = services::holder(service);
    let mut ops: Vec<Op> = allocation
        .take
        .into_iter()
        .map(|key| Op::Create {
            key,
            value: value.clone(),
        })
        .collect();
    for key in allocation.release {
        if let (_, Some(record)) = engine.get(&key).map_err(|e| store_failure(r, name, e))? {
            ops.push(Op::Delete {
                key,
                expected: Some(record.mod_revision),
            });
        }
    }
    Ok(ops)
}

/// Creates the admitted `service` at `key` with its addresses, in one command; one taken
/// meanwhile through another node refuses it, and the addresses are picked again after a
/// read barrier.
pub(crate) async fn create(
    engine: &dyn Engine,
    proposer: &dyn Proposer,
    r: &Resource,
    key: &str,
    name: &str,
    object: Value,
    warnings: Vec<String>,
) -> Result<Written, WriteError> {
    for _ in 0..crate::update::ATTEMPTS {
        let mut service = object.clone();
        let extra = allocation_ops(engine, r, name, &mut service, None)?;
        let create = Op::Create {
            key: key.to_string(),
            value: service.to_string().into_bytes(),
        };
        let command = Command::batch([create].into_iter().chain(extra).collect());
        match proposer.propose(command).await {
            Ok(revision) => {
                service["metadata"]["resourceVersion"] = json!(revision.to_string());
                return Ok(Written {
                    object: service,
                    warnings,
                });
            }
            Err(StoreError::AlreadyExists { key: taken }) if taken != key => {
                proposer
                    .read_barrier()
                    .await
                    .map_err(|e| store_failure(r, name, e))?;
            }
            Err(e) => return Err(store_failure(r, name, e)),
        }
    }
    Err(kept_changing(r, name))
}

/// The write of a service's update over `current` (read at `revision`): with the keys it
/// takes and releases, or, when its last finalizer went (`gone`), its removal with the keys
/// it held.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replace(
    engine: &dyn Engine,
    r: &Resource,
    key: &str,
    name: &str,
    revision: u64,
    current: &Value,
    object: &mut Value,
    gone: bool,
) -> Result<Command, WriteError> {
    if gone {
        return Ok(remove(engine, key, revision, current));
    }
    let extra = allocation_ops(engine, r, name, object, Some(current))?;
    let update = Op::Update {
        key: key.into(),
        value: object.to_string().into_bytes(),
        expected: Some(revision),
    };
    Ok(Command::batch([update].into_iter().chain(extra).collect()))
}

/// The removal of `service` (stored at `key`, read at `revision`) with the keys it holds.
pub(crate) fn remove(engine: &dyn Engine, key: &str, revision: u64, service: &Value) -> Command {
    let delete = Op::Delete {
        key: key.into(),
        expected: Some(revision),
    };
    Command::batch(
        [delete]
            .into_iter()
            .chain(release_ops(engine, service))
            .collect(),
    )
}

/// The deletes that free what a removed `service` held (only keys it still holds).
fn release_ops(engine: &dyn Engine, service: &Value) -> Vec<Op> {
    let uid = service["metadata"]["uid"].as_str().unwrap_or("");
    services::held(service)
        .into_iter()
        .filter_map(|key| {
            let (_, record) = engine.get(&key).ok()?;
            let record = record?;
            let (_, _, held) = services::held_by(&record.value)?;
            (held == uid).then_some(Op::Delete {
                key,
                expected: Some(record.mod_revision),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::objects::parse_path;
    use crate::writes::{create, patch, WriteRequest};
    use flotilla_api::deletion::DeleteOptions;
    use flotilla_api::kinds::FieldValidation;
    use flotilla_store::{Command, Engine, MemoryStore, Proposer};
    use serde_json::{json, Value};

    fn body(name: &str, spec: Value) -> Vec<u8> {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
            .to_string()
            .into_bytes()
    }

    fn request(body: &[u8]) -> WriteRequest<'_> {
        WriteRequest {
            body,
            content_type: "application/json",
            validation: FieldValidation::Strict,
        }
    }

    fn merge_patch(body: &[u8]) -> WriteRequest<'_> {
        WriteRequest {
            content_type: "application/merge-patch+json",
            ..request(body)
        }
    }

    fn held(store: &MemoryStore, key: &str) -> Option<String> {
        let record = store.get(key).unwrap().1?;
        flotilla_api::services::held_by(&record.value).map(|(_, name, _)| name)
    }

    #[tokio::test]
    async fn services_hold_their_addresses_until_deleted() {
        let store = MemoryStore::new(100);
        store
            .propose(Command::create(
                "/core/namespaces/default",
                json!({"metadata": {"name": "default"}}).to_string(),
            ))
            .await
            .unwrap();
        let list = parse_path(&["api", "v1", "namespaces", "default", "services"]).unwrap();
        let ports = json!([{"port": 80}]);
        let web = create(
            &store,
            &store,
            &list,
            &request(&body("web", json!({"ports": ports}))),
        )
        .await
        .unwrap()
        .object;
        let ip = web["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert_eq!(web["spec"]["clusterIPs"], json!([ip]));
        assert_eq!(
            held(&store, &format!("/flotilla/clusterips/{ip}")).as_deref(),
            Some("web")
        );

        // The same address asked for again: 422 on the field, nothing written.
        let before = store.applied_revision();
        let taken = create(
            &store,
            &store,
            &list,
            &request(&body("other", json!({"ports": ports, "clusterIP": ip}))),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (taken.code, taken.causes[0].field.as_str()),
            (422, "spec.clusterIPs[0]")
        );
        assert!(
            taken.causes[0].message.contains("already allocated"),
            "{taken:?}"
        );
        assert_eq!(store.applied_revision(), before);

        // NodePort: a port is picked and held; back to ClusterIP: released, the address kept.
        let node = parse_path(&["api", "v1", "namespaces", "default", "services", "web"]).unwrap();
        let patched = patch(
            &store,
            &store,
            &node,
            "web",
            &merge_patch(br#"{"spec": {"type": "NodePort"}}"#),
        )
        .await
        .unwrap()
        .object;
        let port = patched["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        let port_key = format!("/flotilla/nodeports/{port}");
        assert_eq!(held(&store, &port_key).as_deref(), Some("web"));
        assert_eq!(patched["spec"]["clusterIP"], json!(ip));
        patch(
            &store,
            &store,
            &node,
            "web",
            &merge_patch(br#"{"spec": {"type": "ClusterIP"}}"#),
        )
        .await
        .unwrap();
        assert_eq!(held(&store, &port_key), None);
        assert!(held(&store, &format!("/flotilla/clusterips/{ip}")).is_some());

        // Deleted: the address is free again, for a service that asks for it.
        let options = DeleteOptions::default();
        crate::deletion::delete(&store, &store, &node, "web", &options)
            .await
            .unwrap();
        assert_eq!(held(&store, &format!("/flotilla/clusterips/{ip}")), None);
        let again = create(
            &store,
            &store,
            &list,
            &request(&body("other", json!({"ports": ports, "clusterIP": ip}))),
        )
        .await
        .unwrap()
        .object;
        assert_eq!(again["spec"]["clusterIP"], json!(ip));
    }
}
