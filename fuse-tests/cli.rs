//! Tests of the real `cairnfs` command: daemonizing, foreground mode and
//! signals, the mount.fuse3 calling convention, option handling and errors,
//! read-only mounts, the ways to unmount, and a rootless mount as a real
//! unprivileged user.
//!
//! Every test mounts in its own temporary directory; a [`Fixture`] unmounts
//! (umount, then lazy detach) and stops any daemon left for its mountpoint
//! when dropped, also when the test panics. Run them in a private mount
//! namespace, as the README does:
//! `scripts/with-watchdog.sh 600 unshare -m --propagation private cargo test --test cli`.

// common's TestOverlay re-export is for the other test targets.
#[allow(unused_imports)]
mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_cairnfs");
/// Longest a cairnfs invocation (or an unmount command) may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const HELLO: &str = "hello from the lower layer\n";

// ------------------------------------------------------------------ helpers

/// One line of /proc/self/mountinfo: mountpoint, fs type, mount options.
struct MountEntry {
    point: Vec<u8>,
    fstype: String,
    options: String,
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The mounts of this mount namespace, read without touching any mount.
fn mounts() -> Vec<MountEntry> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            Some(MountEntry {
                point: unescape_mountinfo(f.get(4)?),
                fstype: right.split(' ').next()?.to_string(),
                options: f.get(5)?.to_string(),
            })
        })
        .collect()
}

fn mount_entry(mnt: &Path) -> Option<MountEntry> {
    mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == mnt.as_os_str().as_bytes())
}

fn is_mounted(mnt: &Path) -> bool {
    mount_entry(mnt).is_some()
}

/// Pids of cairnfs processes serving (or started for) `mnt`: argv[0] is a
/// `cairnfs` and one argument is the mountpoint.
fn cairnfs_pids(mnt: &Path) -> Vec<i32> {
    let want = mnt.as_os_str().as_bytes();
    let mut pids = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_cairnfs = args.first().is_some_and(|a0| {
            Path::new(OsStr::from_bytes(a0)).file_name() == Some(OsStr::new("cairnfs"))
        });
        if is_cairnfs && args.iter().skip(1).any(|a| *a == want) {
            pids.push(pid);
        }
    }
    pids
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// The result of a finished command.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.status.success()
    }
    fn describe(&self) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs a command with its output piped, failing the test if it (or a
/// daemon that kept the pipes open) has not finished within CMD_TIMEOUT.
fn run_cmd(mut cmd: Command) -> Run {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CMD_TIMEOUT) {
        Ok(out) => {
            let out = out.expect("wait for command");
            Run {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            signal(pid, "-KILL");
            panic!("{desc} did not finish (or left its stdout/stderr open) within {CMD_TIMEOUT:?}");
        }
    }
}

/// Runs `cairnfs ARGS`.
fn cairnfs<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Run {
    let mut c = Command::new(BIN);
    c.args(args);
    run_cmd(c)
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => common::errno(&e),
    }
}

/// Unmounts `mnt` (umount, then lazy detach) and makes sure no cairnfs
/// process for it outlives the test.
fn teardown(mnt: &Path) {
    if is_mounted(mnt) {
        let _ = Command::new("umount")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
        if is_mounted(mnt) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(mnt)
                .stderr(Stdio::null())
                .status();
        }
    }
    if !wait_until(Duration::from_secs(5), || cairnfs_pids(mnt).is_empty()) {
        for pid in cairnfs_pids(mnt) {
            signal(pid, "-KILL");
        }
    }
}

/// Unmounts its mountpoint on drop.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        teardown(&self.0);
    }
}

