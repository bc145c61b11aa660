//! The services every cluster has, and the repair of held addresses, on the leader.
//!
//! `default/kubernetes` (`10.96.0.1`, the API servers) and `kube-system/kube-dns`
//! (`10.96.0.10`, every node's own DNS server) are created when missing, with their address
//! keys in the same command, as the API server does for any service. The repair frees an
//! address key whose service is gone (a namespace's collector or the garbage collector
//! removed it without going through the API's delete) and holds the addresses of a service
//! that has none held (written before its key existed): the same keys, whichever path wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::services::{self, CLUSTER_IPS_PREFIX, DNS_IP, KUBERNETES_IP, NODE_PORTS_PREFIX};
use flotilla_store::{Command, Op, Record, StoreError};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::endpoints::SERVICES;
use crate::informer::{parse_json, Informer};
use crate::queue::{run_workers, Next, WorkQueue};
use crate::Context;

/// The services a cluster starts with: (namespace, name, object).
pub fn system_services() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "default",
            "kubernetes",
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": KUBERNETES_IP.to_string(),
                         "clusterIPs": [KUBERNETES_IP.to_string()], "ipFamilies": ["IPv4"],
                         "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                         "internalTrafficPolicy": "Cluster",
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                                    "targetPort": 6443}]}}),
        ),
        (
            "kube-system",
            "kube-dns",
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system",
                             "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS",
                                        "kubernetes.io/cluster-service": "true"},
                             "annotations": {"flotilla.io/served-by": "every node"}},
                "spec": {"type": "ClusterIP", "clusterIP": DNS_IP.to_string(),
                         "clusterIPs": [DNS_IP.to_string()], "ipFamilies": ["IPv4"],
                         "ipFamilyPolicy": "SingleStack", "sessionAffinity": "None",
                         "internalTrafficPolicy": "Cluster",
                         "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                   {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}}),
        ),
    ]
}

/// What the repair writes, from the services (by key) and the held keys (key → record).
pub fn repair(
    services: &BTreeMap<String, (u64, Value)>,
    held: &BTreeMap<String, (u64, Vec<u8>)>,
) -> Vec<Command> {
    let mut writes = Vec::new();
    let by_uid: BTreeMap<&str, &Value> = services
        .values()
        .filter_map(|(_, s)| Some((s["metadata"]["uid"].as_str()?, s)))
        .collect();
    for (key, (revision, value)) in held {
        let holder = services::held_by(value);
        let kept = holder
            .as_ref()
            .and_then(|(_, _, uid)| by_uid.get(uid.as_str()))
            .is_some_and(|s| services::held(s).contains(key));
        if !kept {
            writes.push(Command::delete(key.clone(), Some(*revision)));
        }
    }
    for (key, (revision, service)) in services {
        let missing: Vec<String> = services::held(service)
            .into_iter()
            .filter(|k| !held.contains_key(k))
            .collect();
        if missing.is_empty() {
            continue;
        }
        // Created under the service's own revision, so a service changed meanwhile refuses it.
        let mut ops = vec![Op::Update {
            key: key.clone(),
            value: service.to_string().into_bytes(),
            expected: Some(*revision),
        }];
        ops.extend(missing.into_iter().map(|k| Op::Create {
            key: k,
            value: services::holder(service),
        }));
        writes.push(Command::batch(ops));
    }
    writes
}

