//! Issue 18: kubectl's streaming commands reach a pod through a node other than the pod's
//! (the API server goes through the tunnel to the pod's node): `logs` with `--tail`,
//! `--since`, `-f` and `--previous`; `exec` with its exit code and stdin; `cp` both ways;
//! and the errors as Kubernetes `Status` messages.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::wait_until_blocking;

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

/// busybox httpd on n3, serving a small page and 1 MB of random bytes.
const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: n3
  containers:
  - name: httpd
    image: busybox
    command: ["sh", "-c", "mkdir -p /www && echo hello from web > /www/index.html && head -c 1000000 /dev/urandom > /www/big && exec httpd -f -p 8080 -h /www"]
"#;

/// A pod that keeps 0.2 of a CPU busy.
const SPINNER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: spinner}
spec:
  nodeName: n3
  containers:
  - name: spin
    image: busybox
    command: ["sh", "-c", "while :; do :; done"]
    resources: {limits: {cpu: 200m}}
"#;

/// An HTTP/1.0 GET of `path` at `127.0.0.1:port`: the body.
fn http_get(port: u16, path: &str) -> Vec<u8> {
    use std::io::Read;
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(tcp, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).unwrap();
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&response[..end]);
    assert!(
        head.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "{head}"
    );
    response[end + 4..].to_vec()
}

/// kubectl with its exit code, stdout and stderr; `input` goes to its stdin.
pub(crate) fn kubectl(
    ctx: &Kube,
    args: &[&str],
    input: Option<&[u8]>,
) -> (Option<i32>, Vec<u8>, String) {
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

/// kubectl in a detached tmux session of its own server (a terminal 100×30).
pub(crate) struct Tmux {
    socket: String,
}

impl Tmux {
    pub(crate) fn start(ctx: &Kube, args: &[&str]) -> Tmux {
        let tmux = Tmux {
            socket: format!("flotilla-e2e-{}", std::process::id()),
        };
        let mut command = vec![
            "kubectl".to_string(),
            "--kubeconfig".into(),
            ctx.kubectl.kubeconfig.display().to_string(),
            "--cache-dir".into(),
            ctx.kubectl.cache.display().to_string(),
            "--server".into(),
            ctx.server.clone(),
        ];
        command.extend(args.iter().map(|a| a.to_string()));
        let line = command.join(" ");
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "100",
            "-y",
            "30",
            &line,
        ]);
        tmux
    }

    pub(crate) fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux (apt-get install tmux; make deps installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend(keys);
        self.run(&args);
    }

    pub(crate) fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "t"])
    }

    pub(crate) fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", "t"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub(crate) fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) {
        let seen = wait_until_blocking(Duration::from_secs(20), || {
            let screen = self.screen();
            check(&screen).then_some(())
        });
        assert!(seen.is_some(), "waiting for {what} in:\n{}", self.screen());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
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
    // A command that writes 2 MB before it reads its input: neither direction waits on the
    // other.
    let script = "head -c 2000000 /dev/zero; wc -c";
    let (code, out, err) = kubectl(
        &ctx,
        &["exec", "-i", "talker", "--", "sh", "-c", script],
        Some(&input),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.len(), 2_000_000 + "300000\n".len(), "{err}");
    assert!(
        out.ends_with(b"300000\n"),
        "{:?}",
        String::from_utf8_lossy(&out[2_000_000..])
    );

    // exec -it in a terminal: a prompt, a command, the window's size and its change, Ctrl-D.
    let tmux = Tmux::start(&ctx, &["exec", "-it", "talker", "--", "sh"]);
    // (capture-pane drops the prompt's trailing space)
    tmux.wait_for("a prompt", |screen| {
        screen.lines().any(|l| l.trim_end().ends_with(" #"))
    });
    tmux.keys(&["echo $((6*7))", "Enter"]);
    tmux.wait_for("the answer", |screen| {
        screen.lines().any(|l| l.trim() == "42")
    });
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("the starting size", |screen| screen.contains("30 100"));
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("the new size", |screen| screen.contains("40 120"));
    tmux.keys(&["C-d"]);
    let ended = wait_until_blocking(Duration::from_secs(20), || (!tmux.alive()).then_some(()));
    assert!(
        ended.is_some(),
        "Ctrl-D ends the shell and kubectl:\n{}",
        tmux.screen()
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

    // port-forward: kubectl picks a free local port; two connections, one of 1 MB.
    ctx.apply("web", WEB);
    ctx.wait("web running", Duration::from_secs(60), |c| {
        c.json(&["get", "pod", "web"])["status"]["phase"] == "Running"
    });
    let forward_log = dir.path().join("port-forward.log");
    let mut forward = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&ctx.kubectl.kubeconfig)
        .args([
            "--server",
            &ctx.server,
            "port-forward",
            "pod/web",
            ":8080",
            "-v=6",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&forward_log).unwrap())
        .spawn()
        .unwrap();
    let forward_said = || std::fs::read_to_string(&forward_log).unwrap_or_default();
    let mut lines = BufReader::new(forward.stdout.take().unwrap()).lines();
    let first = lines.next().expect("port-forward prints its port").unwrap();
    let port: u16 = first
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("port-forward said {first:?}"));
    std::thread::spawn(move || for _ in lines {});
    let page = wait_until_blocking(Duration::from_secs(20), || {
        std::panic::catch_unwind(|| http_get(port, "/")).ok()
    });
    assert_eq!(
        page.as_deref(),
        Some(&b"hello from web\n"[..]),
        "kubectl port-forward said:\n{}\nn1:\n{}",
        forward_said(),
        std::fs::read_to_string(cluster.nodes[0].data_dir.with_extension("log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("port-forward"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let big = http_get(port, "/big");
    let (code, served, err) = kubectl(&ctx, &["exec", "web", "--", "cat", "/www/big"], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        big.len() == 1_000_000 && big == served,
        "1 MB through port-forward: {} bytes",
        big.len()
    );
    let _ = forward.kill();
    let _ = forward.wait();

    // top: a busy pod (held to 0.2 CPU) shows its CPU; every node shows its own.
    ctx.apply("spinner", SPINNER);
    ctx.wait("kubectl top pod spinner", Duration::from_secs(90), |c| {
        let (ok, out, _) = c
            .kubectl
            .run(&c.server, &["top", "pod", "spinner", "--no-headers"]);
        ok && out
            .split_whitespace()
            .nth(1)
            .and_then(|cpu| cpu.strip_suffix('m'))
            .and_then(|m| m.parse::<u64>().ok())
            .is_some_and(|m| m >= 50)
    });
    let nodes = ctx.kubectl(&["top", "node", "--no-headers"]);
    let names: Vec<&str> = nodes
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["n1", "n2", "n3"], "kubectl top node:\n{nodes}");
    ctx.kubectl(&["delete", "pod", "spinner", "--wait=false"]);

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