/// Temporary layers: `lower/` (hello, dir/inner, gone), empty `upper/` and
/// `work/`, and `mnt/`. Dropping it unmounts first, then removes the files.
struct Fixture {
    // Declared first: dropped (unmounted) before the directory is removed.
    _guard: MountGuard,
    _dir: tempfile::TempDir,
    root: PathBuf,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("cairn-cli.")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().canonicalize().expect("canonicalize");
        let (lower, upper, work, mnt) = (
            root.join("lower"),
            root.join("upper"),
            root.join("work"),
            root.join("mnt"),
        );
        common::write(lower.join("hello"), HELLO);
        common::write(lower.join("dir/inner"), "inner\n");
        common::write(lower.join("gone"), "to be deleted\n");
        for d in [&upper, &work, &mnt] {
            fs::create_dir_all(d).expect("mkdir");
        }
        Fixture {
            _guard: MountGuard(mnt.clone()),
            _dir: dir,
            root,
            lower,
            upper,
            work,
            mnt,
        }
    }

    /// `lowerdir=...,upperdir=...,workdir=...`
    fn opts(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        )
    }

    fn mnt_arg(&self) -> &OsStr {
        self.mnt.as_os_str()
    }

    /// Mounts with `cairnfs -o OPTS MNT` and checks that it worked.
    fn mount_with(&self, opts: &str) -> Run {
        let r = cairnfs([OsStr::new("-o"), OsStr::new(opts), self.mnt_arg()]);
        assert!(r.ok(), "cairnfs -o {opts} failed: {}", r.describe());
        assert!(is_mounted(&self.mnt), "not mounted after success");
        r
    }

    /// Checks that the merged view is there right now (no waiting).
    fn assert_merged_view(&self) {
        assert_eq!(common::read(self.mnt.join("hello")), HELLO);
        assert_eq!(common::read(self.mnt.join("dir/inner")), "inner\n");
        assert_eq!(common::names(&self.mnt), ["dir", "gone", "hello"]);
    }

    /// Checks that the mount is gone and its daemon has exited.
    fn assert_unmounted_and_daemon_gone(&self) {
        assert!(!is_mounted(&self.mnt), "still mounted");
        assert!(
            wait_until(Duration::from_secs(10), || cairnfs_pids(&self.mnt)
                .is_empty()),
            "cairnfs daemon still running after unmount: {:?}",
            cairnfs_pids(&self.mnt)
        );
    }
}

// -------------------------------------------------------------------- tests

#[test]
fn daemonizes_and_returns_once_the_mount_is_live() {
    require_root!();
    let f = Fixture::new();
    let lower_before = common::tree_digest(&f.lower);
    // run_cmd waits for exit *and* for EOF on stdout/stderr: the daemon must
    // not keep the caller's pipes open (podman reads them).
    f.mount_with(&f.opts());
    // No retry and no sleep: the merged content is readable at once.
    f.assert_merged_view();
    let m = mount_entry(&f.mnt).expect("mount entry");
    assert!(m.fstype.starts_with("fuse"), "{}", m.fstype);
    assert!(m.options.split(',').any(|o| o == "rw"), "{}", m.options);
    assert_eq!(
        cairnfs_pids(&f.mnt).len(),
        1,
        "exactly one daemon serves the mount"
    );
    // It is a working overlay: writes land in the upper dir only.
    common::write(f.mnt.join("hello"), "changed\n");
    fs::remove_file(f.mnt.join("gone")).expect("unlink");
    assert_eq!(common::read(f.upper.join("hello")), "changed\n");
    assert_eq!(common::tree_digest(&f.lower), lower_before);
}

#[test]
fn mount_type_is_fuse_cairnfs() {
    require_root!();
    let f = Fixture::new();
    f.mount_with(&f.opts());
    // As fuse-overlayfs shows `fuse.fuse-overlayfs`, so that findmnt -t,
    // umount -t and mount -t fuse.cairnfs agree.
    let m = mount_entry(&f.mnt).expect("mount entry");
    assert_eq!(m.fstype, "fuse.cairnfs");
}

/// Starts `cairnfs -f`, waits for the mount, sends `sig`, and checks that
/// it unmounts and exits 0.
fn foreground_signal_unmounts(sig: &str) {
    let f = Fixture::new();
    let mut child = Command::new(BIN)
        .args([OsStr::new("-f"), OsStr::new("-o"), OsStr::new(&f.opts())])
        .arg(f.mnt_arg())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairnfs -f");
    assert!(
        wait_until(Duration::from_secs(10), || is_mounted(&f.mnt)),
        "cairnfs -f did not mount within 10s"
    );
    f.assert_merged_view();
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "-f must stay in the foreground"
    );
    assert_eq!(cairnfs_pids(&f.mnt), [child.id() as i32], "no fork with -f");
    signal(child.id() as i32, sig);
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let status = status.unwrap_or_else(|| panic!("cairnfs -f still running 10s after {sig}"));
    assert_eq!(status.code(), Some(0), "exit status after {sig}");
    assert!(!is_mounted(&f.mnt), "{sig} left the mount behind");
}

