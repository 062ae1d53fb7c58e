//! cairnfs semantics on real mounts: resolution, whiteouts, opaque dirs,
//! merged readdir, copy-up, all file types, rename, xattrs, data calls,
//! inode numbers, names, read-only mounts and permission checks.

mod common;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use rustix::fs::{AtFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;

/// Two lowers: `top` over `bottom`, with the usual kinds of entries.
fn layers() -> (Tree, std::path::PathBuf, std::path::PathBuf) {
    let t = Tree::new();
    let top = t.dir("top");
    let bottom = t.dir("bottom");
    write(bottom.join("only-bottom"), "bottom\n");
    write(bottom.join("both"), "bottom version\n");
    write(top.join("both"), "top version\n");
    write(bottom.join("dir/from-bottom"), "b\n");
    write(top.join("dir/from-top"), "t\n");
    write(bottom.join("deleted-by-dev"), "x\n");
    whiteout(top.join("deleted-by-dev"));
    write(bottom.join("deleted-by-whfile"), "x\n");
    write(top.join(".wh.deleted-by-whfile"), "");
    write(bottom.join("opaque-xattr/hidden"), "x\n");
    write(top.join("opaque-xattr/shown"), "x\n");
    set_opaque_xattr(top.join("opaque-xattr"));
    write(bottom.join("opaque-file/hidden"), "x\n");
    write(top.join("opaque-file/shown"), "x\n");
    write(top.join("opaque-file/.wh..wh..opq"), "");
    write(bottom.join("user-opaque/hidden"), "x\n");
    write(top.join("user-opaque/shown"), "x\n");
    rustix::fs::lsetxattr(
        top.join("user-opaque"),
        "user.fuseoverlayfs.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .unwrap();
    (t, top, bottom)
}

fn mount(lowers: &[&Path]) -> TestOverlay {
    lowers
        .iter()
        .fold(TestOverlay::builder(), |b, l| b.lower(l))
        .option("timeout=0")
        .mount()
        .expect("mount")
}

fn err_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => errno(&e),
    }
}

#[test]
fn lookup_resolves_top_down_and_hides_whiteouts_and_opaque_dirs() {
    require_root!();
    let (_t, top, bottom) = layers();
    let before = (tree_digest(&top), tree_digest(&bottom));
    let m = mount(&[&top, &bottom]);
    let p = m.path();
    assert_eq!(read(p.join("both")), "top version\n");
    assert_eq!(read(p.join("only-bottom")), "bottom\n");
    assert_eq!(names(p.join("dir")), ["from-bottom", "from-top"]);
    for gone in [
        "deleted-by-dev",
        "deleted-by-whfile",
        ".wh.deleted-by-whfile",
    ] {
        assert_eq!(
            err_of(fs::symlink_metadata(p.join(gone))),
            libc::ENOENT,
            "{gone}"
        );
    }
    for d in ["opaque-xattr", "opaque-file", "user-opaque"] {
        assert_eq!(names(p.join(d)), ["shown"], "{d}");
    }
    assert_eq!(
        names(p),
        [
            "both",
            "dir",
            "only-bottom",
            "opaque-file",
            "opaque-xattr",
            "user-opaque"
        ]
    );
    drop(m);
    assert_eq!(before, (tree_digest(&top), tree_digest(&bottom)));
}

#[test]
fn readdir_lists_each_name_once_with_dot_entries() {
    require_root!();
    let (_t, top, bottom) = layers();
    let m = mount(&[&top, &bottom]);
    let mut dir = rustix::fs::Dir::read_from(File::open(m.path()).unwrap().as_fd()).unwrap();
    let mut all = Vec::new();
    for e in dir.by_ref() {
        all.push(e.unwrap().file_name().to_bytes().to_vec());
    }
    all.sort();
    let mut dedup = all.clone();
    dedup.dedup();
    assert_eq!(all, dedup, "duplicate names in readdir");
    assert!(all.contains(&b".".to_vec()) && all.contains(&b"..".to_vec()));
    assert!(!all.iter().any(|n| n.starts_with(b".wh.")));
}

