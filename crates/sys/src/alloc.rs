//! The allocator, chosen once per process by what the process is. A node (`flotilla node`) is
//! a long-running server whose many small allocations mimalloc serves with less CPU than the C
//! library's malloc (see `docs/decisions.md`). Every other command, the container runtime's
//! above all, is a short process that clones itself, and starts faster with the C library's
//! allocator.
//!
//! The choice is made at the first allocation, before `main` and before any thread exists,
//! from `/proc/self/cmdline` read into a stack buffer (nothing here may allocate), and never
//! changes, so every block is freed by the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use mimalloc::MiMalloc;

const UNDECIDED: u8 = 0;
const SYSTEM: u8 = 1;
const MIMALLOC: u8 = 2;

static CHOICE: AtomicU8 = AtomicU8::new(UNDECIDED);

/// The global allocator: mimalloc in a node, the C library's elsewhere.
pub struct ByRole;

fn mimalloc() -> bool {
    let choice = match CHOICE.load(Ordering::Relaxed) {
        UNDECIDED => {
            // Decided on the first allocation, while only the main thread runs; any later
            // reader sees the stored value, and the answer would be the same anyway.
            let choice = if runs_a_node() { MIMALLOC } else { SYSTEM };
            CHOICE.store(choice, Ordering::Relaxed);
            choice
        }
        choice => choice,
    };
    choice == MIMALLOC
}

/// Which allocator this process uses, for the node's start-up log.
pub fn name() -> &'static str {
    if mimalloc() {
        "mimalloc"
    } else {
        "system"
    }
}

/// Whether the process was started as `flotilla node ...`.
fn runs_a_node() -> bool {
    let mut buf = [0u8; 4096];
    // SAFETY: a NUL-terminated path, a buffer we own and its length, and the descriptor we
    // opened; none of these calls allocates through Rust's allocator.
    let len = unsafe {
        let fd = libc::open(
            c"/proc/self/cmdline".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return false;
        }
        let mut len = 0usize;
        while len < buf.len() {
            let n = libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        libc::close(fd);
        len
    };
    first_argument_is_node(&buf[..len])
}

/// `cmdline` is NUL-separated: the program, then its arguments.
fn first_argument_is_node(cmdline: &[u8]) -> bool {
    cmdline.split(|b| *b == 0).nth(1) == Some(b"node".as_slice())
}

// SAFETY: each call goes to one allocator, the same for the whole life of the process, so a
// block is always resized and freed by the allocator that made it.
unsafe impl GlobalAlloc for ByRole {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mimalloc() {
            MiMalloc.alloc(layout)
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mimalloc() {
            MiMalloc.alloc_zeroed(layout)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mimalloc() {
            MiMalloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if mimalloc() {
            MiMalloc.realloc(ptr, layout, new_size)
        } else {
            System.realloc(ptr, layout, new_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_command_chooses_mimalloc() {
        assert!(first_argument_is_node(
            b"/usr/bin/flotilla\0node\0--name\0a\0"
        ));
        assert!(first_argument_is_node(b"flotilla\0node"));
        assert!(!first_argument_is_node(b"flotilla\0runtime\0run\0node\0"));
        assert!(!first_argument_is_node(b"flotilla\0nodes\0"));
        assert!(!first_argument_is_node(b"flotilla\0"));
        assert!(!first_argument_is_node(b""));
    }
}
