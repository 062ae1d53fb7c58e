//! Differential tests: cairnfs against the kernel's overlayfs.
//!
//! Each case is generated from a seed: a few lower layers (kernel formats
//! only: 0:0 char-device whiteouts and `trusted.overlay.opaque=y` dirs) and a
//! sequence of operations. The lowers are built twice, one copy is mounted
//! with kernel overlayfs and one with cairnfs (`timeout=0`, so nothing is
//! served from the kernel's caches), every operation is applied to both, and
//! the results (success or errno) and the visible trees must agree (names,
//! types, modes, owners, xattrs; for non-dirs also size, nlink, contents
//! and link targets). The reference is kernel overlayfs with
//! `REFERENCE_OPTS`: no redirect_dir, so renaming a directory that exists in
//! a lower layer is EXDEV; `index=on`, as cairnfs keeps hard links together
//! across copy-up; no metacopy (cairnfs's metacopy must be invisible).
//! A failing case is shrunk to a minimal one (ops and lower entries
//! dropped while the same kind of divergence remains) and printed.
//!
//! A cairnfs request that does not come back within `HANG_TIMEOUT` has its
//! FUSE connection aborted and is reported as a hang, so a deadlocked
//! server fails the test instead of hanging it.
//!
//! `cross_upper_compat` checks the on-disk format instead: an upper dir
//! written by one implementation, mounted by the other, must show the same
//! tree.
//!
//! Environment: `CAIRN_DIFF_SEED=N` replays one seed (with a tree
//! comparison after every step), `CAIRN_DIFF_SEEDS=N` sets how many seeds
//! to run, `CAIRN_DIFF_CROSS_SEEDS=N` the same for the cross test,
//! `CAIRN_DIFF_OPS=N` the length of a sequence, `CAIRN_DIFF_SHRINK=N` how
//! many distinct failures to minimise (default 1; 0 disables).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rustix::fs::{AtFlags, CWD, FileType, Mode, RenameFlags, Timespec, Timestamps, XattrFlags};

use common::TestOverlay;

/// Names at every depth: few, so that operations collide often.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const XATTR_NAMES: [&str; 3] = ["user.x1", "user.x2", "user.x3"];
const IDS: [u32; 3] = [0, 1000, 4242];

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Case generation (independent of filesystem state, so a case replays
// exactly and ops can be dropped while shrinking).

/// File contents: `len` copies of one letter (readable in reports).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Data {
    ch: u8,
    len: usize,
}

impl Data {
    fn bytes(self) -> Vec<u8> {
        vec![self.ch; self.len]
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'*{}", self.ch as char, self.len)
    }
}

#[derive(Clone, Debug)]
enum Lower {
    File {
        data: Data,
        mode: u32,
        uid: u32,
        gid: u32,
        xattr: Option<(&'static str, String)>,
    },
    Dir {
        mode: u32,
        opaque: bool,
        xattr: Option<(&'static str, String)>,
    },
    Symlink(String),
    Fifo,
    Whiteout,
    /// A hard link to an earlier path of the same layer.
    HardLink(String),
}

impl fmt::Display for Lower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = |x: &Option<(&str, String)>| match x {
            Some((n, v)) => format!(" {n}={v:?}"),
            None => String::new(),
        };
        match self {
            Lower::File {
                data,
                mode,
                uid,
                gid,
                xattr,
            } => write!(f, "file {data} {mode:04o} {uid}:{gid}{}", x(xattr)),
            Lower::Dir {
                mode,
                opaque,
                xattr,
            } => write!(
                f,
                "dir {mode:04o}{}{}",
                if *opaque { " opaque" } else { "" },
                x(xattr)
            ),
            Lower::Symlink(t) => write!(f, "symlink -> {t}"),
            Lower::Fifo => write!(f, "fifo"),
            Lower::Whiteout => write!(f, "whiteout (0:0 chardev)"),
            Lower::HardLink(t) => write!(f, "hardlink to {t}"),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        path: String,
        mode: u32,
        data: Data,
    },
    Write {
        path: String,
        off: u64,
        data: Data,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Append {
        path: String,
        data: Data,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Utimes {
        path: String,
        sec: i64,
        nsec: i64,
    },
    SetXattr {
        path: String,
        name: &'static str,
        value: String,
    },
    RemoveXattr {
        path: String,
        name: &'static str,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    /// Reads a file and stats a path: observes state mid-sequence.
    Observe {
        path: String,
    },
}

fn rename_flags(flags: u32) -> &'static str {
    match RenameFlags::from_bits_retain(flags) {
        RenameFlags::NOREPLACE => " NOREPLACE",
        RenameFlags::EXCHANGE => " EXCHANGE",
        _ => "",
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Create { path, mode, data } => write!(f, "create {path} {mode:04o} {data}"),
            Op::Write { path, off, data } => write!(f, "write {path} @{off} {data}"),
            Op::Truncate { path, len } => write!(f, "truncate {path} {len}"),
            Op::Append { path, data } => write!(f, "append {path} {data}"),
            Op::Chmod { path, mode } => write!(f, "chmod {mode:04o} {path}"),
            Op::Chown { path, uid, gid } => write!(f, "lchown {uid}:{gid} {path}"),
            Op::Utimes { path, sec, nsec } => write!(f, "utimensat(nofollow) {path} {sec}.{nsec}"),
            Op::SetXattr { path, name, value } => write!(f, "lsetxattr {path} {name}={value:?}"),
            Op::RemoveXattr { path, name } => write!(f, "lremovexattr {path} {name}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {path} {mode:04o}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Rename { from, to, flags } => {
                write!(f, "rename {from} -> {to}{}", rename_flags(*flags))
            }
            Op::Link { from, to } => write!(f, "link {from} -> {to}"),
            Op::Symlink { target, path } => write!(f, "symlink {path} -> {target}"),
            Op::Mkfifo { path, mode } => write!(f, "mkfifo {path} {mode:04o}"),
            Op::Observe { path } => write!(f, "observe {path}"),
        }
    }
}

impl Op {
    fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Write { .. } => "write",
            Op::Truncate { .. } => "truncate",
            Op::Append { .. } => "append",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimes { .. } => "utimes",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Mkfifo { .. } => "mkfifo",
            Op::Observe { .. } => "observe",
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    /// Topmost first; each layer's entries are created in order.
    layers: Vec<Vec<(String, Lower)>>,
    ops: Vec<Op>,
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "seed {} (replay: CAIRN_DIFF_SEED={})",
            self.seed, self.seed
        )?;
        for (i, l) in self.layers.iter().enumerate() {
            writeln!(f, "  lower {i}{}:", if i == 0 { " (top)" } else { "" })?;
            for (p, e) in l {
                writeln!(f, "    {p}: {e}")?;
            }
        }
        writeln!(f, "  ops:")?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "    {i:2}: {op}")?;
        }
        Ok(())
    }
}