#[test]
fn rmdir_needs_an_empty_merged_view_and_recreated_dirs_stay_empty() {
    require_root!();
    let (_t, top, bottom) = layers();
    let m = mount(&[&top, &bottom]);
    let d = m.path().join("dir");
    assert_eq!(err_of(fs::remove_dir(&d)), libc::ENOTEMPTY);
    fs::remove_file(d.join("from-top")).unwrap();
    fs::remove_file(d.join("from-bottom")).unwrap();
    assert!(names(&d).is_empty());
    fs::remove_dir(&d).unwrap();
    assert_eq!(err_of(fs::metadata(&d)), libc::ENOENT);
    fs::create_dir_all(d.join("a/b/c")).unwrap();
    assert_eq!(names(&d), ["a"]);
    fs::remove_dir_all(&d).unwrap();
    fs::create_dir(&d).unwrap();
    assert!(names(&d).is_empty(), "lower entries came back");
    // Nothing of the lower dirs changed.
    assert_eq!(read(bottom.join("dir/from-bottom")), "b\n");
}

#[test]
fn first_write_copies_up_with_metadata_and_leaves_lowers_alone() {
    require_root!();
    let (_t, top, bottom) = layers();
    let f = bottom.join("only-bottom");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    rustix::fs::chownat(
        rustix::fs::CWD,
        &f,
        Some(rustix::fs::Uid::from_raw(1234)),
        Some(rustix::fs::Gid::from_raw(5678)),
        AtFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(&f, "user.color", b"blue", XattrFlags::empty()).unwrap();
    let mtime = fs::metadata(&f).unwrap().mtime();
    let before = tree_digest(&bottom);
    let m = mount(&[&top, &bottom]);
    let p = m.path().join("only-bottom");
    let ino_before = ino(&p);
    let mut w = OpenOptions::new().append(true).open(&p).unwrap();
    w.write_all(b"more\n").unwrap();
    drop(w);
    assert_eq!(read(&p), "bottom\nmore\n");
    let up = m.upper().join("only-bottom");
    let md = fs::metadata(&up).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (1234, 5678, 0o640)
    );
    let mut buf = [0u8; 16];
    let n = rustix::fs::lgetxattr(&up, "user.color", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"blue");
    assert_eq!(ino(&p), ino_before, "copy-up changed st_ino");
    // The copy kept the lower's mtime until the write changed it.
    assert!(md.mtime() >= mtime);
    drop(m);
    assert_eq!(before, tree_digest(&bottom), "a lower file changed");
}

#[test]
fn every_metadata_change_copies_up() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    for n in [
        "chmod", "chown", "utimes", "setx", "truncate", "link", "falloc",
    ] {
        write(lower.join(n), "data\n");
    }
    rustix::fs::lsetxattr(lower.join("setx"), "user.old", b"1", XattrFlags::empty()).unwrap();
    let before = tree_digest(&lower);
    let m = mount(&[&lower]);
    let p = m.path();
    fs::set_permissions(p.join("chmod"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(p.join("chown"), Some(42), Some(43)).unwrap();
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 2000,
            tv_nsec: 5,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p.join("utimes"), &times, AtFlags::empty()).unwrap();
    rustix::fs::lsetxattr(p.join("setx"), "user.new", b"2", XattrFlags::empty()).unwrap();
    OpenOptions::new()
        .write(true)
        .open(p.join("truncate"))
        .unwrap()
        .set_len(2)
        .unwrap();
    fs::hard_link(p.join("link"), p.join("link2")).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(p.join("falloc"))
        .unwrap();
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 8192).unwrap();
    drop(f);
    let up = m.upper();
    assert_eq!(mode(up.join("chmod")) & 0o777, 0o600);
    let md = fs::metadata(up.join("chown")).unwrap();
    assert_eq!((md.uid(), md.gid()), (42, 43));
    let md = fs::metadata(up.join("utimes")).unwrap();
    assert_eq!((md.atime(), md.mtime(), md.mtime_nsec()), (1000, 2000, 5));
    assert_eq!(fs::read(up.join("truncate")).unwrap(), b"da");
    assert_eq!(fs::metadata(p.join("link")).unwrap().nlink(), 2);
    assert_eq!(ino(p.join("link")), ino(p.join("link2")));
    assert!(fs::metadata(up.join("falloc")).unwrap().blocks() >= 16);
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(up.join("setx"), "user.old", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"1");
    // The data reads the same after each copy-up (metadata-only or full).
    for n in ["chmod", "chown", "utimes", "setx", "link", "falloc"] {
        assert!(read(p.join(n)).starts_with("data\n"), "{n}");
    }
    drop(m);
    assert_eq!(before, tree_digest(&lower));
}

