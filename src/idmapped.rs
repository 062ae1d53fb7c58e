//! Seeing through idmapped lower dirs.
//!
//! podman 4.3 (containers/storage before "overlay: disable native idmap
//! with mount-program") both idmaps the lower layers with kernel idmapped
//! mounts and passes `uidmapping=`/`gidmapping=` to the mount program, so
//! ids would be shifted twice. When mappings are given and a lower dir lies
//! on an idmapped mount, cairnfs opens the same directory through a
//! non-idmapped mount of the same filesystem instead, and applies the
//! mapping once, itself.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
struct MountInfo {
    dev: String,
    root: PathBuf,
    mountpoint: PathBuf,
    idmapped: bool,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

fn parse(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() < 6 {
                return None;
            }
            Some(MountInfo {
                dev: f[2].to_string(),
                root: unescape(f[3]),
                mountpoint: unescape(f[4]),
                idmapped: f[5].split(',').any(|o| o == "idmapped"),
            })
        })
        .collect()
}

/// The same directory as `path` (absolute, canonical) reached through a
/// mount without an id mapping, when `path` lies on an idmapped mount.
fn unmapped_in(mounts: &[MountInfo], path: &Path) -> Option<PathBuf> {
    let m = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .max_by_key(|m| m.mountpoint.as_os_str().len())?;
    if !m.idmapped {
        return None;
    }
    let rel = path.strip_prefix(&m.mountpoint).ok()?;
    let in_fs = m.root.join(rel);
    let other = mounts
        .iter()
        .filter(|o| o.dev == m.dev && !o.idmapped && in_fs.starts_with(&o.root))
        .max_by_key(|o| o.root.as_os_str().len())?;
    let candidate = other.mountpoint.join(in_fs.strip_prefix(&other.root).ok()?);
    candidate.is_dir().then_some(candidate)
}

/// `path` itself, or its non-idmapped twin (see the module docs).
pub fn unmapped_path(path: &Path) -> PathBuf {
    let Ok(abs) = path.canonicalize() else {
        return path.to_path_buf();
    };
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return path.to_path_buf();
    };
    unmapped_in(&parse(&text), &abs).unwrap_or_else(|| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unmapped_twin() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 254:0 /var/lib/c/overlay /var/lib/c/overlay/ID/mapped/0 rw,relatime,idmapped - ext4 /dev/vda rw
91 22 0:50 / /tmp rw - tmpfs tmpfs rw";
        let m = parse(text);
        assert!(m[1].idmapped && !m[0].idmapped);
        // (checked without touching the disk: the candidate must exist)
        let p = Path::new("/var/lib/c/overlay/ID/mapped/0/l/X");
        let found = m
            .iter()
            .filter(|x| p.starts_with(&x.mountpoint))
            .max_by_key(|x| x.mountpoint.as_os_str().len())
            .unwrap();
        assert!(found.idmapped);
        assert_eq!(unescape("a\\040b"), PathBuf::from("a b"));
        assert!(unmapped_in(&m, Path::new("/tmp/x")).is_none());
    }
}
