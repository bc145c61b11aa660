//! Issue 18: `kubectl attach` and `kubectl run -i|-it` reach a container's own process through
//! a node other than the pod's: its output as it is written, its stdin (kept open between
//! attaches, or ended by the first with `stdinOnce`), and its terminal with window sizes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::wait_until_blocking;

use crate::lab::{lab, Kube};
use crate::streams::{kubectl, Tmux};

/// On n2 (the API used is n1's): answers each line of its stdin, which stays open between
/// attaches.
const READER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  nodeName: n2
  containers:
  - name: main
    image: busybox
    stdin: true
    command: ["sh", "-c", "echo started; while read l; do echo \"got $l\"; done; echo eof; sleep 3600"]
"#;

/// `kubectl attach [-i] reader` with its stdin a pipe we write.
struct Attached {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Attached {
    fn start(ctx: &Kube, args: &[&str]) -> Attached {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&ctx.kubectl.kubeconfig)
            .arg("--cache-dir")
            .arg(&ctx.kubectl.cache)
            .args(["--server", &ctx.server])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        let out = BufReader::new(child.stdout.take().unwrap());
        let err = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        // kubectl's own messages, marked, so that a failure shows them.
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx_err.send(format!("kubectl stderr: {line}")).is_err() {
                    return;
                }
            }
        });
        Attached { child, lines }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Whether a line equal to `expected` comes within `wait`; the others go to `seen`.
    fn saw(&mut self, expected: &str, wait: Duration, seen: &mut Vec<String>) -> bool {
        let until = std::time::Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return true,
                Ok(line) => seen.push(line),
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for a line of output equal to `expected`, writing `input` each second until it
    /// comes (the attach may not be established when the first is sent).
    fn expect(&mut self, expected: &str, input: Option<&str>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            if let Some(input) = input {
                self.send(input);
            }
            if self.saw(expected, Duration::from_secs(1), &mut seen) {
                return;
            }
        }
        panic!("no {expected:?} from kubectl attach; it printed {seen:?}");
    }

    /// Waits for kubectl to exit (killed after `timeout`): its exit code, its output, and
    /// what it said on stderr.
    fn finish(&mut self, timeout: Duration) -> (Option<i32>, String, String) {
        let deadline = std::time::Instant::now() + timeout;
        let (mut out, mut err) = (String::new(), String::new());
        let mut take = |line: String| match line.strip_prefix("kubectl stderr: ") {
            Some(e) => err += &format!("{e}\n"),
            None => out += &format!("{line}\n"),
        };
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // What was printed before the exit, until the pipes have ended.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    take(line);
                }
                return (status.code(), out, err);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "kubectl did not end in {timeout:?}; it printed {out:?} and {err:?}"
            );
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                take(line);
            }
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_and_run_it_reach_the_containers_own_process_through_another_node() {
    let (cluster, kubectl_, dir) = lab().await;
    let ctx = Kube::of(&cluster, &kubectl_, dir.path());

    // `run -i` with stdinOnce: what is piped in reaches the process, whose input then ends;
    // kubectl returns when the container has ended, and --rm deletes the pod.
    let mut run = Attached::start(
        &ctx,
        &[
            "run",
            "echoer",
            "-i",
            "--rm",
            "--restart=Never",
            "--image=busybox",
            "--overrides",
            r#"{"spec":{"nodeName":"n3"}}"#,
            "--",
            "sh",
            "-c",
            "while read l; do echo \"echo: $l\"; done; echo end of input",
        ],
    );
    run.send("one\ntwo\n");
    drop(run.child.stdin.take());
    let (code, out, err) = run.finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "kubectl run -i printed {out:?} and {err:?}");
    assert!(
        out.contains("echo: one\necho: two\nend of input\n"),
        "kubectl run -i printed {out:?} and {err:?}"
    );
    ctx.wait("echoer deleted", Duration::from_secs(30), |c| {
        c.kubectl(&["get", "pods", "-o", "name"])
            .lines()
            .all(|l| l != "pod/echoer")
    });

    // attach without -i: the output as it is written.
    ctx.apply("reader", READER);
    ctx.wait("reader running", Duration::from_secs(60), |c| {
        c.json(&["get", "pod", "reader"])["status"]["phase"] == "Running"
    });
    // attach -i twice: the input stays open between them (the process does not restart).
    for word in ["first", "second"] {
        let mut attached = Attached::start(&ctx, &["attach", "-i", "reader"]);
        attached.expect(&format!("got {word}"), Some(&format!("{word}\n")));
    }
    let mut watcher = Attached::start(&ctx, &["attach", "reader"]);
    let mut typist = Attached::start(&ctx, &["attach", "-i", "reader"]);
    typist.expect("got third", Some("third\n"));
    // The watcher sees the output of the typist's input (sent until it does: the watcher's
    // attach may begin after the typist's).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        typist.send("fourth\n");
        if watcher.saw("got fourth", Duration::from_secs(1), &mut seen) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher never saw \"got fourth\"; it printed {seen:?}"
        );
    }
    let pod = ctx.json(&["get", "pod", "reader"]);
    assert_eq!(
        pod["status"]["containerStatuses"][0]["restartCount"], 0,
        "the input never ended: {pod}"
    );
    drop((watcher, typist));

    // attach to a container that does not exist: kubectl says so.
    let (code, _, err) = kubectl(&ctx, &["attach", "reader", "-c", "nope"], None);
    assert_ne!(code, Some(0));
    assert!(err.contains("nope"), "{err}");

    // `run -it --rm` in a terminal: a prompt, a terminal of the container's own, its size
    // and a resize, then exit ends kubectl and the pod is deleted.
    let tmux = Tmux::start(
        &ctx,
        &[
            "run",
            "shell",
            "-it",
            "--rm",
            "--restart=Never",
            "--image=busybox",
            "--overrides",
            r#"'{"spec":{"nodeName":"n2"}}'"#,
            "--",
            "sh",
        ],
    );
    tmux.wait_for("kubectl's hint", |screen| {
        screen.contains("try pressing enter")
    });
    tmux.keys(&["Enter"]);
    tmux.wait_for("a prompt", |screen| {
        screen.lines().any(|l| l.trim_end().ends_with(" #"))
    });
    tmux.keys(&["tty; echo $TERM", "Enter"]);
    tmux.wait_for("the container's terminal", |screen| {
        screen.lines().any(|l| l.trim() == "/dev/pts/0")
            && screen.lines().any(|l| l.trim() == "xterm")
    });
    tmux.keys(&["stty size", "Enter"]);
    tmux.wait_for("the starting size", |screen| screen.contains("30 100"));
    tmux.run(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    tmux.keys(&["clear; stty size", "Enter"]);
    tmux.wait_for("the new size", |screen| screen.contains("40 120"));
    tmux.keys(&["exit", "Enter"]);
    let ended = wait_until_blocking(Duration::from_secs(30), || (!tmux.alive()).then_some(()));
    assert!(
        ended.is_some(),
        "exit ends the shell and kubectl:\n{}",
        tmux.screen()
    );
    ctx.wait("shell deleted", Duration::from_secs(30), |c| {
        c.kubectl(&["get", "pods", "-o", "name"])
            .lines()
            .all(|l| l != "pod/shell")
    });
}
