//! Pseudo-terminals for `exec -t`: one opened from the current mount namespace's `/dev/ptmx`
//! (inside a container, its own devpts instance), a process made its session leader with the
//! terminal as controlling terminal and standard streams, the relay between the caller's
//! streams and the master, and the caller's terminal in raw mode meanwhile.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::termios::{self, SetArg, Termios};

use crate::{Result, SysError};

/// Opens a new terminal: its master, and the path of its slave.
pub fn open_pty() -> Result<(OwnedFd, PathBuf)> {
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| SysError::new("posix_openpt", "/dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| SysError::new("grantpt", "/dev/ptmx", e))?;
    nix::pty::unlockpt(&master).map_err(|e| SysError::new("unlockpt", "/dev/ptmx", e))?;
    let slave =
        nix::pty::ptsname_r(&master).map_err(|e| SysError::new("ptsname", "/dev/ptmx", e))?;
    Ok((master.into(), PathBuf::from(slave)))
}

/// In a child about to exec: a new session whose controlling terminal, stdin, stdout and
/// stderr are the terminal at `slave`.
pub fn attach_terminal(slave: &Path) -> Result<()> {
    nix::unistd::setsid().map_err(|e| SysError::new("setsid", "", e))?;
    let fd = nix::fcntl::open(slave, OFlag::O_RDWR, nix::sys::stat::Mode::empty())
        .map_err(|e| SysError::new("open", slave.display(), e))?;
    // SAFETY: TIOCSCTTY on an open terminal descriptor, with an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(SysError::new("ioctl", "TIOCSCTTY", Errno::last()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process, which is about to exec.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            return Err(SysError::new("dup2", target, Errno::last()));
        }
    }
    Ok(())
}

/// Gives `to` (a terminal) the window size of `from`, when `from` is a terminal.
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a pointer to a winsize that outlives the calls.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &size);
        }
    }
}

/// Sets the window size of the terminal `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a pointer to a winsize that outlives the call.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size);
    }
}

/// Makes a FIFO at `path` (mode 0600): how a caller sends window sizes to `exec -t`.
pub fn make_fifo(path: &Path) -> Result<()> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| SysError::new("mkfifo", path.display(), e))
}

/// Applies each complete `COLS ROWS` line of `pending` to `master`, keeping the rest.
fn apply_sizes(pending: &mut Vec<u8>, master: BorrowedFd<'_>) {
    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
        let line: Vec<u8> = pending.drain(..=end).collect();
        let text = String::from_utf8_lossy(&line);
        let mut fields = text.split_whitespace().map(str::parse::<u16>);
        if let (Some(Ok(cols)), Some(Ok(rows))) = (fields.next(), fields.next()) {
            set_window_size(master, cols, rows);
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) -> Result<()> {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SysError::new("write", "terminal relay", e)),
        }
    }
    Ok(())
}

/// Copies `input` to the terminal `master` and the terminal's output to `output` until the
/// terminal has no process left (its slave is closed). The end of `input` becomes an
/// end-of-file character (^D) on the terminal. Lines `COLS ROWS` read from `resize` (a FIFO
/// kept open for writing, so it never ends) set the terminal's window size.
pub fn relay(
    master: &OwnedFd,
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    resize: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let mut buf = [0u8; 8192];
    let mut input_open = true;
    let mut sizes = Vec::new();
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if input_open {
            fds.push(PollFd::new(input, PollFlags::POLLIN));
        }
        let resize_at = resize.map(|r| {
            fds.push(PollFd::new(r, PollFlags::POLLIN));
            fds.len() - 1
        });
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("poll", "terminal relay", e)),
        }
        let master_ready = fds[0].any().unwrap_or(false);
        let input_ready = input_open && fds.get(1).and_then(|f| f.any()).unwrap_or(false);
        let resize_ready = resize_at.and_then(|i| fds[i].any()).unwrap_or(false);
        if let (true, Some(r)) = (resize_ready, resize) {
            match nix::unistd::read(r, &mut buf) {
                Ok(n) if n > 0 => {
                    sizes.extend_from_slice(&buf[..n]);
                    apply_sizes(&mut sizes, master.as_fd());
                }
                _ => {}
            }
        }
        if master_ready {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(Errno::EIO) => return Ok(()),
                Ok(n) => write_all(output, &buf[..n])?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(SysError::new("read", "terminal", e)),
            }
        }
        if input_ready {
            match nix::unistd::read(input, &mut buf) {
                Ok(0) | Err(Errno::EIO) => {
                    input_open = false;
                    write_all(master.as_fd(), &[4])?;
                }
                Ok(n) => write_all(master.as_fd(), &buf[..n])?,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(SysError::new("read", "stdin", e)),
            }
        }
    }
}

/// Puts the terminal `fd` in raw mode; returns its settings to restore, or `None` when `fd` is
/// not a terminal.
pub fn raw_mode(fd: BorrowedFd<'_>) -> Option<Termios> {
    let saved = termios::tcgetattr(fd).ok()?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(fd, SetArg::TCSANOW, &raw).ok()?;
    Some(saved)
}

/// Restores settings [`raw_mode`] returned.
pub fn restore_mode(fd: BorrowedFd<'_>, saved: &Termios) {
    let _ = termios::tcsetattr(fd, SetArg::TCSANOW, saved);
}

/// In a container's init: a new terminal of the container's devpts, its master sent to the
/// shim over `console` (a Unix socket), its slave opened once here so that the master
/// never reads as ended before the process has it. Returns the slave's path (for
/// [`attach_terminal`]) and that descriptor, which closes at exec.
pub fn send_console(console: BorrowedFd<'_>) -> Result<(PathBuf, OwnedFd)> {
    let (master, slave) = open_pty()?;
    let held = nix::fcntl::open(
        &slave,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SysError::new("open", slave.display(), e))?;
    send_fd(console, master.as_fd())?;
    Ok((slave, held))
}

/// Sends descriptor `fd` over the Unix socket `socket` (SCM_RIGHTS, with one byte of data).
pub fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd.as_raw_fd()];
    let data = [std::io::IoSlice::new(b"t")];
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &data,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SysError::new("sendmsg", "SCM_RIGHTS", e)),
        }
    }
}

/// Receives a descriptor [`send_fd`] sent (close-on-exec), or `None` when the socket ends
/// without one.
pub fn recv_fd(socket: BorrowedFd<'_>) -> Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut data = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    loop {
        let message = match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut data,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SysError::new("recvmsg", "SCM_RIGHTS", e)),
        };
        let cmsgs = message
            .cmsgs()
            .map_err(|e| SysError::new("recvmsg", "control messages", e))?;
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the kernel just installed `fd` in this process for us; nothing
                    // else owns it.
                    return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        return Ok(None);
    }
}

/// Makes `fd` this process's stdin.
pub fn redirect_input(fd: BorrowedFd<'_>) -> Result<()> {
    nix::unistd::dup2_stdin(fd).map_err(|e| SysError::new("dup2", "stdin", e))
}
