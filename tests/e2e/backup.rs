//! Issue 14, point 5: `flotilla snapshot save` during writes, `restore` into a new data dir,
//! `flotilla node` on it: every object present at the snapshot's revision is there (at its
//! revision), nothing after it; the old kubeconfig works; a truncated or corrupted file, or a
//! data dir in use, is refused with a clear error and leaves nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flotilla_tests::{free_port, run_cli, Cluster, Kubectl, Options, Standalone};

use crate::support::Writer;

fn cli(args: &[&str]) -> flotilla_tests::Finished {
    run_cli(args, Duration::from_secs(120)).expect("run flotilla")
}

/// Restores `file` into `dir`: (exit code, stdout, stderr).
fn restore(file: &Path, dir: &Path, port: u16) -> flotilla_tests::Finished {
    let port = port.to_string();
    cli(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--name",
        "phoenix",
        "--advertise",
        "127.0.0.1",
        "--peer-port",
        &port,
        "--gossip-port",
        "0",
    ])
}

/// Entries of `dir`'s parent whose name contains `dir`'s: a half-written restore would leave
/// one.
fn leftovers(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_during_writes_restores_exactly_its_revision() {
    let cluster = Cluster::start(3, Options::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.snap");
    let kubeconfig = cluster.kubeconfig.to_str().unwrap().to_string();

    let writer = Writer::start(cluster.live_clients(), "/backup", 1);
    assert!(writer.wait_acked(50, Duration::from_secs(60)).await);
    let saved = {
        let (file, kubeconfig) = (file.clone(), kubeconfig.clone());
        tokio::task::spawn_blocking(move || {
            cli(&[
                "snapshot",
                "save",
                file.to_str().unwrap(),
                "--kubeconfig",
                &kubeconfig,
            ])
        })
        .await
        .unwrap()
    };
    assert_eq!(saved.code, Some(0), "save failed: {}", saved.stderr);
    let revision: u64 = saved
        .stdout
        .split("at revision ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {:?}", saved.stdout));
    let after = writer.acked_count();
    assert!(
        writer.wait_acked(after + 30, Duration::from_secs(60)).await,
        "writes stopped"
    );
    let acked = writer.stop().await;
    assert!(
        acked.values().any(|r| *r > revision),
        "no write came after the snapshot"
    );

    // What the cluster held at the snapshot's revision (creates only, so a key's revision is
    // when it appeared).
    let everything = cluster.client(0).list_all("/backup/", true).await.unwrap();
    let expected: BTreeMap<String, u64> = everything
        .iter()
        .filter(|(_, r)| r.mod_revision <= revision)
        .map(|(k, r)| (k.clone(), r.mod_revision))
        .collect();
    assert!(
        expected.len() >= 50,
        "{} keys before the snapshot",
        expected.len()
    );
    assert!(acked
        .iter()
        .filter(|(_, r)| **r <= revision)
        .all(|(k, _)| expected.contains_key(k)));

    // Restore into a new data dir and start a node on it.
    let dir = work.path().join("restored");
    let port = free_port();
    let restored = restore(&file, &dir, port);
    assert_eq!(
        restored.code,
        Some(0),
        "restore failed: {}",
        restored.stderr
    );
    assert!(
        restored
            .stdout
            .contains(&format!("restored revision {revision}")),
        "{}",
        restored.stdout
    );
    let node = Standalone::start(
        [
            "node",
            "--name",
            "phoenix",
            "--data-dir",
            dir.to_str().unwrap(),
            "--advertise",
            "127.0.0.1",
            "--api-port",
            "0",
            "--dns-port",
            "0",
        ]
        .map(String::from)
        .to_vec(),
        work.path().join("phoenix.log"),
    )
    .await
    .unwrap();
    let tls = cluster.tls.clone().unwrap();
    let client = flotilla_rpc::StoreClient::new(&node.addr, Duration::from_secs(15), &tls).unwrap();
    let got: BTreeMap<String, u64> = client
        .list_all("/backup/", true)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, r)| (k, r.mod_revision))
        .collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "keys after the snapshot or missing ones"
    );
    assert_eq!(
        got, expected,
        "every key at its revision, nothing after the snapshot"
    );

    // A new cluster of one that accepts writes, after the snapshot's revision.
    let status = client.status().await.unwrap();
    assert_eq!(status.members.len(), 1, "the old members are forgotten");
    let written = client.create("/after-restore", "x").await.unwrap();
    assert!(written > revision);
    // The old kubeconfig (same CA, same admin) works against the new cluster's API.
    let cache = tempfile::tempdir().unwrap();
    let kubectl = Kubectl {
        kubeconfig: cluster.kubeconfig.clone(),
        cache: cache.path().to_path_buf(),
    };
    let server = format!("https://{}", node.api_addr);
    let ok = flotilla_tests::eventually(Duration::from_secs(30), || {
        kubectl
            .run(&server, &["get", "namespace", "default", "-o", "name"])
            .1
            .trim()
            == "namespace/default"
    });
    assert!(
        ok,
        "kubectl with the old kubeconfig: {:?}",
        kubectl.run(&server, &["get", "ns"])
    );
    drop(node);

    // Refusals that leave nothing behind.
    let bytes = std::fs::read(&file).unwrap();
    let truncated = work.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let corrupted = work.path().join("corrupted.snap");
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x5a;
    std::fs::write(&corrupted, &flipped).unwrap();
    for (bad, says) in [
        (&truncated, "not a usable snapshot"),
        (&corrupted, "not a usable snapshot"),
    ] {
        let target = work.path().join("never");
        let refused = restore(bad, &target, free_port());
        assert_ne!(refused.code, Some(0), "{bad:?} was restored");
        assert!(refused.stderr.contains(says), "{}", refused.stderr);
        assert!(!target.exists(), "{bad:?} left a data dir");
        assert!(leftovers(&target).is_empty(), "{:?}", leftovers(&target));
    }
    let in_use = restore(&file, &dir, free_port());
    assert_ne!(in_use.code, Some(0));
    assert!(
        in_use.stderr.contains("already exists and is not empty"),
        "{}",
        in_use.stderr
    );
}