fn gen_path(rng: &mut StdRng) -> String {
    let depth = match rng.gen_range(0..100) {
        0..45 => 1,
        45..85 => 2,
        _ => 3,
    };
    (0..depth)
        .map(|_| *NAMES.choose(rng).unwrap())
        .collect::<Vec<_>>()
        .join("/")
}

fn gen_data(rng: &mut StdRng) -> Data {
    let ch = rng.gen_range(b'a'..=b'z');
    let len = if rng.gen_bool(0.1) {
        rng.gen_range(4000..9000)
    } else {
        rng.gen_range(0..12)
    };
    Data { ch, len }
}

fn gen_xattr(rng: &mut StdRng) -> (&'static str, String) {
    (
        XATTR_NAMES.choose(rng).unwrap(),
        format!("v{}", rng.gen_range(0..5)),
    )
}

fn gen_layer(rng: &mut StdRng) -> Vec<(String, Lower)> {
    let n = rng.gen_range(3..10);
    let mut out: Vec<(String, Lower)> = Vec::new();
    for _ in 0..n {
        let path = gen_path(rng);
        let files: Vec<&String> = out
            .iter()
            .filter(|(_, e)| matches!(e, Lower::File { .. }))
            .map(|(p, _)| p)
            .collect();
        let e = match rng.gen_range(0..100) {
            0..35 => Lower::File {
                data: gen_data(rng),
                mode: *[0o644, 0o600, 0o755, 0o444, 0o4755, 0o2750]
                    .choose(rng)
                    .unwrap(),
                uid: *IDS.choose(rng).unwrap(),
                gid: *IDS.choose(rng).unwrap(),
                xattr: rng.gen_bool(0.3).then(|| gen_xattr(rng)),
            },
            35..62 => Lower::Dir {
                mode: *[0o755, 0o700, 0o775, 0o1777].choose(rng).unwrap(),
                opaque: rng.gen_bool(0.3),
                xattr: rng.gen_bool(0.3).then(|| gen_xattr(rng)),
            },
            62..72 => Lower::Symlink(gen_path(rng)),
            72..77 => Lower::Fifo,
            77..92 => Lower::Whiteout,
            _ if !files.is_empty() => Lower::HardLink(files.choose(rng).unwrap().to_string()),
            _ => Lower::Fifo,
        };
        out.push((path, e));
    }
    out
}

fn gen_op(rng: &mut StdRng) -> Op {
    let path = gen_path(rng);
    let mode = *[0o644, 0o600, 0o755, 0o700, 0o4755, 0o1777, 0o000]
        .choose(rng)
        .unwrap();
    match rng.gen_range(0..100) {
        0..10 => Op::Create {
            path,
            mode,
            data: gen_data(rng),
        },
        10..16 => Op::Write {
            path,
            off: *[0, 1, 3, 100, 5000].choose(rng).unwrap(),
            data: gen_data(rng),
        },
        16..21 => Op::Truncate {
            path,
            len: *[0, 2, 50, 6000].choose(rng).unwrap(),
        },
        21..25 => Op::Append {
            path,
            data: gen_data(rng),
        },
        25..29 => Op::Chmod { path, mode },
        29..33 => Op::Chown {
            path,
            uid: *IDS.choose(rng).unwrap(),
            gid: *IDS.choose(rng).unwrap(),
        },
        33..36 => Op::Utimes {
            path,
            sec: rng.gen_range(0..2_000_000_000),
            nsec: rng.gen_range(0..1_000_000_000),
        },
        36..41 => {
            let (name, value) = gen_xattr(rng);
            Op::SetXattr { path, name, value }
        }
        41..43 => Op::RemoveXattr {
            path,
            name: XATTR_NAMES.choose(rng).unwrap(),
        },
        43..51 => Op::Mkdir { path, mode },
        51..57 => Op::Rmdir { path },
        57..64 => Op::Unlink { path },
        64..80 => Op::Rename {
            from: path,
            to: gen_path(rng),
            flags: match rng.gen_range(0..4) {
                0 => RenameFlags::NOREPLACE.bits(),
                1 => RenameFlags::EXCHANGE.bits(),
                _ => 0,
            },
        },
        80..86 => Op::Link {
            from: path,
            to: gen_path(rng),
        },
        86..91 => Op::Symlink {
            target: gen_path(rng),
            path,
        },
        91..94 => Op::Mkfifo { path, mode },
        _ => Op::Observe { path },
    }
}

