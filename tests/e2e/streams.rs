//! Issue 18: kubectl's streaming commands reach a pod through a node other than the pod's
//! (the API server goes through the tunnel to the pod's node): `logs` with `--tail`,
//! `--since`, `-f` and `--previous`; `exec` with its exit code and stdin; `cp` both ways;
//! and the errors as Kubernetes `Status` messages.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::lab::{lab, Kube};

/// Pinned to n2 (the API used is n1's); ticks every 0.2 s until /tmp/stop exists, then says
/// bye and fails, so that it restarts.
const TALKER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  nodeName: n2
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", "i=0; while [ ! -f /tmp/stop ]; do i=$((i+1)); echo tick $i; sleep 0.2; done; echo bye; exit 1"]
"#;

/// kubectl with its exit code, stdout and stderr; `input` goes to its stdin.
fn kubectl(ctx: &Kube, args: &[&str], input: Option<&[u8]>) -> (Option<i32>, Vec<u8>, String) {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&ctx.kubectl.kubeconfig)
        .arg("--cache-dir")
        .arg(&ctx.kubectl.cache)
        .args(["--server", &ctx.server, "--request-timeout", "30s"])
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ticks(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("tick "))
        .map(|n| n.parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_exec_and_cp_reach_a_pod_through_another_node() {
    let (cluster, kubectl_, dir) = lab().await;
    let ctx = Kube::of(&cluster, &kubectl_, dir.path());
    ctx.apply("talker", TALKER);
    ctx.wait("talker running", Duration::from_secs(60), |c| {
        let p = c.json(&["get", "pod", "talker"]);
        p["status"]["phase"] == "Running" && ticks(&c.kubectl(&["logs", "talker"])).len() >= 10
    });

    // --tail and --since.
    let tail = ctx.kubectl(&["logs", "talker", "--tail=2"]);
    assert_eq!(ticks(&tail).len(), 2, "--tail=2 gave {tail:?}");
    let all = ticks(&ctx.kubectl(&["logs", "talker"]));
    assert_eq!(
        all,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "every line, in order"
    );
    let (_, stamped, _) = kubectl(
        &ctx,
        &["logs", "talker", "--since=1s", "--timestamps"],
        None,
    );
    let stamped = String::from_utf8(stamped).unwrap();
    let recent = ticks(
        &stamped
            .lines()
            .map(|l| l.split_once(' ').unwrap().1)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert!(
        !recent.is_empty() && recent.len() < all.len() && recent.len() <= 8,
        "--since=1s gave {} of {} lines",
        recent.len(),
        all.len()
    );

    // -f: lines arrive while they are written.
    let mut follow = ctx
        .kubectl
        .spawn(&ctx.server, &["logs", "-f", "talker", "--tail=1"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("logs -f streams new lines");
        seen.extend(ticks(&line));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.windows(2).all(|w| w[1] == w[0] + 1) && seen[5] > *all.last().unwrap(),
        "followed lines {seen:?} after {}",
        all.last().unwrap()
    );

    // exec: the exit code, stdin and stdout.
    let (code, _, err) = kubectl(&ctx, &["exec", "talker", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(code, Some(3), "exec exit 3: {err}");
    assert!(err.contains("command terminated with exit code 3"), "{err}");
    let (code, out, err) = kubectl(
        &ctx,
        &["exec", "talker", "--", "cat", "/etc/hostname"],
        None,
    );
    assert_eq!(
        (code, String::from_utf8_lossy(&out).trim()),
        (Some(0), "talker"),
        "{err}"
    );
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (code, out, err) = kubectl(&ctx, &["exec", "-i", "talker", "--", "cat"], Some(&input));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out == input,
        "stdin came back as {} of {} bytes",
        out.len(),
        input.len()
    );

    // cp in and out, byte for byte.
    let local = dir.path().join("tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(local.join("sub/b.bin"), &input).unwrap();
    let (code, _, err) = kubectl(
        &ctx,
        &["cp", local.to_str().unwrap(), "talker:/tmp/tree"],
        None,
    );
    assert_eq!(code, Some(0), "cp in: {err}");
    let back = dir.path().join("back");
    let (code, _, err) = kubectl(
        &ctx,
        &["cp", "talker:/tmp/tree", back.to_str().unwrap()],
        None,
    );
    assert_eq!(code, Some(0), "cp out: {err}");
    assert_eq!(std::fs::read(back.join("a.txt")).unwrap(), b"alpha\n");
    assert!(
        std::fs::read(back.join("sub/b.bin")).unwrap() == input,
        "sub/b.bin differs"
    );

    // Errors come back as the Status's message.
    let (code, _, err) = kubectl(&ctx, &["logs", "talker", "-c", "nope"], None);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("container nope is not valid for pod talker"),
        "{err}"
    );
    let (code, _, err) = kubectl(&ctx, &["exec", "ghost", "--", "true"], None);
    assert_ne!(code, Some(0));
    assert!(err.contains("pods \"ghost\" not found"), "{err}");
    let (code, _, err) = kubectl(&ctx, &["logs", "talker", "--previous"], None);
    assert_ne!(code, Some(0), "no previous instance yet");
    assert!(
        err.contains("previous terminated container \"main\""),
        "{err}"
    );

    // --previous after a restart.
    ctx.kubectl(&["exec", "talker", "--", "touch", "/tmp/stop"]);
    ctx.wait("talker restarted", Duration::from_secs(60), |c| {
        let p = c.json(&["get", "pod", "talker"]);
        p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)
            && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    });
    let previous = ctx.kubectl(&["logs", "talker", "--previous"]);
    assert!(
        previous.ends_with("bye\n"),
        "previous log ends {previous:?}"
    );
    assert!(ticks(&previous).len() >= all.len());
    let current = ctx.kubectl(&["logs", "talker"]);
    assert!(
        !current.contains("bye"),
        "the current instance's log is its own"
    );
}
