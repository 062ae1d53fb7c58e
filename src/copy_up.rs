//! Copy-up: the first change to an object of a lower layer copies it into
//! the upper layer. The copy is built in the work dir (data, xattrs, owner,
//! mode, times; fsynced unless `fsync=0`) and renamed into place, so a reader
//! or a crash sees either no upper copy or a complete one.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, SeekFrom, Stat, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::format::is_private_xattr;
use crate::inode::{Ino, ROOT, UPPER};
use crate::layer::{Layer, Result, proc_path, stat_at};
use crate::overlay::{Overlay, fmt_of};
use crate::upper::Work;

/// How much of a file a copy-up copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyUp {
    /// Data and metadata.
    Full,
    /// Metadata only, with empty data (the caller truncates to 0).
    Empty,
    /// Metadata only, the data left below (kernel `metacopy`); becomes
    /// `Full` when metacopy is off or not possible.
    Meta,
}

/// Buffer size of the last-resort copy loop.
const COPY_BUF: usize = 1 << 20;

impl Overlay {
    /// Makes sure directory `ino` exists in the upper layer (copying up its
    /// ancestors first) and returns an `O_PATH` fd of it.
    pub(crate) fn upper_dir(&self, ino: Ino) -> Result<OwnedFd> {
        let upper = self.upper_layer()?;
        let (node, path) = self.node_path(ino)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        if ino == ROOT || node.in_upper() {
            return upper.dir(&path);
        }
        let parent_fd = self.upper_dir(node.parent)?;
        // The source is found by its lower path (it differs below a renamed
        // directory); the name is the same in both.
        let (ppath, name) = Overlay::split(path.at(node.top()));
        let (st, _) = self.copy_object(
            self.layer(node.top())?,
            ppath,
            name,
            &parent_fd,
            CopyUp::Full,
            None,
        )?;
        let mut t = self.write_nodes();
        t.add_backing(ino, (UPPER, st.st_ino));
        if let Some(n) = t.get_mut(ino) {
            n.layers.insert(0, UPPER);
        }
        drop(t);
        upper.dir(&path)
    }

    /// Copies a node up if it is not in the upper layer yet, or completes a
    /// metacopy file's data when `what` needs it.
    pub(crate) fn copy_up(&self, ino: Ino, what: CopyUp) -> Result<()> {
        let node = self.node(ino)?;
        if node.in_upper() {
            if node.is_metacopy() && what != CopyUp::Meta {
                return self.complete_metacopy(ino, what);
            }
            return Ok(());
        }
        if node.is_dir() {
            return self.upper_dir(ino).map(drop);
        }
        let parent_fd = self.upper_dir(node.parent)?;
        let (_, path) = self.node_path(ino)?;
        let (ppath, name) = Overlay::split(path.at(node.top()));
        let what = if what == CopyUp::Meta && !self.can_metacopy(&node) {
            CopyUp::Full
        } else {
            what
        };
        let (st, what) = self.copy_object(
            self.layer(node.top())?,
            ppath,
            name,
            &parent_fd,
            what,
            Some(ino),
        )?;
        let mut t = self.write_nodes();
        t.add_backing(ino, (UPPER, st.st_ino));
        if st.st_nlink == 1 || !self.settings.index {
            t.detach_aliases(ino);
        }
        if let Some(n) = t.get_mut(ino) {
            n.layers = if what == CopyUp::Meta {
                smallvec::smallvec![UPPER, node.top()]
            } else {
                smallvec::smallvec![UPPER]
            };
        }
        Ok(())
    }

    fn can_metacopy(&self, node: &crate::inode::Node) -> bool {
        self.settings.metacopy
            && node.fmt == libc::S_IFREG
            && self
                .work
                .as_ref()
                .is_some_and(|w| w.metacopy_xattr.is_some())
    }