#[test]
fn foreground_sigterm_unmounts_and_exits_0() {
    require_root!();
    foreground_signal_unmounts("-TERM");
}

#[test]
fn foreground_sigint_unmounts_and_exits_0() {
    require_root!();
    foreground_signal_unmounts("-INT");
}

#[test]
fn sigterm_to_the_daemon_unmounts() {
    require_root!();
    let f = Fixture::new();
    f.mount_with(&f.opts());
    let pids = cairnfs_pids(&f.mnt);
    assert_eq!(pids.len(), 1, "one daemon: {pids:?}");
    signal(pids[0], "-TERM");
    assert!(
        wait_until(Duration::from_secs(10), || !is_mounted(&f.mnt)),
        "SIGTERM to the daemon did not unmount"
    );
    f.assert_unmounted_and_daemon_gone();
}

#[test]
fn repeated_mounts_are_live_on_return() {
    require_root!();
    // A race between "parent returns" and "mount is live" shows up only
    // sometimes: mount and read at once a few times.
    let f = Fixture::new();
    for i in 0..10 {
        f.mount_with(&f.opts());
        assert_eq!(common::read(f.mnt.join("hello")), HELLO, "round {i}");
        teardown(&f.mnt);
        assert!(!is_mounted(&f.mnt), "round {i}");
    }
}

#[test]
fn mount_fuse3_calling_convention() {
    require_root!();
    let f = Fixture::new();
    // What mount.fuse3 runs: a source argument first, generic options mixed in.
    let opts = format!("rw,{},dev,suid", f.opts());
    let r = cairnfs([
        OsStr::new("cairnfs"),
        f.mnt_arg(),
        OsStr::new("-o"),
        OsStr::new(&opts),
    ]);
    assert!(r.ok(), "{}", r.describe());
    assert!(
        !r.stderr.contains("unknown"),
        "generic options must not be warned about: {}",
        r.stderr
    );
    f.assert_merged_view();
    common::write(f.mnt.join("new"), "x");
    assert_eq!(common::read(f.upper.join("new")), "x");
}

#[test]
fn mount_through_mount_fuse3() {
    require_root!();
    if !Path::new("/sbin/mount.fuse3").exists() && !Path::new("/usr/sbin/mount.fuse3").exists() {
        eprintln!("skipped: mount.fuse3 not installed");
        return;
    }
    let f = Fixture::new();
    // `mount -t fuse.cairnfs` would look `cairnfs` up in a PATH that mount
    // resets; the `PROGRAM#SOURCE` form names the binary and runs the same
    // `PROGRAM SOURCE MNT -o rw,...,dev,suid` command line.
    let mut c = Command::new("mount");
    c.args(["-t", "fuse"])
        .arg(format!("{BIN}#cairnfs"))
        .arg(&f.mnt)
        .args(["-o", &f.opts()]);
    let r = run_cmd(c);
    assert!(r.ok(), "{}", r.describe());
    f.assert_merged_view();
    let r = run_cmd({
        let mut c = Command::new("umount");
        c.arg(&f.mnt);
        c
    });
    assert!(r.ok(), "{}", r.describe());
    f.assert_unmounted_and_daemon_gone();
}

#[test]
fn empty_options_are_ignored() {
    require_root!();
    let f = Fixture::new();
    let opts = format!(
        ",lowerdir={},,upperdir={},,workdir={},,volatile,",
        f.lower.display(),
        f.upper.display(),
        f.work.display()
    );
    let r = f.mount_with(&opts);
    assert!(
        !r.stderr.contains("unknown"),
        "empty options must not be warned about: {}",
        r.stderr
    );
    f.assert_merged_view();
    common::write(f.mnt.join("new"), "x");
    assert_eq!(common::read(f.upper.join("new")), "x");
}