#[test]
fn deleting_a_lower_file_writes_a_whiteout_without_copying_data() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("big"), &"x".repeat(1 << 20));
    write(lower.join("d/inner"), "i\n");
    let m = mount(&[&lower]);
    fs::remove_file(m.path().join("big")).unwrap();
    assert_eq!(err_of(fs::metadata(m.path().join("big"))), libc::ENOENT);
    let wh = fs::symlink_metadata(m.upper().join("big")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "0:0 whiteout"
    );
    fs::remove_dir_all(m.path().join("d")).unwrap();
    let wh = fs::symlink_metadata(m.upper().join("d")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert!(names(m.path()).is_empty());
    // The upper holds no data.
    assert_eq!(names(m.upper()), ["big", "d"]);
}

#[test]
fn all_file_types_can_be_created() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let m = mount(&[&lower]);
    let p = m.path();
    write(p.join("file"), "f");
    fs::create_dir(p.join("dir")).unwrap();
    symlink("file", p.join("link")).unwrap();
    fs::hard_link(p.join("file"), p.join("hard")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let sock = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
    drop(sock);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p.join("zero-zero"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    let ft = |n: &str| fs::symlink_metadata(p.join(n)).unwrap().file_type();
    assert!(ft("file").is_file());
    assert!(ft("dir").is_dir());
    assert!(ft("link").is_symlink());
    assert_eq!(fs::read_link(p.join("link")).unwrap(), Path::new("file"));
    assert!(ft("fifo").is_fifo());
    assert!(ft("sock").is_socket());
    assert!(ft("null").is_char_device());
    assert_eq!(
        fs::metadata(p.join("null")).unwrap().rdev(),
        rustix::fs::makedev(1, 3)
    );
    // A user's 0:0 device is a device, not a whiteout, and stays visible.
    let zz = fs::symlink_metadata(p.join("zero-zero")).unwrap();
    assert!(zz.file_type().is_char_device());
    assert_eq!((zz.rdev(), zz.mode() & 0o777), (0, 0o640));
    assert_eq!(fs::metadata(p.join("hard")).unwrap().nlink(), 2);
    assert_eq!(
        names(p),
        [
            "dir",
            "fifo",
            "file",
            "hard",
            "link",
            "null",
            "sock",
            "zero-zero"
        ]
    );
    // The 0:0 device can be chmod-ed, renamed and removed like any file.
    fs::set_permissions(p.join("zero-zero"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(mode(p.join("zero-zero")) & 0o777, 0o600);
    fs::rename(p.join("zero-zero"), p.join("zz")).unwrap();
    assert!(
        fs::symlink_metadata(p.join("zz"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    fs::remove_file(p.join("zz")).unwrap();
    assert_eq!(err_of(fs::symlink_metadata(p.join("zz"))), libc::ENOENT);
}

#[test]
fn rename_files_and_upper_dirs_with_flags() {
    require_root!();
    let (_t, top, bottom) = layers();
    let m = mount(&[&top, &bottom]);
    let p = m.path();
    // A lower file renamed: copied up, whiteout left behind.
    fs::rename(p.join("only-bottom"), p.join("moved")).unwrap();
    assert_eq!(read(p.join("moved")), "bottom\n");
    assert_eq!(err_of(fs::metadata(p.join("only-bottom"))), libc::ENOENT);
    // Over an existing lower file.
    fs::rename(p.join("moved"), p.join("both")).unwrap();
    assert_eq!(read(p.join("both")), "bottom\n");
    // NOREPLACE and EXCHANGE.
    write(p.join("a"), "A");
    write(p.join("b"), "B");
    let r = rustix::fs::renameat_with(
        rustix::fs::CWD,
        p.join("a"),
        rustix::fs::CWD,
        p.join("b"),
        RenameFlags::NOREPLACE,
    );
    assert_eq!(r, Err(Errno::EXIST));
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        p.join("a"),
        rustix::fs::CWD,
        p.join("b"),
        RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(
        (read(p.join("a")), read(p.join("b"))),
        ("B".into(), "A".into())
    );
    // An upper-only dir moves with its contents.
    fs::create_dir_all(p.join("new/sub")).unwrap();
    write(p.join("new/sub/f"), "f");
    fs::rename(p.join("new"), p.join("renamed")).unwrap();
    assert_eq!(read(p.join("renamed/sub/f")), "f");
    // A dir over a whited-out lower name must not show the lower contents.
    fs::remove_dir_all(p.join("dir")).unwrap();
    fs::rename(p.join("renamed"), p.join("dir")).unwrap();
    assert_eq!(names(p.join("dir")), ["sub"]);
    // A dir that exists in a lower layer moves in place, contents and all.
    fs::rename(p.join("opaque-xattr"), p.join("elsewhere")).unwrap();
    assert_eq!(names(p.join("elsewhere")), ["shown"]);
    assert_eq!(err_of(fs::metadata(p.join("opaque-xattr"))), libc::ENOENT);
}

#[test]
fn without_redirects_lower_dirs_cannot_be_renamed() {
    require_root!();
    let (_t, top, bottom) = layers();
    let m = TestOverlay::builder()
        .lower(&top)
        .lower(&bottom)
        .option("redirect_dir=off")
        .mount()
        .unwrap();
    assert_eq!(
        err_of(fs::rename(m.path().join("dir"), m.path().join("elsewhere"))),
        libc::EXDEV
    );
}

#[test]
fn xattrs_round_trip_and_overlay_xattrs_stay_private() {
    require_root!();
    let (_t, top, bottom) = layers();
    let m = mount(&[&top, &bottom]);
    let p = m.path().join("both");
    rustix::fs::lsetxattr(&p, "user.k", b"v", XattrFlags::empty()).unwrap();
    let mut buf = [0u8; 256];
    let n = rustix::fs::lgetxattr(&p, "user.k", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"v");
    let n = rustix::fs::llistxattr(&p, &mut buf[..]).unwrap();
    assert!(buf[..n].split(|&b| b == 0).any(|x| x == b"user.k"));
    rustix::fs::lremovexattr(&p, "user.k").unwrap();
    assert_eq!(
        rustix::fs::lgetxattr(&p, "user.k", &mut buf[..]),
        Err(Errno::NODATA)
    );
    // The opaque marker of a layer is not shown.
    let d = m.path().join("opaque-xattr");
    let n = rustix::fs::llistxattr(&d, &mut buf[..]).unwrap();
    assert!(!buf[..n].windows(7).any(|w| w == b"overlay"));
    assert_eq!(
        rustix::fs::lgetxattr(&d, "trusted.overlay.opaque", &mut buf[..]),
        Err(Errno::NODATA)
    );
}

#[test]
fn data_calls_work_through_the_mount() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let sparse = File::create(lower.join("sparse")).unwrap();
    sparse.set_len(4 << 20).unwrap();
    rustix::io::pwrite(&sparse, b"data", 2 << 20).unwrap();
    drop(sparse);
    write(lower.join("appendme"), "1");
    let m = mount(&[&lower]);
    let p = m.path();
    // SEEK_DATA / SEEK_HOLE on a lower file.
    let f = File::open(p.join("sparse")).unwrap();
    let data = rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)).unwrap();
    assert!(data <= 2 << 20 && data > 0, "data at {data}");
    let hole = rustix::fs::seek(&f, rustix::fs::SeekFrom::Hole(data)).unwrap();
    assert!(hole > 2 << 20);
    // copy_file_range into a new file.
    let out = File::create(p.join("copy")).unwrap();
    let mut off_in = 2 << 20;
    let n = rustix::fs::copy_file_range(&f, Some(&mut off_in), &out, None, 4).unwrap();
    assert_eq!(n, 4);
    drop(out);
    assert_eq!(fs::read(p.join("copy")).unwrap(), b"data");
    // O_APPEND appends even after a seek.
    let mut a = OpenOptions::new()
        .append(true)
        .open(p.join("appendme"))
        .unwrap();
    a.seek(SeekFrom::Start(0)).unwrap();
    a.write_all(b"2").unwrap();
    a.sync_all().unwrap();
    drop(a);
    assert_eq!(read(p.join("appendme")), "12");
    // O_TRUNC on a lower file.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p.join("sparse"))
        .unwrap();
    assert_eq!(fs::metadata(p.join("sparse")).unwrap().len(), 0);
    // Shared writable mmap.
    let mm = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(p.join("mapped"))
        .unwrap();
    mm.set_len(4096).unwrap();
    // SAFETY: a fresh private mapping of a file we own, unmapped below.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&mm),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"mapped!".as_ptr(), ptr as *mut u8, 7);
        libc::msync(ptr, 4096, libc::MS_SYNC);
        libc::munmap(ptr, 4096);
    }
    drop(mm);
    let mut got = [0u8; 7];
    File::open(p.join("mapped"))
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert_eq!(&got, b"mapped!");
    // statfs reports the upper filesystem.
    let a = rustix::fs::statvfs(p).unwrap();
    let b = rustix::fs::statvfs(m.upper()).unwrap();
    assert_eq!((a.f_blocks, a.f_bsize), (b.f_blocks, b.f_bsize));
}

#[test]
fn inode_numbers_are_unique_and_one_device() {
    require_root!();
    let t = Tree::new();
    let (a, b) = (t.dir("a"), t.dir("b"));
    // Files with the same st_ino in different layers are possible on
    // different filesystems; here, make many files in both layers.
    for i in 0..50 {
        write(a.join(format!("a{i}")), "a");
        write(b.join(format!("b{i}")), "b");
    }
    let m = mount(&[&a, &b]);
    write(m.path().join("new"), "n");
    let mut seen = std::collections::HashMap::new();
    let dev = fs::metadata(m.path()).unwrap().dev();
    for e in fs::read_dir(m.path()).unwrap() {
        let e = e.unwrap();
        let md = fs::symlink_metadata(e.path()).unwrap();
        assert_eq!(md.dev(), dev);
        assert_eq!(
            e.ino(),
            md.ino(),
            "readdir and stat disagree for {:?}",
            e.path()
        );
        if let Some(other) = seen.insert(md.ino(), e.path()) {
            panic!("{:?} and {:?} share st_ino", other, e.path());
        }
    }
    assert_eq!(seen.len(), 101);
}

#[test]
fn names_are_bytes_and_long_names_are_refused() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let odd = OsStr::from_bytes(b"caf\xe9-\xff");
    write(lower.join(odd), "latin1");
    let m = mount(&[&lower]);
    assert_eq!(read(m.path().join(odd)), "latin1");
    let odd2 = OsStr::from_bytes(b"new-\x80\x81");
    write(m.path().join(odd2), "x");
    assert!(
        fs::read_dir(m.path())
            .unwrap()
            .any(|e| e.unwrap().file_name() == odd2)
    );
    let long = "n".repeat(256);
    assert_eq!(
        err_of(File::create(m.path().join(&long))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        err_of(fs::metadata(m.path().join(&long))),
        libc::ENAMETOOLONG
    );
    let ok = "n".repeat(255);
    write(m.path().join(&ok), "255");
    assert_eq!(read(m.path().join(&ok)), "255");
}

#[test]
fn a_mount_without_upper_is_read_only() {
    require_root!();
    let (_t, top, bottom) = layers();
    let m = TestOverlay::builder()
        .lower(&top)
        .lower(&bottom)
        .read_only()
        .mount()
        .unwrap();
    assert_eq!(read(m.path().join("both")), "top version\n");
    assert_eq!(err_of(File::create(m.path().join("new"))), libc::EROFS);
    assert_eq!(
        err_of(OpenOptions::new().write(true).open(m.path().join("both"))),
        libc::EROFS
    );
    assert_eq!(err_of(fs::remove_file(m.path().join("both"))), libc::EROFS);
}

#[test]
fn permissions_are_checked_like_a_plain_filesystem() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("secret"), "s");
    fs::set_permissions(lower.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    write(lower.join("public"), "p");
    fs::set_permissions(lower.join("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o755)).unwrap();
    let m = TestOverlay::builder()
        .lower(&lower)
        .option("allow_other")
        .mount()
        .unwrap();
    fs::set_permissions(m.path(), fs::Permissions::from_mode(0o755)).unwrap();
    reachable_by_all(m.path());
    let secret = m.path().join("secret");
    let public = m.path().join("public");
    assert!(as_nobody(&["cat", public.to_str().unwrap()]));
    assert!(!as_nobody(&["cat", secret.to_str().unwrap()]));
    assert!(!as_nobody(&["touch", m.path().join("x").to_str().unwrap()]));
    assert!(!as_nobody(&["rm", "-f", public.to_str().unwrap()]));
    assert!(fs::metadata(&public).is_ok());
}

#[test]
fn new_files_belong_to_their_creator() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    fs::set_permissions(&lower, fs::Permissions::from_mode(0o777)).unwrap();
    let m = TestOverlay::builder()
        .lower(&lower)
        .option("allow_other")
        .mount()
        .unwrap();
    reachable_by_all(m.path());
    let f = m.path().join("mine");
    let ok = Command::new("sh")
        .args(["-c", &format!("umask 022; echo hi > '{}'", f.display())])
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let md = fs::metadata(&f).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (65534, 65534, 0o644)
    );
    let up = fs::metadata(m.upper().join("mine")).unwrap();
    assert_eq!((up.uid(), up.gid()), (65534, 65534));
}

/// Kernel 6.9 or later: FUSE passthrough exists.
fn kernel_has_passthrough() -> bool {
    let r = rustix::system::uname();
    let rel = r.release().to_string_lossy();
    let mut v = rel
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) >= (6, 9)
}

