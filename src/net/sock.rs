//! Thin, non-blocking TCP socket helpers over libc.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Unsent bytes the kernel may hold for a socket (TCP_NOTSENT_LOWAT):
/// beyond this the socket stops taking data and what is left waits in the
/// connection's send queue, written when the kernel has sent most of its
/// share. Bytes in flight (sent, not yet acknowledged) do not count, so
/// the path's bandwidth-delay product is still used in full.
///
/// Without it the kernel's autotuned buffer takes up to 4 MiB per
/// connection whenever the peer reads more slowly than we write. That
/// data can then only leave as the peer's window reopens, pushed from the
/// acknowledgement path in small pieces, which doubled the CPU both ends
/// spent per byte (measured over loopback against a saturated echo server:
/// 60 KiB messages cost 66 µs client + server per message without, 31 µs
/// with; 1 MiB messages 1,093 µs against 688 µs). 64 KiB also keeps
/// `pj_websock_get_buffered_amount()` close to what is really unsent.
const NOTSENT_LOWAT: libc::c_int = 64 * 1024;

/// An owned non-blocking TCP socket; closed on drop.
pub struct Socket {
    fd: RawFd,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// `recv` on a socket fd (also used by TLS over the same socket).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    unsafe { recv_into(fd, buf.as_mut_ptr(), buf.len()) }
}

/// `recv` into memory that need not be initialised.
pub fn recv_uninit(fd: RawFd, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    unsafe { recv_into(fd, buf.as_mut_ptr() as *mut u8, buf.len()) }
}

/// Bytes received on a socket fd and not yet read (FIONREAD); 0 if
/// unknown.
pub fn unread(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to valid storage (a bad fd fails).
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n.max(0) as usize
    }
}

/// `recv` into `len` bytes at `ptr`, which need not be initialised.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn recv_into(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller's guarantee; the kernel initialises what it reports.
    let r = unsafe { libc::recv(fd, ptr as *mut libc::c_void, len, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `send` on a socket fd without raising SIGPIPE on a closed connection.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    let r = unsafe {
        libc::send(
            fd,
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

impl Socket {
    /// Creates a socket and starts a non-blocking connect. Ok(true) when
    /// already connected, Ok(false) when in progress.
    pub fn connect(addr: &SocketAddr) -> io::Result<(Socket, bool)> {
        let s = Socket::for_addr(addr)?;
        let fd = s.fd;
        let (ss, len) = sockaddr(addr);
        // SAFETY: ss holds a valid address of length len.
        let r = unsafe { libc::connect(fd, &ss as *const _ as *const libc::sockaddr, len) };
        if r == 0 {
            return Ok((s, true));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINPROGRESS) {
            Ok((s, false))
        } else {
            Err(e)
        }
    }

    /// A non-blocking TCP socket (TCP_NODELAY on, TCP_NOTSENT_LOWAT set) of
    /// `addr`'s family, not connected yet.
    pub fn for_addr(addr: &SocketAddr) -> io::Result<Socket> {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall.
        let fd = cvt(unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        })?;
        let s = Socket { fd };
        s.set_tcp_option(libc::TCP_NODELAY, 1);
        s.set_tcp_option(libc::TCP_NOTSENT_LOWAT, NOTSENT_LOWAT);
        Ok(s)
    }

    /// Gives up ownership: the caller closes the fd.
    pub fn into_raw(self) -> RawFd {
        let fd = self.fd;
        std::mem::forget(self);
        fd
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Sets an IPPROTO_TCP option, best effort: both options this sets are
    /// optimisations the connection works without.
    fn set_tcp_option(&self, name: libc::c_int, value: libc::c_int) {
        // SAFETY: valid fd and option value.
        unsafe {
            libc::setsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                name,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }

    /// Reads an integer socket option.
    fn int_option(&self, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid fd, v/len point to valid storage.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                level,
                name,
                &mut v as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(v)
        }
    }

    /// The result of a non-blocking connect (SO_ERROR): 0 = connected.
    pub fn take_error(&self) -> i32 {
        self.int_option(libc::SOL_SOCKET, libc::SO_ERROR)
            .unwrap_or_else(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        recv(self.fd, buf)
    }

    /// Bytes received and not yet read; 0 if unknown.
    pub fn unread(&self) -> usize {
        unread(self.fd)
    }

    /// Reads into memory that need not be initialised.
    pub fn read_uninit(&self, buf: &mut [std::mem::MaybeUninit<u8>]) -> io::Result<usize> {
        recv_uninit(self.fd, buf)
    }

    /// Writes without raising SIGPIPE on a closed connection.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        send(self.fd, buf)
    }

    /// Gathers several buffers into one write, without SIGPIPE.
    pub fn writev(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        if let [one] = iov {
            // One buffer (the common case): send() skips the msghdr and
            // iovec import of sendmsg().
            // SAFETY: the iovec points to a live buffer for the whole call.
            return send(self.fd, unsafe {
                std::slice::from_raw_parts(one.iov_base as *const u8, one.iov_len)
            });
        }
        // SAFETY: msghdr is plain data; all-zero is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        // SAFETY: the iovecs point to live buffers for the whole call.
        let r = unsafe { libc::sendmsg(self.fd, &msg, libc::MSG_NOSIGNAL) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }

    /// Half-closes the sending side (after our last frame).
    pub fn shutdown_write(&self) {
        // SAFETY: plain syscall on our fd.
        unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own fd and close it once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_option(s: &Socket, name: libc::c_int) -> libc::c_int {
        s.int_option(libc::IPPROTO_TCP, name)
            .unwrap_or_else(|e| panic!("getsockopt {name}: {e}"))
    }

    #[test]
    fn new_sockets_have_nodelay_and_notsent_lowat() {
        for addr in ["127.0.0.1:9", "[::1]:9"] {
            let Ok(s) = Socket::for_addr(&addr.parse().unwrap()) else {
                continue; // no IPv6 on this host
            };
            assert_ne!(tcp_option(&s, libc::TCP_NODELAY), 0, "{addr}");
            assert_eq!(
                tcp_option(&s, libc::TCP_NOTSENT_LOWAT),
                NOTSENT_LOWAT,
                "{addr}"
            );
        }
    }

    #[test]
    fn unread_counts_received_bytes_until_read() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (s, _) = Socket::connect(&l.local_addr().unwrap()).unwrap();
        let (mut peer, _) = l.accept().unwrap();
        assert_eq!(s.unread(), 0);
        peer.write_all(&[7u8; 5000]).unwrap();
        let t = std::time::Instant::now();
        while s.unread() < 5000 {
            assert!(t.elapsed().as_secs() < 10, "{} bytes unread", s.unread());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(s.unread(), 5000);
        let mut buf = [0u8; 3000];
        assert_eq!(s.read(&mut buf).unwrap(), 3000);
        assert_eq!(s.unread(), 2000);
    }
}