#[test]
fn unknown_option_warns_and_still_mounts() {
    require_root!();
    let f = Fixture::new();
    let r = f.mount_with(&format!("{},frobnicate=3", f.opts()));
    assert!(
        r.stderr.contains("unknown argument ignored") && r.stderr.contains("frobnicate"),
        "expected a warning naming the option on stderr: {}",
        r.describe()
    );
    f.assert_merged_view();
}

#[test]
fn bad_invocations_exit_1_with_a_message_and_mount_nothing() {
    require_root!();
    let f = Fixture::new();
    let (l, u, w) = (
        f.lower.display().to_string(),
        f.upper.display().to_string(),
        f.work.display().to_string(),
    );
    let inside = f.lower.join("dir");
    let not_a_dir = f.lower.join("hello");
    let missing = f.root.join("no-such-dir");
    let upper_sub = f.upper.join("sub");
    let work_in_upper = f.upper.join("work");
    fs::create_dir(&upper_sub).expect("mkdir");
    fs::create_dir(&work_in_upper).expect("mkdir");
    // (options, mountpoint, what the message must mention)
    let cases: Vec<(String, &Path, &str)> = vec![
        (format!("{},timeout=abc", f.opts()), &f.mnt, "timeout=abc"),
        (format!("{},uidmapping=1:2", f.opts()), &f.mnt, "uidmapping"),
        (
            format!("{},xattr_permissions=9", f.opts()),
            &f.mnt,
            "xattr_permissions",
        ),
        (format!("upperdir={u},workdir={w}"), &f.mnt, "lowerdir"),
        (
            format!("lowerdir={}", missing.display()),
            &f.mnt,
            "no-such-dir",
        ),
        (
            format!("lowerdir={}", not_a_dir.display()),
            &f.mnt,
            "not a directory",
        ),
        (format!("lowerdir={l},upperdir={u}"), &f.mnt, "workdir"),
        (f.opts(), &inside, "inside"),
        (f.opts(), &upper_sub, "inside"),
        (
            format!(
                "lowerdir={l},upperdir={u},workdir={}",
                work_in_upper.display()
            ),
            &f.mnt,
            "overlap",
        ),
        (
            format!("{},squash_to_uid=x", f.opts()),
            &f.mnt,
            "squash_to_uid",
        ),
        (format!("{},fsync=2", f.opts()), &f.mnt, "fsync"),
        (format!("{},threaded=many", f.opts()), &f.mnt, "threaded"),
        ("lowerdir=".to_string(), &f.mnt, "lowerdir"),
        (format!("{},timeout=-1", f.opts()), &f.mnt, "timeout"),
        (f.opts(), &missing, "no-such-dir"),
    ];
    for (opts, mnt, needle) in cases {
        let r = cairnfs([OsStr::new("-o"), OsStr::new(&opts), mnt.as_os_str()]);
        let ctx = format!("cairnfs -o {opts} {}: {}", mnt.display(), r.describe());
        assert_eq!(r.status.code(), Some(1), "{ctx}");
        assert!(r.stderr.starts_with("cairnfs: "), "{ctx}");
        assert!(
            r.stderr.contains(needle),
            "message must mention {needle:?}: {ctx}"
        );
        assert!(!r.stderr.contains("panicked"), "{ctx}");
        assert!(!is_mounted(mnt), "mounted anyway: {ctx}");
        assert!(cairnfs_pids(mnt).is_empty(), "process left: {ctx}");
    }
    // An unknown flag.
    let r = cairnfs([
        OsStr::new("-x"),
        OsStr::new("-o"),
        OsStr::new(&f.opts()),
        f.mnt_arg(),
    ]);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(r.stderr.contains("-x"), "{}", r.describe());
    assert!(!is_mounted(&f.mnt));
    // No mountpoint at all.
    let r = cairnfs(["-o", &f.opts()]);
    assert_eq!(r.status.code(), Some(1), "{}", r.describe());
    assert!(r.stderr.contains("mountpoint"), "{}", r.describe());
    // The layers were not touched.
    assert_eq!(common::names(&f.upper), ["sub", "work"]);
    assert_eq!(common::names(&f.lower), ["dir", "gone", "hello"]);
}