/// `salt` gives another test its own stream of cases for the same seeds.
fn gen_case(seed: u64, nops: usize, salt: u64) -> Case {
    let mut rng = StdRng::seed_from_u64(seed ^ salt);
    let nlayers = rng.gen_range(1..=3);
    let layers = (0..nlayers).map(|_| gen_layer(&mut rng)).collect();
    let ops = (0..nops).map(|_| gen_op(&mut rng)).collect();
    Case { seed, layers, ops }
}

// ---------------------------------------------------------------------------
// Building lowers and mounting.

/// Creates one layer's entries under `root`. Entries that cannot be made
/// (e.g. their parent is a file) are skipped: both copies skip the same ones.
fn build_layer(root: &Path, entries: &[(String, Lower)]) {
    fs::create_dir_all(root).expect("mkdir layer");
    for (rel, e) in entries {
        let p = root.join(rel);
        if let Some(parent) = p.parent()
            && fs::create_dir_all(parent).is_err()
        {
            continue;
        }
        let xattr = |x: &Option<(&str, String)>| {
            if let Some((n, v)) = x {
                let _ = rustix::fs::lsetxattr(&p, *n, v.as_bytes(), XattrFlags::empty());
            }
        };
        match e {
            Lower::File {
                data,
                mode,
                uid,
                gid,
                xattr: x,
            } => {
                if fs::symlink_metadata(&p).is_ok() || fs::write(&p, data.bytes()).is_err() {
                    continue;
                }
                let _ = std::os::unix::fs::lchown(&p, Some(*uid), Some(*gid));
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
                xattr(x);
            }
            Lower::Dir {
                mode,
                opaque,
                xattr: x,
            } => {
                let _ = fs::create_dir(&p);
                if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(*mode));
                if *opaque {
                    common::set_opaque_xattr(&p);
                }
                xattr(x);
            }
            Lower::Symlink(t) => {
                let _ = std::os::unix::fs::symlink(t, &p);
            }
            Lower::Fifo => {
                let _ = rustix::fs::mknodat(CWD, &p, FileType::Fifo, Mode::from(0o644), 0);
            }
            Lower::Whiteout => {
                let _ = rustix::fs::mknodat(CWD, &p, FileType::CharacterDevice, Mode::empty(), 0);
            }
            Lower::HardLink(t) => {
                let _ = fs::hard_link(root.join(t), &p);
            }
        }
    }
}

/// Builds the case's lowers under `dir` and returns them, topmost first.
fn build_lowers(dir: &Path, case: &Case) -> Vec<PathBuf> {
    case.layers
        .iter()
        .enumerate()
        .map(|(i, entries)| {
            let root = dir.join(format!("l{i}"));
            build_layer(&root, entries);
            root
        })
        .collect()
}

fn mkdirs(base: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = base.join(n);
            fs::create_dir_all(&p).expect("mkdir");
            p
        })
        .collect()
}

/// A kernel overlayfs mount, unmounted on drop (also when a test panics);
/// lazily detached if it is busy.
struct KernelOverlay {
    mnt: PathBuf,
    mounted: bool,
}

/// Kernel options of the reference mount (set explicitly: the build's
/// defaults vary).
const REFERENCE_OPTS: &str = "redirect_dir=off,index=on,metacopy=off,xino=off";
/// Kernel options to read an upper that cairnfs wrote: cairnfs copies up
/// metadata only by default, which the kernel follows only with metacopy
/// (that needs redirect_dir, harmless when only reading).
const READER_OPTS: &str = "index=off,metacopy=on,xino=off";
/// Kernel options of the writer in the cross test. The two hard-link
/// indexes are different formats (the kernel's is keyed by file handles),
/// so an upper moves between the implementations with the index off.
const WRITER_OPTS: &str = "redirect_dir=off,index=off,metacopy=off,xino=off";
/// cairnfs options in the cross test, for the same reason.
const CROSS_CAIRN: &[&str] = &["index=off"];

/// The options both sides run with in one differential run.
#[derive(Clone, Copy)]
struct RunMode {
    kernel: &'static str,
    cairn: &'static [&'static str],
}

/// Kernel defaults: lower directories cannot be renamed (EXDEV).
const PLAIN: RunMode = RunMode {
    kernel: REFERENCE_OPTS,
    cairn: &["redirect_dir=off"],
};

/// Kernel with everything a rootless user cannot ask of it; cairnfs with its
/// defaults (redirects, hard-link index, metadata-only copy-up).
const FULL: RunMode = RunMode {
    kernel: "redirect_dir=on,index=on,metacopy=on,xino=off",
    cairn: &[],
};

