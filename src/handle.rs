//! Open files and directories: the handles given to the kernel, and the data
//! operations on them (read, write, fsync, fallocate, lseek, copy_file_range).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rustix::fs::{FallocateFlags, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

use crate::inode::Ino;
use crate::layer::Result;
use crate::overlay::Overlay;
use crate::readdir::DirEntry;

#[derive(Debug)]
pub enum Handle {
    File {
        ino: Ino,
        fd: OwnedFd,
        /// `fd` is a lower layer's file: once the node is copied up, reads
        /// go to its upper file, opened on first need (as kernel overlayfs
        /// does for fds opened before a copy-up).
        from_lower: bool,
        upper: OnceLock<OwnedFd>,
    },
    Dir {
        ino: Ino,
        entries: Mutex<Vec<DirEntry>>,
    },
}

impl Handle {
    /// An open file of node `ino`; `from_lower`: `fd` is a lower layer's.
    fn new_file(ino: Ino, fd: OwnedFd, from_lower: bool) -> Handle {
        Handle::File {
            ino,
            fd,
            from_lower,
            upper: OnceLock::new(),
        }
    }

    pub fn file(&self) -> Option<&OwnedFd> {
        match self {
            Handle::File { fd, .. } => Some(fd),
            Handle::Dir { .. } => None,
        }
    }
}

/// The table of open handles.
#[derive(Debug, Default)]
pub struct Handles {
    map: RwLock<HashMap<u64, Arc<Handle>>>,
    next: AtomicU64,
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
    }

    /// A duplicate of any open fd of `ino` (for attributes of unlinked files).
    pub fn any_file_of(&self, ino: Ino) -> Option<OwnedFd> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.values().find_map(|h| match &**h {
            Handle::File { ino: i, fd, .. } if *i == ino => fd.try_clone().ok(),
            _ => None,
        })
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open flags passed on to the backing file; the rest (create, excl,
/// direct I/O, controlling tty) are the kernel's or meaningless here.
fn backing_flags(flags: i32) -> OFlags {
    let keep = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_TRUNC
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOATIME
        | libc::O_NONBLOCK;
    let mut f = flags & keep;
    // A read-only open with O_TRUNC reaches us before the kernel checks
    // write access (ETXTBSY for a running program): leave the truncation
    // to the kernel's own setattr, which comes after that check.
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        f &= !libc::O_TRUNC;
    }
    OFlags::from_bits_retain(f as u32)
}