#[test]
fn help_and_version_exit_0_without_mounting() {
    for flag in ["-h", "--help"] {
        let r = cairnfs([flag]);
        assert!(r.ok(), "{}", r.describe());
        assert!(r.stdout.contains("lowerdir="), "{}", r.describe());
    }
    let r = cairnfs(["-V"]);
    assert!(r.ok(), "{}", r.describe());
    assert!(r.stdout.starts_with("cairnfs "), "{}", r.describe());
}

#[test]
fn without_upperdir_the_mount_is_read_only() {
    require_root!();
    let f = Fixture::new();
    f.mount_with(&format!("lowerdir={}", f.lower.display()));
    f.assert_merged_view();
    let m = mount_entry(&f.mnt).expect("mount entry");
    assert!(m.options.split(',').any(|o| o == "ro"), "{}", m.options);
    let erofs = libc::EROFS;
    assert_eq!(errno_of(fs::write(f.mnt.join("new"), "x")), erofs, "create");
    assert_eq!(
        errno_of(fs::OpenOptions::new().write(true).open(f.mnt.join("hello"))),
        erofs,
        "open for writing"
    );
    assert_eq!(errno_of(fs::create_dir(f.mnt.join("d"))), erofs, "mkdir");
    assert_eq!(
        errno_of(fs::remove_file(f.mnt.join("gone"))),
        erofs,
        "unlink"
    );
    assert_eq!(
        errno_of(fs::rename(f.mnt.join("hello"), f.mnt.join("h2"))),
        erofs,
        "rename"
    );
    assert_eq!(
        errno_of(fs::set_permissions(
            f.mnt.join("hello"),
            fs::Permissions::from_mode(0o600)
        )),
        erofs,
        "chmod"
    );
    f.assert_merged_view();
}

#[test]
fn ro_option_with_an_upperdir_is_read_only() {
    require_root!();
    let f = Fixture::new();
    f.mount_with(&format!("{},ro", f.opts()));
    assert_eq!(errno_of(fs::write(f.mnt.join("new"), "x")), libc::EROFS);
    assert!(common::names(&f.upper).is_empty());
}

#[test]
fn fusermount3_u_unmounts_and_the_daemon_exits() {
    require_root!();
    let f = Fixture::new();
    f.mount_with(&f.opts());
    f.assert_merged_view();
    let r = run_cmd({
        let mut c = Command::new("fusermount3");
        c.arg("-u").arg(&f.mnt);
        c
    });
    assert!(r.ok(), "{}", r.describe());
    f.assert_unmounted_and_daemon_gone();
}

#[test]
fn umount_unmounts_and_the_daemon_exits() {
    require_root!();
    let f = Fixture::new();
    f.mount_with(&f.opts());
    f.assert_merged_view();
    let r = run_cmd({
        let mut c = Command::new("umount");
        c.arg(&f.mnt);
        c
    });
    assert!(r.ok(), "{}", r.describe());
    f.assert_unmounted_and_daemon_gone();
}

#[test]
fn relative_layer_paths_are_relative_to_the_working_directory() {
    require_root!();
    let f = Fixture::new();
    // As podman calls it: working directory at the storage root.
    let r = run_cmd({
        let mut c = Command::new(BIN);
        c.args(["-o", "lowerdir=lower,upperdir=upper,workdir=work", "mnt"])
            .current_dir(&f.root);
        c
    });
    assert!(r.ok(), "{}", r.describe());
    f.assert_merged_view();
}

/// The user the rootless test runs as (scripts/setup.sh creates it).
const ROOTLESS_USER: &str = "cairn-test";

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("id").arg("-u").arg(name).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").arg("-g").arg(name).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