/// What a reader opened before a copy-up, a writer and later readers see,
/// with and without passthrough: the same as on kernel overlayfs.
fn open_files_across_copy_up(p: &Path) {
    let mut before = File::open(p.join("f")).unwrap();
    let mut s = String::new();
    before.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower\n");
    // The writer copies the file up while `before` still holds the lower one.
    let mut w = OpenOptions::new().write(true).open(p.join("f")).unwrap();
    w.write_all(b"upper\n").unwrap();
    w.sync_all().unwrap();
    assert_eq!(read(p.join("f")), "upper\n");
    // An fd opened before the copy-up reads the copied-up file (as on
    // kernel overlayfs since 4.19), also past what the page cache holds.
    let mut s = String::new();
    before.seek(SeekFrom::Start(0)).unwrap();
    before.read_to_string(&mut s).unwrap();
    assert_eq!(s, "upper\n");
    rustix::fs::fadvise(&before, 0, None, rustix::fs::Advice::DontNeed).unwrap();
    let mut s = String::new();
    before.seek(SeekFrom::Start(0)).unwrap();
    before.read_to_string(&mut s).unwrap();
    assert_eq!(s, "upper\n");
    drop((before, w));
    // New files: written and read back, also through a shared mapping.
    let mut n = File::create(p.join("new")).unwrap();
    n.write_all(&vec![7u8; 1 << 20]).unwrap();
    n.write_all(b"end").unwrap();
    drop(n);
    assert_eq!(fs::metadata(p.join("new")).unwrap().len(), (1 << 20) + 3);
    let data = fs::read(p.join("new")).unwrap();
    assert!(data.ends_with(b"end") && data[..1 << 20].iter().all(|b| *b == 7));
    let f = File::open(p.join("f")).unwrap();
    // SAFETY: a read-only private view of 6 bytes, unmapped below.
    let mapped = unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            6,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        let v = std::slice::from_raw_parts(ptr as *const u8, 6).to_vec();
        libc::munmap(ptr, 6);
        v
    };
    assert_eq!(mapped, b"upper\n");
}