impl KernelOverlay {
    fn mount(
        lowers: &[PathBuf],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        opts: &str,
    ) -> KernelOverlay {
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={},{opts}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        let data = CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            mnt,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .unwrap_or_else(|e| panic!("kernel overlay mount on {}: {e}", mnt.display()));
        KernelOverlay {
            mnt: mnt.to_path_buf(),
            mounted: true,
        }
    }

    fn path(&self) -> &Path {
        &self.mnt
    }

    fn unmount(&mut self) {
        if !std::mem::take(&mut self.mounted) {
            return;
        }
        use rustix::mount::{UnmountFlags, unmount};
        if unmount(&self.mnt, UnmountFlags::empty()).is_err() {
            let _ = unmount(&self.mnt, UnmountFlags::DETACH);
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// How long one operation (or one tree walk) on cairnfs may take before the
/// server is declared deadlocked.
const HANG_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Watch {
    deadline: Option<Instant>,
    hung: bool,
    stop: bool,
}

/// A cairnfs mount (`timeout=0`) whose operations run under a deadline. A
/// deadlocked server leaves its callers in uninterruptible sleep, so when a
/// deadline passes a watchdog thread aborts the FUSE connection (the stuck
/// call then fails with ENOTCONN) and the mount is marked hung: the test
/// reports it instead of hanging the run.
struct Cairn {
    ovl: Option<TestOverlay>,
    mnt: PathBuf,
    watch: Arc<(Mutex<Watch>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// The cairnfs mount hung (and was aborted).
#[derive(Debug)]
struct Hung;

/// Shows the server's own warnings and errors (fuser logs through `log`;
/// e.g. a session loop that ends early) in the test output.
fn init_logging() {
    let _ = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,fuser::mnt=error"),
    )
    .is_test(true)
    .try_init();
}

fn mount_fusectl() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Already mounted (EBUSY) is fine.
        let _ = rustix::mount::mount(
            "fusectl",
            "/sys/fs/fuse/connections",
            "fusectl",
            rustix::mount::MountFlags::empty(),
            None,
        );
    });
}

impl Cairn {
    fn mount(lowers: &[PathBuf], upper: &Path, work: &Path, opts: &[&str]) -> Cairn {
        init_logging();
        mount_fusectl();
        let ovl = lowers
            .iter()
            .fold(TestOverlay::builder(), |b, l| b.lower(l))
            .upper(upper, work)
            .option("timeout=0")
            .option(opts.join(","))
            .mount()
            .expect("cairnfs mount");
        let mnt = ovl.path().to_path_buf();
        // The connection's name in fusectl is the mount's device number in
        // the kernel's encoding (major << 20 | minor).
        let dev = fs::metadata(&mnt).expect("stat cairnfs root").dev();
        let conn = (rustix::fs::major(dev) << 20) | rustix::fs::minor(dev);
        let abort = format!("/sys/fs/fuse/connections/{conn}/abort");
        assert!(
            Path::new(&abort).exists(),
            "{abort} missing: the hang watchdog could not abort this mount"
        );
        let watch = Arc::new((Mutex::new(Watch::default()), Condvar::new()));
        let w = watch.clone();
        let thread = std::thread::spawn(move || {
            let (lock, cv) = &*w;
            let mut st = lock.lock().unwrap();
            while !st.stop {
                match st.deadline {
                    Some(d) if Instant::now() >= d => {
                        st.hung = true;
                        st.deadline = None;
                        let _ = fs::write(&abort, "1");
                    }
                    Some(d) => st = cv.wait_timeout(st, d - Instant::now()).unwrap().0,
                    None => st = cv.wait(st).unwrap(),
                }
            }
        });
        Cairn {
            ovl: Some(ovl),
            mnt,
            watch,
            thread: Some(thread),
        }
    }

    /// Runs `f` on the mount's root under the deadline.
    fn run<T>(&self, f: impl FnOnce(&Path) -> T) -> Result<T, Hung> {
        let (lock, cv) = &*self.watch;
        {
            let mut st = lock.lock().unwrap();
            if st.hung {
                return Err(Hung);
            }
            st.deadline = Some(Instant::now() + HANG_TIMEOUT);
            cv.notify_one();
        }
        let r = f(&self.mnt);
        let mut st = lock.lock().unwrap();
        st.deadline = None;
        if st.hung { Err(Hung) } else { Ok(r) }
    }

    /// Unmounts; an error if the mount hung or the unmount failed.
    fn unmount(mut self) -> Result<(), String> {
        self.stop_watch();
        if self.is_hung() {
            return Err("cairnfs hung".into());
        }
        let ovl = self.ovl.take().unwrap();
        ovl.unmount().map_err(|e| format!("cairnfs unmount: {e}"))
    }

    fn is_hung(&self) -> bool {
        self.watch.0.lock().unwrap().hung
    }

