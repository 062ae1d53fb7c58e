//! Writing into the upper layer: the work dir where new objects are built,
//! whiteouts, opaque markers, and atomic installation of a finished object.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

use crate::format::{OPAQUE_FILE, wh_name};
use crate::layer::{Layer, Result, exists_at, proc_path, stat_at};

/// Name of cairnfs's own directory inside the user's work dir (cleared at
/// every mount).
pub const WORK_SUBDIR: &str = "cairn";
/// The hard-link index beside it (kept): one link per copied-up lower file
/// that had several names, so every name finds the same upper inode.
pub const INDEX_SUBDIR: &str = "cairn-index";

/// How this mount writes whiteouts and opaque markers, decided once at mount
/// by probing what the upper filesystem and our privileges allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutStyle {
    /// 0:0 character device (kernel overlayfs, fuse-overlayfs).
    CharDev,
    /// `.wh.NAME` file (OCI; fuse-overlayfs without mknod rights).
    WhFile,
}

#[derive(Debug)]
pub struct Work {
    pub dir: Layer,
    counter: AtomicU64,
    pub whiteout: WhiteoutStyle,
    /// The opaque xattr kernel overlayfs reads at our privilege, or None when
    /// the filesystem takes no such xattr (then `.wh..wh..opq` is written).
    pub opaque_xattr: Option<&'static str>,
    /// Where a copied-up file keeps the inode number it had below, so the
    /// number survives remounts (hidden like every `overlay.` xattr).
    pub origin_xattr: Option<&'static str>,
    /// The kernel's metacopy marker at our privilege.
    pub metacopy_xattr: Option<&'static str>,
    /// The kernel's redirect xattr (renamed directories) at our privilege.
    pub redirect_xattr: Option<&'static str>,
    /// The hard-link index dir.
    pub index: Layer,
    /// Where an indexed file keeps its number of names in the merged view.
    pub nlink_xattr: Option<&'static str>,
}

