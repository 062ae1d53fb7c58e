//! Semantics where fuse-overlayfs falls short (issue 4): stable inode
//! numbers, owner rights on read-only files, changes made directly in the
//! layers, sparse copy-up, recreated opaque dirs and overlapping paths.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn mount_with(lower: &Path, upper: &Path, work: &Path, opts: &[&str]) -> TestOverlay {
    opts.iter()
        .fold(
            TestOverlay::builder().lower(lower).upper(upper, work),
            |b, o| b.option(*o),
        )
        .mount()
        .expect("mount")
}

#[test]
fn inode_numbers_survive_copy_up_and_remount() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    write(lower.join("f"), "f");
    write(lower.join("d/g"), "g");
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    let f0 = ino(m.path().join("f"));
    let d0 = ino(m.path().join("d"));
    let g0 = ino(m.path().join("d/g"));
    write(m.path().join("f"), "changed");
    write(m.path().join("d/g"), "changed");
    write(m.path().join("d/new"), "new");
    let new0 = ino(m.path().join("d/new"));
    assert_eq!(
        (ino(m.path().join("f")), ino(m.path().join("d/g"))),
        (f0, g0)
    );
    drop(m);
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    assert_eq!(ino(m.path().join("f")), f0, "file after remount");
    assert_eq!(ino(m.path().join("d")), d0, "dir after remount");
    assert_eq!(ino(m.path().join("d/g")), g0);
    assert_eq!(ino(m.path().join("d/new")), new0);
    // readdir agrees with stat.
    for e in fs::read_dir(m.path().join("d")).unwrap() {
        let e = e.unwrap();
        use std::os::unix::fs::DirEntryExt;
        assert_eq!(e.ino(), ino(e.path()), "{:?}", e.path());
    }
}

#[test]
fn owners_keep_their_rights_on_read_only_lower_files() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    write(lower.join("home/ro-file"), "ro\n");
    write(lower.join("home/sed-me"), "old line\n");
    write(lower.join("home/locked/inner"), "i\n");
    fs::set_permissions(
        lower.join("home/ro-file"),
        fs::Permissions::from_mode(0o444),
    )
    .unwrap();
    fs::set_permissions(lower.join("home/locked"), fs::Permissions::from_mode(0o555)).unwrap();
    Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(lower.join("home"))
        .status()
        .unwrap();
    let m = TestOverlay::builder()
        .lower(&lower)
        .option("allow_other")
        .option("timeout=0")
        .mount()
        .unwrap();
    reachable_by_all(m.path());
    let home = m.path().join("home");
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&home)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // As on a plain filesystem: the owner may chmod, rename and delete a
    // 0444 file in a directory it can write, and edit one with sed -i.
    assert!(sh("chmod 0600 ro-file && chmod 0444 ro-file").0);
    assert!(sh("mv ro-file renamed && rm -f renamed").0);
    let (ok, err) = sh("sed -i s/old/new/ sed-me");
    assert!(ok, "sed -i: {err}");
    assert_eq!(read(home.join("sed-me")), "new line\n");
    // In a 0555 directory deleting fails, as it would on a plain
    // filesystem, until the owner makes the directory writable.
    assert!(!sh("rm -f locked/inner").0);
    assert!(sh("chmod 0755 locked && rm -f locked/inner").0);
    assert!(names(home.join("locked")).is_empty());
    assert_eq!(names(&home), ["locked", "sed-me"]);
}

#[test]
fn changes_made_directly_in_the_layers_are_seen() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    write(lower.join("old"), "o");
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    assert_eq!(names(m.path()), ["old"]);
    write(lower.join("added-below"), "a");
    write(upper.join("added-above"), "b");
    fs::remove_file(lower.join("old")).unwrap();
    assert_eq!(names(m.path()), ["added-above", "added-below"]);
    assert_eq!(read(m.path().join("added-below")), "a");
    assert!(fs::metadata(m.path().join("old")).is_err());
    drop(m);
    // With the default timeout (5 s) the change shows once it expires.
    let m = mount_with(&lower, &upper, &work, &[]);
    assert!(fs::metadata(m.path().join("late")).is_err());
    // A change through the mount shows in the listing at once; the
    // listing may then be cached by the kernel, until the timeout.
    assert_eq!(names(m.path()), ["added-above", "added-below"]);
    write(m.path().join("through"), "t");
    assert_eq!(names(m.path()), ["added-above", "added-below", "through"]);
    write(lower.join("late"), "l");
    std::thread::sleep(Duration::from_millis(5500));
    assert_eq!(read(m.path().join("late")), "l");
    assert_eq!(
        names(m.path()),
        ["added-above", "added-below", "late", "through"]
    );
}