    fn stop_watch(&mut self) {
        self.watch.0.lock().unwrap().stop = true;
        self.watch.1.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cairn {
    fn drop(&mut self) {
        self.stop_watch();
        if self.is_hung()
            && let Some(ovl) = self.ovl.take()
        {
            // The server's deadlocked threads would block its unmount
            // forever: detach the aborted mount and leak the server.
            let _ = rustix::mount::unmount(&self.mnt, rustix::mount::UnmountFlags::DETACH);
            std::mem::forget(ovl);
        }
    }
}

// ---------------------------------------------------------------------------
// Applying operations and observing trees.

type Outcome = Result<String, i32>;

fn io_err(e: std::io::Error) -> i32 {
    common::errno(&e)
}

fn rx_err(e: rustix::io::Errno) -> i32 {
    e.raw_os_error()
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ESTALE => "ESTALE",
        libc::ENOTCONN => "ENOTCONN",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

fn show(o: &Outcome) -> String {
    match o {
        Ok(s) if s.is_empty() => "Ok".to_string(),
        Ok(s) => format!("Ok({s})"),
        Err(e) => errno_name(*e),
    }
}

/// Opens for writing without ever blocking (a fifo without reader gives
/// ENXIO instead of hanging).
fn open_w(p: &Path, append: bool) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .write(!append)
        .append(append)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
}

fn lstat_summary(p: &Path) -> Outcome {
    let md = fs::symlink_metadata(p).map_err(io_err)?;
    let mut s = format!("{:o} {}:{}", md.mode(), md.uid(), md.gid());
    if !md.is_dir() {
        s += &format!(" size={} nlink={}", md.size(), md.nlink());
    }
    Ok(s)
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| root.join(rel);
    match op {
        Op::Create { path, mode, data } => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(path))
                .map_err(io_err)?;
            f.write_all(&data.bytes()).map_err(io_err)?;
            Ok(String::new())
        }
        Op::Write { path, off, data } => {
            let f = open_w(&p(path), false).map_err(io_err)?;
            f.write_all_at(&data.bytes(), *off).map_err(io_err)?;
            Ok(String::new())
        }
        Op::Truncate { path, len } => {
            let c = CString::new(p(path).as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::truncate(c.as_ptr(), *len as libc::off_t) } != 0 {
                return Err(io_err(std::io::Error::last_os_error()));
            }
            Ok(String::new())
        }
        Op::Append { path, data } => {
            let mut f = open_w(&p(path), true).map_err(io_err)?;
            f.write_all(&data.bytes()).map_err(io_err)?;
            Ok(String::new())
        }
        Op::Chmod { path, mode } => fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))
            .map(|_| String::new())
            .map_err(io_err),
        Op::Chown { path, uid, gid } => std::os::unix::fs::lchown(p(path), Some(*uid), Some(*gid))
            .map(|_| String::new())
            .map_err(io_err),
        Op::Utimes { path, sec, nsec } => {
            let t = Timespec {
                tv_sec: *sec,
                tv_nsec: *nsec,
            };
            let ts = Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(CWD, p(path), &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(rx_err)?;
            // The times were set explicitly, so they are comparable.
            let md = fs::symlink_metadata(p(path)).map_err(io_err)?;
            Ok(format!("mtime={}.{}", md.mtime(), md.mtime_nsec()))
        }
        Op::SetXattr { path, name, value } => {
            rustix::fs::lsetxattr(p(path), *name, value.as_bytes(), XattrFlags::empty())
                .map(|_| String::new())
                .map_err(rx_err)
        }
        Op::RemoveXattr { path, name } => rustix::fs::lremovexattr(p(path), *name)
            .map(|_| String::new())
            .map_err(rx_err),
        Op::Mkdir { path, mode } => rustix::fs::mkdirat(CWD, p(path), Mode::from(*mode))
            .map(|_| String::new())
            .map_err(rx_err),
        Op::Rmdir { path } => fs::remove_dir(p(path))
            .map(|_| String::new())
            .map_err(io_err),
        Op::Unlink { path } => fs::remove_file(p(path))
            .map(|_| String::new())
            .map_err(io_err),
        Op::Rename { from, to, flags } => rustix::fs::renameat_with(
            CWD,
            p(from),
            CWD,
            p(to),
            RenameFlags::from_bits_retain(*flags),
        )
        .map(|_| String::new())
        .map_err(rx_err),
        Op::Link { from, to } => fs::hard_link(p(from), p(to))
            .map(|_| String::new())
            .map_err(io_err),
        Op::Symlink { target, path } => std::os::unix::fs::symlink(target, p(path))
            .map(|_| String::new())
            .map_err(io_err),
        Op::Mkfifo { path, mode } => {
            rustix::fs::mknodat(CWD, p(path), FileType::Fifo, Mode::from(*mode), 0)
                .map(|_| String::new())
                .map_err(rx_err)
        }
        Op::Observe { path } => {
            let st = lstat_summary(&p(path))?;
            let content = match fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(path))
            {
                Ok(mut f) => {
                    let mut v = Vec::new();
                    match f.read_to_end(&mut v) {
                        Ok(_) => format!("read {} bytes #{:x}", v.len(), common::simple_hash(&v)),
                        Err(e) => format!("read {}", errno_name(io_err(e))),
                    }
                }
                Err(e) => format!("open {}", errno_name(io_err(e))),
            };
            Ok(format!("{st}; {content}"))
        }
    }
}

/// The xattrs a user sees (security.* left out: an LSM label is not the
/// overlay's business), sorted, with values.
fn xattrs(p: &Path) -> String {
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(p, &mut buf[..]) {
        Ok(n) => n,
        Err(e) => return format!("listxattr {}", errno_name(rx_err(e))),
    };
    let mut names: Vec<&[u8]> = buf[..n]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && !n.starts_with(b"security."))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mut v = vec![0u8; 65536];
        let val = match rustix::fs::lgetxattr(p, name, &mut v[..]) {
            Ok(n) => format!("{:?}", String::from_utf8_lossy(&v[..n])),
            Err(e) => errno_name(rx_err(e)),
        };
        out.push(format!("{}={val}", String::from_utf8_lossy(name)));
    }
    out.join(",")
}

