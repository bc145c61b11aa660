//! Issue 3, point 3: only a valid join token admits a node, the joiner verifies the seed by the
//! CA hash in the token, and nobody without a certificate from the cluster CA speaks to a node.

use std::time::Duration;

use flotilla_pki::{Ca, Credential, ADMINS_GROUP};
use flotilla_rpc::pb;
use flotilla_rpc::pb::admission_client::AdmissionClient;
use flotilla_rpc::pb::cluster_client::ClusterClient;
use flotilla_rpc::pb::raft_client::RaftClient;
use flotilla_rpc::pb::store_client::StoreClient as PbStoreClient;
use flotilla_rpc::{StoreClient, Tls};
use flotilla_tests::{run_cli, run_to_exit, wait_until, Cluster, Options};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const CLI_TIMEOUT: Duration = Duration::from_secs(30);

fn token_cli(cluster: &Cluster, args: &[&str]) -> String {
    let kubeconfig = cluster.kubeconfig.to_str().unwrap();
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--kubeconfig", kubeconfig]);
    let out = run_cli(&all, CLI_TIMEOUT).unwrap();
    assert_eq!(out.code, Some(0), "flotilla {all:?}: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// Tries to join `cluster` as `name` with `token`; returns the last line of stderr.
fn refused_join(cluster: &Cluster, name: &str, token: &str) -> String {
    let dir = cluster.dir().join(name);
    let args = [
        "node",
        "--name",
        name,
        "--data-dir",
        dir.to_str().unwrap(),
        "--advertise",
        "127.0.0.1",
        "--peer-port",
        "0",
        "--api-port",
        "0",
        "--dns-port",
        "0",
        "--join",
        &cluster.nodes[0].addr,
        "--token",
        token,
        "--join-timeout",
        "5s",
    ];
    let (code, stderr) = run_to_exit(&args, CLI_TIMEOUT).unwrap();
    assert_eq!(code, Some(1), "join as {name} should fail: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr.trim().lines().last().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_valid_token_admits_a_node_and_a_refusal_leaves_no_trace() {
    let mut cluster = Cluster::start(1, Options::default()).await.unwrap();
    let good = cluster.join_token.clone();
    let (id, rest) = good.split_once('.').unwrap();
    let (_, ca_hash) = rest.split_once('.').unwrap();

    let expiring = token_cli(&cluster, &["create", "--ttl", "1s"]);
    let revoked = token_cli(&cluster, &["create", "--description", "to revoke"]);
    let revoked_id = revoked.split('.').next().unwrap().to_string();
    token_cli(&cluster, &["revoke", &revoked_id]);
    let expiring_id = expiring.split('.').next().unwrap().to_string();
    wait_until(Duration::from_secs(20), || {
        let list = token_cli(&cluster, &["list", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        let expired = list
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == expiring_id.as_str() && t["expired"] == true);
        async move { expired.then_some(()) }
    })
    .await
    .expect("the 1 s token never showed as expired");

    let other_ca = Ca::generate("other").unwrap().hash().to_string();
    let cases = [
        (
            "wrongsecret",
            format!("{id}.0000000000000000.{ca_hash}"),
            "wrong secret",
        ),
        (
            "unknown",
            format!("zzzzzz.0000000000000000.{ca_hash}"),
            "is unknown",
        ),
        ("expired", expiring, "expired"),
        ("revoked", revoked, "is unknown"),
        (
            "otherca",
            format!("{}.{}", good.rsplit_once('.').unwrap().0, other_ca),
            "not from the CA",
        ),
    ];
    for (name, token, needle) in &cases {
        let line = refused_join(&cluster, name, token);
        assert!(
            line.contains(needle),
            "{name}: expected {needle:?} in {line:?}"
        );
    }

    // Nothing about the refused nodes in the cluster: not in the membership, not in the store.
    let client = cluster.client(0);
    let status = client.status().await.unwrap();
    assert_eq!(status.members.len(), 1, "{:?}", status.members);
    let everything = client.list_all("/", true).await.unwrap();
    for (key, record) in &everything {
        let text = String::from_utf8_lossy(&record.value);
        for (name, _, _) in &cases {
            assert!(
                !key.contains(name) && !text.contains(name),
                "{key} mentions {name}"
            );
        }
    }

    // The bootstrap token still admits a node.
    cluster.add_node().await.unwrap();
    let members = wait_until(Duration::from_secs(20), || {
        let client = cluster.client(0);
        async move {
            let s = client.status().await.ok()?;
            (s.members.len() == 2).then_some(s.members)
        }
    })
    .await
    .expect("the node with the bootstrap token was not added");
    assert!(members.iter().any(|m| m.name == "n2"), "{members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_from_the_cluster_ca_only_admission_answers() {
    let cluster = Cluster::start(1, Options::default()).await.unwrap();
    let addr = cluster.nodes[0].addr.clone();
    let admin = cluster.tls.clone().unwrap();
    let ca_only = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(admin.ca_pem()))
        .domain_name(flotilla_pki::NODE_SERVER_NAME);
    let anonymous = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ca_only)
        .unwrap()
        .connect()
        .await
        .expect("TLS without a client certificate connects");

    // Admission is open: a joining node has no certificate yet.
    let info = AdmissionClient::new(anonymous.clone())
        .info(pb::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.cluster_id.len(), 16);

    let store = PbStoreClient::new(anonymous.clone())
        .get(pb::GetRequest {
            key: "/flotilla/pki/ca".into(),
            linearizable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(store.code(), tonic::Code::Unauthenticated, "{store:?}");
    let cluster_rpc = ClusterClient::new(anonymous.clone())
        .status(pb::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(cluster_rpc.code(), tonic::Code::Unauthenticated);
    let raft = RaftClient::new(anonymous)
        .vote(pb::RaftPayload::default())
        .await
        .unwrap_err();
    assert_eq!(raft.code(), tonic::Code::Unauthenticated);

    // The admin may use the store but is not a node: no Raft.
    let admin_channel = admin.channel(&addr, None).unwrap();
    let raft = RaftClient::new(admin_channel)
        .vote(pb::RaftPayload::default())
        .await
        .unwrap_err();
    assert_eq!(raft.code(), tonic::Code::PermissionDenied);
    StoreClient::new(&addr, Duration::from_secs(10), &admin)
        .unwrap()
        .status()
        .await
        .expect("the admin reads the status");

    // A certificate from another CA, even one that trusts this cluster's CA, is refused in the
    // handshake.
    let other = Ca::generate("other").unwrap();
    let forged = other.issue_client("admin", &[ADMINS_GROUP]).unwrap();
    let forged = Tls::new(
        admin.ca_pem(),
        Credential {
            cert_pem: forged.cert_pem,
            key_pem: forged.key_pem,
        },
    );
    let err = StoreClient::new(&addr, Duration::from_secs(5), &forged)
        .unwrap()
        .status()
        .await
        .expect_err("a foreign certificate must not be served");
    assert!(
        !err.to_string().contains("Unauthenticated"),
        "refused at TLS, not by the service: {err}"
    );

    // Plain text gets nothing either.
    let plain = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_lazy();
    let err = AdmissionClient::new(plain)
        .info(pb::InfoRequest {})
        .await
        .unwrap_err();
    assert_ne!(err.code(), tonic::Code::Ok);
}
