//! Operations that change names: create, mknod, mkdir, symlink, link,
//! unlink, rmdir and rename. Each runs under the namespace lock, copies up
//! what it touches, and writes whiteouts and opaque markers in the formats
//! kernel overlayfs reads.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

use crate::format::{self, OverrideStat, is_whiteout_dev, wh_name};
use crate::inode::{Ino, LayerId, UPPER};
use crate::layer::{Result, check_name, proc_path, stat_at};
use crate::overlay::{Attr, Caller, Found, NodePath, Overlay};
use crate::upper::{Slot, slot};

/// What to create.
pub enum NewObject<'a> {
    File {
        flags: i32,
    },
    Dir,
    Symlink {
        target: &'a Path,
    },
    /// A device, fifo or socket (mode carries the type).
    Node {
        rdev: u64,
    },
}

impl Overlay {
    /// Whether `name` exists in a lower layer below `parent`'s upper dir,
    /// so that removing it from the merged view needs a whiteout.
    pub(crate) fn lower_positive(
        &self,
        ppath: &NodePath,
        players: &[LayerId],
        name: &OsStr,
    ) -> Result<bool> {
        for &lid in players.iter().filter(|&&l| l != UPPER) {
            let dir = match self.layer(lid)?.dir(&ppath.lower) {
                Ok(d) => d,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(e),
            };
            match stat_at(&dir, name) {
                Ok(st) => return Ok(!is_whiteout_dev(&st)),
                Err(Errno::NOENT) => {
                    if crate::format::wh_exists(&dir, name)? {
                        return Ok(false);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// The parent node (a directory) and its path.
    fn dir_node(&self, parent: Ino) -> Result<(crate::inode::Node, NodePath)> {
        let (n, p) = self.node_path(parent)?;
        if !n.is_dir() {
            return Err(Errno::NOTDIR);
        }
        Ok((n, p))
    }

    /// Creates a new object; returns its attributes and, for files, an fd.
    pub fn create_object(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        what: NewObject<'_>,
    ) -> Result<(Attr, Option<OwnedFd>)> {
        check_name(name)?;
        if format::is_reserved_name(name.as_encoded_bytes()) {
            return Err(Errno::INVAL);
        }
        let work = self.work()?;
        let _ns = self.lock_ns();
        let (pnode, ppath) = self.dir_node(parent)?;
        if self.resolve(parent, &ppath, &pnode.layers, name)?.is_some() {
            return Err(Errno::EXIST);
        }
        let pfd = self.upper_dir(parent)?;
        let slot = slot(&pfd, name)?;
        if slot == Slot::Taken {
            return Err(Errno::EXIST);
        }
        let pst = rustix::fs::fstat(&pfd)?;
        let setgid_parent = pst.st_mode & libc::S_ISGID != 0;
        let ids = &self.settings.ids;
        let uid = ids.disk_uid(caller.uid).unwrap_or(caller.uid);
        let gid = if setgid_parent {
            pst.st_gid
        } else {
            ids.disk_gid(caller.gid).unwrap_or(caller.gid)
        };
        let direct = slot == Slot::Free;
        // Under a default ACL the umask does not apply: the upper
        // filesystem gives the new object the inherited ACL, masked by the
        // requested mode, as on any filesystem. (An object built in the
        // work dir inherits nothing, so the umask applies there.)
        let inherits = self.settings.acl && direct && has_default_acl(&pfd);
        let mut perm = mode & 0o7777 & if inherits { !0 } else { !umask };
        let is_dir = matches!(what, NewObject::Dir);
        if is_dir && setgid_parent {
            perm |= libc::S_ISGID;
        }
        let tmp = work.temp_name();
        let (dirfd, at): (&OwnedFd, &OsStr) = if direct {
            (&pfd, name)
        } else {
            (work.fd(), &tmp)
        };
        let built = self.build_new(uid, gid, perm, mode, &what, dirfd, at);
        let fd = match built {
            Ok(fd) => fd,
            Err(e) => {
                if direct {
                    let _ = crate::upper::remove_tree(&pfd, name);
                } else {
                    work.discard(&tmp);
                }
                return Err(e);
            }
        };
        if !direct {
            let installed = (|| {
                if is_dir {
                    work.set_opaque(work.fd(), &tmp)?;
                }
                work.install(&tmp, &pfd, name, is_dir, slot == Slot::DevWhiteout)?;
                if slot == Slot::WhFile {
                    rustix::fs::unlinkat(&pfd, wh_name(name), AtFlags::empty())?;
                }
                Ok(())
            })();
            if let Err(e) = installed {
                work.discard(&tmp);
                return Err(e);
            }
        }
        let st = self.stat_shown(&pfd, name)?;
        let found = Found {
            fmt: st.st_mode & libc::S_IFMT,
            layers: vec![UPPER],
            st,
            identity: (UPPER, st.st_ino),
            origin: None,
            metacopy: false,
            redirect: None,
        };
        Ok((self.register(parent, name, found, true), fd))
    }

    /// Builds the new object at `at` in `dirfd` with its owner and mode.
    #[allow(clippy::too_many_arguments)]
    fn build_new(
        &self,
        uid: u32,
        gid: u32,
        perm: u32,
        mode: u32,
        what: &NewObject<'_>,
        dirfd: &OwnedFd,
        at: &OsStr,
    ) -> Result<Option<OwnedFd>> {
        let m = Mode::from_raw_mode(perm);
        let mut fd = None;
        let mut is_link = false;
        match what {
            NewObject::File { flags } => {
                let f = rustix::fs::openat(
                    dirfd,
                    at,
                    OFlags::from_bits_retain((flags & (libc::O_ACCMODE | libc::O_APPEND)) as u32)
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    m,
                )?;
                fd = Some(f);
            }
            NewObject::Dir => rustix::fs::mkdirat(dirfd, at, m)?,
            NewObject::Symlink { target } => {
                rustix::fs::symlinkat(*target, dirfd, at)?;
                is_link = true;
            }
            NewObject::Node { rdev } => {
                let ft = FileType::from_raw_mode(mode);
                if ft == FileType::CharacterDevice && *rdev == 0 {
                    // A user's 0:0 device must not read as a whiteout: store it
                    // as containers/storage does, an empty file with override_stat.
                    let f = rustix::fs::openat(
                        dirfd,
                        at,
                        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )?;
                    drop(f);
                    let o = OverrideStat {
                        uid,
                        gid,
                        perm,
                        kind: Some((libc::S_IFCHR, 0)),
                    };
                    rustix::fs::lsetxattr(
                        proc_path(dirfd, at),
                        format::OVERRIDE_STAT,
                        o.format().as_bytes(),
                        XattrFlags::empty(),
                    )?;
                    return Ok(None);
                }
                rustix::fs::mknodat(dirfd, at, ft, m, *rdev)?;
            }
        }
        match rustix::fs::chownat(
            dirfd,
            at,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) | Err(Errno::PERM) | Err(Errno::INVAL) => {}
            Err(e) => return Err(e),
        }
        // chown clears set-id bits; put the requested mode back.
        if !is_link && perm & (libc::S_ISUID | libc::S_ISGID) != 0 {
            rustix::fs::chmodat(dirfd, at, m, AtFlags::empty())?;
        }
        if let Some(x) = self.settings.override_xattr
            && !is_link
        {
            let o = OverrideStat {
                uid,
                gid,
                perm,
                kind: None,
            };
            rustix::fs::lsetxattr(
                proc_path(dirfd, at),
                x,
                o.format().as_bytes(),
                XattrFlags::empty(),
            )?;
        }
        Ok(fd)
    }

    /// Stat of `name` in `dir` as the mount shows it (override applied).
    pub(crate) fn stat_shown(&self, dir: &OwnedFd, name: &OsStr) -> Result<rustix::fs::Stat> {
        let mut st = stat_at(dir, name)?;
        self.apply_overrides(dir, name, &mut st);
        Ok(st)
    }

    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> Result<()> {
        check_name(name)?;
        let work = self.work()?;
        let _ns = self.lock_ns();
        let (pnode, ppath) = self.dir_node(parent)?;
        let mut found = self
            .resolve_linked(parent, &ppath, &pnode.layers, name)?
            .ok_or(Errno::NOENT)?;
        if self.keeps_other_names(&found) {
            // Other names of this lower file stay: copy it up (into the
            // index) so that they see the right link count from now on.
            self.copy_up_entry(parent, name, &found)?;
            found = self
                .resolve_linked(parent, &ppath, &self.node(parent)?.layers, name)?
                .ok_or(Errno::NOENT)?;
        }
        let is_dir = found.fmt == libc::S_IFDIR;
        if dir && !is_dir {
            return Err(Errno::NOTDIR);
        }
        if !dir && is_dir {
            return Err(Errno::ISDIR);
        }
        if is_dir
            && !self
                .merged_is_empty(&ppath.child(name, found.redirect.as_deref()), &found.layers)?
        {
            return Err(Errno::NOTEMPTY);
        }
        let pfd = self.upper_dir(parent)?;
        let lower = self.lower_positive(&ppath, &pnode.layers, name)?;
        if found.layers[0] == UPPER && !is_dir {
            work.adjust_nlink(&pfd, name, -1)?;
        }
        if found.layers[0] == UPPER {
            if is_dir {
                work.remove_upper_dir(&pfd, name, lower)?;
            } else if lower {
                work.whiteout(&pfd, name)?;
            } else {
                rustix::fs::unlinkat(&pfd, name, AtFlags::empty())?;
            }
        } else {
            work.whiteout(&pfd, name)?;
        }
        let child = self.read_nodes().child(parent, name);
        if let Some(c) = child.filter(|_| is_dir) {
            self.forget_dir_fds(c);
        }
        self.write_nodes().remove_name(parent, name);
        Ok(())
    }

    /// Whether the merged view of a directory has no entries.
    fn merged_is_empty(&self, path: &NodePath, layers: &[LayerId]) -> Result<bool> {
        Ok(self.list_merged(path, layers, Some(1))?.is_empty())
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &OsStr) -> Result<Attr> {
        check_name(newname)?;
        if format::is_reserved_name(newname.as_encoded_bytes()) {
            return Err(Errno::INVAL);
        }
        let work = self.work()?;
        let _ns = self.lock_ns();
        let node = self.node(ino)?;
        if node.is_dir() {
            return Err(Errno::PERM);
        }
        let (pnode, ppath) = self.dir_node(newparent)?;
        if self
            .resolve(newparent, &ppath, &pnode.layers, newname)?
            .is_some()
        {
            return Err(Errno::EXIST);
        }
        self.copy_up(ino, crate::copy_up::CopyUp::Full)?;
        let (_, path) = self.node_path(ino)?;
        let (sppath, sname) = Overlay::split(&path);
        let src_dir = self.upper_layer()?.dir(sppath)?;
        let pfd = self.upper_dir(newparent)?;
        match slot(&pfd, newname)? {
            Slot::Free => rustix::fs::linkat(&src_dir, sname, &pfd, newname, AtFlags::empty())?,
            Slot::Taken => return Err(Errno::EXIST),
            s => {
                let tmp = work.temp_name();
                rustix::fs::linkat(&src_dir, sname, work.fd(), &tmp, AtFlags::empty())?;
                if let Err(e) = work.install(&tmp, &pfd, newname, false, s == Slot::DevWhiteout) {
                    work.discard(&tmp);
                    return Err(e);
                }
                if s == Slot::WhFile {
                    rustix::fs::unlinkat(&pfd, wh_name(newname), AtFlags::empty())?;
                }
            }
        }
        work.adjust_nlink(&pfd, newname, 1)?;
        let st = self.stat_shown(&pfd, newname)?;
        let found = Found {
            fmt: st.st_mode & libc::S_IFMT,
            layers: vec![UPPER],
            st,
            identity: (UPPER, st.st_ino),
            origin: None,
            metacopy: false,
            redirect: None,
        };
        Ok(self.register(newparent, newname, found, true))
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        check_name(name)?;
        check_name(newname)?;
        if format::is_reserved_name(newname.as_encoded_bytes()) {
            return Err(Errno::INVAL);
        }
        let flags = RenameFlags::from_bits(flags).ok_or(Errno::INVAL)?;
        if flags.contains(RenameFlags::WHITEOUT)
            || flags.contains(RenameFlags::EXCHANGE | RenameFlags::NOREPLACE)
        {
            return Err(Errno::INVAL);
        }
        let exchange = flags.contains(RenameFlags::EXCHANGE);
        let work = self.work()?;
        let _ns = self.lock_ns();
        let (spnode, sppath) = self.dir_node(parent)?;
        let (dpnode, dppath) = self.dir_node(newparent)?;
        let src = self
            .resolve_linked(parent, &sppath, &spnode.layers, name)?
            .ok_or(Errno::NOENT)?;
        let mut dst = self.resolve_linked(newparent, &dppath, &dpnode.layers, newname)?;
        if let Some(d) = dst.as_ref().filter(|d| self.keeps_other_names(d)) {
            self.copy_up_entry(newparent, newname, d)?;
            dst =
                self.resolve_linked(newparent, &dppath, &self.node(newparent)?.layers, newname)?;
        }
        if parent == newparent && name == newname {
            return Ok(());
        }
        let src_dir = src.fmt == libc::S_IFDIR;
        if flags.contains(RenameFlags::NOREPLACE) && dst.is_some() {
            return Err(Errno::EXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::NOENT);
        }
        let has_lower = |f: &Found| f.layers.iter().any(|&l| l != UPPER);
        // A directory with lower dirs moves in place, recording where its
        // lower dirs are (redirect); without redirects it is EXDEV, as on
        // kernel overlayfs without `redirect_dir`, and `mv` copies instead.
        let redirect_ok = self.settings.redirect_dir && work.redirect_xattr.is_some();
        let moved_lower = |f: &Found| f.fmt == libc::S_IFDIR && has_lower(f);
        if moved_lower(&src) && !redirect_ok {
            return Err(Errno::XDEV);
        }
        let src_redirect =
            moved_lower(&src).then(|| sppath.child(name, src.redirect.as_deref()).lower);
        let dst_redirect = dst
            .as_ref()
            .filter(|d| exchange && moved_lower(d))
            .map(|d| dppath.child(newname, d.redirect.as_deref()).lower);
        if let Some(d) = &dst {
            let dst_dir = d.fmt == libc::S_IFDIR;
            if exchange {
                if moved_lower(d) && !redirect_ok {
                    return Err(Errno::XDEV);
                }
            } else {
                if src_dir && !dst_dir {
                    return Err(Errno::NOTDIR);
                }
                if !src_dir && dst_dir {
                    return Err(Errno::ISDIR);
                }
                if dst_dir
                    && !self
                        .merged_is_empty(&dppath.child(newname, d.redirect.as_deref()), &d.layers)?
                {
                    return Err(Errno::NOTEMPTY);
                }
            }
        }
        let src_ino = self.read_nodes().child(parent, name);
        let dst_ino = self.read_nodes().child(newparent, newname);
        self.copy_up_entry(parent, name, &src)?;
        if exchange && let Some(d) = &dst {
            self.copy_up_entry(newparent, newname, d)?;
        }
        let spfd = self.upper_dir(parent)?;
        let dpfd = self.upper_dir(newparent)?;
        let src_lower = self.lower_positive(&sppath, &spnode.layers, name)?;
        let dst_lower = self.lower_positive(&dppath, &dpnode.layers, newname)?;
        if exchange {
            rustix::fs::renameat_with(&spfd, name, &dpfd, newname, RenameFlags::EXCHANGE)?;
            match &src_redirect {
                Some(r) => work.set_redirect(&dpfd, newname, r)?,
                None if src_dir && dst_lower => work.set_opaque(&dpfd, newname)?,
                None => {}
            }
            match &dst_redirect {
                Some(r) => work.set_redirect(&spfd, name, r)?,
                None if dst.as_ref().is_some_and(|d| d.fmt == libc::S_IFDIR) && src_lower => {
                    work.set_opaque(&spfd, name)?
                }
                None => {}
            }
            let mut t = self.write_nodes();
            if let Some(s) = src_ino {
                t.rename(s, parent, name, newparent, newname);
                if src_redirect.is_some() {
                    t.set_redirect(s, src_redirect);
                }
            }
            if let Some(d) = dst_ino {
                t.rename(d, newparent, newname, parent, name);
                if dst_redirect.is_some() {
                    t.set_redirect(d, dst_redirect);
                }
            }
            return Ok(());
        }
        let dslot = slot(&dpfd, newname)?;
        if dst
            .as_ref()
            .is_some_and(|d| d.fmt != libc::S_IFDIR && d.layers[0] == UPPER)
        {
            work.adjust_nlink(&dpfd, newname, -1)?;
        }
        if dst
            .as_ref()
            .is_some_and(|d| d.fmt == libc::S_IFDIR && d.layers[0] == UPPER)
        {
            // An empty-looking upper dir may still hold whiteouts.
            work.remove_upper_dir(&dpfd, newname, false)?;
        } else if dslot == Slot::DevWhiteout && src_dir {
            rustix::fs::unlinkat(&dpfd, newname, AtFlags::empty())?;
        }
        rustix::fs::renameat(&spfd, name, &dpfd, newname)?;
        if dslot == Slot::WhFile {
            rustix::fs::unlinkat(&dpfd, wh_name(newname), AtFlags::empty())?;
        }
        match &src_redirect {
            Some(r) => work.set_redirect(&dpfd, newname, r)?,
            None if src_dir && (dst_lower || dslot != Slot::Free) => {
                work.set_opaque(&dpfd, newname)?
            }
            None => {}
        }
        if src_lower {
            work.whiteout(&spfd, name)?;
        }
        if let Some(d) = dst_ino.filter(|_| dst.as_ref().is_some_and(|d| d.fmt == libc::S_IFDIR)) {
            self.forget_dir_fds(d);
        }
        let mut t = self.write_nodes();
        t.remove_name(newparent, newname);
        if let Some(s) = src_ino {
            t.rename(s, parent, name, newparent, newname);
            if src_redirect.is_some() {
                t.set_redirect(s, src_redirect);
            }
            if let Some(n) = t.get_mut(s)
                && !src_dir
            {
                n.layers = smallvec::smallvec![UPPER];
            }
        }
        Ok(())
    }

    /// A lower file with other names, whose removal changes what they show.
    fn keeps_other_names(&self, f: &Found) -> bool {
        self.settings.index
            && f.layers[0] != UPPER
            && f.fmt == libc::S_IFREG
            && f.st.st_nlink > 1
            && self.work.as_ref().is_some_and(|w| w.nlink_xattr.is_some())
    }

    /// Copies up the object `name` of `parent` that resolved to `f`.
    pub(crate) fn copy_up_entry(&self, parent: Ino, name: &OsStr, f: &Found) -> Result<()> {
        if f.layers[0] == UPPER && !f.metacopy {
            return Ok(());
        }
        let known = self.read_nodes().child(parent, name);
        if let Some(ino) = known {
            return self.copy_up(ino, crate::copy_up::CopyUp::Full);
        }
        // Not known to the kernel: register it just long enough to copy it.
        let ino = {
            let mut t = self.write_nodes();
            t.upsert(
                parent,
                name,
                f.fmt,
                f.layers.clone(),
                f.identity,
                f.origin,
                true,
            )
        };
        let r = self.copy_up(ino, crate::copy_up::CopyUp::Full);
        self.write_nodes().forget(ino, 1);
        r
    }
}

/// Whether directory `dir` carries a default ACL.
fn has_default_acl(dir: &OwnedFd) -> bool {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(
        proc_path(dir, OsStr::new(".")),
        "system.posix_acl_default",
        &mut buf[..],
    ) {
        Ok(n) => n > 0,
        // Larger than the buffer: there is one.
        Err(Errno::RANGE) => true,
        Err(_) => false,
    }
}
