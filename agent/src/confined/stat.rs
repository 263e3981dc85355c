//! File status with 64-bit sizes and inode numbers on every target, 32-bit ARM included.
//!
//! `nix::sys::stat::fstatat` calls glibc's plain `fstatat`, whose `struct stat` has a 32-bit
//! `st_size` and `st_ino` on 32-bit targets (armhf: Raspberry Pi OS 32-bit) unless C code is built
//! with `_FILE_OFFSET_BITS=64`, which Rust's `libc` crate is not. There it fails with `EOVERFLOW`
//! on any file of 2 GiB or more (or with an inode number above 2^32), so a large file at a File
//! resource's path, or in a session storage directory, would stop the agent from converging.
//! `rustix` asks the kernel directly (`statx`, or `fstatat64` on old kernels) and returns 64-bit
//! fields everywhere; on 64-bit targets it is the same single `newfstatat` call as before.
//!
//! The functions keep nix's shape (a directory descriptor, a name, nix's `AtFlags`; nix's `Errno`
//! on failure), so callers only change where they import them from.

#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::AtFlags;

/// What `fstatat`/`fstat` return: `st_mode`, `st_uid`, `st_gid` are `u32`, `st_size` is `i64`
/// and `st_ino`/`st_dev` are 64 bits wide on every target.
pub type FileStat = rustix::fs::Stat;

/// `fstatat(2)` of the entry `name` of `dir`, with 64-bit fields (see the module comment).
pub fn fstatat<Fd: AsFd>(dir: Fd, name: &OsStr, flags: AtFlags) -> Result<FileStat, Errno> {
    // nix's flags are the kernel's AT_* bits (small positive numbers), as rustix's are.
    let flags = rustix::fs::AtFlags::from_bits_retain(flags.bits() as u32);
    rustix::fs::statat(dir, name, flags).map_err(to_errno)
}

/// `fstat(2)` of an open descriptor, with 64-bit fields.
pub fn fstat<Fd: AsFd>(fd: Fd) -> Result<FileStat, Errno> {
    rustix::fs::fstat(fd).map_err(to_errno)
}

fn to_errno(error: rustix::io::Errno) -> Errno {
    Errno::from_raw(error.raw_os_error())
}
