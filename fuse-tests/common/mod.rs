//! Helpers shared by the integration tests on real mounts.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use cairn::harness::TestOverlay;

/// Whether the tests run as root (mounting FUSE and kernel overlayfs here
/// needs it; CI runs as root).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips a test that needs root when run as another user, saying so.
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// A temporary directory with helpers to build layer trees.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Tree {
        Tree {
            dir: tempfile::Builder::new()
                .prefix("cairn-layers.")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes a subdirectory (with parents) and returns its path.
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
}

pub fn write(p: impl AsRef<Path>, data: &str) {
    let p = p.as_ref();
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir parent");
    }
    fs::write(p, data).expect("write");
}

pub fn read(p: impl AsRef<Path>) -> String {
    fs::read_to_string(p).expect("read")
}

/// A 0:0 character device: the kernel overlayfs whiteout.
pub fn whiteout(p: impl AsRef<Path>) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p.as_ref(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .expect("mknod whiteout");
}

pub fn set_opaque_xattr(p: impl AsRef<Path>) {
    rustix::fs::lsetxattr(
        p.as_ref(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .expect("set opaque");
}

pub fn mode(p: impl AsRef<Path>) -> u32 {
    fs::symlink_metadata(p).expect("stat").permissions().mode()
}

pub fn ino(p: impl AsRef<Path>) -> u64 {
    fs::symlink_metadata(p).expect("stat").ino()
}

/// Sorted names in a directory.
pub fn names(p: impl AsRef<Path>) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A digest of every file under a directory (names, types, modes, sizes,
/// contents, link targets), to prove a layer was not changed.
pub fn tree_digest(root: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            if md.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, md));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, md) in all {
        let rel = p.strip_prefix(root).expect("prefix");
        let content = if md.is_file() {
            let data = fs::read(&p).expect("read");
            format!("{:x}", simple_hash(&data))
        } else if md.file_type().is_symlink() {
            fs::read_link(&p).expect("readlink").display().to_string()
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{} {:o} {} {} {} {}\n",
            rel.display(),
            md.mode(),
            md.uid(),
            md.size(),
            md.mtime(),
            content
        ));
    }
    out
}

/// FNV-1a, enough to notice a changed file in a test.
pub fn simple_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The errno of an io::Error (0 if none).
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Lets every user reach `p`: its parents up to the temp dir (test dirs
/// are 0700) become 0755.
pub fn reachable_by_all(p: &Path) {
    let mut dir = p.parent();
    while let Some(d) = dir {
        if d == Path::new("/") || d == std::env::temp_dir() {
            break;
        }
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        dir = d.parent();
    }
}
