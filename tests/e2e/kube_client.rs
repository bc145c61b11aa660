//! Issue 4, must-show 5: a second real client, the `kube` crate (client-go's Rust peer), with
//! the kubeconfig bootstrap wrote: it lists, watches and creates, each through another node.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

use flotilla_tests::{Cluster, Options};

async fn client(kubeconfig: &std::path::Path, addr: &str) -> kube::Client {
    flotilla_tests::kube_client(kubeconfig, addr)
        .await
        .expect("the kube crate accepts the kubeconfig bootstrap wrote")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_crate_lists_watches_and_creates_through_different_nodes() {
    let cluster = Cluster::start(3, Options::default().in_lab())
        .await
        .unwrap();
    let lab = cluster.lab.clone().unwrap();
    let clients = [
        client(&cluster.kubeconfig, &lab.addr(0).to_string()).await,
        client(&cluster.kubeconfig, &lab.addr(1).to_string()).await,
        client(&cluster.kubeconfig, &lab.addr(2).to_string()).await,
    ];

    // List: typed Node objects, all three (registration is asynchronous: wait for it).
    let nodes: Api<Node> = Api::all(clients[0].clone());
    let names = flotilla_tests::wait_until(Duration::from_secs(30), || {
        let nodes = nodes.clone();
        async move {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let names: Vec<String> = list
                .items
                .iter()
                .filter_map(|n| n.metadata.name.clone())
                .collect();
            (names.len() == 3).then_some(names)
        }
    })
    .await
    .expect("three nodes listed through the kube crate");
    assert_eq!(names, ["n1", "n2", "n3"]);

    // Watch through node 2 from the list's resourceVersion; create through node 3.
    let watched: Api<ConfigMap> = Api::namespaced(clients[1].clone(), "default");
    let list = watched.list(&ListParams::default()).await.unwrap();
    let from = list
        .metadata
        .resource_version
        .expect("a list carries its resourceVersion");
    let mut events = watched
        .watch(&WatchParams::default().timeout(20), &from)
        .await
        .unwrap()
        .boxed();

    let writer: Api<ConfigMap> = Api::namespaced(clients[2].clone(), "default");
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("from-kube".into()),
            labels: Some(BTreeMap::from([("client".into(), "kube-rs".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("greeting".into(), "hello".into())])),
        ..Default::default()
    };
    let made = writer.create(&PostParams::default(), &cm).await.unwrap();
    assert!(made.metadata.uid.is_some() && made.metadata.resource_version.is_some());

    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.try_next().await.unwrap() {
            if let WatchEvent::Added(cm) = event {
                if cm.metadata.name.as_deref() == Some("from-kube") {
                    return cm;
                }
            }
        }
        panic!("the watch ended without the new configmap");
    })
    .await
    .expect("the watch saw the creation within 20 s");
    assert_eq!(seen.metadata.uid, made.metadata.uid);
    assert_eq!(seen.data, cm.data);

    // A label-selected list through node 1 finds exactly it; a second create is a typed 409.
    let reader: Api<ConfigMap> = Api::namespaced(clients[0].clone(), "default");
    let selected = reader
        .list(&ListParams::default().labels("client=kube-rs"))
        .await
        .unwrap();
    let names: Vec<_> = selected
        .items
        .iter()
        .map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, [Some("from-kube".to_string())]);
    match writer.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                (status.code, status.reason.as_str()),
                (409, "AlreadyExists")
            )
        }
        other => panic!("a second create should be refused: {other:?}"),
    }
}