#[test]
fn rootless_in_a_user_namespace_as_an_unprivileged_user() {
    require_root!();
    let (uid, gid) = user_ids(ROOTLESS_USER)
        .unwrap_or_else(|| panic!("user {ROOTLESS_USER} missing: run scripts/setup.sh"));
    let fuse_mode = fs::metadata("/dev/fuse").expect("/dev/fuse").mode();
    assert_eq!(
        fuse_mode & 0o006,
        0o006,
        "/dev/fuse must be usable by {ROOTLESS_USER}: run scripts/setup.sh"
    );
    let f = Fixture::new();
    // The user owns the whole tree, and runs a private copy of the binary
    // (the build directory may not be reachable for it).
    let bin = f.root.join("bin/cairnfs");
    fs::create_dir_all(bin.parent().expect("parent")).expect("mkdir bin");
    fs::copy(BIN, &bin).expect("copy cairnfs");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    let r = run_cmd({
        let mut c = Command::new("chown");
        c.arg("-R").arg(format!("{uid}:{gid}")).arg(&f.root);
        c
    });
    assert!(r.ok(), "{}", r.describe());
    fs::set_permissions(&f.root, fs::Permissions::from_mode(0o755)).expect("chmod root");
    let lower_before = common::tree_digest(&f.lower);

    // Inside the namespace the user is root of its own mount namespace; the
    // daemon stays in that namespace, so the script unmounts before leaving
    // (the EXIT trap also on failure) and the daemon exits.
    let script = r#"
set -e
M=$1; L=$2; U=$3; W=$4; B=$5
trap 'umount "$M" 2>/dev/null || umount -l "$M" 2>/dev/null || true' EXIT
"$B" -o "lowerdir=$L,upperdir=$U,workdir=$W" "$M"
echo x > "$M/f"
echo "f=$(cat "$M/f")"
echo appended >> "$M/hello"
echo "inner=$(cat "$M/dir/inner")"
rm "$M/gone"
echo "--- merged"
ls -la "$M"
echo "--- upper"
ls -la "$U"
"#;
    let mut c = Command::new("runuser");
    c.args([
        "-u",
        ROOTLESS_USER,
        "--",
        "unshare",
        "-Urm",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(&f.mnt)
    .arg(&f.lower)
    .arg(&f.upper)
    .arg(&f.work)
    .arg(&bin)
    .current_dir(&f.root);
    let r = run_cmd(c);
    let ctx = r.describe();
    assert!(r.ok(), "rootless run failed: {ctx}");
    eprintln!("{}", r.stdout);

    // Reads through the mount worked.
    assert!(r.stdout.contains("f=x\n"), "{ctx}");
    assert!(r.stdout.contains("inner=inner\n"), "{ctx}");
    let merged = r
        .stdout
        .split("--- merged")
        .nth(1)
        .and_then(|s| s.split("--- upper").next())
        .expect("ls output");
    for name in [" f\n", " hello\n", " dir\n"] {
        assert!(
            merged.contains(name),
            "{name:?} missing from merged view: {ctx}"
        );
    }
    assert!(
        !merged.contains(" gone\n"),
        "deleted name still listed: {ctx}"
    );
    assert!(
        !merged.contains(".wh."),
        "whiteout shown in the merged view: {ctx}"
    );

    // What landed in the upper dir, owned by the user (root in its namespace).
    let f_md = fs::symlink_metadata(f.upper.join("f")).expect("upper/f");
    assert_eq!(common::read(f.upper.join("f")), "x\n");
    assert_eq!((f_md.uid(), f_md.gid()), (uid, gid), "owner of a new file");
    // Copy-up: the whole lower file plus the append.
    assert_eq!(
        common::read(f.upper.join("hello")),
        format!("{HELLO}appended\n")
    );
    // Whiteout: a 0:0 character device, or a .wh. file.
    let dev = fs::symlink_metadata(f.upper.join("gone"));
    let wh = fs::symlink_metadata(f.upper.join(".wh.gone"));
    match (dev, wh) {
        (Ok(md), _) => assert!(
            md.file_type().is_char_device() && md.rdev() == 0,
            "upper/gone is not a 0:0 device: {md:?}"
        ),
        (Err(_), Ok(_)) => {}
        (Err(_), Err(_)) => panic!("no whiteout for 'gone' in the upper dir: {ctx}"),
    }
    // The lower layer was never written.
    assert_eq!(common::tree_digest(&f.lower), lower_before);
    // Nothing left behind: the namespace went away with its mount.
    assert!(
        wait_until(Duration::from_secs(10), || cairnfs_pids(&f.mnt).is_empty()),
        "rootless cairnfs daemon still running"
    );
}
