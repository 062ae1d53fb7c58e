//! The on-disk formats shared with kernel overlayfs, fuse-overlayfs and
//! containers/storage: whiteouts, opaque markers, private xattrs and
//! `override_stat`. See `shared/notes/formats.md`.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use crate::layer::{Result, exists_at, proc_path};

/// Prefix of AUFS/OCI whiteout files.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The OCI opaque-directory marker file.
pub const OPAQUE_FILE: &str = ".wh..wh..opq";

/// Opaque xattrs, any of which marks a directory opaque when set to "y".
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// containers/storage's ownership override, honoured on empty regular files
/// (how rootless stores keep device nodes), on every file and directory of a
/// layer marked with it on its root, and written for 0:0 char devices.
pub const OVERRIDE_STAT: &str = "user.containers.override_stat";

/// Xattrs that belong to the overlay format and are never shown or settable
/// through the mount.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
        || name.starts_with(b"security.fuseoverlayfs.")
        || name == OVERRIDE_STAT.as_bytes()
}

/// A character device 0:0 is a whiteout.
pub fn is_whiteout_dev(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

/// `.wh.NAME` for `NAME`.
pub fn wh_name(name: &OsStr) -> OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// Whether a `.wh.NAME` file exists for `name` in `dir` (a name too long
/// to have one has none).
pub fn wh_exists(dir: impl AsFd, name: &OsStr) -> Result<bool> {
    if name.len() + WH_PREFIX.len() > 255 {
        return Ok(false);
    }
    exists_at(dir, &wh_name(name))
}

/// The name a `.wh.` file whites out, or None for other names (and for the
/// opaque marker).
pub fn whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OPAQUE_FILE.as_bytes() {
        return None;
    }
    name.strip_prefix(WH_PREFIX)
}

/// Whether a name is reserved by the whiteout format and hidden.
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// Whether directory `name` in `parent` is marked opaque, by xattr or by the
/// `.wh..wh..opq` file inside it.
pub fn is_opaque_dir(parent: &impl AsFd, name: &OsStr, dir: &impl AsFd) -> Result<bool> {
    let p = proc_path(parent, name);
    let mut buf = [0u8; 4];
    for x in OPAQUE_XATTRS {
        match rustix::fs::lgetxattr(&p, x, &mut buf[..]) {
            Ok(n) if n >= 1 && buf[0] == b'y' => return Ok(true),
            Ok(_) => {}
            Err(Errno::NODATA) | Err(Errno::NOTSUP) | Err(Errno::RANGE) | Err(Errno::PERM) => {}
            Err(Errno::ACCESS) => {}
            Err(e) => return Err(e),
        }
    }
    exists_at(dir, OsStr::new(OPAQUE_FILE))
}

/// A parsed `override_stat` value: `UID:GID:MODE[:TYPE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub perm: u32,
    /// File type bits (S_IFMT) and rdev, when a type was given.
    pub kind: Option<(u32, u64)>,
}

impl OverrideStat {
    pub fn parse(v: &[u8]) -> Option<OverrideStat> {
        let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
        let mut it = s.split(':');
        let uid = it.next()?.parse().ok()?;
        let gid = it.next()?.parse().ok()?;
        let mode = u32::from_str_radix(it.next()?, 8).ok()?;
        let kind = match it.next() {
            None => None,
            Some(t) => Some(parse_type(t)?),
        };
        Some(OverrideStat {
            uid,
            gid,
            perm: mode & 0o7777,
            kind,
        })
    }

    pub fn format(&self) -> String {
        let mut s = format!("{}:{}:0{:o}", self.uid, self.gid, self.perm);
        if let Some((fmt, rdev)) = self.kind {
            let t = match fmt {
                libc::S_IFDIR => "dir".to_string(),
                libc::S_IFREG => "file".to_string(),
                libc::S_IFLNK => "symlink".to_string(),
                libc::S_IFIFO => "pipe".to_string(),
                libc::S_IFSOCK => "socket".to_string(),
                libc::S_IFBLK => format!("block-{}-{}", major(rdev), minor(rdev)),
                _ => format!("char-{}-{}", major(rdev), minor(rdev)),
            };
            s.push(':');
            s.push_str(&t);
        }
        s
    }
}

