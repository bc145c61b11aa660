//! The shim: a process forked at `create` that outlives the command and holds the container's
//! standard streams. It copies the output into the container's log (see [`crate::logs`]),
//! reaps the process and records how it ended; and it serves `kubectl attach` on a Unix
//! socket in the container's directory (`attach.sock`): every client connected gets the
//! output as it is written, and a client that attached stdin writes to the container's input.
//!
//! A container with a terminal (`process.terminal`, a pod's `tty`) has the master of a
//! terminal of its own devpts, sent by its init over a socket; its output is `stdout`, and
//! window sizes set the terminal's size. A container with `stdin` reads a pipe that the shim
//! holds open, so it waits for input rather than reading an end; with `stdinOnce`, the first
//! client that attached stdin closes it when it ends (with a terminal, an end-of-file
//! character, ^D).
//!
//! Frames on the socket are those of the tunnel: a 4-byte big-endian length, a channel byte
//! and data. The client opens with [`OPEN`] (data: `[1]` to attach stdin, `[0]` not), which
//! the shim answers with an empty [`OPEN`] once all later output goes to the client; then it
//! sends stdin (0), resize (4, `{"Width":w,"Height":h}`) and the end of stdin (255); the shim
//! sends stdout (1) and stderr (2). The socket ends when the container has ended.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::logs::{format_line, Writer, MAX_PART};

/// The first frame a client sends: whether it attaches stdin.
pub const OPEN: u8 = 254;
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const RESIZE: u8 = 4;
pub const CLOSE_STDIN: u8 = 255;

/// How long a client may take to read output before it is dropped (the container's output
/// must not wait for a stalled client).
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The attach socket of the container whose state directory is `dir`.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join("attach.sock")
}

/// Where the container's input goes.
enum Input {
    /// Nothing: the container has no stdin, or it was closed.
    None,
    Pipe(File),
    Terminal(File),
}

/// The container's standard streams, as the shim holds them.
pub struct Streams {
    /// The read ends of the container's stdout and stderr pipes.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The terminal's master, for a container with a terminal.
    pub terminal: Option<OwnedFd>,
    /// The write end of the container's stdin pipe (a container with stdin and no terminal).
    pub stdin: Option<OwnedFd>,
    /// Whether clients may write input (the pod's `stdin`).
    pub stdin_enabled: bool,
    /// Whether the input ends after the first client that attached it (`stdinOnce`).
    pub stdin_once: bool,
}

struct Shared {
    clients: Mutex<Vec<(u64, UnixStream)>>,
    input: Mutex<Input>,
    /// The terminal's master, for window sizes.
    terminal: Option<File>,
    stdin_once: bool,
}

impl Shared {
    fn broadcast(&self, channel: u8, data: &[u8]) {
        let frame = frame(channel, data);
        let mut clients = self.clients.lock().expect("clients lock");
        clients.retain_mut(|(_, c)| c.write_all(&frame).is_ok());
    }

    fn write_input(&self, data: &[u8]) {
        let mut input = self.input.lock().expect("input lock");
        let ok = match &mut *input {
            Input::None => true,
            Input::Pipe(f) | Input::Terminal(f) => f.write_all(data).is_ok(),
        };
        if !ok {
            *input = Input::None;
        }
    }

    /// The end of a client's input: with `stdinOnce`, the container's input ends.
    fn end_input(&self) {
        if !self.stdin_once {
            return;
        }
        let mut input = self.input.lock().expect("input lock");
        if let Input::Terminal(f) = &mut *input {
            let _ = f.write_all(&[4]);
        }
        *input = Input::None;
    }

    fn resize(&self, message: &[u8]) {
        let Some(terminal) = &self.terminal else {
            return;
        };
        let Ok(size) = serde_json::from_slice::<serde_json::Value>(message) else {
            return;
        };
        let (Some(w), Some(h)) = (size["Width"].as_u64(), size["Height"].as_u64()) else {
            return;
        };
        flotilla_sys::tty::set_window_size(
            terminal.as_fd(),
            u16::try_from(w).unwrap_or(u16::MAX),
            u16::try_from(h).unwrap_or(u16::MAX),
        );
    }
}

/// A frame as the tunnel writes one.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + data.len());
    frame.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
    frame.push(channel);
    frame.extend_from_slice(data);
    frame
}

/// Reads a frame: its channel and data, or `None` where the stream ends.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    let channel = data.remove(0);
    Ok(Some((channel, data)))
}

