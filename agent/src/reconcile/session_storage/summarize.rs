//! Summarizing a session's data directory: size, file count and the content hash, walked
//! without following links.

use super::*;
// 64-bit sizes on 32-bit ARM too (confined/stat.rs); not nix's 32-bit stat.
use crate::confined::{fstat, fstatat};

/// Why a summary could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SummaryError {
    #[error("could not {action} {path}: {errno}")]
    Os {
        path: String,
        action: &'static str,
        errno: Errno,
    },
    #[error("could not read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is nested deeper than {MAX_DEPTH} directories")]
    TooDeep { path: String },
}

/// One directory being walked: its descriptor, its path relative to the data directory (with a
/// trailing `/`, empty at the top) and the names not visited yet, in order.
struct Frame {
    fd: OwnedFd,
    prefix: Vec<u8>,
    names: std::vec::IntoIter<OsString>,
}

impl Frame {
    fn open(fd: OwnedFd, prefix: Vec<u8>) -> Result<Self, SummaryError> {
        let os_error = |errno| SummaryError::Os {
            path: String::from_utf8_lossy(&prefix).into_owned(),
            action: "list",
            errno,
        };
        let listing = fd.try_clone().map_err(|error| SummaryError::Read {
            path: String::from_utf8_lossy(&prefix).into_owned(),
            source: error,
        })?;
        let mut dir = Dir::from_fd(listing).map_err(os_error)?;
        let mut names: Vec<OsString> = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(os_error)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(Self {
            fd,
            prefix,
            names: names.into_iter(),
        })
    }
}

/// What to do with the next entry of the walk.
enum Step {
    Descend(Frame),
    Done,
    Skip,
}

/// Summarises the data directory at `data` without following any link below it (the format is
/// in this module's documentation). Entries that vanish during the walk are skipped: a workload
/// may be deleting files while it runs.
pub fn summarize(data: &Path) -> Result<Summary, SummaryError> {
    // The data directory itself is not followed if it is a link; its parents are the session
    // root and the session directory the apply has just checked.
    let top = match (data.parent(), data.file_name()) {
        (Some(parent), Some(name)) => {
            confined::open_dir(parent).and_then(|parent| confined::open_dir_at(&parent, name))
        }
        _ => Err(Errno::EXDEV),
    }
    .map_err(|errno| SummaryError::Os {
        path: data.display().to_string(),
        action: "open",
        errno,
    })?;
    let mut hasher = Sha256::new();
    let mut summary = Summary::empty();
    let mut stack = vec![Frame::open(top, Vec::new())?];
    loop {
        let depth = stack.len();
        let Some(frame) = stack.last_mut() else {
            break;
        };
        let Some(name) = frame.names.next() else {
            stack.pop();
            continue;
        };
        let mut path = frame.prefix.clone();
        path.extend_from_slice(name.as_bytes());
        let step = summarize_entry(frame, &name, path, depth, &mut hasher, &mut summary)?;
        match step {
            Step::Descend(next) => stack.push(next),
            Step::Done | Step::Skip => {}
        }
    }
    summary.sha256 = hex::encode(hasher.finalize());
    Ok(summary)
}

fn summarize_entry(
    frame: &Frame,
    name: &OsStr,
    path: Vec<u8>,
    depth: usize,
    hasher: &mut Sha256,
    summary: &mut Summary,
) -> Result<Step, SummaryError> {
    let shown = || String::from_utf8_lossy(&path).into_owned();
    let os_error = |action, errno| SummaryError::Os {
        path: shown(),
        action,
        errno,
    };
    let stat = match fstatat(&frame.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::ENOENT) => return Ok(Step::Skip),
        Err(errno) => return Err(os_error("inspect", errno)),
    };
    match file_type(&stat) {
        SFlag::S_IFDIR => {
            if depth >= MAX_DEPTH {
                return Err(SummaryError::TooDeep { path: shown() });
            }
            match confined::open_dir_at(&frame.fd, name) {
                Ok(fd) => {
                    let mut prefix = path;
                    prefix.push(b'/');
                    Ok(Step::Descend(Frame::open(fd, prefix)?))
                }
                // Replaced or removed since it was listed.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => Ok(Step::Skip),
                Err(errno) => Err(os_error("open", errno)),
            }
        }
        SFlag::S_IFREG => {
            // Non-blocking, and checked again after opening: a fifo swapped in after the stat
            // must not hang the walk.
            let fd = match confined::open_file_at(&frame.fd, name, OFlag::O_NONBLOCK) {
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP) => return Ok(Step::Skip),
                Err(errno) => return Err(os_error("open", errno)),
            };
            let opened = fstat(&fd).map_err(|errno| os_error("inspect", errno))?;
            if file_type(&opened) != SFlag::S_IFREG {
                return Ok(Step::Skip);
            }
            let (size, content) =
                hash_content(File::from(fd)).map_err(|source| SummaryError::Read {
                    path: shown(),
                    source,
                })?;
            hasher.update(b"F\0");
            hasher.update(&path);
            hasher.update(format!("\0{size}\0{content}\n").as_bytes());
            summary.size_bytes = summary.size_bytes.saturating_add(size);
            summary.files_count += 1;
            Ok(Step::Done)
        }
        SFlag::S_IFLNK => {
            let target = match readlinkat(&frame.fd, name) {
                Ok(target) => target,
                Err(Errno::ENOENT | Errno::EINVAL) => return Ok(Step::Skip),
                Err(errno) => return Err(os_error("read the link", errno)),
            };
            hasher.update(b"L\0");
            hasher.update(&path);
            hasher.update(b"\0");
            hasher.update(target.as_bytes());
            hasher.update(b"\n");
            summary.files_count += 1;
            Ok(Step::Done)
        }
        _ => {
            hasher.update(b"O\0");
            hasher.update(&path);
            hasher.update(b"\n");
            summary.files_count += 1;
            Ok(Step::Done)
        }
    }
}

/// The size read and the hex sha256 of a file's content.
fn hash_content(mut file: File) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 * 1024];
    let mut size: u64 = 0;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}
