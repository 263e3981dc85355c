//! Retransmission on the manager's connections: an answer lost to a network partition (most often
//! a long-poll woken by a new generation while the agent's link was down) goes out again about a
//! second after the link heals, not when the kernel's exponential backoff next fires, which after a
//! partition of a few seconds is seconds away and after one of a minute is a minute away. The
//! agent cannot notice such a partition itself: its long-poll is a request already sent, and it
//! sends nothing more until the answer comes (RELIABILITY.md, "Bad networks").
//!
//! Set on every accepted connection ([`tune`]):
//! - `TCP_RTO_MAX_MS` = 1 s (Linux 6.15 and later): retransmission intervals double up to 1 s
//!   and no further.
//! - `TCP_THIN_LINEAR_TIMEOUTS`: while fewer than four segments are in flight (an answer, not a
//!   download), the first six retransmissions come at a fixed interval (about 0.2 s on a LAN).
//!   On kernels without `TCP_RTO_MAX_MS` this alone covers partitions of a second or so.
//! - `TCP_USER_TIMEOUT` = [`UNACKED_LIMIT`]: how long sent data may stay unacknowledged before the
//!   kernel drops the connection. Without it, the kernel's limit is modelled on 15 backed-off
//!   retransmissions at the capped interval (about 14 s), and a connection dropped that way sends
//!   the agent nothing: its long-poll would hang until its own timeout. So the limit covers the
//!   longest long-poll (300 s) and a margin.
//!
//! Cost: only data that is not acknowledged is sent again, so a working or idle connection sends
//! nothing more. A connection whose answer is stuck in a partition sends it once a second instead
//! of about ten times in the first five minutes, for at most [`UNACKED_LIMIT`].
//!
//! This is the manager's only module that may use `unsafe`: one `setsockopt` call with a plain
//! integer, for the option rustix does not wrap yet.

#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

/// The longest interval between two retransmissions of the same data.
pub const RETRANSMIT_INTERVAL_MAX: Duration = Duration::from_secs(1);
/// How long sent data may stay unacknowledged before the connection is dropped: the longest
/// long-poll wait a manager accepts (300 s) and half a minute more.
pub const UNACKED_LIMIT: Duration = Duration::from_secs(330);
const _: () = assert!(
    UNACKED_LIMIT.as_secs() > 300,
    "must outlast the longest long-poll"
);

/// `TCP_RTO_MAX_MS` from Linux's `include/uapi/linux/tcp.h` (6.15): the largest retransmission
/// timeout of one socket, in milliseconds (1000 to 120000). Not in the libc crate yet.
const TCP_RTO_MAX_MS: libc::c_int = 44;

/// Which of the options in the module's documentation a connection got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuned {
    /// Retransmission intervals capped at [`RETRANSMIT_INTERVAL_MAX`] (needs Linux 6.15).
    pub interval_capped: bool,
    pub thin_linear: bool,
    pub unacked_limit: bool,
}

/// Sets the options of the module's documentation on `stream`; an option the kernel refuses is
/// left at its default and reported `false`.
pub fn tune(stream: &impl AsFd) -> Tuned {
    let fd = stream.as_fd();
    let limit_ms = u32::try_from(UNACKED_LIMIT.as_millis()).unwrap_or(u32::MAX);
    Tuned {
        interval_capped: set_rto_max(stream, RETRANSMIT_INTERVAL_MAX).is_ok(),
        thin_linear: rustix::net::sockopt::set_tcp_thin_linear_timeouts(fd, true).is_ok(),
        unacked_limit: rustix::net::sockopt::set_tcp_user_timeout(fd, limit_ms).is_ok(),
    }
}

fn set_rto_max(stream: &impl AsFd, max: Duration) -> std::io::Result<()> {
    let value = libc::c_int::try_from(max.as_millis()).unwrap_or(libc::c_int::MAX);
    let fd = stream.as_fd().as_raw_fd();
    // SAFETY: `fd` is borrowed from a live socket for the whole call; the option value is a
    // c_int on the stack and its exact size is passed, which is what the kernel reads for this
    // option. The kernel rejects an option or value it does not know (ENOPROTOOPT, EINVAL)
    // without touching the socket.
    let result = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            std::ptr::from_ref(&value).cast(),
            socklen_of::<libc::c_int>(),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The socket's `TCP_RTO_MAX_MS`, for the tests.
#[cfg(test)]
fn rto_max(stream: &impl AsFd) -> std::io::Result<Duration> {
    let mut value: libc::c_int = 0;
    let mut len = socklen_of::<libc::c_int>();
    let fd = stream.as_fd().as_raw_fd();
    // SAFETY: `fd` is borrowed from a live socket; `value` and `len` are live stack variables and
    // `len` holds `value`'s exact size, so the kernel writes at most that many bytes into it.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            std::ptr::from_mut(&mut value).cast(),
            &raw mut len,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Duration::from_millis(u64::try_from(value).unwrap_or(0)))
}

fn socklen_of<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

#[cfg(test)]
mod tests;
