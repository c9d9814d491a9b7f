//! Growing the process's descriptor table ahead of need.
//!
//! The kernel doubles a process's descriptor table when a new descriptor
//! does not fit, and in a process with several threads each doubling
//! waits for an RCU grace period (milliseconds) in the thread that opened
//! the descriptor. On the event loop's thread (or a pjlib polling thread)
//! that stalls every connection it serves, five times on the way to 1,000
//! sockets. So once a socket lands half-way up the part of the table known
//! to exist, the table is grown four times over (at least 1,024 slots,
//! 8 KiB per 1,024, within RLIMIT_NOFILE) by duplicating a descriptor that
//! high and closing the copy. Sockets keep opening below the mark while a
//! worker does that; a table never shrinks, so this is process-wide.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

/// A fresh process's descriptor table has 64 slots.
const TABLE_START: RawFd = 64;
/// The smallest table worth reserving.
const MIN_SLOTS: i64 = 1024;

/// A descriptor at least this high triggers a reservation.
static CHECK: AtomicI32 = AtomicI32::new(TABLE_START / 2);

/// Where the table is grown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// On a worker thread: the caller serves connections and must not
    /// wait for a grace period.
    Worker,
    /// On the calling thread: in a single-threaded process there is no
    /// grace period to wait for (poll mode without workers).
    Inline,
}

/// What to do for a new descriptor `fd` under a soft limit of `limit`:
/// the descriptor to reserve up to (if any) and the next mark.
fn plan(fd: RawFd, limit: i64) -> (Option<RawFd>, RawFd) {
    let want = ((fd as i64 + 1) * 4).max(MIN_SLOTS);
    let top = want.min(limit) - 1; // F_DUPFD wants a descriptor below the limit
    if top <= fd as i64 {
        // At the limit: look again a quarter further (it may be raised).
        return (None, fd.saturating_add((fd / 4).max(64)));
    }
    let top = top as RawFd;
    // Up to the limit: nothing more until a descriptor passes it (after
    // the application raised it).
    let next = if want > limit {
        top.saturating_add(1)
    } else {
        top / 2
    };
    (Some(top), next)
}

fn soft_limit() -> i64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 24) as i64
    } else {
        0
    }
}

/// Makes the table reach past descriptor `top`.
fn grow(top: RawFd) {
    // SAFETY: a throwaway eventfd and its copy, both closed here and known
    // to nothing else.
    unsafe {
        let src = libc::eventfd(0, libc::EFD_CLOEXEC);
        if src < 0 {
            return;
        }
        let d = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, top);
        if d >= 0 {
            libc::close(d);
        }
        libc::close(src);
    }
}

fn reserve(fd: RawFd, mark: RawFd, how: How) {
    let (top, next) = plan(fd, soft_limit());
    // One thread claims each step (pjlib polling threads open sockets
    // concurrently).
    if CHECK
        .compare_exchange(mark, next, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    if let Some(top) = top {
        match how {
            How::Worker => crate::net::worker::run(move || grow(top)),
            How::Inline => grow(top),
        }
    }
}

/// A socket was opened as `fd`: reserves ahead if it is high enough.
pub fn opened(fd: RawFd, how: How) {
    let mark = CHECK.load(Ordering::Acquire);
    if fd >= mark {
        reserve(fd, mark, how);
    }
}

/// Reserves at once, whatever descriptors are open (an event loop thread
/// about to open sockets: a burst of connects would reach the end of a
/// small table before a grace period is over).
pub fn reserve_now(how: How) {
    let mark = CHECK.load(Ordering::Acquire);
    if mark < MIN_SLOTS as RawFd / 2 {
        reserve(mark, mark, how);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_grows_fourfold_from_1024() {
        assert_eq!(plan(32, 20000), (Some(1023), 511));
        assert_eq!(plan(511, 20000), (Some(2047), 1023));
        assert_eq!(plan(4095, 20000), (Some(16383), 8191));
        // the soft limit caps it, and then nothing happens below it
        assert_eq!(plan(8191, 20000), (Some(19999), 20000));
        assert_eq!(plan(32, 1024), (Some(1023), 511));
        assert_eq!(plan(511, 1024), (Some(1023), 1024));
        // no room left: nothing to reserve, look again further up
        assert_eq!(plan(1023, 1024), (None, 1023 + 255));
        assert_eq!(plan(100, 64), (None, 164));
    }
}
