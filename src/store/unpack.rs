//! Entry-by-entry unpacking of a layer tar into a directory.
//!
//! Every file system operation is relative to a directory fd opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, never a joined path
//! string, so no entry can write outside the layer: absolute names and `..`
//! are rejected, a path through a symlink made by an earlier entry fails,
//! and hard links must point to a file in the layer (or a lower layer, which
//! is then copied). Whiteout files (`.wh.NAME`, `.wh..wh..opq`) are kept as
//! plain files. Devices are made with mknod when allowed, else as an empty
//! file carrying `user.containers.override_stat`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, CWD, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

use super::{IoContext, Result, StoreError};

/// The xattr containers/storage uses to record ownership, mode and file
/// type that an unprivileged user cannot give a file.
pub const OVERRIDE_STAT_XATTR: &str = "user.containers.override_stat";

/// How to unpack.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Apply ownership from the tar (needs root).
    pub chown: bool,
    /// Create real device nodes (needs root); else an override_stat file.
    pub mknod: bool,
    /// Unpacked lower layers, topmost first: a hard link whose target is
    /// not in this layer is copied from there.
    pub lowers: Vec<PathBuf>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        let root = rustix::process::geteuid().is_root();
        UnpackOptions {
            chown: root,
            mknod: root,
            lowers: Vec::new(),
        }
    }
}

/// What an unpack produced.
#[derive(Debug, Clone, Default)]
pub struct UnpackStats {
    pub entries: u64,
    pub file_bytes: u64,
}

