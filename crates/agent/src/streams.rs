//! What a node serves on its tunnel for the pods it runs (the kubelet's streaming server):
//! a container's log, read from the runtime's log files; a command run in a container
//! with `flotilla runtime exec`, its stdin, stdout, stderr and exit status relayed as
//! channel frames (see [`flotilla_tunnel::Request`]); and the container's own streams
//! (`attach`), relayed from its shim's socket (see [`flotilla_runtime::shim`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use flotilla_runtime::container::{Runtime, Status};
use flotilla_runtime::logs::{self, Selection};
use flotilla_tunnel::{read_frame, write_frame, write_header, Failure, Reply, Request, Stream};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::spec::container_id;

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// The node's streaming server.
pub struct PodStreams {
    /// The `flotilla` binary, for `flotilla runtime exec`.
    pub binary: PathBuf,
    /// The runtime's root.
    pub root: PathBuf,
    /// The node's latest usage sample, for `kubectl top`.
    pub usage: std::sync::Arc<crate::metrics::Sampler>,
    /// The image store, whose images peers fetch.
    pub images: PathBuf,
}

async fn refuse(mut stream: Stream, failure: Failure) {
    let _ = write_header(&mut stream.send, &Reply::Refused(failure)).await;
    let _ = stream.send.finish();
}

#[async_trait::async_trait]
impl flotilla_tunnel::Handler for PodStreams {
    async fn handle(&self, request: Request, stream: Stream) {
        match request {
            Request::Logs {
                uid,
                container,
                follow,
                previous,
                timestamps,
                tail_lines,
                since_time,
                limit_bytes,
            } => {
                let since = match since_time.as_deref().map(humantime::parse_rfc3339_weak) {
                    None => None,
                    Some(Ok(t)) => Some(t),
                    Some(Err(e)) => {
                        return refuse(stream, Failure::bad_request(format!("sinceTime: {e}")))
                            .await
                    }
                };
                let selection = Selection {
                    timestamps,
                    tail_lines,
                    since,
                };
                let id = container_id(&uid, &container);
                self.logs(
                    (&crate::spec::sandbox_id(&uid), &id),
                    &container,
                    previous,
                    follow,
                    selection,
                    limit_bytes,
                    stream,
                )
                .await
            }
            Request::Exec {
                uid,
                container,
                command,
                stdin,
                tty,
            } => {
                let id = container_id(&uid, &container);
                self.exec(&id, &container, &command, stdin, tty, stream)
                    .await
            }
            Request::Attach {
                uid,
                container,
                stdin,
                tty,
            } => {
                let id = container_id(&uid, &container);
                self.attach(&id, &container, stdin, tty, stream).await
            }
            Request::PortForward { uid, port } => self.port_forward(&uid, port, stream).await,
            Request::Manifest { reference } => {
                crate::images::serve_manifest(self.images.clone(), reference, stream).await
            }
            Request::Blob { digest } => {
                crate::images::serve_blob(self.images.clone(), digest, stream).await
            }
            Request::Metrics => {
                let Some(usage) = self.usage.latest() else {
                    let failure = Failure::new(
                        503,
                        "ServiceUnavailable",
                        "this node has not sampled its usage yet",
                    );
                    return refuse(stream, failure).await;
                };
                let mut stream = stream;
                if write_header(&mut stream.send, &Reply::Ok).await.is_ok() {
                    let _ = write_header(&mut stream.send, &usage).await;
                }
                let _ = stream.send.finish();
            }
        }
    }
}

/// Writes `text`, cut at `left` bytes (then `left` is 0); false when the caller has gone.
async fn send_limited(stream: &mut Stream, text: &[u8], left: &mut Option<u64>) -> bool {
    let text = match left {
        Some(n) => {
            let take = text.len().min(*n as usize);
            *n -= take as u64;
            &text[..take]
        }
        None => text,
    };
    text.is_empty() || stream.send.write_all(text).await.is_ok()
}

