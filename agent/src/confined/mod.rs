//! The confined filesystem: the one place where the agent opens, replaces and removes files.
//!
//! Every writer goes through it: File resources, unit files, session storage markers, the
//! state store, the kept enrollment token and the metrics file. It offers three things:
//!
//! - **Opening beneath a root without following links** ([`open_beneath`], [`open_parent`]).
//!   A root is configured by the operator and may itself be reached through links; nothing below
//!   it is. Where the kernel has `openat2(2)` the whole path is resolved in one call with
//!   `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; otherwise (and to create missing directories or to
//!   say exactly which component was refused) the path is walked one component at a time with
//!   `openat(O_NOFOLLOW)`. Either way a link swapped in between a check and a write cannot
//!   redirect the write: it happens relative to a directory descriptor already opened.
//! - **Atomic replacement** ([`replace`]): a temporary file in the target's own directory,
//!   owner and mode set on it, content written and (by [`Durability`]) fsynced, renamed over the
//!   target, and the directory fsynced now, later ([`DirSyncs`], once for many files) or never.
//!   Whatever the moment of a crash, the name holds the old or the new file in full.
//! - **Removal** of one entry ([`remove_at`], with the directory fsynced when asked) or of a
//!   whole tree ([`remove_tree`], which removes a link and never what it points to).
//!
//! Invariant: no other module of the agent replaces a file or opens below a root by itself.
//! Invariant: below a root, every open carries `O_NOFOLLOW` or goes through `openat2` with
//! `RESOLVE_NO_SYMLINKS`; no `..` component is ever walked.

mod beneath;
mod replace;
mod stat;
#[cfg(test)]
mod tests;

use std::path::Path;

use nix::errno::Errno;
use nix::sys::stat::SFlag;

pub use beneath::{
    Parent, open_beneath, open_dir, open_dir_at, open_file_at, open_parent, open_root,
};
pub use replace::{
    DirSyncs, Durability, ModeChoice, Replace, check_replaceable, remove_at, remove_tree, replace,
    sync_dir, temporary_name,
};
pub use stat::{FileStat, fstat, fstatat};

/// The type of the entry `stat` describes (`S_IFREG`, `S_IFDIR`, `S_IFLNK`, …).
pub fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// Why a confined operation failed. `path` is always the full path, for messages.
#[derive(Debug, thiserror::Error)]
pub enum ConfinedError {
    #[error("path {path} goes through the symbolic link {link}, which is not followed")]
    SymlinkInPath { path: String, link: String },
    #[error("path {path} is occupied by {found}")]
    Occupied { path: String, found: String },
    #[error("path {path} does not name an entry strictly below its root")]
    NotBeneath { path: String },
    #[error("could not {action} {path}: {errno}")]
    Os {
        path: String,
        action: &'static str,
        errno: Errno,
    },
    #[error("could not {action} {path}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl ConfinedError {
    pub(crate) fn os(path: &Path, action: &'static str, errno: Errno) -> Self {
        ConfinedError::Os {
            path: path.display().to_string(),
            action,
            errno,
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        ConfinedError::Io {
            path: path.display().to_string(),
            action,
            source,
        }
    }

    /// As a plain `std::io::Error`, for callers that report I/O errors by kind (the store): the
    /// operating system's error is kept, so a full disk is still a full disk.
    pub fn into_io(self) -> std::io::Error {
        match self {
            ConfinedError::Os { errno, .. } => std::io::Error::from(errno),
            ConfinedError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        }
    }
}