struct DirFix {
    comps: Vec<Vec<u8>>,
    mode: u32,
    mtime: i64,
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

fn dir_oflags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// Split a tar entry name into safe components: `.` and empty components
/// are dropped, `..` and absolute names are refused.
pub fn clean_path(raw: &[u8], shown: &str) -> Result<Vec<Vec<u8>>> {
    if raw.first() == Some(&b'/') {
        return Err(StoreError::UnsafeEntry {
            entry: shown.to_string(),
            reason: "absolute path".into(),
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(StoreError::UnsafeEntry {
                    entry: shown.to_string(),
                    reason: "path contains \"..\"".into(),
                });
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// Open the directory `comps` below `root`, creating missing components
/// (mode 0755) when `create` is set. Symlinks are never followed.
fn open_dir_beneath(
    root: &OwnedFd,
    comps: &[Vec<u8>],
    create: bool,
    shown: &str,
) -> Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for c in comps {
        let base = cur.as_ref().unwrap_or(root);
        let fd = match rustix::fs::openat2(
            base,
            c.as_slice(),
            dir_oflags(),
            Mode::empty(),
            resolve_flags(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(base, c.as_slice(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(io_err(e)).with_ctx(|| format!("entry {shown:?}: mkdir")),
                }
                rustix::fs::openat2(
                    base,
                    c.as_slice(),
                    dir_oflags(),
                    Mode::empty(),
                    resolve_flags(),
                )
                .map_err(|e| path_error(e, shown))?
            }
            Err(e) => {
                // O_NOFOLLOW|O_DIRECTORY on a symlink says ENOTDIR: tell
                // the two apart.
                let is_link = rustix::fs::statat(base, c.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink);
                return Err(path_error(if is_link { Errno::LOOP } else { e }, shown));
            }
        };
        cur = Some(fd);
    }
    match cur {
        Some(fd) => Ok(fd),
        None => rustix::fs::openat2(root, ".", dir_oflags(), Mode::empty(), resolve_flags())
            .map_err(|e| path_error(e, shown)),
    }
}

fn path_error(e: Errno, shown: &str) -> StoreError {
    match e {
        Errno::LOOP | Errno::XDEV => StoreError::UnsafeEntry {
            entry: shown.to_string(),
            reason: "path goes through a symlink".into(),
        },
        Errno::NOTDIR => StoreError::InvalidEntry {
            entry: shown.to_string(),
            reason: "a parent is not a directory".into(),
        },
        Errno::NOENT => StoreError::InvalidEntry {
            entry: shown.to_string(),
            reason: "no such file or directory".into(),
        },
        e => StoreError::Io {
            context: format!("entry {shown:?}"),
            source: io_err(e),
        },
    }
}

/// Remove whatever is at `name` in `dir` (a whole tree for a directory).
fn remove_at(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(io_err(e)),
    }
    // Make sure we may list and delete inside it (name is a directory, not
    // a symlink: unlinkat said EISDIR).
    let _ = rustix::fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty());
    let sub = rustix::fs::openat(dir, name, dir_oflags(), Mode::empty()).map_err(io_err)?;
    let mut names = Vec::new();
    {
        let dup = rustix::fs::openat(&sub, ".", dir_oflags(), Mode::empty()).map_err(io_err)?;
        let mut d = rustix::fs::Dir::new(dup).map_err(io_err)?;
        while let Some(ent) = d.read() {
            let ent = ent.map_err(io_err)?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                names.push(n.to_vec());
            }
        }
    }
    for n in names {
        remove_at(&sub, &n)?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(io_err)
}

/// Remove a directory tree given by path (used for the store's own dirs),
/// making read-only directories writable on the way.
pub fn remove_tree_path(p: &Path) -> io::Result<()> {
    let parent = p.parent().unwrap_or(Path::new("/"));
    let name = p
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let pfd = rustix::fs::openat(CWD, parent, dir_oflags(), Mode::empty()).map_err(io_err)?;
    use std::os::unix::ffi::OsStrExt;
    remove_at(&pfd, name.as_bytes())
}

fn ts(sec: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Unpack the tar stream `r` into the existing, empty directory `dest`.
pub fn unpack_layer<R: Read>(r: R, dest: &Path, opts: &UnpackOptions) -> Result<UnpackStats> {
    let root = rustix::fs::openat(CWD, dest, dir_oflags(), Mode::empty())
        .map_err(io_err)
        .with_ctx(|| format!("opening {}", dest.display()))?;
    let mut stats = UnpackStats::default();
    let mut dirs: Vec<DirFix> = Vec::new();
    let mut ar = tar::Archive::new(r);
    let entries = ar.entries().ctx("reading layer tar")?;
    for entry in entries {
        let mut entry = entry.ctx("reading layer tar")?;
        stats.entries += 1;
        unpack_entry(&root, &mut entry, opts, &mut dirs, &mut stats)?;
    }
    // Directories last: their mode may forbid writing into them, and every
    // entry created inside changed their mtime.
    for d in dirs.iter().rev() {
        let shown = show(&d.comps.join(&b'/'));
        let fd = open_dir_beneath(&root, &d.comps, false, &shown)?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode))
            .map_err(io_err)
            .with_ctx(|| format!("entry {shown:?}: chmod"))?;
        rustix::fs::futimens(&fd, &ts(d.mtime))
            .map_err(io_err)
            .with_ctx(|| format!("entry {shown:?}: set mtime"))?;
    }
    rustix::fs::syncfs(&root)
        .map_err(io_err)
        .with_ctx(|| format!("syncfs {}", dest.display()))?;
    Ok(stats)
}

fn unpack_entry<R: Read>(
    root: &OwnedFd,
    entry: &mut tar::Entry<'_, R>,
    opts: &UnpackOptions,
    dirs: &mut Vec<DirFix>,
    stats: &mut UnpackStats,
) -> Result<()> {
    let raw = entry.path_bytes().into_owned();
    let shown = show(&raw);
    let etype = entry.header().entry_type();
    if matches!(
        etype,
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
    ) {
        return Ok(());
    }
    let comps = clean_path(&raw, &shown)?;
    let hdr = entry.header();
    let mode = hdr.mode().ctx(format!("entry {shown:?}: mode"))? & 0o7777;
    let uid = hdr.uid().ctx(format!("entry {shown:?}: uid"))?;
    let gid = hdr.gid().ctx(format!("entry {shown:?}: gid"))?;
    let mtime = hdr.mtime().ctx(format!("entry {shown:?}: mtime"))? as i64;
    let xattrs = pax_xattrs(entry, &shown)?;

    let Some((name, parent_comps)) = comps.split_last() else {
        // The layer root itself ("./").
        if etype.is_dir() {
            dirs.push(DirFix {
                comps: Vec::new(),
                mode,
                mtime,
            });
            let fd = open_dir_beneath(root, &[], false, &shown)?;
            set_owner_fd(&fd, uid, gid, opts, &shown)?;
            set_xattrs_fd(&fd, &xattrs, opts, &shown)?;
            return Ok(());
        }
        return Err(StoreError::InvalidEntry {
            entry: shown,
            reason: "empty name".into(),
        });
    };
    check_whiteout(name, &shown)?;
    let parent = open_dir_beneath(root, parent_comps, true, &shown)?;

    // What is there already? A later entry replaces an earlier one, except
    // that a directory over a directory only updates its metadata.
    let existing = match rustix::fs::statat(&parent, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
        Err(Errno::NOENT) => None,
        Err(e) => return Err(path_error(e, &shown)),
    };
    let keep_dir = etype.is_dir() && existing == Some(FileType::Directory);
    if existing.is_some() && !keep_dir {
        if etype.is_hard_link() {
            // A hard link to itself changes nothing.
            let target = clean_path(&entry.link_name_bytes().unwrap_or_default(), &shown)?;
            if target == comps {
                return Ok(());
            }
        }
        remove_at(&parent, name)
            .with_ctx(|| format!("entry {shown:?}: replacing existing file"))?;
        // Directories that went with it need no fixing up any more.
        dirs.retain(|d| !d.comps.starts_with(&comps));
    }

    match etype {
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
            let fd = create_file(&parent, name, &shown)?;
            let want = entry.size();
            let mut w = BufWriter::with_capacity(128 * 1024, File::from(fd));
            let n = io::copy(entry, &mut w).with_ctx(|| format!("entry {shown:?}: writing"))?;
            let f = w
                .into_inner()
                .map_err(|e| e.into_error())
                .with_ctx(|| format!("entry {shown:?}: writing"))?;
            if n != want {
                return Err(StoreError::InvalidEntry {
                    entry: shown,
                    reason: format!("truncated: {n} of {want} bytes"),
                });
            }
            stats.file_bytes += n;
            let fd = OwnedFd::from(f);
            finish_fd(&fd, uid, gid, mode, mtime, &xattrs, opts, &shown)?;
        }
        tar::EntryType::Directory => {
            if !keep_dir {
                rustix::fs::mkdirat(&parent, name.as_slice(), Mode::from_raw_mode(0o700))
                    .map_err(io_err)
                    .with_ctx(|| format!("entry {shown:?}: mkdir"))?;
            }
            let fd = rustix::fs::openat2(
                &parent,
                name.as_slice(),
                dir_oflags(),
                Mode::empty(),
                resolve_flags(),
            )
            .map_err(|e| path_error(e, &shown))?;
            set_owner_fd(&fd, uid, gid, opts, &shown)?;
            set_xattrs_fd(&fd, &xattrs, opts, &shown)?;
            dirs.retain(|d| d.comps != comps);
            dirs.push(DirFix {
                comps: comps.clone(),
                mode,
                mtime,
            });
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| StoreError::InvalidEntry {
                    entry: shown.clone(),
                    reason: "symlink without target".into(),
                })?
                .into_owned();
            rustix::fs::symlinkat(target.as_slice(), &parent, name.as_slice())
                .map_err(io_err)
                .with_ctx(|| format!("entry {shown:?}: symlink"))?;
            if opts.chown {
                rustix::fs::chownat(
                    &parent,
                    name.as_slice(),
                    Some(Uid::from_raw(uid as u32)),
                    Some(Gid::from_raw(gid as u32)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io_err)
                .with_ctx(|| format!("entry {shown:?}: lchown"))?;
            }
            rustix::fs::utimensat(
                &parent,
                name.as_slice(),
                &ts(mtime),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(io_err)
            .with_ctx(|| format!("entry {shown:?}: set mtime"))?;
        }
        tar::EntryType::Link => {
            let target_raw = entry
                .link_name_bytes()
                .ok_or_else(|| StoreError::InvalidEntry {
                    entry: shown.clone(),
                    reason: "hard link without target".into(),
                })?
                .into_owned();
            hard_link(root, &parent, name, &target_raw, opts, &shown)?;
        }
        tar::EntryType::Fifo => {
            rustix::fs::mknodat(
                &parent,
                name.as_slice(),
                FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .map_err(io_err)
            .with_ctx(|| format!("entry {shown:?}: mkfifo"))?;
            finish_node(&parent, name, uid, gid, mode, mtime, opts, &shown)?;
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            let major = entry.header().device_major().ok().flatten().unwrap_or(0);
            let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
            let (ft, tname) = if etype == tar::EntryType::Char {
                (FileType::CharacterDevice, "char")
            } else {
                (FileType::BlockDevice, "block")
            };
            let made = if opts.mknod {
                match rustix::fs::mknodat(
                    &parent,
                    name.as_slice(),
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                ) {
                    Ok(()) => true,
                    Err(Errno::PERM) | Err(Errno::ACCESS) => false,
                    Err(e) => {
                        return Err(io_err(e)).with_ctx(|| format!("entry {shown:?}: mknod"));
                    }
                }
            } else {
                false
            };
            if made {
                finish_node(&parent, name, uid, gid, mode, mtime, opts, &shown)?;
            } else {
                let fd = create_file(&parent, name, &shown)?;
                let v = format!("{uid}:{gid}:0{mode:o}:{tname}-{major}-{minor}");
                rustix::fs::fsetxattr(&fd, OVERRIDE_STAT_XATTR, v.as_bytes(), XattrFlags::empty())
                    .map_err(io_err)
                    .with_ctx(|| format!("entry {shown:?}: setting {OVERRIDE_STAT_XATTR}"))?;
                rustix::fs::futimens(&fd, &ts(mtime))
                    .map_err(io_err)
                    .with_ctx(|| format!("entry {shown:?}: set mtime"))?;
            }
        }
        other => {
            return Err(StoreError::InvalidEntry {
                entry: shown,
                reason: format!("unsupported tar entry type {other:?}"),
            });
        }
    }
    Ok(())
}

/// `.wh.NAME` and `.wh..wh..opq` are kept as files; a bare `.wh.` is not
/// a valid whiteout.
fn check_whiteout(name: &[u8], shown: &str) -> Result<()> {
    if name == b".wh." {
        return Err(StoreError::InvalidEntry {
            entry: shown.to_string(),
            reason: "whiteout without a name (\".wh.\")".into(),
        });
    }
    Ok(())
}

fn create_file(parent: &OwnedFd, name: &[u8], shown: &str) -> Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(io_err)
    .with_ctx(|| format!("entry {shown:?}: create"))
}

fn pax_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    shown: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry
        .pax_extensions()
        .with_ctx(|| format!("entry {shown:?}: PAX header"))?
    {
        for ext in exts {
            let ext = ext.with_ctx(|| format!("entry {shown:?}: PAX header"))?;
            if let Ok(key) = ext.key()
                && let Some(name) = key.strip_prefix("SCHILY.xattr.")
            {
                out.push((name.to_string(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

fn set_owner_fd(fd: &OwnedFd, uid: u64, gid: u64, opts: &UnpackOptions, shown: &str) -> Result<()> {
    if opts.chown {
        rustix::fs::fchown(
            fd,
            Some(Uid::from_raw(uid as u32)),
            Some(Gid::from_raw(gid as u32)),
        )
        .map_err(io_err)
        .with_ctx(|| format!("entry {shown:?}: chown"))?;
    }
    Ok(())
}

fn set_xattrs_fd(
    fd: &OwnedFd,
    xattrs: &[(String, Vec<u8>)],
    opts: &UnpackOptions,
    shown: &str,
) -> Result<()> {
    for (k, v) in xattrs {
        if !opts.chown && !k.starts_with("user.") {
            log::warn!("entry {shown:?}: skipping xattr {k} (not root)");
            continue;
        }
        match rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOTSUP) | Err(Errno::PERM) => {
                log::warn!("entry {shown:?}: xattr {k} not supported here, skipped");
            }
            Err(e) => {
                return Err(io_err(e)).with_ctx(|| format!("entry {shown:?}: setting xattr {k}"));
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish_fd(
    fd: &OwnedFd,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
    xattrs: &[(String, Vec<u8>)],
    opts: &UnpackOptions,
    shown: &str,
) -> Result<()> {
    set_owner_fd(fd, uid, gid, opts, shown)?;
    // chmod after chown: chown clears setuid/setgid.
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
        .map_err(io_err)
        .with_ctx(|| format!("entry {shown:?}: chmod"))?;
    set_xattrs_fd(fd, xattrs, opts, shown)?;
    rustix::fs::futimens(fd, &ts(mtime))
        .map_err(io_err)
        .with_ctx(|| format!("entry {shown:?}: set mtime"))?;
    Ok(())
}

/// Ownership, mode and mtime of a fifo or device node just created in
/// `parent` (which only this process writes to).
#[allow(clippy::too_many_arguments)]
fn finish_node(
    parent: &OwnedFd,
    name: &[u8],
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
    opts: &UnpackOptions,
    shown: &str,
) -> Result<()> {
    if opts.chown {
        rustix::fs::chownat(
            parent,
            name,
            Some(Uid::from_raw(uid as u32)),
            Some(Gid::from_raw(gid as u32)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(io_err)
        .with_ctx(|| format!("entry {shown:?}: chown"))?;
    }
    rustix::fs::chmodat(parent, name, Mode::from_raw_mode(mode), AtFlags::empty())
        .map_err(io_err)
        .with_ctx(|| format!("entry {shown:?}: chmod"))?;
    rustix::fs::utimensat(parent, name, &ts(mtime), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(io_err)
        .with_ctx(|| format!("entry {shown:?}: set mtime"))?;
    Ok(())
}

fn hard_link(
    root: &OwnedFd,
    parent: &OwnedFd,
    name: &[u8],
    target_raw: &[u8],
    opts: &UnpackOptions,
    shown: &str,
) -> Result<()> {
    let tshown = show(target_raw);
    let tcomps = clean_path(target_raw, shown).map_err(|_| StoreError::UnsafeEntry {
        entry: shown.to_string(),
        reason: format!("hard link target {tshown:?} points outside the layer"),
    })?;
    let Some((tname, tparent)) = tcomps.split_last() else {
        return Err(StoreError::InvalidEntry {
            entry: shown.to_string(),
            reason: "hard link to the layer root".into(),
        });
    };
    let outside = |e: StoreError| match e {
        StoreError::UnsafeEntry { .. } => StoreError::UnsafeEntry {
            entry: shown.to_string(),
            reason: format!("hard link target {tshown:?} goes through a symlink"),
        },
        e => e,
    };
    match open_dir_beneath(root, tparent, false, shown) {
        Ok(tp) => match rustix::fs::linkat(&tp, tname.as_slice(), parent, name, AtFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::NOENT) => {}
            Err(Errno::PERM) => {
                return Err(StoreError::InvalidEntry {
                    entry: shown.to_string(),
                    reason: format!("hard link target {tshown:?} is a directory"),
                });
            }
            Err(e) => {
                return Err(io_err(e)).with_ctx(|| format!("entry {shown:?}: link"));
            }
        },
        Err(StoreError::InvalidEntry { .. }) => {}
        Err(e) => return Err(outside(e)),
    }
    // Not in this layer: copy it up from the first lower layer that has it.
    for lower in &opts.lowers {
        let Ok(lroot) = rustix::fs::openat(CWD, lower.as_path(), dir_oflags(), Mode::empty())
        else {
            continue;
        };
        let Ok(lp) = open_dir_beneath(&lroot, tparent, false, shown) else {
            continue;
        };
        let src = match rustix::fs::openat2(
            &lp,
            tname.as_slice(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve_flags(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(path_error(e, shown)),
        };
        let st = rustix::fs::fstat(&src)
            .map_err(io_err)
            .with_ctx(|| format!("entry {shown:?}: stat link target"))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(StoreError::InvalidEntry {
                entry: shown.to_string(),
                reason: format!("hard link target {tshown:?} in a lower layer is not a file"),
            });
        }
        let dst = create_file(parent, name, shown)?;
        let mut sf = File::from(src);
        let mut df = File::from(dst);
        io::copy(&mut sf, &mut df).with_ctx(|| format!("entry {shown:?}: copying link target"))?;
        df.flush().ok();
        let dst = OwnedFd::from(df);
        finish_fd(
            &dst,
            st.st_uid as u64,
            st.st_gid as u64,
            st.st_mode & 0o7777,
            st.st_mtime,
            &[],
            opts,
            shown,
        )?;
        return Ok(());
    }
    Err(StoreError::InvalidEntry {
        entry: shown.to_string(),
        reason: format!("hard link target {tshown:?} does not exist"),
    })
}

/// Disk usage of a tree: (bytes in allocated blocks, inodes), each inode
/// counted once.
pub fn disk_usage(p: &Path) -> io::Result<(u64, u64)> {
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![p.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p)?;
        if seen.insert((md.dev(), md.ino())) {
            bytes += md.blocks() * 512;
            inodes += 1;
        }
        if md.is_dir() {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                // A directory unprivileged users may not list (mode 0311).
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
                Err(e) => return Err(e),
            };
            for e in rd {
                stack.push(e?.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Make every directory of a tree owner-writable (used before removing a
/// tree as a non-root user).
pub fn make_writable(p: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(p)?;
    if md.is_dir() {
        let mut perm = md.permissions();
        perm.set_mode(perm.mode() | 0o700);
        fs::set_permissions(p, perm)?;
        for e in fs::read_dir(p)? {
            make_writable(&e?.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_rules() {
        assert_eq!(
            clean_path(b"./a//b/./c", "x").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(clean_path(b"/etc/passwd", "x").is_err());
        assert!(clean_path(b"a/../../b", "x").is_err());
        assert!(clean_path(b"./", "x").unwrap().is_empty());
    }

    #[test]
    fn whiteouts() {
        assert!(check_whiteout(b".wh.", "x").is_err());
        assert!(check_whiteout(b".wh.foo", "x").is_ok());
        assert!(check_whiteout(b".wh..wh..opq", "x").is_ok());
    }
}
