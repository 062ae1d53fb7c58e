//! The thin `fuser` adapter: decodes requests, calls the overlay, and turns
//! every result into a reply. No overlay logic lives here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};

use crate::attr::{SetAttr, SetTime};
use crate::namespace::NewObject;
use crate::overlay::{Attr, Caller, Overlay};
use crate::passthrough::{OpenAs, Passthrough};

/// Largest write the kernel may send (it caps requests at 1 MiB here).
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseAdapter {
    pub overlay: Arc<Overlay>,
    debug: bool,
    passthrough: Passthrough<BackingId>,
    /// When each directory was last listed for the kernel's readdir cache.
    listed: std::sync::Mutex<lru::LruCache<u64, std::time::Instant>>,
}

/// Directories whose listing time is remembered (older ones are re-listed).
const LISTED_DIRS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(64 * 1024).unwrap();

impl FuseAdapter {
    pub fn new(overlay: Arc<Overlay>, debug: bool) -> FuseAdapter {
        FuseAdapter {
            passthrough: Passthrough::new(overlay.upper.is_some()),
            overlay,
            debug,
            listed: std::sync::Mutex::new(lru::LruCache::new(LISTED_DIRS)),
        }
    }

    /// Directory handles let the kernel cache listings (FOPEN_CACHE_DIR).
    /// Changes made through the mount reset that cache in the kernel; for
    /// changes made directly in the layers, a listing older than the
    /// timeout is dropped at the next opendir (no FOPEN_KEEP_CACHE), as
    /// entries and attributes expire. `timeout=0` caches nothing.
    fn dir_cache_flags(&self, ino: u64) -> FopenFlags {
        let ttl = self.ttl();
        if ttl.is_zero() {
            return FopenFlags::empty();
        }
        let fresh = self
            .listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .is_some_and(|t| t.elapsed() < ttl);
        if fresh {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_CACHE_DIR
        }
    }

    /// A listing from its start: what the kernel caches from now on.
    fn note_listing(&self, ino: u64, offset: u64) {
        if offset == 0 && !self.ttl().is_zero() {
            self.listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(ino, std::time::Instant::now());
        }
    }

