//! The power-cut filesystem's model: every inode has a live state (what programs see) and a
//! durable state (what survives a power cut), and only fsync moves one into the other — a
//! file's data, size, mode and owner on `fsync`/`fdatasync` of that file, a directory's entries
//! (create, rename, unlink) on `fsync` of that directory. [`Model::reboot`] rebuilds the tree
//! from durable state alone; a file whose entry is durable but whose data never was comes back
//! empty, as a missing fsync before a rename leaves it on a real disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::SystemTime;

use nix::libc;

/// `ino` of the root directory (FUSE's fixed number).
pub const ROOT: u64 = 1;

/// A POSIX error number, as the FUSE layer answers it.
pub type Errno = i32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File(Vec<u8>),
    Dir(BTreeMap<OsString, u64>),
    Symlink(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub meta: Meta,
    pub live: Content,
    /// As of the last fsync; `None`: never synced.
    durable: Option<(Meta, Content)>,
}

impl Node {
    fn new(meta: Meta, live: Content) -> Self {
        Self {
            meta,
            live,
            durable: None,
        }
    }

    pub fn size(&self) -> u64 {
        match &self.live {
            Content::File(data) => data.len() as u64,
            Content::Dir(entries) => entries.len() as u64,
            Content::Symlink(target) => target.as_os_str().len() as u64,
        }
    }
}

/// What the filesystem was asked to do, for the test's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub writes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub renames: u64,
    /// Requests refused because the power was off.
    pub refused_after_cut: u64,
}

/// The whole filesystem. Unlinked inodes are kept (never reachable again by name): an open
/// descriptor may still use them, and a durable entry elsewhere may still name them.
#[derive(Debug)]
pub struct Model {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// False between a power cut and the next reboot: every request fails with `EIO`.
    pub powered: bool,
    pub counters: Counters,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    /// An empty filesystem whose root directory is durable (as a freshly made one is).
    pub fn new() -> Self {
        let now = SystemTime::now();
        let meta = Meta {
            perm: 0o755,
            uid: 0,
            gid: 0,
            mtime: now,
            ctime: now,
        };
        let mut root = Node::new(meta, Content::Dir(BTreeMap::new()));
        root.durable = Some((meta, root.live.clone()));
        Self {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            powered: true,
            counters: Counters::default(),
        }
    }

    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    pub fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn entries(&self, dir: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.node(dir)?.live {
            Content::Dir(entries) => Ok(entries),
            _ => Err(libc::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        let node = self.node_mut(dir)?;
        node.meta.mtime = SystemTime::now();
        node.meta.ctime = node.meta.mtime;
        match &mut node.live {
            Content::Dir(entries) => Ok(entries),
            _ => Err(libc::ENOTDIR),
        }
    }

    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.entries(dir)?.get(name).copied().ok_or(libc::ENOENT)
    }

    /// The entries of `dir`, in name order.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64)>, Errno> {
        Ok(self
            .entries(dir)?
            .iter()
            .map(|(name, ino)| (name.clone(), *ino))
            .collect())
    }

    /// Adds a new inode named `name` in `dir`.
    pub fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        content: Content,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        if self.entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let now = SystemTime::now();
        let ino = self.next_ino;
        self.next_ino += 1;
        let meta = Meta {
            perm,
            uid,
            gid,
            mtime: now,
            ctime: now,
        };
        self.nodes.insert(ino, Node::new(meta, content));
        self.entries_mut(dir)?.insert(name.to_owned(), ino);
        Ok(ino)
    }

    /// Removes the entry `name` of `dir`: a directory only with `dir_wanted` (and empty), any
    /// other inode only without.
    pub fn remove(&mut self, dir: u64, name: &OsStr, dir_wanted: bool) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        match (&self.node(ino)?.live, dir_wanted) {
            (Content::Dir(entries), true) if !entries.is_empty() => return Err(libc::ENOTEMPTY),
            (Content::Dir(_), true) => {}
            (Content::Dir(_), false) => return Err(libc::EISDIR),
            (_, true) => return Err(libc::ENOTDIR),
            (_, false) => {}
        }
        self.entries_mut(dir)?.remove(name);
        Ok(())
    }

    pub fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        new_dir: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        let moving_dir = matches!(self.node(ino)?.live, Content::Dir(_));
        self.entries(new_dir)?;
        if let Ok(target) = self.lookup(new_dir, new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (&self.node(target)?.live, moving_dir) {
                (Content::Dir(entries), true) if !entries.is_empty() => {
                    return Err(libc::ENOTEMPTY);
                }
                (Content::Dir(_), true) => {}
                (Content::Dir(_), false) => return Err(libc::EISDIR),
                (_, true) => return Err(libc::ENOTDIR),
                (_, false) => {}
            }
        }
        self.counters.renames += 1;
        self.entries_mut(dir)?.remove(name);
        self.entries_mut(new_dir)?.insert(new_name.to_owned(), ino);
        Ok(())
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        let Content::File(content) = &mut node.live else {
            return Err(libc::EISDIR);
        };
        let start = usize::try_from(offset).map_err(|_| libc::EFBIG)?;
        let end = start + data.len();
        if content.len() < end {
            content.resize(end, 0);
        }
        content[start..end].copy_from_slice(data);
        node.meta.mtime = SystemTime::now();
        node.meta.ctime = node.meta.mtime;
        self.counters.writes += 1;
        Ok(())
    }

    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        let Content::File(content) = &mut node.live else {
            return Err(libc::EISDIR);
        };
        content.resize(usize::try_from(size).map_err(|_| libc::EFBIG)?, 0);
        node.meta.mtime = SystemTime::now();
        node.meta.ctime = node.meta.mtime;
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file or of a directory: its current state becomes durable.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        let is_dir = matches!(node.live, Content::Dir(_));
        node.durable = Some((node.meta, node.live.clone()));
        if is_dir {
            self.counters.dir_syncs += 1;
        } else {
            self.counters.file_syncs += 1;
        }
        Ok(())
    }

    /// The state after the power comes back: only what was durable, reached from the root by
    /// durable directory entries. A directory never synced is empty, a file never synced is
    /// empty (its entry may be durable while its data is not), a symlink keeps its target (it
    /// is written with its inode).
    pub fn reboot(&mut self) {
        let mut kept = HashMap::new();
        let mut seen = HashSet::new();
        let mut pending = vec![ROOT];
        while let Some(ino) = pending.pop() {
            if !seen.insert(ino) {
                continue;
            }
            let Some(node) = self.nodes.get(&ino) else {
                continue;
            };
            let (meta, content) = match (&node.durable, &node.live) {
                (Some((meta, content)), _) => (*meta, content.clone()),
                (None, Content::File(_)) => (node.meta, Content::File(Vec::new())),
                (None, Content::Dir(_)) => (node.meta, Content::Dir(BTreeMap::new())),
                (None, Content::Symlink(target)) => (node.meta, Content::Symlink(target.clone())),
            };
            let content = match content {
                Content::Dir(entries) => Content::Dir(
                    entries
                        .into_iter()
                        // A directory reached twice (a cycle of renames) is named once.
                        .filter(|(_, child)| {
                            !seen.contains(child) && self.nodes.contains_key(child)
                        })
                        .inspect(|(_, child)| pending.push(*child))
                        .collect(),
                ),
                other => other,
            };
            let mut rebuilt = Node::new(meta, content);
            rebuilt.durable = Some((meta, rebuilt.live.clone()));
            kept.insert(ino, rebuilt);
        }
        self.nodes = kept;
        self.powered = true;
    }
}
