//! Changing attributes and extended attributes: setattr (chmod, chown,
//! truncate, utimes) and the xattr calls. A change to a lower object copies
//! it up first; overlay-private xattrs are neither shown nor settable.

use std::ffi::OsStr;
use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::copy_up::{CopyUp, get_xattr, list_xattrs};
use crate::format::{self, is_private_xattr};
use crate::inode::Ino;
use crate::layer::{Result, proc_path};
use crate::overlay::{Attr, Overlay};

/// A time to set: a given instant or "now".
#[derive(Debug, Clone, Copy)]
pub enum SetTime {
    At(SystemTime),
    Now,
}

/// The changes of one setattr request.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub fh: Option<u64>,
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(t)) => {
            let (sec, nsec) = match t.duration_since(SystemTime::UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = d.subsec_nanos() as i64;
                    if nsec > 0 {
                        sec -= 1;
                        nsec = 1_000_000_000 - nsec;
                    }
                    (sec, nsec)
                }
            };
            Timespec {
                tv_sec: sec,
                tv_nsec: nsec as _,
            }
        }
    }
}

impl Overlay {
    pub fn setattr(&self, ino: Ino, mut a: SetAttr) -> Result<Attr> {
        let ids = &self.settings.ids;
        // Squashed owners have no inverse: a chown keeps the stored owner.
        a.uid = match a.uid {
            Some(_) if ids.squashes_uid() => None,
            Some(u) => Some(ids.disk_uid(u).ok_or(Errno::INVAL)?),
            None => None,
        };
        a.gid = match a.gid {
            Some(_) if ids.squashes_gid() => None,
            Some(g) => Some(ids.disk_gid(g).ok_or(Errno::INVAL)?),
            None => None,
        };
        {
            let _ns = self.lock_ns();
            let what = match a.size {
                Some(0) => CopyUp::Empty,
                Some(_) => CopyUp::Full,
                None => CopyUp::Meta,
            };
            self.copy_up(ino, what)?;
            let (node, path) = self.node_path(ino)?;
            let (ppath, name) = Overlay::split(&path);
            let dir = self.upper_layer()?.dir(ppath)?;
            // Objects whose owner and mode live in an override xattr (devices
            // kept as plain files, `xattr_permissions=`) change the xattr.
            let st = crate::layer::stat_at(&dir, name)?;
            let over = self.read_overrides(&dir, name, &st).or_else(|| {
                let x = self.settings.override_xattr?;
                let o = format::OverrideStat {
                    uid: st.st_uid,
                    gid: st.st_gid,
                    perm: st.st_mode & 0o7777,
                    kind: None,
                };
                (node.fmt != libc::S_IFLNK).then_some((o, x))
            });
            if let Some((mut o, xattr)) = over {
                // The object is stored as a plain file: change the override.
                if let Some(m) = a.mode {
                    o.perm = m & 0o7777;
                }
                if let Some(u) = a.uid {
                    o.uid = u;
                }
                if let Some(g) = a.gid {
                    o.gid = g;
                }
                rustix::fs::lsetxattr(
                    proc_path(&dir, name),
                    xattr,
                    o.format().as_bytes(),
                    XattrFlags::empty(),
                )?;
            } else {
                if a.uid.is_some() || a.gid.is_some() {
                    rustix::fs::chownat(
                        &dir,
                        name,
                        a.uid.map(rustix::fs::Uid::from_raw),
                        a.gid.map(rustix::fs::Gid::from_raw),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                if let Some(m) = a.mode
                    && node.fmt != libc::S_IFLNK
                {
                    rustix::fs::chmodat(
                        &dir,
                        name,
                        Mode::from_raw_mode(m & 0o7777),
                        AtFlags::empty(),
                    )?;
                }
            }
            if let Some(size) = a.size {
                if node.is_dir() {
                    return Err(Errno::ISDIR);
                }
                let h = a.fh.and_then(|fh| self.handles.get(fh));
                match h.as_ref().and_then(|h| h.file()) {
                    Some(fd) => rustix::fs::ftruncate(fd, size)?,
                    None => {
                        let fd = self.upper_layer()?.open_beneath(
                            &path,
                            OFlags::WRONLY,
                            Mode::empty(),
                        )?;
                        rustix::fs::ftruncate(&fd, size)?;
                    }
                }
            }
            if a.atime.is_some() || a.mtime.is_some() {
                let ts = Timestamps {
                    last_access: timespec(a.atime),
                    last_modification: timespec(a.mtime),
                };
                rustix::fs::utimensat(&dir, name, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
            }
        }
        self.getattr(ino, a.fh)
    }

    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        if is_private_xattr(name.as_encoded_bytes()) {
            return Err(Errno::NODATA);
        }
        self.with_object(ino, false, |p| get_xattr(p, name))
    }

    pub fn listxattr(&self, ino: Ino) -> Result<Vec<u8>> {
        let all = self.with_object(ino, false, list_xattrs)?;
        let mut out = Vec::with_capacity(all.len());
        for n in all.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            if !is_private_xattr(n) {
                out.extend_from_slice(n);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if is_private_xattr(name.as_encoded_bytes()) {
            return Err(Errno::PERM);
        }
        let _ns = self.lock_ns();
        self.copy_up(ino, CopyUp::Meta)?;
        self.with_object(ino, true, |p| {
            rustix::fs::lsetxattr(p, name, value, XattrFlags::from_bits_retain(flags as u32))
        })
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        if is_private_xattr(name.as_encoded_bytes()) {
            return Err(Errno::NODATA);
        }
        let _ns = self.lock_ns();
        // Removing an xattr the object does not have changes nothing: answer
        // without copying up.
        self.with_object(ino, false, |p| get_xattr(p, name).map(drop))?;
        self.copy_up(ino, CopyUp::Meta)?;
        self.with_object(ino, true, |p| rustix::fs::lremovexattr(p, name))
    }

    /// Runs `f` with a no-follow path naming the node's topmost object (or
    /// its upper copy), valid while the parent dir fd is held.
    fn with_object<T>(
        &self,
        ino: Ino,
        upper: bool,
        f: impl FnOnce(&std::path::Path) -> Result<T>,
    ) -> Result<T> {
        let (node, path) = self.node_path(ino)?;
        let lid = if upper {
            crate::inode::UPPER
        } else {
            node.top()
        };
        let (ppath, name) = Overlay::split(path.at(lid));
        let dir = self.layer(lid)?.dir(ppath)?;
        let p = proc_path(&dir, name);
        let r = f(&p);
        drop(dir);
        r
    }
}