#[test]
fn passthrough_serves_file_data_with_unchanged_semantics() {
    require_root!();
    for opt in ["passthrough=on", "passthrough=off"] {
        let t = Tree::new();
        let lower = t.dir("lower");
        write(lower.join("f"), "lower\n");
        let before = tree_digest(&lower);
        let m = TestOverlay::builder()
            .lower(&lower)
            .option(opt)
            .mount()
            .expect("mount");
        open_files_across_copy_up(m.path());
        // Kernel overlayfs, the reference, behaves the same.
        if opt == "passthrough=on" {
            let kl = t.dir("klower");
            write(kl.join("f"), "lower\n");
            let (ku, kw, km) = (t.dir("kupper"), t.dir("kwork"), t.dir("kmnt"));
            let o = format!(
                "lowerdir={},upperdir={},workdir={}",
                kl.display(),
                ku.display(),
                kw.display()
            );
            let ok = Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &o])
                .arg(&km)
                .status()
                .unwrap()
                .success();
            assert!(ok, "kernel overlay mount");
            open_files_across_copy_up(&km);
            Command::new("umount").arg(&km).status().unwrap();
        }
        assert_eq!(read(m.upper().join("f")), "upper\n");
        assert_eq!(
            fs::read(m.upper().join("new")).unwrap().len(),
            (1 << 20) + 3
        );
        assert_eq!(tree_digest(&lower), before, "{opt}: lower changed");
        let served = m.passthrough_opens();
        if opt == "passthrough=off" {
            assert_eq!(served, 0);
        } else if kernel_has_passthrough() {
            // reader, new file (create, reopen), mmap'd reopen; not the
            // writer, which ran beside the reader's registration.
            assert!(served >= 3, "passthrough opens: {served}");
        }
    }
}

