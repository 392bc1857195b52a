//! Zero-round-trip liveness check of a connection's socket.
//!
//! An idle database connection has nothing to read. A one-byte non-blocking peek tells
//! the three cases apart without sending anything: nothing to read (alive), end of stream
//! (the server closed it: restart, idle timeout, terminated backend) or bytes (the server
//! said something unprompted, typically a FATAL error before closing; the protocol state is
//! unknown, so the connection is not reusable). A silent network partition is not seen;
//! that needs the round-trip check or TCP keepalives.

/// What the probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// End of stream or a socket error: the peer is gone.
    Closed,
    /// Bytes arrived while idle.
    UnexpectedData,
    /// Something is pending on a descriptor that is not a socket; nothing can be said.
    Unknown,
}

impl Liveness {
    /// Whether the connection may be handed out.
    pub fn reusable(self) -> bool {
        matches!(self, Liveness::Alive | Liveness::Unknown)
    }
}

/// Linux also reports a peer's half-close; elsewhere EOF shows as readable (then peeked).
#[cfg(any(target_os = "linux", target_os = "android"))]
const PEER_HANGUP: libc::c_short = libc::POLLRDHUP;
#[cfg(all(unix, not(any(target_os = "linux", target_os = "android"))))]
const PEER_HANGUP: libc::c_short = 0;

/// Polls `fd` without blocking: the quiet case, the one on every checkout, costs one
/// `poll()`; only a socket with something pending is peeked at to tell data from EOF.
#[cfg(unix)]
pub fn probe_socket(fd: i32) -> Liveness {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN | PEER_HANGUP,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd we own, zero timeout.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        if n == 0 {
            return Liveness::Alive;
        }
        if n > 0 {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Liveness::Closed;
        }
    }
    if p.revents & libc::POLLNVAL != 0 {
        return Liveness::Closed;
    }
    peek(fd)
}

/// Peeks at one byte of `fd` without blocking and without consuming it.
#[cfg(unix)]
fn peek(fd: i32) -> Liveness {
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte buffer we own; MSG_PEEK leaves the stream untouched.
        let n = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Liveness::UnexpectedData;
        }
        if n == 0 {
            return Liveness::Closed;
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        match errno {
            libc::EINTR => continue,
            e if e == libc::EAGAIN || e == libc::EWOULDBLOCK => return Liveness::Alive,
            libc::ENOTSOCK => return Liveness::Unknown,
            _ => return Liveness::Closed,
        }
    }
}

#[cfg(not(unix))]
pub fn probe_socket(_fd: i32) -> Liveness {
    Liveness::Unknown
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::io::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn quiet_socket_is_alive() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(probe_socket(a.as_raw_fd()), Liveness::Alive);
    }

    #[test]
    fn peer_closed_is_closed() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert_eq!(probe_socket(a.as_raw_fd()), Liveness::Closed);
    }

    #[test]
    fn unsolicited_bytes_are_reported_and_not_consumed() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"E").unwrap();
        assert_eq!(probe_socket(a.as_raw_fd()), Liveness::UnexpectedData);
        assert_eq!(probe_socket(a.as_raw_fd()), Liveness::UnexpectedData);
    }

    #[test]
    fn a_quiet_pipe_is_alive_and_a_readable_one_unknown() {
        let mut fds = [0; 2];
        // SAFETY: fds is a two-element array as pipe() requires.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert_eq!(probe_socket(fds[0]), Liveness::Alive);
        // SAFETY: writing one byte to the pipe we own.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        assert_eq!(
            probe_socket(fds[0]),
            Liveness::Unknown,
            "cannot peek at a pipe"
        );
        // SAFETY: closing descriptors we own.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
