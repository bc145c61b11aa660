//! `flotilla up`: a local cluster in network namespaces, found through its kubeconfig, and
//! `flotilla up --down` removes all of it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flotilla_tests::run_cli;

/// Runs `flotilla up --down` on drop, so a failed assertion leaves no namespaces behind.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let dir = self.0.to_str().expect("utf-8 path");
        let _ = run_cli(&["up", "--down", "--dir", dir], Duration::from_secs(60));
    }
}

#[test]
fn up_starts_five_ready_nodes_with_one_leader_and_down_removes_them() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("lab");
    let dir_s = dir.to_str().unwrap();
    let _down = Down(&dir);
    let up = run_cli(
        &["up", "--nodes", "5", "--dir", dir_s],
        Duration::from_secs(240),
    )
    .unwrap();
    assert_eq!(
        up.code,
        Some(0),
        "flotilla up failed:\n{}\n{}",
        up.stdout,
        up.stderr
    );
    let kubeconfig = dir.join("kubeconfig");
    assert!(
        up.stdout
            .contains(&format!("export KUBECONFIG={}", kubeconfig.display())),
        "{}",
        up.stdout
    );

    // The CLI finds the cluster through $KUBECONFIG alone.
    let status = Command::new(flotilla_tests::flotilla_bin())
        .args(["status", "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.len(), 5, "{s:#}");
    let leaders: Vec<_> = members.iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{s:#}");
    assert_eq!(s["leader"], leaders[0]["name"], "{s:#}");
    let voters = members
        .iter()
        .filter(|m| m["role"] == "leader" || m["role"] == "voter")
        .count();
    assert_eq!(voters, 5, "{s:#}");
    assert_eq!(s["voters"], 5, "{s:#}");
    for m in members {
        assert_eq!(m["ready"], "True", "{s:#}");
        assert_eq!(m["gossip"], "alive", "{s:#}");
        let addr = m["address"].as_str().unwrap();
        assert!(addr.starts_with("10.213."), "{addr} is not a lab address");
    }
    let mut addrs: Vec<&str> = members
        .iter()
        .map(|m| m["address"].as_str().unwrap())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), 5, "each node has its own address");

    // A second `up` in the same dir is refused and changes nothing.
    let again = run_cli(&["up", "--dir", dir_s], Duration::from_secs(30)).unwrap();
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr.contains("already holds a lab"),
        "{}",
        again.stderr
    );

    let bridge = up
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("fltbr"))
        .expect("the bridge is named")
        .trim_end_matches(',')
        .to_string();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    let slot = state["net"]["slot"].as_u64().unwrap();

    // A crash: kill -9 every node, as a reboot or an OOM would. `--down` still removes all.
    for i in 1..=5 {
        let pids = Command::new("ip")
            .args(["netns", "pids", &format!("flt{slot}n{i}")])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
            let pid: i32 = pid.parse().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
    }
    let down = run_cli(&["up", "--down", "--dir", dir_s], Duration::from_secs(60)).unwrap();
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(!dir.exists(), "the lab's files are gone");
    let link = Command::new("ip")
        .args(["link", "show", &bridge])
        .output()
        .unwrap();
    assert!(!link.status.success(), "{bridge} still exists");
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&netns.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("flt{slot}n")))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}