impl PodStreams {
    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        (sandbox, id): (&str, &str),
        container: &str,
        previous: bool,
        follow: bool,
        selection: Selection,
        limit_bytes: Option<u64>,
        mut stream: Stream,
    ) {
        let rt = Runtime::new(&self.root);
        let path = if previous {
            rt.previous_log_path(sandbox, id)
        } else {
            logs::path(&self.root.join(id))
        };
        if !path.exists() {
            let message = if previous {
                format!("previous terminated container \"{container}\" not found")
            } else {
                format!("container \"{container}\" has no log on this node (not started yet)")
            };
            return refuse(stream, Failure::bad_request(message)).await;
        }
        let first = {
            let (path, selection) = (path.clone(), selection.clone());
            tokio::task::spawn_blocking(move || logs::select(&path, &selection)).await
        };
        let (lines, mut offset) = match first {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return refuse(stream, Failure::internal(format!("{id}: {e}"))).await,
            Err(e) => return refuse(stream, Failure::internal(e.to_string())).await,
        };
        if write_header(&mut stream.send, &Reply::Ok).await.is_err() {
            return;
        }
        let mut left = limit_bytes;
        if !send_limited(&mut stream, lines.concat().as_bytes(), &mut left).await {
            return;
        }
        if follow && !previous {
            let done = logs::done_path(&path);
            let mut tick = tokio::time::interval(FOLLOW_POLL);
            let mut probe = [0u8; 64];
            while left != Some(0) {
                // The caller ends a follow by closing its side.
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stream.recv.read(&mut probe) => break,
                }
                let finished = done.exists() || !path.exists();
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if len < offset {
                    offset = 0; // rotated
                }
                if len > offset {
                    let read = {
                        let (path, timestamps) = (path.clone(), selection.timestamps);
                        tokio::task::spawn_blocking(move || {
                            logs::read_from(&path, offset, timestamps)
                        })
                        .await
                    };
                    let Ok(Ok((lines, end))) = read else { break };
                    offset = end;
                    let text: String = lines.into_iter().map(|l| l + "\n").collect();
                    if !send_limited(&mut stream, text.as_bytes(), &mut left).await {
                        return;
                    }
                }
                if finished {
                    break;
                }
            }
        }
        let _ = stream.send.finish();
    }

    async fn exec(
        &self,
        id: &str,
        container: &str,
        command: &[String],
        stdin: bool,
        tty: bool,
        mut stream: Stream,
    ) {
        if command.is_empty() {
            return refuse(
                stream,
                Failure::bad_request("you must specify at least 1 command"),
            )
            .await;
        }
        if let Err(failure) = self.running(id, container, "exec into it").await {
            return refuse(stream, failure).await;
        }
        let mut cli = tokio::process::Command::new(&self.binary);
        cli.arg("runtime").arg("--root").arg(&self.root).arg("exec");
        // With a terminal, window sizes go to the runtime through a FIFO of this exec's own.
        let mut resize = None;
        if tty {
            cli.arg("--tty");
            match ResizeFifo::make(&self.root, id) {
                Ok(fifo) => {
                    cli.arg("--resize-fifo").arg(&fifo.path);
                    resize = Some(fifo);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "exec: no resize FIFO; the terminal keeps its size")
                }
            }
        }
        cli.arg(id)
            .arg("--")
            .args(command)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = match cli.spawn() {
            Ok(c) => c,
            Err(e) => {
                return refuse(stream, Failure::internal(format!("cannot run exec: {e}"))).await
            }
        };
        if write_header(&mut stream.send, &Reply::Ok).await.is_err() {
            return;
        }
        let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
        // With a terminal, Kubernetes has no stderr channel: the runtime's own errors go to
        // stdout.
        let pumps = [
            child
                .stdout
                .take()
                .map(|o| (1u8, pump(o, 1, frames_tx.clone()))),
            child
                .stderr
                .take()
                .map(|e| (2u8, pump(e, if tty { 1 } else { 2 }, frames_tx.clone()))),
        ];
        drop(frames_tx);
        // stdin is written by a task of its own: a command that does not read its input while
        // its output waits to be sent must not stop the output (a full pipe both ways).
        let mut child_stdin = child.stdin.take().map(|mut input| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if input.write_all(&data).await.is_err() {
                        return;
                    }
                }
            });
            tx
        });
        let Stream { mut send, recv } = stream;
        let mut input = caller_frames(recv);
        let mut input_open = true;
        let status = loop {
            tokio::select! {
                frame = frames_rx.recv() => match frame {
                    Some((channel, data)) => {
                        if write_frame(&mut send, channel, &data).await.is_err() {
                            let _ = child.start_kill();
                        }
                    }
                    None => break child.wait().await,
                },
                frame = input.recv(), if input_open => match frame.unwrap_or(Ok(None)) {
                    Ok(Some((0, data))) => {
                        if child_stdin.as_ref().is_some_and(|i| i.send(data).is_err()) {
                            child_stdin = None;
                        }
                    }
                    // The end of stdin.
                    Ok(Some((255, _))) => child_stdin = None,
                    Ok(Some((4, data))) => {
                        if let Some(fifo) = resize.as_mut() {
                            fifo.send(&data);
                        }
                    }
                    Ok(Some(_)) => {}
                    // The caller has nothing more to send; the output still goes to it.
                    Ok(None) => {
                        input_open = false;
                        child_stdin = None;
                    }
                    // The caller went away: end the command.
                    Err(_) => {
                        input_open = false;
                        child_stdin = None;
                        let _ = child.start_kill();
                    }
                },
            }
        };
        for (_, p) in pumps.into_iter().flatten() {
            let _ = p.await;
        }
        let status = match status {
            Ok(s) => exit_status(s.code().unwrap_or(128 + 9), command),
            Err(e) => json!({"metadata": {}, "status": "Failure", "reason": "InternalError",
                "message": format!("waiting for the command: {e}")}),
        };
        let _ = write_frame(&mut send, 3, status.to_string().as_bytes()).await;
        let _ = send.finish();
    }
}

