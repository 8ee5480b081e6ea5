//! The fuser adapter: decode a kernel request, run the matching [`Fs`] method on tokio, reply
//! from that task. Nothing here waits on the network, so the FUSE loop is never blocked: a slow
//! read holds a tokio task, not the loop.
//!
//! Errors become errno here, through [`FsError::errno`] ([`errno`]).

use std::ffi::OsStr;
use std::sync::Arc;

use eodata_fetch::RangeSource;
use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use tokio::runtime::Handle;

use crate::fs::passthrough::{Mode, Modes};
use crate::fs::{ttl, Attr, Fs, FsError, Kind, Resolver, STATUS_INO};

/// The kernel's limit on FUSE requests in the background (read-ahead among them) defaults to 12.
/// Sequential reads at 1 MiB each from several files need more in flight to keep the
/// connections to the download service busy; 64 is what the block cache can feed.
const MAX_BACKGROUND: u16 = 64;

/// Entries prepared per readdir call: more than a kernel page of names holds (about 100 short
/// entries, 25 with attributes), so one call fills the kernel's buffer.
const DIR_CHUNK: usize = 256;

/// The generation of every inode: 0, because inode numbers are never reused while mounted
/// (see `fs::inodes`), so the kernel never needs a generation to tell two lives of one apart.
const GENERATION: Generation = Generation(0);

/// `st_blksize` and statfs's block sizes, in bytes: tools size their reads by it, and one block
/// of the cache is what one of its requests fetches.
const BLOCK_SIZE: u32 = eodata_fetch::cache::DEFAULT_BLOCK_SIZE as u32;

/// How many stacked filesystems may lie under a passthrough backing file: 1 allows the disk
/// cache on any plain filesystem while this mount itself can still be stacked under one
/// (overlayfs allows 2 levels in all). A cache directory on overlayfs is then refused by the
/// kernel (ELOOP), and passthrough turns off with that reason.
const MAX_STACK_DEPTH: u32 = 1;

pub struct FuseAdapter<R: Resolver, S: RangeSource> {
    fs: Arc<Fs<R, S>>,
    rt: Handle,
    /// Open files read by the kernel from a backing file, per inode ([`crate::fs::passthrough`]).
    modes: Arc<Modes<BackingId>>,
}

impl<R: Resolver, S: RangeSource> FuseAdapter<R, S> {
    pub fn new(fs: Arc<Fs<R, S>>, rt: Handle) -> Self {
        FuseAdapter {
            fs,
            rt,
            modes: Arc::default(),
        }
    }
}

/// Why a user's mount has no passthrough.
pub const NEEDS_ROOT: &str = "registering a backing file needs CAP_SYS_ADMIN (mount as root)";

/// Why the kernel refused a backing file, for the log and the status file.
fn refusal(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => NEEDS_ROOT.to_string(),
        Some(libc::ELOOP) => {
            "the disk cache lies on a stacked filesystem such as overlayfs".to_string()
        }
        _ => format!("the kernel refused a backing file: {e}"),
    }
}

/// The errno a failed operation returns to the reader ([`FsError::errno`]).
pub fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

impl<R: Resolver, S: RangeSource> Filesystem for FuseAdapter<R, S> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_background(MAX_BACKGROUND);
        let passthrough = self.fs.passthrough();
        if passthrough.is_on() {
            if config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .is_err()
            {
                passthrough.turn_off("the kernel offers no FUSE passthrough (Linux 6.9+ does)");
            } else if config.set_max_stack_depth(MAX_STACK_DEPTH).is_err() {
                passthrough.turn_off("the kernel refused the stacking depth it needs");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, name, this) = (self.fs.clone(), name.to_owned(), self.attr_maker());
        self.rt.spawn(async move {
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&ttl(&a), &this(&a), GENERATION),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, this) = (self.fs.clone(), self.attr_maker());
        self.rt.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&ttl(&a), &this(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY
            || flags.0 & (libc::O_TRUNC | libc::O_APPEND) != 0;
        let (fs, modes) = (self.fs.clone(), self.modes.clone());
        self.rt.spawn(async move {
            let fh = match fs.open(ino.0, write).await {
                // The status file changes with every open: no page cache, read to the end
                // whatever size was reported.
                Ok(fh) if ino.0 == STATUS_INO => {
                    return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
                }
                Ok(fh) => fh,
                Err(e) => return reply.error(errno(&e)),
            };
            // A product whole in the disk cache: the kernel reads its file directly. Not for
            // O_DIRECT opens: the kernel would reopen the cache file so, and not every
            // filesystem under a cache takes O_DIRECT.
            let file = match flags.0 & libc::O_DIRECT {
                0 => fs.backing_file(fh).await,
                _ => None,
            };
            let (mode, refused) = modes.open(ino.0, fh, file, |f| reply.open_backing(f));
            if let Some(e) = refused {
                fs.passthrough().turn_off(&refusal(&e));
            }
            match mode {
                Mode::Backing(backing) => {
                    fs.passthrough().note_open();
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                }
                // Products never change: the kernel may keep their pages across opens, so a
                // second read of the same bytes costs no request at all.
                Mode::Daemon => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// `close` of a file handle: nothing to write back on a read-only mount. Answered, so that
    /// fuser does not log "[Not Implemented] flush" at the first close of every session.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        self.modes.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            // A stale query listing is refetched here, once per `ls`.
            match fs.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir_at(fh.0, offset as usize, DIR_CHUNK).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate() {
                        let kind = file_type(e.attr.kind);
                        // The offset given with an entry is where the next readdir resumes.
                        let next = offset + i as u64 + 1;
                        if reply.add(INodeNo(e.attr.ino), next, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let (fs, this) = (self.fs.clone(), self.attr_maker());
        self.rt.spawn(async move {
            match fs.readdir_at(fh.0, offset as usize, DIR_CHUNK).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate() {
                        let attr = this(&e.attr);
                        if reply.add(
                            INodeNo(e.attr.ino),
                            offset + i as u64 + 1,
                            &e.name,
                            &ttl(&e.attr),
                            &attr,
                            GENERATION,
                        ) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.to_string_lossy();
        match self.fs.getxattr(ino.0, &name) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(n.as_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, &buf, size);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}

/// xattr replies: a zero size asks for the length; a too-small buffer gets ERANGE.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl<R: Resolver, S: RangeSource> FuseAdapter<R, S> {
    /// A `Send` closure turning [`Attr`] into [`FileAttr`], for use inside spawned tasks.
    fn attr_maker(&self) -> impl Fn(&Attr) -> FileAttr + Send + 'static {
        let (uid, gid) = (self.fs.config().uid, self.fs.config().gid);
        move |a: &Attr| file_attr(a, uid, gid)
    }
}

/// FUSE's attributes for a node owned by `uid`/`gid`.
fn file_attr(a: &Attr, uid: u32, gid: u32) -> FileAttr {
    let (kind, nlink) = match a.kind {
        Kind::Directory => (FileType::Directory, 2),
        Kind::File => (FileType::RegularFile, 1),
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind,
        perm: a.perm,
        nlink,
        uid,
        gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}
