//! One layer directory, reached only through its root fd.
//!
//! Every path handed to a layer is resolved by the kernel with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`: a symlink
//! or `..` inside a layer can never send cairnfs outside it. Single names are
//! then used with `*at` calls relative to a directory fd, with no following.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

pub type Result<T> = std::result::Result<T, Errno>;

const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A layer directory: the upper dir, a lower dir, or the work dir.
#[derive(Debug)]
pub struct Layer {
    root: OwnedFd,
    /// Where the layer was found, for messages only; never used for access.
    pub path: PathBuf,
    pub dev: u64,
}

impl Layer {
    /// Opens `path` as a layer root. The path itself may be a symlink (podman
    /// passes relative symlinks); everything below it is resolved beneath it.
    pub fn open(path: &Path) -> std::io::Result<Layer> {
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&root)?;
        Ok(Layer {
            root,
            path: path.to_path_buf(),
            dev: st.st_dev,
        })
    }

    pub(crate) fn from_parts(root: OwnedFd, path: PathBuf, dev: u64) -> Layer {
        Layer { root, path, dev }
    }

    pub fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// Opens `rel` (relative to the layer root; empty for the root) with
    /// `flags`, never leaving the layer and never following a symlink.
    pub fn open_beneath(&self, rel: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        loop {
            match rustix::fs::openat2(
                &self.root,
                rel,
                flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                mode,
                BENEATH,
            ) {
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                // A symlink on the way means the path is not a directory chain
                // in this layer: for overlay purposes it does not exist here.
                Err(Errno::LOOP) | Err(Errno::XDEV) => return Err(Errno::NOENT),
                r => return r,
            }
        }
    }

    /// An `O_PATH` fd of the directory `rel`, for `*at` calls inside it.
    pub fn dir(&self, rel: &Path) -> Result<OwnedFd> {
        self.open_beneath(rel, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: impl AsFd, name: &OsStr) -> Result<Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
}

/// Whether `name` exists in `dir` (any type, not following).
pub fn exists_at(dir: impl AsFd, name: &OsStr) -> Result<bool> {
    match stat_at(dir, name) {
        Ok(_) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A path that names `name` inside the directory open as `dir`, for the
/// `l*xattr` calls (they have no `*at` form before Linux 6.13). `name` is a
/// single component and the final component is never followed, so the
/// lookup cannot leave `dir`.
pub fn proc_path(dir: &impl AsFd, name: &OsStr) -> PathBuf {
    let mut p = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    PathBuf::from(std::ffi::OsString::from_vec(p))
}

use std::os::unix::ffi::OsStringExt;

/// Checks a name coming from the kernel or a user before it is used in an
/// `*at` call.
pub fn check_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Errno::INVAL);
    }
    if b.len() > 255 {
        return Err(Errno::NAMETOOLONG);
    }
    Ok(())
}