    /// Gives a metacopy file its data (or, for `Empty`, just drops the
    /// marker): the data is written into the upper file, synced, and only
    /// then is the marker removed, so a crash leaves the lower data in use.
    fn complete_metacopy(&self, ino: Ino, what: CopyUp) -> Result<()> {
        let (node, path) = self.node_path(ino)?;
        let work = self.work()?;
        let x = work.metacopy_xattr.ok_or(Errno::IO)?;
        let (ppath, name) = Overlay::split(&path);
        let upper_dir = self.upper_layer()?.dir(ppath)?;
        if what == CopyUp::Full {
            let src = self.layer(node.data_layer())?.open_beneath(
                path.at(node.data_layer()),
                OFlags::RDONLY,
                Mode::empty(),
            )?;
            let dst = self
                .upper_layer()?
                .open_beneath(&path, OFlags::WRONLY, Mode::empty())?;
            let size = rustix::fs::fstat(&src)?.st_size as u64;
            copy_data(&src, &dst, size)?;
            if self.settings.fsync {
                rustix::fs::fsync(&dst)?;
            }
        }
        match rustix::fs::lremovexattr(proc_path(&upper_dir, name), x) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
        if let Some(n) = self.write_nodes().get_mut(ino) {
            n.layers = smallvec::smallvec![UPPER];
        }
        Ok(())
    }

    /// Copies `name` of `src` (in directory `ppath`) to the same name in the
    /// upper directory `dst_parent`; returns the stat of the copy.
    fn copy_object(
        &self,
        src: &Layer,
        ppath: &Path,
        name: &OsStr,
        dst_parent: &OwnedFd,
        what: CopyUp,
        origin: Option<Ino>,
    ) -> Result<(Stat, CopyUp)> {
        let work = self.work()?;
        let src_dir = src.dir(ppath)?;
        let st = stat_at(&src_dir, name)?;
        // A file with several names is copied once: the copy is linked into
        // the index, and each other name links to it (kernel `index=on`).
        let linked = self.settings.index
            && work.nlink_xattr.is_some()
            && fmt_of(&st) == libc::S_IFREG
            && st.st_nlink > 1;
        let key = Work::index_key(&st);
        if linked {
            match rustix::fs::linkat(work.index.root(), &key, dst_parent, name, AtFlags::empty()) {
                Ok(()) => return Ok((stat_at(dst_parent, name)?, CopyUp::Full)),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        // Metacopy only pays (and is only recognised) for files with data.
        let what = if (linked || st.st_size == 0) && what == CopyUp::Meta {
            CopyUp::Full
        } else {
            what
        };
        let tmp = work.temp_name();
        let built = self.build_copy(&src_dir, name, &st, work.fd(), &tmp, what);
        if let (Ok(()), Some(ino)) = (&built, origin) {
            work.write_origin(work.fd(), &tmp, ino);
        }
        let installed = built
            .and_then(|()| {
                if linked {
                    work.write_nlink_at(work.fd(), &tmp, st.st_nlink, &key)?;
                    rustix::fs::linkat(work.fd(), &tmp, work.index.root(), &key, AtFlags::empty())?;
                }
                Ok(())
            })
            .and_then(|()| {
                work.install(&tmp, dst_parent, name, fmt_of(&st) == libc::S_IFDIR, false)
            });
        if let Err(e) = installed {
            if linked {
                let _ = rustix::fs::unlinkat(work.index.root(), &key, AtFlags::empty());
            }
            work.discard(&tmp);
            return Err(e);
        }
        Ok((stat_at(dst_parent, name)?, what))
    }

    fn build_copy(
        &self,
        src_dir: &OwnedFd,
        name: &OsStr,
        st: &Stat,
        work: &OwnedFd,
        tmp: &OsStr,
        what: CopyUp,
    ) -> Result<()> {
        let fmt = fmt_of(st);
        let mut file: Option<OwnedFd> = None;
        match fmt {
            libc::S_IFREG => {
                let dst = rustix::fs::openat(
                    work,
                    tmp,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                if what == CopyUp::Meta {
                    // Same size, no data: reads go to the lower file.
                    rustix::fs::ftruncate(&dst, st.st_size as u64)?;
                    let x = self.work()?.metacopy_xattr.ok_or(Errno::IO)?;
                    rustix::fs::fsetxattr(&dst, x, b"", XattrFlags::empty())?;
                } else if what == CopyUp::Full && st.st_size > 0 {
                    let src = rustix::fs::openat(
                        src_dir,
                        name,
                        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    copy_data(&src, &dst, st.st_size as u64)?;
                }
                file = Some(dst);
            }
            libc::S_IFDIR => rustix::fs::mkdirat(work, tmp, Mode::from_raw_mode(0o700))?,
            libc::S_IFLNK => {
                let target = rustix::fs::readlinkat(src_dir, name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), work, tmp)?;
            }
            _ => rustix::fs::mknodat(
                work,
                tmp,
                FileType::from_raw_mode(fmt),
                Mode::from_raw_mode(st.st_mode & 0o7777),
                st.st_rdev,
            )?,
        }
        copy_xattrs(&proc_path(src_dir, name), &proc_path(work, tmp))?;
        match rustix::fs::chownat(
            work,
            tmp,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            // Without privileges the copy keeps our own ids, as fuse-overlayfs does.
            Ok(()) | Err(Errno::PERM) | Err(Errno::INVAL) => {}
            Err(e) => return Err(e),
        }
        if fmt != libc::S_IFLNK {
            rustix::fs::chmodat(
                work,
                tmp,
                Mode::from_raw_mode(st.st_mode & 0o7777),
                AtFlags::empty(),
            )?;
        }
        let times = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec as _,
            },
        };
        rustix::fs::utimensat(work, tmp, &times, AtFlags::SYMLINK_NOFOLLOW)?;
        if self.settings.fsync
            && let Some(f) = &file
        {
            rustix::fs::fsync(f)?;
        }
        Ok(())
    }
}

/// Copies file contents: a reflink where the filesystem can, else
/// `copy_file_range` over the data extents only (holes stay holes), else a
/// plain read/write loop.
pub fn copy_data(src: &impl AsFd, dst: &impl AsFd, size: u64) -> Result<()> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut off = 0u64;
    while off < size {
        let data = match rustix::fs::seek(src, SeekFrom::Data(off)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) => off,
            Err(e) => return Err(e),
        };
        let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(_) => size,
        };
        copy_range(src, dst, data, hole)?;
        off = hole;
    }
    rustix::fs::ftruncate(dst, size)
}