fn parse_type(t: &str) -> Option<(u32, u64)> {
    Some(match t {
        "dir" => (libc::S_IFDIR, 0),
        "file" => (libc::S_IFREG, 0),
        "symlink" => (libc::S_IFLNK, 0),
        "pipe" => (libc::S_IFIFO, 0),
        "socket" => (libc::S_IFSOCK, 0),
        _ => {
            let (fmt, rest) = if let Some(r) = t.strip_prefix("char-") {
                (libc::S_IFCHR, r)
            } else if let Some(r) = t.strip_prefix("block-") {
                (libc::S_IFBLK, r)
            } else {
                return None;
            };
            let (ma, mi) = rest.split_once('-')?;
            (fmt, makedev(ma.parse().ok()?, mi.parse().ok()?))
        }
    })
}

pub fn major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

pub fn minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

pub fn makedev(ma: u32, mi: u32) -> u64 {
    let (ma, mi) = (ma as u64, mi as u64);
    ((ma & 0xffff_f000) << 32)
        | ((ma & 0x0000_0fff) << 8)
        | ((mi & 0xffff_ff00) << 12)
        | (mi & 0xff)
}

/// Reads `override_stat` of `name` in `parent`, if set and well-formed.
pub fn read_override(parent: &impl AsFd, name: &OsStr) -> Option<OverrideStat> {
    read_override_xattr(parent, name, OVERRIDE_STAT)
}

/// Reads an override kept in the xattr `xattr`.
pub fn read_override_xattr(parent: &impl AsFd, name: &OsStr, xattr: &str) -> Option<OverrideStat> {
    let mut buf = [0u8; 128];
    let n = rustix::fs::lgetxattr(proc_path(parent, name), xattr, &mut buf[..]).ok()?;
    OverrideStat::parse(&buf[..n])
}

/// The override xattrs a layer may declare by carrying one on its root, in
/// fuse-overlayfs's order of preference.
const LAYER_OVERRIDE_XATTRS: [&str; 3] = [
    "security.fuseoverlayfs.override_stat",
    OVERRIDE_STAT,
    "user.fuseoverlayfs.override_stat",
];

/// The override xattr a layer declares on its root. containers/storage marks
/// the layers whose owners and modes it could not set (rootless `force_mask`)
/// this way, and fuse-overlayfs then reads that xattr for every directory
/// and regular file of such a layer.
pub fn layer_override_xattr(root: &impl AsFd) -> Option<&'static str> {
    LAYER_OVERRIDE_XATTRS.into_iter().find(|x| {
        rustix::fs::lgetxattr(proc_path(root, OsStr::new(".")), *x, &mut [0u8; 0][..]).is_ok()
    })
}

/// Where `xattr_permissions=1|2` keeps owners and modes.
pub fn override_xattr_for(level: u8) -> Option<&'static str> {
    match level {
        1 => Some("security.fuseoverlayfs.override_stat"),
        2 => Some(OVERRIDE_STAT),
        _ => None,
    }
}

/// Applies an override to a stat of the backing file.
pub fn apply_override(st: &mut Stat, o: &OverrideStat) {
    st.st_uid = o.uid;
    st.st_gid = o.gid;
    let fmt = match o.kind {
        Some((fmt, rdev)) => {
            st.st_rdev = rdev;
            fmt
        }
        None => st.st_mode & libc::S_IFMT,
    };
    st.st_mode = fmt | o.perm;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_stat_round_trips() {
        let o = OverrideStat::parse(b"0:0:0644:char-0-0").unwrap();
        assert_eq!(o.kind, Some((libc::S_IFCHR, 0)));
        assert_eq!(o.format(), "0:0:0644:char-0-0");
        let o = OverrideStat::parse(b"1000:100:4755").unwrap();
        assert_eq!((o.uid, o.gid, o.perm, o.kind), (1000, 100, 0o4755, None));
        let o = OverrideStat::parse(b"0:0:0600:block-8-17").unwrap();
        assert_eq!(o.kind, Some((libc::S_IFBLK, makedev(8, 17))));
        assert_eq!(o.format(), "0:0:0600:block-8-17");
        assert!(OverrideStat::parse(b"x:0:0600").is_none());
        assert!(OverrideStat::parse(b"0:0:0600:char-1").is_none());
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(whiteout_target(b".wh..wh..opq"), None);
        assert_eq!(whiteout_target(b"foo"), None);
        assert_eq!(wh_name(OsStr::new("a")), OsString::from(".wh.a"));
    }
}