#[test]
fn sparse_files_stay_sparse_after_copy_up() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let f = File::create(lower.join("sparse")).unwrap();
    f.set_len(256 << 20).unwrap();
    rustix::io::pwrite(&f, b"middle", 128 << 20).unwrap();
    drop(f);
    let lower_blocks = fs::metadata(lower.join("sparse")).unwrap().blocks();
    let m = TestOverlay::new(&[&lower]).unwrap();
    let w = fs::OpenOptions::new()
        .append(true)
        .open(m.path().join("sparse"))
        .unwrap();
    drop(w);
    let up = fs::metadata(m.upper().join("sparse")).unwrap();
    assert_eq!(up.len(), 256 << 20);
    assert!(
        up.blocks() <= lower_blocks + 8,
        "copy-up filled holes: {} blocks vs {lower_blocks}",
        up.blocks()
    );
    let mut buf = [0u8; 6];
    let r = File::open(m.path().join("sparse")).unwrap();
    rustix::io::pread(&r, &mut buf, 128 << 20).unwrap();
    assert_eq!(&buf, b"middle");
}

#[test]
fn deleting_lower_objects_copies_no_data() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let big = File::create(lower.join("big")).unwrap();
    big.set_len(64 << 20).unwrap();
    rustix::io::pwrite(&big, &vec![1u8; 1 << 20], 0).unwrap();
    drop(big);
    write(lower.join("target"), "t");
    write(lower.join("dir/x"), "x");
    let m = TestOverlay::new(&[&lower]).unwrap();
    fs::remove_file(m.path().join("big")).unwrap();
    fs::remove_dir_all(m.path().join("dir")).unwrap();
    write(m.path().join("src"), "s");
    fs::rename(m.path().join("src"), m.path().join("target")).unwrap();
    assert_eq!(read(m.path().join("target")), "s");
    let used: u64 = fs::read_dir(m.upper())
        .unwrap()
        .map(|e| fs::symlink_metadata(e.unwrap().path()).unwrap().blocks())
        .sum();
    assert!(used <= 16, "upper holds {used} blocks");
}

#[test]
fn overlapping_layouts_are_refused_at_mount() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let inner = t.dir("lower/inner");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    let nested_work = t.dir("upper/w");
    let bad = [
        TestOverlay::builder().lower(&lower).lower(&inner).mount(),
        TestOverlay::builder()
            .lower(&lower)
            .upper(&inner, &work)
            .mount(),
        TestOverlay::builder()
            .lower(&lower)
            .upper(&upper, &nested_work)
            .mount(),
    ];
    for (i, r) in bad.into_iter().enumerate() {
        let e = r.err().unwrap_or_else(|| panic!("layout {i} was accepted"));
        assert!(
            e.to_string().contains("overlap") || e.to_string().contains("inside"),
            "{e}"
        );
    }
}

#[test]
fn metadata_changes_copy_up_metadata_only() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let big = File::create(lower.join("big")).unwrap();
    rustix::io::pwrite(&big, &vec![7u8; 8 << 20], 0).unwrap();
    drop(big);
    write(lower.join("small"), "small\n");
    let before = tree_digest(&lower);
    let m = TestOverlay::new(&[&lower]).unwrap();
    let p = m.path();
    let status = Command::new("chown")
        .args(["-R", "1234:5678"])
        .arg(p)
        .status()
        .unwrap();
    assert!(status.success());
    fs::set_permissions(p.join("small"), fs::Permissions::from_mode(0o600)).unwrap();
    // Metadata changed, data still read from below, nothing copied.
    let md = fs::metadata(p.join("big")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.len()), (1234, 5678, 8 << 20));
    assert!(md.blocks() >= (8 << 20) / 512, "st_blocks of the data");
    assert_eq!(fs::read(p.join("big")).unwrap(), vec![7u8; 8 << 20]);
    let up = fs::metadata(m.upper().join("big")).unwrap();
    assert_eq!((up.uid(), up.blocks()), (1234, 0), "upper holds data");
    assert_eq!(read(p.join("small")), "small\n");
    assert_eq!(mode(p.join("small")) & 0o777, 0o600);
    // The first write copies the data, keeping the new metadata.
    let f = fs::OpenOptions::new()
        .append(true)
        .open(p.join("small"))
        .unwrap();
    rustix::io::write(&f, b"more\n").unwrap();
    drop(f);
    assert_eq!(read(p.join("small")), "small\nmore\n");
    assert_eq!(read(m.upper().join("small")), "small\nmore\n");
    let md = fs::metadata(p.join("small")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o777), (1234, 0o600));
    // Renaming and truncating a metacopy file keep the right data.
    fs::rename(p.join("big"), p.join("big2")).unwrap();
    assert_eq!(fs::read(p.join("big2")).unwrap().len(), 8 << 20);
    assert!(fs::read(p.join("big2")).unwrap().iter().all(|&b| b == 7));
    drop(m);
    assert_eq!(before, tree_digest(&lower));
}