fn copy_range(src: &impl AsFd, dst: &impl AsFd, start: u64, end: u64) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let mut in_off = pos;
        let mut out_off = pos;
        let want = (end - pos).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut in_off), dst, Some(&mut out_off), want) {
            Ok(0) => return Ok(()),
            Ok(n) => pos += n as u64,
            Err(Errno::XDEV) | Err(Errno::NOSYS) | Err(Errno::INVAL) | Err(Errno::OPNOTSUPP) => {
                return copy_range_buffered(src, dst, pos, end);
            }
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_buffered(src: &impl AsFd, dst: &impl AsFd, start: u64, end: u64) -> Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        let mut done = 0;
        while done < n {
            done += rustix::io::pwrite(dst, &buf[done..n], pos + done as u64)?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Copies the xattrs of one object to another (both named by no-follow
/// paths), leaving out the overlay's own markers.
pub fn copy_xattrs(src: &Path, dst: &Path) -> Result<()> {
    let names = match list_xattrs(src) {
        Ok(n) => n,
        Err(Errno::NOTSUP) | Err(Errno::PERM) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_private_xattr(name) && name != crate::format::OVERRIDE_STAT.as_bytes() {
            continue;
        }
        let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
        let value = match get_xattr(src, name) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        match rustix::fs::lsetxattr(dst, name, &value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::NOTSUP) | Err(Errno::PERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `llistxattr` into a buffer of the right size.
pub fn list_xattrs(p: &Path) -> Result<Vec<u8>> {
    loop {
        let size = rustix::fs::llistxattr_query(p)?;
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(p, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `lgetxattr` into a buffer of the right size.
pub fn get_xattr(p: &Path, name: &OsStr) -> Result<Vec<u8>> {
    loop {
        let size = rustix::fs::lgetxattr_query(p, name)?;
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(p, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}