    /// The open flags for handle `fh` of `ino`, and the backing file when
    /// the kernel is to serve it by passthrough. `lower`: its data comes
    /// from a lower layer, which never changes (the kernel may keep its
    /// page cache).
    fn serve(
        &self,
        ino: u64,
        fh: u64,
        lower: bool,
        register: impl FnOnce(&std::os::fd::OwnedFd) -> std::io::Result<BackingId>,
    ) -> Result<(FopenFlags, Option<Arc<BackingId>>), rustix::io::Errno> {
        let cached = if lower {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        let Some(h) = self.overlay.handles.get(fh) else {
            return Ok((cached, None));
        };
        let Some(fd) = h.file() else {
            return Ok((cached, None));
        };
        match self.passthrough.open(ino, fh, fd, lower, |fd| {
            register(fd).inspect_err(|e| {
                self.log(format_args!(
                    "passthrough off: registering a backing file: {e}"
                ))
            })
        }) {
            OpenAs::Passthrough(id) => {
                self.overlay
                    .passthrough_opens
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok((FopenFlags::empty(), Some(id)))
            }
            OpenAs::Cached => Ok((cached, None)),
            OpenAs::Busy => {
                self.overlay.release(fh);
                Err(rustix::io::Errno::BUSY)
            }
        }
    }

    fn ttl(&self) -> Duration {
        self.overlay.settings.timeout
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.debug {
            eprintln!("cairnfs: {what}");
        }
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_i32(e.raw_os_error())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    let t = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(sec as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(sec.unsigned_abs()))
    };
    t.and_then(|t| t.checked_add(nsec)).unwrap_or(UNIX_EPOCH)
}

fn kind(fmt: u32) -> FileType {
    match fmt {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec as i64),
        mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: time(st.st_ctime, st.st_ctime_nsec as i64),
        kind: kind(st.st_mode & libc::S_IFMT),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Attributes of a negative entry (node id 0).
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // cairnfs applies the umask itself: not under a default ACL.
        let _ = config.add_capabilities(InitFlags::FUSE_DONT_MASK);
        // The kernel checks POSIX ACLs (read through getxattr) and keeps
        // them in step with chmod; the upper filesystem stores them.
        if self.overlay.settings.acl {
            let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        }
        // READDIRPLUS when a walk follows the listing (the kernel decides).
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // Passthrough where the kernel has it; backing files must then be
        // on an unstacked filesystem (else registering fails and it is off).
        if self.overlay.settings.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.enable();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        guarded(|| {
            self.log(format_args!("lookup {} {:?}", parent.0, name));
            match self.overlay.lookup(parent.0, name) {
                Ok(a) => reply.entry(&self.ttl(), &file_attr(&a), Generation(0)),
                // A negative entry lets the kernel cache the miss for the timeout.
                Err(rustix::io::Errno::NOENT) if !self.ttl().is_zero() => {
                    reply.entry(&self.ttl(), &negative_attr(), Generation(0))
                }
                Err(e) => {
                    self.log(format_args!("lookup {} {:?} -> {e}", parent.0, name));
                    reply.error(errno(e))
                }
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        guarded(|| {
            self.overlay.forget(ino.0, nlookup);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        guarded(|| {
            self.log(format_args!("getattr {}", ino.0));
            match self.overlay.getattr(ino.0, fh.map(|f| f.0)) {
                Ok(a) => reply.attr(&self.ttl(), &file_attr(&a)),
                Err(e) => {
                    self.log(format_args!("getattr {} -> {e}", ino.0));
                    reply.error(errno(e))
                }
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        guarded(|| {
            self.log(format_args!(
                "setattr {} mode={mode:?} uid={uid:?} gid={gid:?} size={size:?}",
                ino.0
            ));
            let a = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: set_time(atime),
                mtime: set_time(mtime),
                fh: fh.map(|f| f.0),
            };
            match self.overlay.setattr(ino.0, a) {
                Ok(a) => reply.attr(&self.ttl(), &file_attr(&a)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        guarded(|| match self.overlay.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        guarded(|| {
            self.log(format_args!("mknod {} {:?} {mode:o}", parent.0, name));
            let what = if mode & libc::S_IFMT == libc::S_IFREG {
                NewObject::File {
                    flags: libc::O_WRONLY,
                }
            } else {
                NewObject::Node { rdev: rdev as u64 }
            };
            match self
                .overlay
                .create_object(caller(req), parent.0, name, mode, umask, what)
            {
                Ok((a, _)) => reply.entry(&self.ttl(), &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
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
        guarded(|| {
            self.log(format_args!("mkdir {} {:?}", parent.0, name));
            match self.overlay.create_object(
                caller(req),
                parent.0,
                name,
                mode | libc::S_IFDIR,
                umask,
                NewObject::Dir,
            ) {
                Ok((a, _)) => reply.entry(&self.ttl(), &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| {
            self.log(format_args!("unlink {} {:?}", parent.0, name));
            match self.overlay.unlink(parent.0, name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| {
            self.log(format_args!("rmdir {} {:?}", parent.0, name));
            match self.overlay.rmdir(parent.0, name) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        guarded(|| {
            match self.overlay.create_object(
                caller(req),
                parent.0,
                link_name,
                libc::S_IFLNK | 0o777,
                0,
                NewObject::Symlink { target },
            ) {
                Ok((a, _)) => reply.entry(&self.ttl(), &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno(e)),
            }
        });
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
        guarded(|| {
            self.log(format_args!(
                "rename {} {:?} -> {} {:?}",
                parent.0, name, newparent.0, newname
            ));
            match self
                .overlay
                .rename(parent.0, name, newparent.0, newname, flags.bits())
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        guarded(|| match self.overlay.link(ino.0, newparent.0, newname) {
            Ok(a) => reply.entry(&self.ttl(), &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        guarded(|| {
            self.log(format_args!("open {} {:#x}", ino.0, flags.0));
            match self.overlay.open_file(ino.0, flags.0) {
                Ok((fh, lower)) => {
                    match self.serve(ino.0, fh, lower, |fd| reply.open_backing(fd)) {
                        Ok((f, Some(id))) => reply.opened_passthrough(FileHandle(fh), f, &id),
                        Ok((f, None)) => reply.opened(FileHandle(fh), f),
                        Err(e) => reply.error(errno(e)),
                    }
                }
                Err(e) => reply.error(errno(e)),
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
        guarded(|| {
            self.overlay.read_with(fh.0, offset, size, |r| match r {
                Ok(d) => reply.data(d),
                Err(e) => reply.error(errno(e)),
            });
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        guarded(|| match self.overlay.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            // Nothing to do on close: ENOSYS tells the kernel to stop sending it.
            reply.error(Errno::ENOSYS);
        });
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
        guarded(|| {
            self.passthrough.release(fh.0);
            self.overlay.release(fh.0);
            reply.ok();
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| match self.overlay.fsync(fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        guarded(|| match self.overlay.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), self.dir_cache_flags(ino.0)),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.note_listing(ino.0, offset);
        guarded(|| match self.overlay.readdir(fh.0, offset) {
            Ok(list) => {
                for (off, e) in list {
                    if reply.add(INodeNo(e.ino), off, kind(e.fmt), &e.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.note_listing(ino.0, offset);
        guarded(|| {
            let list = match self.overlay.readdir(fh.0, offset) {
                Ok(l) => l,
                Err(e) => return reply.error(errno(e)),
            };
            let ttl = self.ttl();
            for (off, e) in list {
                let dots = e.name == "." || e.name == "..";
                // The kernel counts a lookup for every entry but `.` and `..`.
                let attr = if dots {
                    self.overlay.getattr(e.ino, None)
                } else {
                    self.overlay.lookup(ino.0, &e.name)
                };
                let Ok(a) = attr else {
                    continue; // gone since the listing was taken
                };
                if reply.add(
                    INodeNo(a.ino),
                    off,
                    &e.name,
                    &ttl,
                    &file_attr(&a),
                    Generation(0),
                ) {
                    if !dots {
                        self.overlay.forget(a.ino, 1);
                    }
                    break;
                }
            }
            reply.ok();
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
        guarded(|| {
            self.overlay.releasedir(fh.0);
            reply.ok();
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        guarded(|| {
            reply.ok();
        });
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        guarded(|| match self.overlay.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax.min(255) as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        guarded(|| match self.overlay.setxattr(ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        guarded(|| match self.overlay.getxattr(ino.0, name) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        guarded(|| match self.overlay.listxattr(ino.0) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        guarded(|| match self.overlay.removexattr(ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        guarded(|| {
            // The kernel checks permissions itself (default_permissions).
            reply.ok();
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        guarded(|| {
            self.log(format_args!("create {} {:?} {mode:o}", parent.0, name));
            match self
                .overlay
                .create_file(caller(req), parent.0, name, mode, umask, flags)
            {
                Ok((a, fh)) => match self.serve(a.ino, fh, false, |fd| reply.open_backing(fd)) {
                    Ok((f, Some(id))) => reply.created_passthrough(
                        &self.ttl(),
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        f,
                        &id,
                    ),
                    Ok((f, None)) => reply.created(
                        &self.ttl(),
                        &file_attr(&a),
                        Generation(0),
                        FileHandle(fh),
                        f,
                    ),
                    Err(e) => reply.error(errno(e)),
                },
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        guarded(
            || match self.overlay.fallocate(fh.0, offset, length, mode) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        guarded(|| match self.overlay.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        guarded(|| {
            match self
                .overlay
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

/// Runs a request handler; a panic in it (a bug) becomes an EIO reply (the
/// reply is dropped while unwinding) instead of taking the mount down.
fn guarded(f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        log::error!("cairnfs: a request handler panicked; answered EIO");
    }
}

/// Answers a size query (size 0) or the data, or ERANGE when it does not fit.
fn xattr_reply(reply: ReplyXattr, v: &[u8], size: u32) {
    if size == 0 {
        reply.size(v.len() as u32);
    } else if v.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