pub fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Overlay {
    pub fn open(&self, ino: Ino, flags: i32) -> Result<u64> {
        self.open_file(ino, flags).map(|(fh, _)| fh)
    }

    /// Opens a file; also says whether its data comes from a lower layer
    /// (which never changes, so the kernel may keep its page cache).
    pub fn open_file(&self, ino: Ino, flags: i32) -> Result<(u64, bool)> {
        let (fd, lid) = self.open_data(ino, flags)?;
        let from_lower = lid != crate::inode::UPPER;
        let fh = self.handles.insert(Handle::new_file(ino, fd, from_lower));
        Ok((fh, from_lower))
    }

    /// Opens the file that holds node `ino`'s data (copying it up first
    /// when `flags` ask for writing); also returns its layer.
    fn open_data(&self, ino: Ino, flags: i32) -> Result<(OwnedFd, crate::inode::LayerId)> {
        let _ns = if wants_write(flags) {
            let g = self.lock_ns();
            let truncates = flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY;
            self.copy_up(
                ino,
                if truncates {
                    crate::copy_up::CopyUp::Empty
                } else {
                    crate::copy_up::CopyUp::Full
                },
            )?;
            Some(g)
        } else {
            None
        };
        let (node, path) = self.node_path(ino)?;
        if node.is_dir() {
            return Err(Errno::ISDIR);
        }
        // A metacopy file is read from the lower file that holds its data.
        let lid = node.data_layer();
        let (ppath, name) = Overlay::split(path.at(lid));
        let dir = self.dir_fd(lid, node.parent, ppath)?;
        let open = |flags: i32| {
            rustix::fs::openat(
                &*dir,
                name,
                backing_flags(flags) | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
        };
        let fd = match open(flags) {
            // O_NOATIME is refused on files we do not own; drop it.
            Err(Errno::PERM) if flags & libc::O_NOATIME != 0 => open(flags & !libc::O_NOATIME)?,
            r => r?,
        };
        Ok((fd, lid))
    }

    /// The fd that reads of handle `h` go to: its own, or the upper file of
    /// a lower file's node that has been copied up since it was opened.
    fn read_fd<'h>(&self, h: &'h Handle) -> Result<&'h OwnedFd> {
        let Handle::File {
            ino,
            fd,
            from_lower,
            upper,
        } = h
        else {
            return Err(Errno::BADF);
        };
        if !from_lower {
            return Ok(fd);
        }
        if let Some(u) = upper.get() {
            return Ok(u);
        }
        let copied_up = self
            .read_nodes()
            .get(*ino)
            .is_some_and(|n| n.data_layer() == crate::inode::UPPER);
        if copied_up && let Ok((u, _)) = self.open_data(*ino, libc::O_RDONLY) {
            return Ok(upper.get_or_init(|| u));
        }
        Ok(fd)
    }

    pub(crate) fn file(&self, fh: u64) -> Result<Arc<Handle>> {
        let h = self.handles.get(fh).ok_or(Errno::BADF)?;
        if h.file().is_none() {
            return Err(Errno::BADF);
        }
        Ok(h)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let mut out = Err(Errno::IO);
        self.read_with(fh, offset, size, |r| out = r.map(<[u8]>::to_vec));
        out
    }

    /// Reads into a per-thread buffer and hands the bytes to `f` (the reply),
    /// so reads allocate nothing.
    pub fn read_with(&self, fh: u64, offset: u64, size: u32, f: impl FnOnce(Result<&[u8]>)) {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let h = match self.file(fh) {
            Ok(h) => h,
            Err(e) => return f(Err(e)),
        };
        let fd = match self.read_fd(&h) {
            Ok(fd) => fd,
            Err(e) => return f(Err(e)),
        };
        BUF.with(|b| {
            let mut buf = b.borrow_mut();
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            let mut got = 0;
            while got < buf.len() {
                match rustix::io::pread(fd, &mut buf[got..], offset + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(Errno::INTR) => {}
                    Err(e) if got == 0 => return f(Err(e)),
                    Err(_) => break,
                }
            }
            f(Ok(&buf[..got]))
        })
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.file(fh)?;
        let fd = h.file().ok_or(Errno::BADF)?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(Errno::INTR) => {}
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done as u32)
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if !self.settings.fsync {
            return Ok(());
        }
        let h = self.file(fh)?;
        let fd = h.file().ok_or(Errno::BADF)?;
        if datasync {
            rustix::fs::fdatasync(fd)
        } else {
            rustix::fs::fsync(fd)
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.file(fh)?;
        let fd = h.file().ok_or(Errno::BADF)?;
        rustix::fs::fallocate(
            fd,
            FallocateFlags::from_bits_retain(mode as u32),
            offset,
            length,
        )
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.file(fh)?;
        let fd = self.read_fd(&h)?;
        let pos = match whence {
            libc::SEEK_DATA => SeekFrom::Data(offset.max(0) as u64),
            libc::SEEK_HOLE => SeekFrom::Hole(offset.max(0) as u64),
            libc::SEEK_SET => SeekFrom::Start(offset.max(0) as u64),
            libc::SEEK_END => SeekFrom::End(offset),
            _ => return Err(Errno::INVAL),
        };
        Ok(rustix::fs::seek(fd, pos)? as i64)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let hi = self.file(fh_in)?;
        let ho = self.file(fh_out)?;
        let (fi, fo) = (self.read_fd(&hi)?, ho.file().ok_or(Errno::BADF)?);
        let mut oi = off_in;
        let mut oo = off_out;
        let n = rustix::fs::copy_file_range(
            fi,
            Some(&mut oi),
            fo,
            Some(&mut oo),
            len.min(u32::MAX as u64 & !0xfff) as usize,
        )?;
        Ok(n as u32)
    }
}

impl Overlay {
    /// Creates and opens a regular file (FUSE CREATE).
    pub fn create_file(
        &self,
        caller: crate::overlay::Caller,
        parent: Ino,
        name: &std::ffi::OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(crate::overlay::Attr, u64)> {
        let (a, fd) = self.create_object(
            caller,
            parent,
            name,
            mode,
            umask,
            crate::namespace::NewObject::File { flags },
        )?;
        let fd = fd.ok_or(Errno::IO)?;
        Ok((a, self.handles.insert(Handle::new_file(a.ino, fd, false))))
    }
}