/// Creates the system services that are missing (with their address keys).
async fn ensure_system_services(ctx: &Context) -> Result<(), StoreError> {
    for (namespace, name, mut service) in system_services() {
        let key = format!("{SERVICES}{namespace}/{name}");
        if ctx.engine.get(&key)?.1.is_some()
            || ctx
                .engine
                .get(&format!("/core/namespaces/{namespace}"))?
                .1
                .is_none()
        {
            continue;
        }
        service["metadata"]["uid"] = json!(flotilla_api::meta::new_uid());
        service["metadata"]["creationTimestamp"] = json!(flotilla_api::meta::now_rfc3339());
        let mut ops = vec![Op::Create {
            key,
            value: service.to_string().into_bytes(),
        }];
        for k in services::held(&service) {
            if ctx.engine.get(&k)?.1.is_none() {
                ops.push(Op::Create {
                    key: k,
                    value: services::holder(&service),
                });
            }
        }
        match ctx.proposer.propose(Command::batch(ops)).await {
            // Taken meanwhile (a user's service holds the address): that service keeps it.
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether a key the repair would free is still orphaned in the replica itself: the two
/// caches are not read at one revision, and a key newer than the services cache has its
/// service in the replica (they are written in one command).
fn confirmed(ctx: &Context, command: &Command) -> Result<bool, StoreError> {
    let [Op::Delete { key, .. }] = command.ops.as_slice() else {
        return Ok(true);
    };
    let Some(record) = ctx.engine.get(key)?.1 else {
        return Ok(false);
    };
    let Some((namespace, name, uid)) = services::held_by(&record.value) else {
        return Ok(true);
    };
    let service = ctx
        .engine
        .get(&format!("{SERVICES}{namespace}/{name}"))?
        .1
        .and_then(|r| serde_json::from_slice::<Value>(&r.value).ok());
    Ok(!service.is_some_and(|s| {
        s["metadata"]["uid"].as_str() == Some(uid.as_str()) && services::held(&s).contains(key)
    }))
}

fn parse_held(_key: &str, record: &Record) -> Option<Vec<u8>> {
    Some(record.value.clone())
}

const ALL: &str = "all";

/// Keeps the system services and repairs held addresses until `stop`.
pub async fn run_services(ctx: Context, stop: CancellationToken) {
    let queue = WorkQueue::default();
    let q = queue.clone();
    let services = Informer::builder([SERVICES], parse_json)
        .on_change(move |_| q.add(ALL.to_string()))
        .build();
    let q = queue.clone();
    let held = Informer::builder([CLUSTER_IPS_PREFIX, NODE_PORTS_PREFIX], parse_held)
        .on_change(move |_| q.add(ALL.to_string()))
        .build();
    let informers = stop.child_token();
    let _stop_informers = informers.clone().drop_guard();
    services.spawn(Arc::clone(&ctx.engine), informers.clone(), "services");
    held.spawn(Arc::clone(&ctx.engine), informers.clone(), "services");
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { tokio::join!(services.synced(), held.synced()) } => {}
    }
    queue.add(ALL.to_string());
    run_workers("services", queue, 1, stop, move |_| {
        let (ctx, services, held) = (ctx.clone(), services.clone(), held.clone());
        async move {
            ensure_system_services(&ctx).await?;
            let services: BTreeMap<String, (u64, Value)> = services
                .list()
                .into_iter()
                .map(|c| (c.key.clone(), (c.revision, c.object.clone())))
                .collect();
            let held: BTreeMap<String, (u64, Vec<u8>)> = held
                .list()
                .into_iter()
                .map(|c| (c.key.clone(), (c.revision, c.object.clone())))
                .collect();
            let mut retry = false;
            for command in repair(&services, &held) {
                if !confirmed(&ctx, &command)? {
                    retry = true;
                    continue;
                }
                match ctx.proposer.propose(command).await {
                    Ok(_) => {}
                    // The caches were behind: look again once they have caught up.
                    Err(
                        StoreError::Conflict { .. }
                        | StoreError::AlreadyExists { .. }
                        | StoreError::NotFound { .. },
                    ) => retry = true,
                    Err(e) => return Err(e),
                }
            }
            Ok(if retry {
                Next::After(Duration::from_millis(200))
            } else {
                Next::Done
            })
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(uid: &str, ip: &str, node_port: Option<i64>) -> (u64, Value) {
        let mut port = json!({"port": 80});
        if let Some(n) = node_port {
            port["nodePort"] = json!(n);
        }
        (
            7,
            json!({"metadata": {"namespace": "ns", "name": "web", "uid": uid},
                   "spec": {"clusterIP": ip, "ports": [port]}}),
        )
    }

    #[test]
    fn keys_of_gone_services_are_freed_and_missing_ones_held() {
        let services: BTreeMap<String, (u64, Value)> = [(
            "/core/services/ns/web".to_string(),
            service("u1", "10.96.3.4", Some(30080)),
        )]
        .into();
        let held_by = |uid: &str| {
            json!({"namespace": "ns", "name": "web", "uid": uid})
                .to_string()
                .into_bytes()
        };
        let held: BTreeMap<String, (u64, Vec<u8>)> = [
            (
                "/flotilla/clusterips/10.96.3.4".to_string(),
                (5, held_by("u1")),
            ),
            // The same name's earlier incarnation.
            (
                "/flotilla/clusterips/10.96.9.9".to_string(),
                (3, held_by("u0")),
            ),
        ]
        .into();
        let writes = repair(&services, &held);
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert_eq!(
            writes[0],
            Command::delete("/flotilla/clusterips/10.96.9.9", Some(3))
        );
        let keys: Vec<&str> = writes[1].ops.iter().map(|o| o.key()).collect();
        assert_eq!(keys, ["/core/services/ns/web", "/flotilla/nodeports/30080"]);
        assert!(matches!(
            writes[1].ops[0],
            Op::Update {
                expected: Some(7),
                ..
            }
        ));
    }

    #[test]
    fn a_consistent_store_needs_no_repair() {
        let (rev, s) = service("u1", "10.96.3.4", None);
        let services: BTreeMap<String, (u64, Value)> =
            [("/core/services/ns/web".to_string(), (rev, s.clone()))].into();
        let held: BTreeMap<String, (u64, Vec<u8>)> = [(
            "/flotilla/clusterips/10.96.3.4".to_string(),
            (5, services::holder(&s)),
        )]
        .into();
        assert!(repair(&services, &held).is_empty());
        let headless: BTreeMap<String, (u64, Value)> = [(
            "/core/services/ns/h".to_string(),
            service("u2", "None", None),
        )]
        .into();
        assert!(repair(&headless, &BTreeMap::new()).is_empty());
    }
}