impl Work {
    /// Creates (or empties) `WORKDIR/cairn` and probes the formats.
    pub fn prepare(workdir: &Layer) -> std::io::Result<Work> {
        let sub = OsStr::new(WORK_SUBDIR);
        match rustix::fs::mkdirat(workdir.root(), sub, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = Layer::open_sub(workdir, sub)?;
        clear_dir(dir.root())?;
        let isub = OsStr::new(INDEX_SUBDIR);
        match rustix::fs::mkdirat(workdir.root(), isub, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let index = Layer::open_sub(workdir, isub)?;
        let probe = OsStr::new("probe");
        let whiteout = match rustix::fs::mknodat(
            dir.root(),
            probe,
            FileType::CharacterDevice,
            Mode::empty(),
            0,
        ) {
            Ok(()) => {
                let _ = rustix::fs::unlinkat(dir.root(), probe, AtFlags::empty());
                WhiteoutStyle::CharDev
            }
            Err(_) => WhiteoutStyle::WhFile,
        };
        rustix::fs::mkdirat(dir.root(), probe, Mode::from_raw_mode(0o700))?;
        let mut opaque_xattr = None;
        for x in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            if rustix::fs::lsetxattr(proc_path(dir.root(), probe), x, b"y", XattrFlags::empty())
                .is_ok()
            {
                opaque_xattr = Some(x);
                break;
            }
        }
        rustix::fs::unlinkat(dir.root(), probe, AtFlags::REMOVEDIR)?;
        let origin_xattr = opaque_xattr.map(|x| {
            if x.starts_with("trusted.") {
                "trusted.overlay.cairn.origin"
            } else {
                "user.overlay.cairn.origin"
            }
        });
        let metacopy_xattr = opaque_xattr.map(|x| {
            if x.starts_with("trusted.") {
                "trusted.overlay.metacopy"
            } else {
                "user.overlay.metacopy"
            }
        });
        let nlink_xattr = opaque_xattr.map(|x| {
            if x.starts_with("trusted.") {
                "trusted.overlay.cairn.nlink"
            } else {
                "user.overlay.cairn.nlink"
            }
        });
        let redirect_xattr = opaque_xattr.map(|x| {
            if x.starts_with("trusted.") {
                "trusted.overlay.redirect"
            } else {
                "user.overlay.redirect"
            }
        });
        Ok(Work {
            redirect_xattr,
            dir,
            counter: AtomicU64::new(0),
            whiteout,
            opaque_xattr,
            origin_xattr,
            metacopy_xattr,
            index,
            nlink_xattr,
        })
    }

    /// A fresh name for an object being built in the work dir.
    pub fn temp_name(&self) -> OsString {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#{:x}.{}", n, std::process::id()))
    }

    /// The origin inode number recorded on `name` in `dir`, if any.
    pub fn read_origin(&self, dir: &impl AsFd, name: &OsStr) -> Option<u64> {
        let x = self.origin_xattr?;
        let mut buf = [0u8; 24];
        let n = rustix::fs::lgetxattr(proc_path(dir, name), x, &mut buf[..]).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
    }

    /// Records the origin inode number on `name` in `dir` (best effort: a
    /// filesystem without xattrs only loses stability across remounts).
    pub fn write_origin(&self, dir: &impl AsFd, name: &OsStr, ino: u64) {
        if let Some(x) = self.origin_xattr {
            let _ = rustix::fs::lsetxattr(
                proc_path(dir, name),
                x,
                ino.to_string().as_bytes(),
                XattrFlags::empty(),
            );
        }
    }

    /// The index entry name of a lower file.
    pub fn index_key(st: &rustix::fs::Stat) -> OsString {
        OsString::from(format!("{:x}-{:x}", st.st_dev, st.st_ino))
    }

    /// Whether the lower file `st` has an index entry (was copied up
    /// through another of its names).
    pub fn indexed(&self, st: &rustix::fs::Stat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_nlink > 1
            && exists_at(self.index.root(), &Self::index_key(st)).unwrap_or(false)
    }

    /// The merged-view link count and index key kept on an indexed file
    /// `name` in `dir` (value `N:KEY`).
    pub fn read_nlink_at(&self, dir: &impl AsFd, name: &OsStr) -> Option<(u64, OsString)> {
        let x = self.nlink_xattr?;
        let mut buf = [0u8; 64];
        let n = rustix::fs::lgetxattr(proc_path(dir, name), x, &mut buf[..]).ok()?;
        parse_nlink(&buf[..n])
    }

    /// The same through an open (not `O_PATH`) fd of the file.
    pub fn read_nlink_fd(&self, fd: &impl AsFd) -> Option<u64> {
        let x = self.nlink_xattr?;
        let mut buf = [0u8; 64];
        let n = rustix::fs::fgetxattr(fd, x, &mut buf[..]).ok()?;
        parse_nlink(&buf[..n]).map(|(n, _)| n)
    }

    pub fn write_nlink_at(&self, dir: &impl AsFd, name: &OsStr, n: u64, key: &OsStr) -> Result<()> {
        match self.nlink_xattr {
            Some(x) => rustix::fs::lsetxattr(
                proc_path(dir, name),
                x,
                format!("{n}:{}", key.to_string_lossy()).as_bytes(),
                XattrFlags::empty(),
            ),
            None => Ok(()),
        }
    }

    /// Adds `delta` to the merged link count of an indexed file; when no
    /// name is left, its index entry goes too. Files without the count are
    /// left alone.
    pub fn adjust_nlink(&self, dir: &impl AsFd, name: &OsStr, delta: i64) -> Result<()> {
        let Some((n, key)) = self.read_nlink_at(dir, name) else {
            return Ok(());
        };
        let n = (n as i64 + delta).max(0) as u64;
        self.write_nlink_at(dir, name, n, &key)?;
        if n == 0 {
            match rustix::fs::unlinkat(self.index.root(), &key, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn fd(&self) -> &OwnedFd {
        self.dir.root()
    }

    /// Makes a whiteout at `name` in the upper directory `parent`, replacing
    /// whatever non-directory is there, atomically when the style allows.
    pub fn whiteout(&self, parent: &OwnedFd, name: &OsStr) -> Result<()> {
        match self.whiteout {
            WhiteoutStyle::CharDev => {
                let tmp = self.temp_name();
                rustix::fs::mknodat(self.fd(), &tmp, FileType::CharacterDevice, Mode::empty(), 0)?;
                if let Err(e) = rustix::fs::renameat(self.fd(), &tmp, parent, name) {
                    let _ = rustix::fs::unlinkat(self.fd(), &tmp, AtFlags::empty());
                    return Err(e);
                }
                Ok(())
            }
            WhiteoutStyle::WhFile => {
                let fd = rustix::fs::openat(
                    parent,
                    wh_name(name),
                    OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::from_raw_mode(0o600),
                )?;
                drop(fd);
                match rustix::fs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Records on a moved directory where its lower dirs are (kernel
    /// `redirect_dir=on` format: an absolute path from the layer root).
    pub fn set_redirect(
        &self,
        parent: &OwnedFd,
        name: &OsStr,
        lower: &std::path::Path,
    ) -> Result<()> {
        let x = self.redirect_xattr.ok_or(Errno::XDEV)?;
        let mut v = b"/".to_vec();
        v.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(lower.as_os_str()));
        rustix::fs::lsetxattr(proc_path(parent, name), x, &v, XattrFlags::empty())
    }

    /// Marks directory `name` in `parent` opaque.
    pub fn set_opaque(&self, parent: &OwnedFd, name: &OsStr) -> Result<()> {
        if let Some(x) = self.opaque_xattr
            && rustix::fs::lsetxattr(proc_path(parent, name), x, b"y", XattrFlags::empty()).is_ok()
        {
            return Ok(());
        }
        let dir = rustix::fs::openat(
            parent,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let f = rustix::fs::openat(
            &dir,
            OPAQUE_FILE,
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )?;
        drop(f);
        Ok(())
    }

    /// Removes a directory of the upper layer whose merged view is empty (it
    /// holds only whiteouts and markers), leaving a whiteout in its place
    /// when `whiteout` is set.
    pub fn remove_upper_dir(&self, parent: &OwnedFd, name: &OsStr, whiteout: bool) -> Result<()> {
        if whiteout && self.whiteout == WhiteoutStyle::CharDev {
            // Swap a fresh whiteout in atomically, then clear the old dir.
            let tmp = self.temp_name();
            rustix::fs::mknodat(self.fd(), &tmp, FileType::CharacterDevice, Mode::empty(), 0)?;
            if let Err(e) =
                rustix::fs::renameat_with(self.fd(), &tmp, parent, name, RenameFlags::EXCHANGE)
            {
                let _ = rustix::fs::unlinkat(self.fd(), &tmp, AtFlags::empty());
                return Err(e);
            }
            return remove_tree(self.fd(), &tmp);
        }
        // Move it into the work dir first so no half-emptied dir is visible.
        let tmp = self.temp_name();
        rustix::fs::renameat(parent, name, self.fd(), &tmp)?;
        if whiteout {
            self.whiteout(parent, name)?;
        }
        remove_tree(self.fd(), &tmp)
    }

    /// Moves a finished object from the work dir to `name` in `parent`.
    /// `replace_whiteout`: a whiteout is at the target and must be replaced.
    pub fn install(
        &self,
        tmp: &OsStr,
        parent: &OwnedFd,
        name: &OsStr,
        is_dir: bool,
        replace_whiteout: bool,
    ) -> Result<()> {
        if !replace_whiteout {
            return rustix::fs::renameat_with(self.fd(), tmp, parent, name, RenameFlags::NOREPLACE);
        }
        if is_dir {
            rustix::fs::renameat_with(self.fd(), tmp, parent, name, RenameFlags::EXCHANGE)?;
            let _ = rustix::fs::unlinkat(self.fd(), tmp, AtFlags::empty());
            Ok(())
        } else {
            rustix::fs::renameat(self.fd(), tmp, parent, name)
        }
    }

    /// Discards a half-built object after a failure.
    pub fn discard(&self, tmp: &OsStr) {
        let _ = remove_tree(self.fd(), tmp);
    }
}

impl Layer {
    /// Opens `name` inside another layer's root as a layer of its own.
    pub fn open_sub(parent: &Layer, name: &OsStr) -> std::io::Result<Layer> {
        let fd = rustix::fs::openat(
            parent.root(),
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let mut path = parent.path.clone();
        path.push(name);
        Ok(Layer::from_parts(fd, path, st.st_dev))
    }
}

fn parse_nlink(v: &[u8]) -> Option<(u64, OsString)> {
    let s = std::str::from_utf8(v).ok()?;
    let (n, key) = s.split_once(':')?;
    Some((n.parse().ok()?, OsString::from(key)))
}

/// What sits at `name` in an upper directory, as seen by create operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Free,
    /// A 0:0 device whiteout occupies the name.
    DevWhiteout,
    /// A `.wh.NAME` file whites the name out; the name itself is free.
    WhFile,
    Taken,
}

pub fn slot(parent: &OwnedFd, name: &OsStr) -> Result<Slot> {
    match stat_at(parent, name) {
        Ok(st) if crate::format::is_whiteout_dev(&st) => Ok(Slot::DevWhiteout),
        Ok(_) => Ok(Slot::Taken),
        Err(Errno::NOENT) => {
            if crate::format::wh_exists(parent, name)? {
                Ok(Slot::WhFile)
            } else {
                Ok(Slot::Free)
            }
        }
        Err(e) => Err(e),
    }
}

/// Removes everything inside `dir` (not following symlinks).
pub fn clear_dir(dir: &impl AsFd) -> std::io::Result<()> {
    let rd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let names: Vec<OsString> = list_names(&rd)?;
    for n in names {
        remove_tree(&rd, &n)?;
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively if it is a directory.
pub fn remove_tree(dir: &impl AsFd, name: &OsStr) -> Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e),
    }
    let sub = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for n in list_names(&sub)? {
        remove_tree(&sub, &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
}

/// Names in an open directory, without `.` and `..`.
pub fn list_names(dir: &OwnedFd) -> Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    let d = rustix::fs::Dir::read_from(dir)?;
    for ent in d {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsString::from_vec(n.to_vec()));
        }
    }
    Ok(out)
}
