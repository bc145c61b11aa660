//! Bad start-up input ends with one clear error line and a non-zero exit, never a panic.

use std::time::Duration;

use flotilla_tests::{run_to_exit, Cluster, Options};

fn assert_clean_failure(code: Option<i32>, stderr: &str, needle: &str) {
    assert_eq!(code, Some(1), "expected exit code 1; stderr:\n{stderr}");
    assert!(
        !stderr.contains("panicked"),
        "panic trace in stderr:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("flotilla: error: "),
        "last line is not the error: {last:?}"
    );
    assert!(
        last.contains(needle),
        "error {last:?} does not mention {needle:?}"
    );
}

fn node_args<'a>(name: &'a str, dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "node",
        "--name",
        name,
        "--data-dir",
        dir,
        "--advertise",
        "127.0.0.1",
    ];
    v.extend_from_slice(extra);
    if !extra.contains(&"--api-port") {
        v.extend_from_slice(&["--api-port", "0"]);
    }
    if !extra.contains(&"--dns-port") {
        v.extend_from_slice(&["--dns-port", "0", "--dns-upstream", "none"]);
    }
    v
}

#[test]
fn port_in_use_is_a_clear_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let args = node_args("a", data.to_str().unwrap(), &["--peer-port", &port]);
    let (code, stderr) = run_to_exit(&args, Duration::from_secs(30)).unwrap();
    assert_clean_failure(code, &stderr, "already in use");
}

/// A node started with `flag` on a port something else holds: the error names the port, and
/// the data dir is not created.
fn port_in_use_writes_nothing(flag: &str, what: &str) {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let args = node_args(
        "a",
        data.to_str().unwrap(),
        &["--peer-port", "0", flag, &port],
    );
    let (code, stderr) = run_to_exit(&args, Duration::from_secs(30)).unwrap();
    assert_clean_failure(
        code,
        &stderr,
        &format!("{what} port 127.0.0.1:{port} is already in use"),
    );
    assert!(
        !data.exists(),
        "a refused start must not create the data dir"
    );
}

#[test]
fn api_port_in_use_is_a_clear_error_and_writes_nothing() {
    port_in_use_writes_nothing("--api-port", "API");
}

#[test]
fn dns_port_in_use_is_a_clear_error_and_writes_nothing() {
    port_in_use_writes_nothing("--dns-port", "DNS");
}

#[test]
fn missing_seed_is_a_clear_error() {
    // A port with nobody listening: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seed = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let token = format!("abcdef.0123456789abcdef.{}", "0".repeat(64));
    let args = node_args(
        "a",
        data.to_str().unwrap(),
        &[
            "--peer-port",
            "0",
            "--join",
            &seed,
            "--token",
            &token,
            "--join-timeout",
            "1s",
        ],
    );
    let (code, stderr) = run_to_exit(&args, Duration::from_secs(30)).unwrap();
    assert_clean_failure(code, &stderr, "cannot reach seed");
}

#[test]
fn bad_flag_names_the_flag() {
    let (code, stderr) = run_to_exit(
        &[
            "node",
            "--name",
            "a",
            "--data-dir",
            "/tmp/x",
            "--advertise",
            "not-an-ip",
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--advertise"), "{stderr}");
    let (code, stderr) = run_to_exit(
        &[
            "node",
            "--name",
            "a",
            "--data-dir",
            "/tmp/x",
            "--advertise",
            "127.0.0.1",
            "--join",
            "nowhere",
        ],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, Some(1));
    assert!(stderr.contains("--join"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_database_is_a_clear_error() {
    let mut cluster = Cluster::start(1, Options::default()).await.unwrap();
    cluster.client(0).create("/k", "v").await.unwrap();
    cluster.terminate(0).unwrap();
    let db = cluster.nodes[0].data_dir.join("db");
    let current = std::fs::read_to_string(db.join("CURRENT")).unwrap();
    let manifest = db.join(current.trim());
    let len = std::fs::metadata(&manifest).unwrap().len() as usize;
    std::fs::write(&manifest, vec![0x5a; len]).unwrap();
    let data = cluster.nodes[0].data_dir.to_str().unwrap().to_string();
    let (code, stderr) = run_to_exit(
        &node_args("n1", &data, &["--peer-port", "0"]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_clean_failure(code, &stderr, "corrupt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_is_a_clear_error() {
    let mut a = Cluster::start(1, Options::default()).await.unwrap();
    let b = Cluster::start(1, Options::default()).await.unwrap();
    a.terminate(0).unwrap();
    let data = a.nodes[0].data_dir.to_str().unwrap().to_string();
    let seed = b.nodes[0].addr.clone();
    let (code, stderr) = run_to_exit(
        &node_args("n1", &data, &["--peer-port", "0", "--join", &seed]),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_clean_failure(code, &stderr, "belongs to cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_cleanly_and_resumes() {
    let mut cluster = Cluster::start(1, Options::default()).await.unwrap();
    let rev = cluster.client(0).create("/t", "v").await.unwrap();
    let status = cluster.terminate(0).unwrap();
    assert!(status.success(), "SIGTERM exit status {status}");
    cluster.restart(0).await.unwrap();
    let (_, record) = cluster.client(0).get("/t", true).await.unwrap();
    assert_eq!(record.unwrap().mod_revision, rev);
}
