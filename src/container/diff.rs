//! What a container changed: `docker diff`-style A/C/D lines from its upper
//! layer, and the upper layer as an OCI layer tar (whiteouts as `.wh.NAME`,
//! opaque directories with `.wh..wh..opq`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::format::{OPAQUE_FILE, OPAQUE_XATTRS, OVERRIDE_STAT, OverrideStat, WH_PREFIX};

/// One change, as `docker diff` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// 'A' added, 'C' changed, 'D' deleted.
    pub kind: char,
    /// Absolute path inside the container.
    pub path: String,
}

fn sorted_entries(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut v: Vec<OsString> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    v.sort();
    Ok(v)
}

fn in_lowers(lowers: &[PathBuf], rel: &Path) -> bool {
    lowers
        .iter()
        .any(|l| fs::symlink_metadata(l.join(rel)).is_ok())
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|x| {
        let mut b = [0u8; 8];
        matches!(rustix::fs::lgetxattr(p, *x, &mut b[..]), Ok(n) if &b[..n] == b"y")
    }) || fs::symlink_metadata(p.join(OPAQUE_FILE)).is_ok()
}

/// The changes in `upper` over `lowers` (topmost first), sorted by path.
pub fn changes(upper: &Path, lowers: &[PathBuf]) -> io::Result<Vec<Change>> {
    let mut out = Vec::new();
    walk_changes(upper, Path::new(""), lowers, &mut out)?;
    Ok(out)
}

fn walk_changes(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    out: &mut Vec<Change>,
) -> io::Result<()> {
    for name in sorted_entries(&upper.join(rel))? {
        let b = name.as_bytes();
        if b == OPAQUE_FILE.as_bytes() {
            continue;
        }
        if let Some(target) = b.strip_prefix(WH_PREFIX) {
            let p = rel.join(std::ffi::OsStr::from_bytes(target));
            out.push(Change {
                kind: 'D',
                path: format!("/{}", p.display()),
            });
            continue;
        }
        let r = rel.join(&name);
        let md = fs::symlink_metadata(upper.join(&r))?;
        let shown = format!("/{}", r.display());
        if is_whiteout(&md) {
            out.push(Change {
                kind: 'D',
                path: shown,
            });
            continue;
        }
        let kind = if in_lowers(lowers, &r) { 'C' } else { 'A' };
        out.push(Change { kind, path: shown });
        if md.is_dir() {
            walk_changes(upper, &r, lowers, out)?;
        }
    }
    Ok(())
}

/// Writes `upper` as an OCI layer tar (uncompressed) to `w`.
pub fn write_layer_tar<W: Write>(upper: &Path, w: W) -> io::Result<W> {
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk_tar(&mut b, upper, Path::new(""), &mut links)?;
    b.into_inner()
}

fn header_for(md: &fs::Metadata, p: &Path) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let (mut uid, mut gid, mut mode) = (md.uid(), md.gid(), md.mode() & 0o7777);
    let mut buf = [0u8; 128];
    if let Ok(n) = rustix::fs::lgetxattr(p, OVERRIDE_STAT, &mut buf[..])
        && let Some(o) = OverrideStat::parse(&buf[..n])
    {
        uid = o.uid;
        gid = o.gid;
        mode = o.perm;
    }
    h.set_uid(uid as u64);
    h.set_gid(gid as u64);
    h.set_mode(mode);
    h.set_mtime(md.mtime().max(0) as u64);
    h.set_size(0);
    h
}

fn empty_file(b: &mut tar::Builder<impl Write>, path: &Path) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, io::empty())
}

fn walk_tar<W: Write>(
    b: &mut tar::Builder<W>,
    upper: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    for name in sorted_entries(&upper.join(rel))? {
        let r = rel.join(&name);
        let full = upper.join(&r);
        let md = fs::symlink_metadata(&full)?;
        let ft = md.file_type();
        if is_whiteout(&md) {
            let mut wh = WH_PREFIX.to_vec();
            wh.extend_from_slice(name.as_bytes());
            empty_file(b, &rel.join(std::ffi::OsStr::from_bytes(&wh)))?;
            continue;
        }
        let mut h = header_for(&md, &full);
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &r, io::empty())?;
            let opq = r.join(OPAQUE_FILE);
            if is_opaque(&full) && fs::symlink_metadata(upper.join(&opq)).is_err() {
                empty_file(b, &opq)?;
            }
            walk_tar(b, upper, &r, links)?;
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = fs::read_link(&full)?;
            b.append_link(&mut h, &r, &target)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &r, first)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), r.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = fs::File::open(&full)?;
            b.append_data(&mut h, &r, f)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = md.rdev();
            h.set_device_major(crate::format::major(rdev))?;
            h.set_device_minor(crate::format::minor(rdev))?;
            b.append_data(&mut h, &r, io::empty())?;
        }
        // Sockets have no place in a layer.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/passwd"), "x").unwrap();
        fs::write(lower.join("gone"), "x").unwrap();
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::write(upper.join("etc/passwd"), "y").unwrap();
        fs::write(upper.join("etc/new"), "y").unwrap();
        fs::write(upper.join(".wh.gone"), "").unwrap();
        let c = changes(&upper, &[lower]).unwrap();
        let s: Vec<String> = c.iter().map(|c| format!("{} {}", c.kind, c.path)).collect();
        assert_eq!(s, ["D /gone", "C /etc", "A /etc/new", "C /etc/passwd"]);
        let tar = write_layer_tar(&upper, Vec::new()).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let names: Vec<String> = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".wh.gone", "etc", "etc/new", "etc/passwd"]);
    }
}