/// Runs a shell script (as root, umask 022) in `dir`; its stdout.
fn sh_in(dir: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask 022; {script}"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn posix_acls_are_enforced_and_inherited_like_a_plain_filesystem() {
    require_root!();
    if Command::new("setfacl").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "setfacl missing (package acl)"
        );
        eprintln!("skipped: no setfacl");
        return;
    }
    let t = Tree::new();
    let lower = t.dir("lower");
    let plain = t.dir("plain");
    for d in [&lower, &plain] {
        write(d.join("d/secret"), "s\n");
        fs::set_permissions(d.join("d/secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    let mount = |opt: &str| {
        let m = TestOverlay::builder()
            .lower(&lower)
            .upper(&upper, &work)
            .option("allow_other")
            .option(opt)
            .mount()
            .unwrap();
        fs::set_permissions(m.path(), fs::Permissions::from_mode(0o755)).unwrap();
        reachable_by_all(m.path());
        m
    };
    let m = mount("timeout=0");
    // Grant nobody read access by ACL only, set a default ACL on the dir,
    // create a file and a dir under it; the same on a plain directory.
    let script = "setfacl -m u:nobody:r d/secret && setfacl -d -m u:nobody:rwx,g::rwx d \
        && echo new > d/new && mkdir d/sub && touch d/sub/deeper \
        && getfacl -p d/secret d/new d/sub d/sub/deeper 2>/dev/null && stat -c '%n %a' d/new d/sub d/sub/deeper";
    let want = sh_in(&plain, script);
    assert!(want.contains("user:nobody:rwx"), "{want}");
    assert_eq!(sh_in(m.path(), script), want);
    let cat_as_nobody = |p: &Path| as_nobody(&["cat", p.to_str().unwrap()]);
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o755)).unwrap();
    reachable_by_all(&plain);
    assert!(cat_as_nobody(&plain.join("d/secret")), "reference");
    assert!(
        cat_as_nobody(&m.path().join("d/secret")),
        "the ACL grants nobody read"
    );
    // chmod keeps the ACL's mask in step (the kernel rewrites it).
    fs::set_permissions(m.path().join("d/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(plain.join("d/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    assert!(
        !cat_as_nobody(&plain.join("d/secret")),
        "reference after chmod"
    );
    assert!(
        !cat_as_nobody(&m.path().join("d/secret")),
        "after chmod 600"
    );
    drop(m);
    // An ACL granting read, stored in the upper layer: enforced, but not
    // with noacl (the kernel then checks the mode bits alone).
    sh_in(&upper, "setfacl -m u:nobody:r d/secret");
    let m = mount("timeout=0");
    assert!(cat_as_nobody(&m.path().join("d/secret")), "stored ACL");
    drop(m);
    let m = mount("noacl");
    assert!(!cat_as_nobody(&m.path().join("d/secret")), "noacl");
}

#[test]
fn readahead_is_one_maximal_read_request() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("f"), "f");
    let m = mount(&[&lower]);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = m.path().to_str().unwrap();
    let dev = info
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() > 4 && f[4] == want)
        .map(|f| f[2].to_string())
        .next_back()
        .expect("the mount in mountinfo");
    let ra = fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
    assert_eq!(ra.trim(), "1024");
}

/// Whether `args` succeeds when run as nobody:nogroup.
fn as_nobody(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
        .status
        .success()
}