/// One line per visible object: type, mode, owner, and for non-dirs size,
/// nlink and content (regular files) or target (symlinks); then xattrs.
fn describe(p: &Path) -> String {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => return format!("lstat {}", errno_name(io_err(e))),
    };
    let ft = md.file_type();
    let mut s = format!("{:o} {}:{}", md.mode(), md.uid(), md.gid());
    if !ft.is_dir() {
        s += &format!(" size={} nlink={}", md.size(), md.nlink());
    }
    if ft.is_file() {
        s += &match fs::read(p) {
            Ok(v) if v.len() <= 16 => format!(" data={:?}", String::from_utf8_lossy(&v)),
            Ok(v) => format!(" data=#{:x}", common::simple_hash(&v)),
            Err(e) => format!(" read {}", errno_name(io_err(e))),
        };
    } else if ft.is_symlink() {
        s += &match fs::read_link(p) {
            Ok(t) => format!(" -> {}", t.display()),
            Err(e) => format!(" readlink {}", errno_name(io_err(e))),
        };
    }
    let x = xattrs(p);
    if !x.is_empty() {
        s += &format!(" [{x}]");
    }
    s
}

type Tree = BTreeMap<String, String>;

/// The visible tree under `root`. `kernel`: leave out names that readdir
/// lists but lookup does not find. Kernel overlayfs reads a directory that
/// is not merged (it comes from one layer) straight from that layer, so it
/// lists 0:0 whiteouts lying there although they do not exist for lookup;
/// cairnfs hides them, which is what a user expects.
fn snapshot(root: &Path, kernel: bool) -> Tree {
    let mut out = Tree::new();
    // Inode equality classes: which names share an inode.
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.insert(
                    format!("{rel}/"),
                    format!("readdir {}", errno_name(io_err(e))),
                );
                continue;
            }
        };
        for e in entries {
            let e = match e {
                Ok(e) => e,
                Err(e) => {
                    out.insert(
                        format!("{rel}/"),
                        format!("readdir {}", errno_name(io_err(e))),
                    );
                    break;
                }
            };
            let name = e.file_name().to_string_lossy().into_owned();
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let d = describe(&root.join(&child));
            if kernel && d == "lstat ENOENT" {
                continue;
            }
            if out.contains_key(&child) {
                out.insert(format!("{child} (duplicate)"), d);
                continue;
            }
            match fs::symlink_metadata(root.join(&child)) {
                Ok(m) if m.is_dir() => stack.push(child.clone()),
                Ok(m) => by_ino.entry(m.ino()).or_default().push(child.clone()),
                Err(_) => {}
            }
            out.insert(child, d);
        }
    }
    for mut names in by_ino.into_values().filter(|n| n.len() > 1) {
        names.sort();
        out.insert(format!("{} [same inode]", names[0]), names.join(" "));
    }
    out
}