impl PodStreams {
    /// Whether container `id` runs: a refusal saying why `what` cannot be done otherwise.
    async fn running(&self, id: &str, container: &str, what: &str) -> Result<(), Failure> {
        let state = {
            let (root, id) = (self.root.clone(), id.to_string());
            tokio::task::spawn_blocking(move || Runtime::new(root).state(&id)).await
        };
        match state {
            Ok(Ok((_, Status::Running))) => Ok(()),
            Ok(Ok(_)) => Err(Failure::bad_request(format!(
                "container {container} is not running, cannot {what}"
            ))),
            _ => Err(Failure::not_found(format!(
                "container not found (\"{container}\")"
            ))),
        }
    }

    /// Container `id`'s own streams, through its shim's socket: output from now on, stdin
    /// when asked, window sizes; a `Success` status once the container has ended.
    async fn attach(&self, id: &str, container: &str, stdin: bool, tty: bool, stream: Stream) {
        use flotilla_runtime::shim::{CLOSE_STDIN, OPEN, RESIZE, STDERR, STDIN, STDOUT};
        if let Err(failure) = self.running(id, container, "attach to it").await {
            return refuse(stream, failure).await;
        }
        let socket = match connect_shim(&self.root, id).await {
            Ok(s) => s,
            Err(e) => {
                let message = format!("cannot attach to container {container}: {e}");
                return refuse(stream, Failure::bad_request(message)).await;
            }
        };
        let (mut from_shim, mut to_shim) = socket.into_split();
        let opened = async {
            write_frame(&mut to_shim, OPEN, &[u8::from(stdin)]).await?;
            read_frame(&mut from_shim).await
        };
        match tokio::time::timeout(Duration::from_secs(5), opened).await {
            Ok(Ok(Some((OPEN, _)))) => {}
            _ => {
                let message =
                    format!("cannot attach to container {container}: its shim does not answer");
                return refuse(stream, Failure::internal(message)).await;
            }
        }
        let Stream { mut send, mut recv } = stream;
        if write_header(&mut send, &Reply::Ok).await.is_err() {
            return;
        }
        // The caller's frames go to the shim; the socket stays open until the end, since its
        // end tells the shim that this client has gone.
        let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
        let upstream = tokio::spawn(async move {
            loop {
                match read_frame(&mut recv).await {
                    Ok(Some((channel, data))) => {
                        let forward = match channel {
                            STDIN | CLOSE_STDIN => stdin,
                            RESIZE => true,
                            _ => false,
                        };
                        if forward && write_frame(&mut to_shim, channel, &data).await.is_err() {
                            return;
                        }
                    }
                    // The caller sends nothing more but still reads.
                    Ok(None) => std::future::pending::<()>().await,
                    Err(_) => {
                        let _ = gone_tx.send(());
                        return;
                    }
                }
            }
        });
        loop {
            tokio::select! {
                frame = read_frame(&mut from_shim) => match frame {
                    Ok(Some((channel @ (STDOUT | STDERR), data))) => {
                        // With a terminal, Kubernetes has no stderr channel.
                        let channel = if tty { STDOUT } else { channel };
                        if write_frame(&mut send, channel, &data).await.is_err() {
                            upstream.abort();
                            return;
                        }
                    }
                    Ok(Some(_)) => {}
                    // The container has ended.
                    Ok(None) | Err(_) => break,
                },
                _ = &mut gone => {
                    upstream.abort();
                    return;
                }
            }
        }
        upstream.abort();
        let success = json!({"metadata": {}, "status": "Success"});
        let _ = write_frame(&mut send, 3, success.to_string().as_bytes()).await;
        let _ = send.finish();
    }
}

