//! The FUSE side of the power-cut filesystem: each request locks the [`Model`] and answers from
//! it. Reads bypass the page cache (`FOPEN_DIRECT_IO`) and every write reaches the model at once
//! (no writeback cache), so the model sees every `write`, `fsync` and `fsync` of a directory the
//! programs on the mount make. While the power is off every request fails with `EIO`.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nix::libc;

use super::model::{Content, Model, Node};

/// How long the kernel may cache names and attributes; the tree is remounted after a cut, so
/// no cache outlives the state it describes.
const TTL: Duration = Duration::from_secs(1);

/// The filesystem served over FUSE: a handle on the shared model.
#[derive(Debug, Clone)]
pub struct PowerCutFuse {
    pub model: Arc<Mutex<Model>>,
}

fn errno(raw: i32) -> Errno {
    Errno::from_i32(raw)
}

fn attr(ino: u64, node: &Node) -> FileAttr {
    let (kind, nlink) = match node.live {
        Content::File(_) => (FileType::RegularFile, 1),
        Content::Dir(_) => (FileType::Directory, 2),
        Content::Symlink(_) => (FileType::Symlink, 1),
    };
    let size = node.size();
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.meta.mtime,
        mtime: node.meta.mtime,
        ctime: node.meta.ctime,
        crtime: node.meta.ctime,
        kind,
        perm: node.meta.perm,
        nlink,
        uid: node.meta.uid,
        gid: node.meta.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl PowerCutFuse {
    /// The model, or `EIO` while the power is off (counted).
    fn powered(&self) -> Result<MutexGuard<'_, Model>, Errno> {
        let mut model = self.model.lock().unwrap_or_else(|e| e.into_inner());
        if model.powered {
            Ok(model)
        } else {
            model.counters.refused_after_cut += 1;
            Err(Errno::EIO)
        }
    }

    /// Every request's prologue: runs `op` on the model while the power is on (else `EIO`,
    /// counted), the model's error numbers made FUSE's.
    fn with_model<T>(&self, op: impl FnOnce(&mut Model) -> Result<T, i32>) -> Result<T, Errno> {
        let mut model = self.powered()?;
        op(&mut model).map_err(errno)
    }

    /// Creates `name` in `parent` with `content`, owned by the caller: its attributes.
    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        content: Content,
        perm: u32,
    ) -> Result<FileAttr, Errno> {
        self.with_model(|model| {
            let perm = u16::try_from(perm & 0o7777).unwrap_or(0o600);
            let ino = model.create(parent.0, name, content, perm, req.uid(), req.gid())?;
            Ok(attr(ino, model.node(ino)?))
        })
    }

    /// `fsync` and `fsyncdir`: what `ino` holds now becomes durable.
    fn sync(&self, ino: INodeNo, reply: ReplyEmpty) {
        empty(reply, self.with_model(|model| model.sync(ino.0)));
    }
}

/// Answers `ok`, or the error.
fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

/// Answers the entry's attributes, or the error.
fn entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// Answers the attributes, or the error.
fn attributes(reply: ReplyAttr, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

/// Answers the bytes, or the error.
fn bytes(reply: ReplyData, result: Result<Vec<u8>, Errno>) {
    match result {
        Ok(data) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

fn time_of(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(at) => at,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for PowerCutFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.with_model(|model| {
            let ino = model.lookup(parent.0, name)?;
            Ok(attr(ino, model.node(ino)?))
        });
        entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        attributes(
            reply,
            self.with_model(|model| Ok(attr(ino.0, model.node(ino.0)?))),
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with_model(|model| {
            if let Some(size) = size {
                model.truncate(ino.0, size)?;
            }
            let node = model.node_mut(ino.0)?;
            if let Some(mode) = mode {
                node.meta.perm = u16::try_from(mode & 0o7777).unwrap_or(0);
            }
            if let Some(uid) = uid {
                node.meta.uid = uid;
            }
            if let Some(gid) = gid {
                node.meta.gid = gid;
            }
            if let Some(mtime) = mtime {
                node.meta.mtime = time_of(mtime);
            }
            node.meta.ctime = SystemTime::now();
            Ok(attr(ino.0, node))
        });
        attributes(reply, result);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.with_model(|model| match &model.node(ino.0)?.live {
            Content::Symlink(target) => Ok(target.as_os_str().as_encoded_bytes().to_vec()),
            _ => Err(libc::EINVAL),
        });
        bytes(reply, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = Content::Dir(Default::default());
        entry(reply, self.make(req, parent, name, dir, mode & !umask));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let link = Content::Symlink(target.to_path_buf());
        entry(reply, self.make(req, parent, link_name, link, 0o777));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with_model(|model| model.remove(parent.0, name, false)),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with_model(|model| model.remove(parent.0, name, true)),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result =
            self.with_model(|model| model.rename(parent.0, name, newparent.0, newname, no_replace));
        empty(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.with_model(|model| {
            if flags.0 & libc::O_TRUNC != 0 {
                model.truncate(ino.0, 0)?;
            }
            model.node(ino.0).map(|_| ())
        });
        match result {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(req, parent, name, Content::File(Vec::new()), mode & !umask) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.with_model(|model| match &model.node(ino.0)?.live {
            Content::File(data) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                Ok(data[start..end].to_vec())
            }
            _ => Err(libc::EISDIR),
        });
        bytes(reply, result);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with_model(|model| model.write(ino.0, offset, data)) {
            Ok(()) => reply.written(u32::try_from(data.len()).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.with_model(|model| {
            let mut all = vec![
                (ino.0, FileType::Directory, ".".into()),
                (ino.0, FileType::Directory, "..".into()),
            ];
            for (name, child) in model.list(ino.0)? {
                let kind = match model.node(child).map(|n| &n.live) {
                    Ok(Content::Dir(_)) => FileType::Directory,
                    Ok(Content::Symlink(_)) => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                all.push((child, kind, name));
            }
            Ok(all)
        });
        match listed {
            Ok(all) => {
                for (index, (child, kind, name)) in all
                    .into_iter()
                    .enumerate()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                {
                    if reply.add(INodeNo(child), index as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}