/// Lines describing how tree `b` differs from tree `a`, empty if equal.
fn diff_trees(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (k, va) in a {
        match b.get(k) {
            None => out.push(format!("{k}: {a_name} {va} | {b_name} missing")),
            Some(vb) if vb != va => out.push(format!("{k}: {a_name} {va} | {b_name} {vb}")),
            _ => {}
        }
    }
    for (k, vb) in b {
        if !a.contains_key(k) {
            out.push(format!("{k}: {a_name} missing | {b_name} {vb}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Running cases.

#[derive(Debug)]
struct Divergence {
    /// Identifies the kind of failure, kept while shrinking.
    signature: String,
    detail: String,
}

/// How often each operation ended how (on the kernel), to show what the
/// random sequences actually exercised.
type Tally = BTreeMap<&'static str, BTreeMap<String, u64>>;

/// Applies `case` to a kernel overlay and a cairnfs overlay over identical
/// lowers; returns the first divergence. The trees are compared before the
/// first op, after every `check_every`-th op and at the end.
fn run_diff(
    case: &Case,
    mode: RunMode,
    check_every: usize,
    tally: &mut Tally,
) -> Result<(), Divergence> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-diff.")
        .tempdir()
        .expect("tempdir");
    let k = mkdirs(&tmp.path().join("k"), &["upper", "work", "mnt"]);
    let c = mkdirs(&tmp.path().join("c"), &["upper", "work"]);
    let k_lowers = build_lowers(&tmp.path().join("k"), case);
    let c_lowers = build_lowers(&tmp.path().join("c"), case);
    let kern = KernelOverlay::mount(&k_lowers, &k[0], &k[1], &k[2], mode.kernel);
    let cairn = Cairn::mount(&c_lowers, &c[0], &c[1], mode.cairn);

    let mut log = String::new();
    let hung = |log: &str, what: &str| Divergence {
        signature: format!("cairnfs hung in {what}"),
        detail: format!("{log}cairnfs did not answer within {HANG_TIMEOUT:?} in {what}\n"),
    };
    let tree_check = |log: &str, when: &str, sig: &str| {
        let ct = cairn
            .run(|m| snapshot(m, false))
            .map_err(|_| hung(log, "a tree walk"))?;
        let d = diff_trees("kernel", &snapshot(kern.path(), true), "cairn", &ct);
        if d.is_empty() {
            return Ok(());
        }
        let lost = ct.values().any(|v| v.contains("ENOTCONN"));
        Err(Divergence {
            signature: if lost { "cairnfs connection lost" } else { sig }.to_string(),
            detail: format!("{log}trees differ {when}:\n    {}\n", d.join("\n    ")),
        })
    };
    tree_check("", "before any op", "initial tree")?;
    for (i, op) in case.ops.iter().enumerate() {
        let rk = apply(kern.path(), op);
        let class = show(&rk).split('(').next().unwrap_or_default().to_string();
        *tally
            .entry(op.kind())
            .or_default()
            .entry(class)
            .or_default() += 1;
        log += &format!("    {i:2}: {op} => kernel {}", show(&rk));
        let Ok(rc) = cairn.run(|m| apply(m, op)) else {
            log += ", cairn hung   <== DIVERGES\n";
            return Err(hung(&log, op.kind()));
        };
        if rk != rc {
            log += &format!(", cairn {}   <== DIVERGES\n", show(&rc));
            let signature = if rc == Err(libc::ENOTCONN) {
                "cairnfs connection lost".to_string()
            } else {
                format!("{}: kernel {} cairn {}", op.kind(), show(&rk), show(&rc))
            };
            return Err(Divergence {
                signature,
                detail: log,
            });
        }
        log += "\n";
        if (i + 1) % check_every == 0 {
            tree_check(&log, &format!("after step {i}"), "tree")?;
        }
    }
    tree_check(&log, "at the end", "tree")
}

/// Drops ops and lower entries while the same kind of divergence remains.
fn shrink(case: &Case, mode: RunMode, sig: &str, budget: &mut usize) -> Case {
    let mut best = case.clone();
    let still_fails = |c: &Case, budget: &mut usize| {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        matches!(run_diff(c, mode, 1, &mut Tally::new()), Err(d) if d.signature == sig)
    };
    let mut changed = true;
    while changed && *budget > 0 {
        changed = false;
        let mut i = 0;
        while i < best.ops.len() {
            let mut c = best.clone();
            c.ops.remove(i);
            if still_fails(&c, budget) {
                best = c;
                changed = true;
            } else {
                i += 1;
            }
        }
        // An emptied layer is dropped (one must stay: overlayfs needs a lower).
        let mut l = 0;
        while best.layers.len() > 1 && l < best.layers.len() {
            let mut c = best.clone();
            c.layers.remove(l);
            if best.layers[l].is_empty() && still_fails(&c, budget) {
                best = c;
                changed = true;
            } else {
                l += 1;
            }
        }
        for l in 0..best.layers.len() {
            let mut i = 0;
            while i < best.layers[l].len() {
                let mut c = best.clone();
                c.layers[l].remove(i);
                if still_fails(&c, budget) {
                    best = c;
                    changed = true;
                } else {
                    i += 1;
                }
            }
        }
    }
    best
}

/// Seeds to run: the replay seed alone, or 0..count.
fn seeds(count_var: &str, default: u64) -> (Vec<u64>, bool) {
    match std::env::var("CAIRN_DIFF_SEED") {
        Ok(s) => (
            vec![s.parse().expect("CAIRN_DIFF_SEED: not a number")],
            true,
        ),
        Err(_) => ((0..env_num(count_var, default)).collect(), false),
    }
}

/// Each hang costs HANG_TIMEOUT: stop running new seeds after this many.
const MAX_HANGS: usize = 2;

#[test]
fn kernel_vs_cairnfs() {
    require_root!();
    differential(PLAIN, "CAIRN_DIFF_SEEDS", 300);
}

/// Issue 4: directory renames and hard links against the kernel with
/// `redirect_dir=on,index=on,metacopy=on`.
#[test]
fn kernel_vs_cairnfs_redirect_index_metacopy() {
    require_root!();
    differential(FULL, "CAIRN_DIFF_FULL_SEEDS", 150);
}

fn differential(mode: RunMode, seeds_var: &str, default_seeds: u64) {
    rustix::process::umask(Mode::from(0o022));
    let (seeds, replay) = seeds(seeds_var, default_seeds);
    let nops = env_num("CAIRN_DIFF_OPS", 40) as usize;
    // Tree walks cost more than ops: every 10th step in bulk runs, every
    // step when replaying one seed (to find the first bad step).
    let check_every = env_num("CAIRN_DIFF_CHECK_EVERY", if replay { 1 } else { 10 }) as usize;
    let mut tally = Tally::new();
    let mut shrink_left = env_num("CAIRN_DIFF_SHRINK", 1);
    let start = Instant::now();
    let mut failures: Vec<(u64, String)> = Vec::new();
    let mut hangs = 0;
    let mut ran = 0;
    for &seed in &seeds {
        if hangs >= MAX_HANGS {
            eprintln!("differential: stopping after {hangs} hangs");
            break;
        }
        ran += 1;
        let case = gen_case(seed, nops, 0);
        let Err(d) = run_diff(&case, mode, check_every, &mut tally) else {
            continue;
        };
        eprintln!(
            "DIVERGENCE seed {seed} (replay: CAIRN_DIFF_SEED={seed}): {}\n{case}  run:\n{}",
            d.signature, d.detail
        );
        let is_hang = d.signature.starts_with("cairnfs hung");
        hangs += usize::from(is_hang);
        // A hang is not shrunk: every try would cost HANG_TIMEOUT.
        if shrink_left > 0 && !is_hang && !failures.iter().any(|(_, s)| *s == d.signature) {
            shrink_left -= 1;
            let mut budget = 200;
            let min = shrink(&case, mode, &d.signature, &mut budget);
            let detail = run_diff(&min, mode, 1, &mut Tally::new())
                .err()
                .map(|d| d.detail);
            eprintln!(
                "MINIMAL for seed {seed} ({}):\n{min}  run:\n{}",
                d.signature,
                detail.unwrap_or_default()
            );
        }
        failures.push((seed, d.signature));
    }
    eprintln!("differential: outcomes on the kernel (ops after a divergence not counted):");
    for (kind, outcomes) in &tally {
        let v: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        eprintln!("  {kind:12} {}", v.join(", "));
    }
    eprintln!(
        "differential: {ran} seeds x {nops} ops in {:.1}s, {} diverged",
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    if !failures.is_empty() {
        let mut by_sig: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (seed, sig) in &failures {
            by_sig.entry(sig).or_default().push(*seed);
        }
        let summary: Vec<String> = by_sig
            .iter()
            .map(|(s, seeds)| format!("  {s}: seeds {seeds:?}"))
            .collect();
        panic!(
            "cairnfs diverges from kernel overlayfs (replay one with CAIRN_DIFF_SEED=N):\n{}",
            summary.join("\n")
        );
    }
}

/// Which implementation writes the upper dir first in the cross test.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Impl {
    Kernel,
    Cairn,
}

/// Applies `case` with `first`, then mounts the other implementation over
/// the same lowers and upper (fresh workdir); the trees must be equal.
fn run_cross(case: &Case, first: Impl) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix("cairn-cross.")
        .tempdir()
        .expect("tempdir");
    let d = mkdirs(tmp.path(), &["upper", "work1", "work2", "mnt"]);
    let lowers = build_lowers(tmp.path(), case);
    // Mounts `which` over the shared upper, applies `ops`, returns the tree.
    let with_mount = |which: Impl, work: &Path, ops: &[Op]| -> Result<Tree, String> {
        match which {
            Impl::Kernel => {
                let opts = if ops.is_empty() {
                    READER_OPTS
                } else {
                    WRITER_OPTS
                };
                let mut k = KernelOverlay::mount(&lowers, &d[0], work, &d[3], opts);
                for op in ops {
                    let _ = apply(k.path(), op);
                }
                let t = snapshot(k.path(), true);
                k.unmount();
                Ok(t)
            }
            Impl::Cairn => {
                let c = Cairn::mount(&lowers, &d[0], work, CROSS_CAIRN);
                for (i, op) in ops.iter().enumerate() {
                    // Results are not compared here, only the final trees.
                    let _ = c
                        .run(|m| apply(m, op))
                        .map_err(|_| format!("cairnfs hung at step {i}: {op}"))?;
                }
                let t = c
                    .run(|m| snapshot(m, false))
                    .map_err(|_| "cairnfs hung in a tree walk".to_string())?;
                c.unmount()?;
                Ok(t)
            }
        }
    };
    let second = if first == Impl::Kernel {
        Impl::Cairn
    } else {
        Impl::Kernel
    };
    let t1 = with_mount(first, &d[1], &case.ops)?;
    let t2 = with_mount(second, &d[2], &[])?;
    let diff = diff_trees(
        &format!("{first:?}-wrote"),
        &t1,
        &format!("{second:?}-reads"),
        &t2,
    );
    if diff.is_empty() {
        Ok(())
    } else {
        Err(diff.join("\n    "))
    }
}

/// Keeps the cross test from replaying the differential test's cases.
const CROSS_SALT: u64 = 0x5eed_c055;

#[test]
fn cross_upper_compat() {
    require_root!();
    rustix::process::umask(Mode::from(0o022));
    let (seeds, _) = seeds("CAIRN_DIFF_CROSS_SEEDS", 100);
    let nops = env_num("CAIRN_DIFF_OPS", 40) as usize;
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut hangs = 0;
    let mut ran = 0;
    'seeds: for &seed in &seeds {
        ran += 1;
        let case = gen_case(seed, nops, CROSS_SALT);
        for first in [Impl::Kernel, Impl::Cairn] {
            if let Err(d) = run_cross(&case, first) {
                eprintln!(
                    "CROSS DIVERGENCE seed {seed} ({first:?} wrote the upper; replay: \
                     CAIRN_DIFF_SEED={seed}):\n{case}  trees:\n    {d}"
                );
                failures.push(format!("seed {seed}, {first:?} first"));
                if d.starts_with("cairnfs hung") {
                    hangs += 1;
                    if hangs >= MAX_HANGS {
                        eprintln!("cross: stopping after {hangs} hangs");
                        break 'seeds;
                    }
                }
            }
        }
    }
    eprintln!(
        "cross: {ran} seeds x 2 directions in {:.1}s, {} diverged",
        start.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "upper dirs do not read back the same across implementations:\n  {}",
        failures.join("\n  ")
    );
}