/// Reads `from` and sends each line (or 16 KiB part) of it, tagged with `stream`, to the log,
/// and each chunk as read to the attached clients on `channel`.
fn pump(
    from: OwnedFd,
    stream: &'static str,
    channel: u8,
    log: mpsc::Sender<Vec<u8>>,
    shared: Option<Arc<Shared>>,
) {
    let mut from = File::from(from);
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // A terminal's master reads EIO once its last process has gone.
        let n = match from.read(&mut chunk) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
            Ok(n) => n,
        };
        if let Some(shared) = &shared {
            shared.broadcast(channel, &chunk[..n]);
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=end).collect();
            line.pop();
            // A terminal ends its lines with \r\n.
            if channel == STDOUT && line.last() == Some(&b'\r') {
                line.pop();
            }
            let _ = log.send(format_line(SystemTime::now(), stream, false, &line));
        }
        while pending.len() >= MAX_PART {
            let part: Vec<u8> = pending.drain(..MAX_PART).collect();
            let _ = log.send(format_line(SystemTime::now(), stream, true, &part));
        }
    }
    if !pending.is_empty() {
        let _ = log.send(format_line(SystemTime::now(), stream, false, &pending));
    }
}

/// One attached client, until it goes away.
fn serve_client(stream: UnixStream, id: u64, shared: Arc<Shared>) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let _ = writer.set_write_timeout(Some(CLIENT_WRITE_TIMEOUT));
    let mut reader = BufReader::new(stream);
    let Ok(Some((OPEN, open))) = read_frame(&mut reader) else {
        return;
    };
    let stdin = open.first() == Some(&1);
    {
        // The answer, under the lock: all output after it reaches this client.
        let mut writer = writer;
        let mut clients = shared.clients.lock().expect("clients lock");
        if writer.write_all(&frame(OPEN, &[])).is_err() {
            return;
        }
        clients.push((id, writer));
    }
    let mut ended = false;
    loop {
        match read_frame(&mut reader) {
            Ok(Some((STDIN, data))) if stdin && !ended => shared.write_input(&data),
            Ok(Some((RESIZE, data))) => shared.resize(&data),
            Ok(Some((CLOSE_STDIN, _))) if stdin && !ended => {
                ended = true;
                shared.end_input();
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    shared
        .clients
        .lock()
        .expect("clients lock")
        .retain(|(c, _)| *c != id);
    if stdin && !ended {
        shared.end_input();
    }
}

/// The shim's work until the container has closed its output: the log, and attach clients
/// on `listener`. Returns 0 once everything was logged.
pub fn run(streams: Streams, listener: Option<UnixListener>, mut writer: Writer) -> i32 {
    let terminal = streams.terminal.map(File::from);
    let input = match (&terminal, streams.stdin) {
        (_, _) if !streams.stdin_enabled => Input::None,
        (Some(t), _) => t.try_clone().map(Input::Terminal).unwrap_or(Input::None),
        (None, Some(pipe)) => Input::Pipe(File::from(pipe)),
        (None, None) => Input::None,
    };
    let terminal_output = terminal.as_ref().and_then(|t| t.try_clone().ok());
    let shared = Arc::new(Shared {
        clients: Mutex::new(Vec::new()),
        input: Mutex::new(input),
        terminal,
        stdin_once: streams.stdin_once,
    });
    if let Some(listener) = listener {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            for (id, client) in listener.incoming().enumerate() {
                let Ok(client) = client else { continue };
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || serve_client(client, id as u64, shared));
            }
        });
    }
    let (tx, rx) = mpsc::channel();
    let mut pumps = Vec::new();
    for (fd, stream, channel) in [
        (Some(streams.stdout), "stdout", STDOUT),
        (Some(streams.stderr), "stderr", STDERR),
        (terminal_output.map(OwnedFd::from), "stdout", STDOUT),
    ] {
        let Some(fd) = fd else { continue };
        let (tx, shared) = (tx.clone(), Arc::clone(&shared));
        pumps.push(std::thread::spawn(move || {
            pump(fd, stream, channel, tx, Some(shared))
        }));
    }
    drop(tx);
    for line in rx {
        if writer.write(&line).is_err() {
            return 1;
        }
    }
    for p in pumps {
        let _ = p.join();
    }
    match File::create(crate::logs::done_path(writer.path())) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::{done_path, path, read_from};

    fn streams(stdin: bool, stdin_once: bool) -> (Streams, (OwnedFd, OwnedFd), Option<OwnedFd>) {
        let (out_r, out_w) = flotilla_sys::pipe().unwrap();
        let (err_r, err_w) = flotilla_sys::pipe().unwrap();
        let (in_r, in_w) = flotilla_sys::pipe().unwrap();
        let streams = Streams {
            stdout: out_r,
            stderr: err_r,
            terminal: None,
            stdin: Some(in_w),
            stdin_enabled: stdin,
            stdin_once,
        };
        (streams, (out_w, err_w), Some(in_r))
    }

    #[test]
    fn the_shim_copies_both_pipes_until_they_close() {
        let dir = tempfile::tempdir().unwrap();
        let (streams, (out_w, err_w), _) = streams(false, false);
        let writer = Writer::open(path(dir.path()), 1 << 20).unwrap();
        let shim = std::thread::spawn(move || run(streams, None, writer));
        File::from(out_w).write_all(b"one\ntwo").unwrap();
        File::from(err_w).write_all(b"oops\n").unwrap();
        assert_eq!(shim.join().unwrap(), 0);
        assert!(done_path(&path(dir.path())).exists());
        let (mut msgs, _) = read_from(&path(dir.path()), 0, false).unwrap();
        msgs.sort();
        assert_eq!(msgs, ["one", "oops", "two"]);
    }

    fn attach(socket: &Path, stdin: bool) -> UnixStream {
        let mut client = UnixStream::connect(socket).unwrap();
        client.write_all(&frame(OPEN, &[u8::from(stdin)])).unwrap();
        let (channel, _) = read_frame(&mut client).unwrap().expect("the answer");
        assert_eq!(channel, OPEN);
        client
    }

    /// Reads frames until `channel` has carried `expected`.
    fn read_until(client: &mut UnixStream, channel: u8, expected: &[u8]) {
        let mut got = Vec::new();
        while got != expected {
            let (c, data) = read_frame(client).unwrap().expect("a frame");
            if c == channel {
                got.extend(data);
            }
        }
    }

    #[test]
    fn clients_get_the_output_and_the_first_stdin_client_ends_the_input_with_stdin_once() {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let listener = UnixListener::bind(&socket).unwrap();
        let (streams, (out_w, err_w), in_r) = streams(true, true);
        let writer = Writer::open(path(dir.path()), 1 << 20).unwrap();
        let shim = std::thread::spawn(move || run(streams, Some(listener), writer));
        let mut watcher = attach(&socket, false);
        let mut typist = attach(&socket, true);
        // Both are registered once output reaches them.
        let (mut out, mut err) = (File::from(out_w), File::from(err_w));
        out.write_all(b"hello\n").unwrap();
        read_until(&mut watcher, STDOUT, b"hello\n");
        read_until(&mut typist, STDOUT, b"hello\n");
        // A watcher's stdin is ignored; the typist's reaches the container.
        watcher.write_all(&frame(STDIN, b"ignored\n")).unwrap();
        typist.write_all(&frame(STDIN, b"typed\n")).unwrap();
        let mut input = BufReader::new(File::from(in_r.unwrap()));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut input, &mut line).unwrap();
        assert_eq!(line, "typed\n");
        // The typist goes: with stdinOnce, the container reads the end of its input.
        drop(typist);
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "nothing else was written: {rest:?}");
        err.write_all(b"bye\n").unwrap();
        read_until(&mut watcher, STDERR, b"bye\n");
        drop((out, err));
        assert_eq!(shim.join().unwrap(), 0);
        let (msgs, _) = read_from(&path(dir.path()), 0, false).unwrap();
        assert_eq!(msgs, ["hello", "bye"]);
    }

    #[test]
    fn without_stdin_once_the_input_stays_open_across_clients() {
        let dir = tempfile::tempdir().unwrap();
        let socket = socket_path(dir.path());
        let listener = UnixListener::bind(&socket).unwrap();
        let (streams, (out_w, _err_w), in_r) = streams(true, false);
        let writer = Writer::open(path(dir.path()), 1 << 20).unwrap();
        let _shim = std::thread::spawn(move || run(streams, Some(listener), writer));
        let mut input = BufReader::new(File::from(in_r.unwrap()));
        let mut out = File::from(out_w);
        for word in ["first", "second"] {
            let mut client = attach(&socket, true);
            out.write_all(b"x\n").unwrap();
            read_until(&mut client, STDOUT, b"x\n");
            client
                .write_all(&frame(STDIN, format!("{word}\n").as_bytes()))
                .unwrap();
            client.write_all(&frame(CLOSE_STDIN, &[0])).unwrap();
            let mut line = String::new();
            std::io::BufRead::read_line(&mut input, &mut line).unwrap();
            assert_eq!(line, format!("{word}\n"));
        }
    }
}
