//! Owner translation (fuse-overlayfs's uidmapping/gidmapping, squash_to_*)
//! and owners kept in xattrs (xattr_permissions, override_stat).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;

fn owner(p: impl AsRef<std::path::Path>) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn chown(p: impl AsRef<std::path::Path>, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

#[test]
fn uid_and_gid_mappings_translate_both_ways() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("root-owned"), "r");
    write(lower.join("user-owned"), "u");
    write(lower.join("unmapped"), "x");
    chown(lower.join("user-owned"), 5, 6);
    chown(lower.join("unmapped"), 500, 500);
    let m = TestOverlay::builder()
        .lower(&lower)
        .option("uidmapping=0:100000:100,gidmapping=:0:200000:100")
        .mount()
        .unwrap();
    let p = m.path();
    assert_eq!(owner(p.join("root-owned")), (100000, 200000));
    assert_eq!(owner(p.join("user-owned")), (100005, 200006));
    assert_eq!(owner(p.join("unmapped")), (65534, 65534));
    // chown with shown ids stores disk ids.
    chown(p.join("root-owned"), 100007, 200008);
    assert_eq!(owner(p.join("root-owned")), (100007, 200008));
    assert_eq!(owner(m.upper().join("root-owned")), (7, 8));
    // An id outside every range cannot be stored.
    let e = std::os::unix::fs::lchown(p.join("user-owned"), Some(3), None).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);
}

#[test]
fn squash_to_root_shows_every_owner_as_root() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("f"), "f");
    chown(lower.join("f"), 1234, 4321);
    let m = TestOverlay::builder()
        .lower(&lower)
        .option("squash_to_root")
        .mount()
        .unwrap();
    assert_eq!(owner(m.path().join("f")), (0, 0));
    let m2 = TestOverlay::builder()
        .lower(&lower)
        .option("squash_to_uid=42,squash_to_gid=43")
        .mount()
        .unwrap();
    assert_eq!(owner(m2.path().join("f")), (42, 43));
}

#[test]
fn xattr_permissions_keep_owner_and_mode_in_an_xattr() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("f"), "f");
    fs::set_permissions(lower.join("f"), fs::Permissions::from_mode(0o644)).unwrap();
    // A device node stored by containers/storage in a rootless layer.
    write(lower.join("null"), "");
    rustix::fs::lsetxattr(
        lower.join("null"),
        "user.containers.override_stat",
        b"0:0:0666:char-1-3",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let m = TestOverlay::builder()
        .lower(&lower)
        .option("xattr_permissions=2")
        .mount()
        .unwrap();
    let p = m.path();
    let null = fs::symlink_metadata(p.join("null")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o777),
        (rustix::fs::makedev(1, 3), 0o666)
    );
    fs::set_permissions(p.join("f"), fs::Permissions::from_mode(0o600)).unwrap();
    chown(p.join("f"), 1000, 1000);
    assert_eq!(mode(p.join("f")) & 0o777, 0o600);
    assert_eq!(owner(p.join("f")), (1000, 1000));
    // The backing file keeps its own owner and mode; the xattr holds the rest.
    let up = m.upper().join("f");
    assert_eq!(mode(&up) & 0o777, 0o644);
    assert_eq!(owner(&up), (0, 0));
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(&up, "user.containers.override_stat", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"1000:1000:0600");
    // And the override is not visible through the mount.
    let n = rustix::fs::llistxattr(p.join("f"), &mut buf[..]).unwrap();
    assert_eq!(n, 0);
}

fn set_override(p: impl AsRef<std::path::Path>, v: &str) {
    rustix::fs::lsetxattr(
        p.as_ref(),
        "user.containers.override_stat",
        v.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// A layer whose root carries `user.containers.override_stat` (how
/// containers/storage marks a rootless layer it could not chown) has the
/// owners and modes of all its files and directories in that xattr, as
/// fuse-overlayfs reads them; without the mark only empty files (devices)
/// are overridden. chmod through the mount updates the override.
#[test]
fn a_marked_layer_keeps_owners_of_files_and_dirs_in_override_stat() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    fs::create_dir(lower.join("home")).unwrap();
    write(lower.join("home/suid"), "#!/bin/sh\n");
    fs::set_permissions(lower.join("home/suid"), fs::Permissions::from_mode(0o644)).unwrap();
    set_override(lower.join("home/suid"), "1000:1000:04755:file");
    set_override(lower.join("home"), "1000:100:0700:dir");
    let unmarked = TestOverlay::builder().lower(&lower).mount().unwrap();
    let p = unmarked.path();
    assert_eq!(owner(p.join("home/suid")), (0, 0));
    assert_eq!(mode(p.join("home/suid")) & 0o7777, 0o644);
    drop(unmarked);

    set_override(&lower, "0:0:0755:dir");
    let m = TestOverlay::builder().lower(&lower).mount().unwrap();
    let p = m.path();
    assert_eq!(owner(p.join("home/suid")), (1000, 1000));
    assert_eq!(mode(p.join("home/suid")) & 0o7777, 0o4755);
    assert_eq!(owner(p.join("home")), (1000, 100));
    assert_eq!(mode(p.join("home")) & 0o7777, 0o700);
    assert_eq!(read(p.join("home/suid")), "#!/bin/sh\n");
    fs::set_permissions(p.join("home/suid"), fs::Permissions::from_mode(0o750)).unwrap();
    assert_eq!(mode(p.join("home/suid")) & 0o7777, 0o750);
    assert_eq!(owner(p.join("home/suid")), (1000, 1000));
    // The lower layer is untouched; the copy keeps its owner in the xattr.
    assert_eq!(mode(lower.join("home/suid")) & 0o7777, 0o644);
    let mut buf = [0u8; 64];
    let up = m.upper().join("home/suid");
    let n = rustix::fs::lgetxattr(&up, "user.containers.override_stat", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"1000:1000:0750:file");
}