/// Connects to container `id`'s attach socket through its directory's descriptor (a socket
/// path is at most 107 bytes; the runtime's root may be long).
async fn connect_shim(root: &std::path::Path, id: &str) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::fd::AsRawFd;
    let socket = Runtime::new(root)
        .attach_socket(id)
        .map_err(std::io::Error::other)?;
    let dir = std::fs::File::open(socket.parent().unwrap_or(root))?;
    let short = format!("/proc/self/fd/{}/attach.sock", dir.as_raw_fd());
    let connected = tokio::net::UnixStream::connect(&short).await;
    drop(dir);
    connected.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            std::io::Error::other("its shim has no attach socket (the container was created before this node served attach)")
        }
        _ => e,
    })
}

/// The FIFO an exec with a terminal reads window sizes from (`COLS ROWS` lines); removed when
/// dropped.
struct ResizeFifo {
    path: PathBuf,
    file: std::fs::File,
}

impl ResizeFifo {
    fn make(root: &std::path::Path, id: &str) -> std::io::Result<ResizeFifo> {
        let dir = root.join(".exec");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{id}-{:016x}.resize", rand::random::<u64>()));
        flotilla_sys::tty::make_fifo(&path).map_err(std::io::Error::other)?;
        // Read and write, so that opening never waits for the runtime's end.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        Ok(ResizeFifo { path, file })
    }

    /// Sends a resize message (`{"Width":w,"Height":h}`) on.
    fn send(&mut self, message: &[u8]) {
        use std::io::Write;
        let Ok(size) = serde_json::from_slice::<serde_json::Value>(message) else {
            return;
        };
        if let (Some(w), Some(h)) = (size["Width"].as_u64(), size["Height"].as_u64()) {
            let _ = writeln!(self.file, "{w} {h}");
        }
    }
}

impl Drop for ResizeFifo {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl PodStreams {
    /// A TCP connection to `port` of pod `uid` (its sandbox's address; the node's loopback for
    /// a pod on the host's network), relayed both ways.
    async fn port_forward(&self, uid: &str, port: u16, stream: Stream) {
        let sandbox = {
            let (root, uid) = (self.root.clone(), uid.to_string());
            tokio::task::spawn_blocking(move || Runtime::new(root).load_sandbox(&uid)).await
        };
        let Ok(Ok(sandbox)) = sandbox else {
            return refuse(
                stream,
                Failure::not_found(format!("pod {uid} has no sandbox on this node")),
            )
            .await;
        };
        let ip = if sandbox.host_network {
            std::net::Ipv4Addr::LOCALHOST
        } else {
            sandbox.ip
        };
        let connect = tokio::net::TcpStream::connect((ip, port));
        let tcp = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                let message =
                    format!("error forwarding port {port} to pod {uid}: connect {ip}:{port}: {e}");
                return refuse(stream, Failure::internal(message)).await;
            }
            Err(_) => {
                let message = format!("error forwarding port {port} to pod {uid}: connect {ip}:{port}: no answer in 5s");
                return refuse(stream, Failure::internal(message)).await;
            }
        };
        let Stream { mut send, mut recv } = stream;
        if write_header(&mut send, &Reply::Ok).await.is_err() {
            return;
        }
        let (mut tcp_read, mut tcp_write) = tcp.into_split();
        let to_pod = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut recv, &mut tcp_write).await;
            let _ = tcp_write.shutdown().await;
        });
        let _ = tokio::io::copy(&mut tcp_read, &mut send).await;
        let _ = send.finish();
        let _ = to_pod.await;
    }
}

/// A channel frame: its channel and data.
type Frame = (u8, Vec<u8>);

/// The caller's frames, read by a task of their own: reading a frame is not cancel-safe (a
/// frame half read when another branch of a `select!` wins would be lost, and the stream
/// after it misread). The last item is the end of the stream or its error.
fn caller_frames(
    mut recv: flotilla_tunnel::RecvStream,
) -> tokio::sync::mpsc::Receiver<std::io::Result<Option<Frame>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut recv).await;
            let last = !matches!(frame, Ok(Some(_)));
            if tx.send(frame).await.is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Copies a pipe into frames of `channel`.
fn pump(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    channel: u8,
    to: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.send((channel, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// The `Status` that ends an exec, as the kubelet reports it: `Success`, or
/// `NonZeroExitCode` with the code as the `ExitCode` cause (kubectl exits with it).
pub fn exit_status(code: i32, command: &[String]) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}