#[test]
fn metacopy_files_are_read_correctly_after_remount() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    write(lower.join("f"), "lower data\n");
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    fs::set_permissions(m.path().join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    drop(m);
    assert_eq!(fs::metadata(upper.join("f")).unwrap().blocks(), 0);
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    assert_eq!(read(m.path().join("f")), "lower data\n");
    assert_eq!(mode(m.path().join("f")) & 0o777, 0o640);
    write(m.path().join("f"), "new\n");
    drop(m);
    let m = mount_with(&lower, &upper, &work, &["timeout=0", "metacopy=off"]);
    assert_eq!(read(m.path().join("f")), "new\n");
}

#[test]
fn hard_links_survive_copy_up() {
    require_root!();
    let t = Tree::new();
    let lower = t.dir("lower");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    write(lower.join("a"), "shared\n");
    fs::hard_link(lower.join("a"), lower.join("d/b")).unwrap_or_else(|_| {
        fs::create_dir(lower.join("d")).unwrap();
        fs::hard_link(lower.join("a"), lower.join("d/b")).unwrap();
    });
    let nl = |p: &Path| fs::metadata(p).unwrap().nlink();
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    let p = m.path().to_path_buf();
    assert_eq!((nl(&p.join("a")), nl(&p.join("d/b"))), (2, 2));
    assert_eq!(ino(p.join("a")), ino(p.join("d/b")));
    // Writing through one name shows through the other.
    let f = fs::OpenOptions::new()
        .append(true)
        .open(p.join("a"))
        .unwrap();
    rustix::io::write(&f, b"more\n").unwrap();
    drop(f);
    assert_eq!(read(p.join("d/b")), "shared\nmore\n");
    assert_eq!(ino(p.join("a")), ino(p.join("d/b")));
    assert_eq!((nl(&p.join("a")), nl(&p.join("d/b"))), (2, 2));
    // link() adds a name; unlink() removes one.
    fs::hard_link(p.join("d/b"), p.join("c")).unwrap();
    assert_eq!((nl(&p.join("a")), nl(&p.join("c"))), (3, 3));
    fs::remove_file(p.join("a")).unwrap();
    assert_eq!((nl(&p.join("d/b")), nl(&p.join("c"))), (2, 2));
    let b_ino = ino(p.join("d/b"));
    drop(m);
    let m = mount_with(&lower, &upper, &work, &["timeout=0"]);
    let p = m.path().to_path_buf();
    assert_eq!(read(p.join("d/b")), "shared\nmore\n");
    assert_eq!(read(p.join("c")), "shared\nmore\n");
    assert_eq!((ino(p.join("d/b")), ino(p.join("c"))), (b_ino, b_ino));
    assert_eq!(nl(&p.join("c")), 2);
    assert!(fs::metadata(p.join("a")).is_err());
    // fstat of an open file whose last name is gone shows nlink 0.
    let f = File::open(p.join("c")).unwrap();
    fs::remove_file(p.join("c")).unwrap();
    fs::remove_file(p.join("d/b")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    drop(f);
    let lone = lower.join("lone");
    write(&lone, "l");
    let m2 = TestOverlay::new(&[&lower]).unwrap();
    let f = File::open(m2.path().join("lone")).unwrap();
    fs::remove_file(m2.path().join("lone")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // The lower layer still has both names, untouched.
    assert_eq!(read(lower.join("d/b")), "shared\n");
    assert_eq!(fs::metadata(lower.join("a")).unwrap().nlink(), 2);
}

/// Mounts kernel overlayfs (the reference) over the same layers; unmounted
/// on drop.
struct KernelMount(std::path::PathBuf);

impl KernelMount {
    fn new(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path, extra: &str) -> KernelMount {
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{extra}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        let ok = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "kernel overlay mount failed: {opts}");
        KernelMount(mnt.to_path_buf())
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every path under `root` with its type and contents, sorted.
fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if md.is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(format!(
                    "{rel} {}",
                    fs::read_to_string(&p).unwrap_or_default()
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn lower_directories_rename_in_place_like_kernel_redirect_dir() {
    require_root!();
    let t = Tree::new();
    let (top, bottom) = (t.dir("top"), t.dir("bottom"));
    write(bottom.join("a/b/c/deep"), "deep\n");
    write(bottom.join("a/b/file"), "b\n");
    write(top.join("a/b/topfile"), "t\n");
    write(bottom.join("x/inx"), "x\n");
    t.dir("bottom/empty");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    let m = TestOverlay::builder()
        .lower(&top)
        .lower(&bottom)
        .upper(&upper, &work)
        .option("timeout=0")
        .mount()
        .unwrap();
    let p = m.path().to_path_buf();
    let ino_b = ino(p.join("a/b"));
    // Rename a merged directory at depth; contents from both lowers follow.
    fs::rename(p.join("a/b"), p.join("moved")).unwrap();
    assert_eq!(names(p.join("moved")), ["c", "file", "topfile"]);
    assert_eq!(read(p.join("moved/c/deep")), "deep\n");
    assert_eq!(ino(p.join("moved")), ino_b);
    assert!(names(p.join("a")).is_empty());
    // Over an existing empty directory.
    fs::rename(p.join("x"), p.join("empty")).unwrap();
    assert_eq!(names(p.join("empty")), ["inx"]);
    // RENAME_EXCHANGE of two lower dirs.
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        p.join("moved"),
        rustix::fs::CWD,
        p.join("empty"),
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .unwrap();
    assert_eq!(names(p.join("moved")), ["inx"]);
    assert_eq!(names(p.join("empty")), ["c", "file", "topfile"]);
    // Rename a parent of a redirected dir, then rename back.
    fs::create_dir(p.join("holder")).unwrap();
    fs::rename(p.join("empty"), p.join("holder/again")).unwrap();
    fs::rename(p.join("holder"), p.join("holder2")).unwrap();
    assert_eq!(read(p.join("holder2/again/c/deep")), "deep\n");
    fs::rename(p.join("holder2/again"), p.join("a/b")).unwrap();
    assert_eq!(names(p.join("a/b")), ["c", "file", "topfile"]);
    // Changes inside a moved directory copy up to the right place.
    write(p.join("moved/inx"), "changed\n");
    assert_eq!(read(p.join("moved/inx")), "changed\n");
    let before = listing(&p);
    drop(m);
    // cairnfs after a remount, and kernel overlayfs with redirect_dir=on,
    // show the same tree.
    let m = TestOverlay::builder()
        .lower(&top)
        .lower(&bottom)
        .upper(&upper, &work)
        .mount()
        .unwrap();
    assert_eq!(listing(m.path()), before);
    drop(m);
    let kwork = t.dir("kwork");
    let kmnt = t.dir("kmnt");
    let k = KernelMount::new(&[&top, &bottom], &upper, &kwork, &kmnt, ",redirect_dir=on");
    assert_eq!(listing(&k.0), before);
    drop(k);
    // Deleting a moved directory leaves nothing of it behind.
    let m = TestOverlay::builder()
        .lower(&top)
        .lower(&bottom)
        .upper(&upper, &work)
        .mount()
        .unwrap();
    fs::remove_dir_all(m.path().join("moved")).unwrap();
    assert!(fs::metadata(m.path().join("moved")).is_err());
    assert_eq!(read(bottom.join("x/inx")), "x\n");
}

/// What each of `names` under `dir` resolves to, looked up by name (no
/// readdir first): contents, `dir`, or the errno.
fn resolved(dir: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|n| match fs::symlink_metadata(dir.join(n)) {
            Ok(md) if md.is_dir() => format!("{n}: dir {:?}", names_or_err(&dir.join(n))),
            Ok(_) => format!(
                "{n}: {}",
                fs::read_to_string(dir.join(n)).unwrap_or_default()
            ),
            Err(e) => format!("{n}: errno {}", errno(&e)),
        })
        .collect()
}

fn names_or_err(p: &Path) -> Vec<String> {
    fs::read_dir(p).map(|_| names(p)).unwrap_or_default()
}

#[test]
fn deep_stacks_resolve_like_kernel_overlayfs() {
    require_root!();
    // Twelve lowers (the name index is used from four on), one directory
    // merged across all of them; names spread over the layers, hidden by
    // whiteouts and by an opaque directory further up. Kernel overlayfs
    // gets its own formats; cairnfs the same tree with some whiteouts as
    // OCI `.wh.` files (which the kernel does not read).
    const DEPTH: usize = 12;
    let t = Tree::new();
    let build = |set: &str, oci: bool| -> Vec<std::path::PathBuf> {
        let lowers: Vec<_> = (0..DEPTH)
            .map(|i| t.dir(&format!("{set}/l{i}/d")))
            .collect();
        for n in 0..60 {
            let name = format!("f{n}");
            let home = (n * 7) % DEPTH;
            write(lowers[home].join(&name), &format!("{name} from l{home}\n"));
            // Some names are also in a layer above, which then wins.
            if n % 5 == 0 && home > 0 {
                write(
                    lowers[home - 1].join(&name),
                    &format!("{name} over l{home}\n"),
                );
            }
            // Some are deleted above their home.
            if n % 3 == 1 && home > 1 {
                let at = lowers[(n % home).min(home - 1)].join(&name);
                if oci && n % 2 == 0 {
                    write(at.with_file_name(format!(".wh.{name}")), "");
                } else if !at.exists() {
                    whiteout(at);
                }
            }
        }
        // sub/: in the bottom half, made opaque in l3 with its own file.
        for l in &lowers[DEPTH / 2..] {
            write(l.join("sub/below"), "hidden\n");
        }
        write(lowers[3].join("sub/mine"), "l3\n");
        set_opaque_xattr(lowers[3].join("sub"));
        (0..DEPTH).map(|i| t.dir(&format!("{set}/l{i}"))).collect()
    };
    let klowers = build("k", false);
    let clowers = build("c", true);
    let mut all: Vec<String> = (0..60).map(|n| format!("f{n}")).collect();
    all.extend(["sub", "missing", "sub/below", "sub/mine"].map(String::from));
    let refs: Vec<&Path> = klowers.iter().map(|p| p.as_path()).collect();
    let (kupper, kwork, kmnt) = (t.dir("kupper"), t.dir("kwork"), t.dir("kmnt"));
    let k = KernelMount::new(&refs, &kupper, &kwork, &kmnt, "");
    let (upper, work) = (t.dir("upper"), t.dir("work"));
    // The default timeout: the index is on.
    let mount = || {
        clowers
            .iter()
            .fold(TestOverlay::builder(), |b, l| b.lower(l))
            .upper(&upper, &work)
            .mount()
            .unwrap()
    };
    let c = mount();
    let (kd, cd) = (kmnt.join("d"), c.path().join("d"));
    // Cold lookups by name, then the listing, then lookups again.
    let want = resolved(&kd, &all);
    assert!(want.iter().any(|r| r.ends_with("errno 2")), "{want:?}");
    assert_eq!(resolved(&cd, &all), want);
    assert_eq!(listing(c.path()), listing(&kmnt));
    assert_eq!(resolved(&cd, &all), want);
    // Changes through the mounts: delete, recreate, replace a dir.
    for m in [&kd, &cd] {
        for n in ["f0", "f3", "f7", "f11"] {
            fs::remove_file(m.join(n)).unwrap();
        }
        write(m.join("f3"), "recreated\n");
        write(m.join("new"), "new\n");
        fs::remove_dir_all(m.join("sub")).unwrap();
        write(m.join("sub/again"), "again\n");
    }
    all.extend(["new", "sub/again"].map(String::from));
    let want = resolved(&kd, &all);
    assert_eq!(resolved(&cd, &all), want);
    assert_eq!(listing(c.path()), listing(&kmnt));
    drop(c);
    // A fresh cairnfs mount over what it wrote resolves the same.
    let c = mount();
    assert_eq!(resolved(&c.path().join("d"), &all), want);
    drop(k);
}
