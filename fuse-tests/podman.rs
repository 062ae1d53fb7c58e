//! podman with cairnfs as the overlay driver's `mount_program`, the way
//! rootless podman uses fuse-overlayfs: as root and as the unprivileged user
//! `cairn-test` (scripts/podman-test-setup.sh installs podman, runc, uidmap,
//! busybox-static and the user's subordinate ids).
//!
//! Each test gets a private storage root, run root, libpod tmpdir and
//! containers.conf (runc, cgroupfs, host network; see
//! shared notes/external-suites.md), imports a busybox image from a rootfs
//! tarball (no registry is reachable) and cleans up after itself: removes
//! its containers, kills the rootless pause process, unmounts what is left
//! under its directory and ends the processes that still name it.
//!
//! Everything is skipped (with a notice) when podman is missing or the tests
//! do not run as root; the rootless variants also when the user, its
//! subordinate ids or newuidmap are missing.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CAIRNFS: &str = env!("CARGO_BIN_EXE_cairnfs");

/// The mount program under test: cairnfs, or the one named by
/// CAIRN_PODMAN_MOUNT_PROGRAM (e.g. /usr/bin/fuse-overlayfs, to check these
/// tests against the reference).
fn mount_program() -> String {
    std::env::var("CAIRN_PODMAN_MOUNT_PROGRAM").unwrap_or_else(|_| CAIRNFS.to_string())
}
const USER: &str = "cairn-test";
/// Limit for one podman command (seconds).
const PODMAN_TIMEOUT: &str = "120";

const CONTAINERS_CONF: &str = r#"[containers]
netns = "host"
default_ulimits = ["nofile=1024:20000", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Root,
    Rootless,
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The first id of `name`'s subordinate range in `file` (/etc/subuid).
fn sub_start(file: &str, name: &str) -> Option<u32> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.next()?.parse().ok()
    })
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("id").arg(name).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let u = Command::new("id").args(["-u", name]).output().ok()?;
    let g = Command::new("id").args(["-g", name]).output().ok()?;
    Some((
        String::from_utf8_lossy(&u.stdout).trim().parse().ok()?,
        String::from_utf8_lossy(&g.stdout).trim().parse().ok()?,
    ))
}

/// Why the tests of `mode` cannot run here, if they cannot.
fn skip_reason(mode: Mode) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root".into());
    }
    for cmd in ["podman", "runc", "busybox", "fusermount3", "timeout"] {
        if !have(cmd) {
            return Some(format!(
                "{cmd} is not installed (scripts/podman-test-setup.sh)"
            ));
        }
    }
    if mode == Mode::Rootless {
        if user_ids(USER).is_none() {
            return Some(format!("no user {USER} (scripts/podman-test-setup.sh)"));
        }
        if sub_start("/etc/subuid", USER).is_none() || sub_start("/etc/subgid", USER).is_none() {
            return Some(format!("no /etc/subuid or /etc/subgid range for {USER}"));
        }
        if !have("newuidmap") || !have("runuser") {
            return Some("newuidmap or runuser missing".into());
        }
    }
    None
}

/// Skips the test (passing) when podman cannot run here in `mode`.
macro_rules! podman_or_skip {
    ($mode:expr) => {
        match skip_reason($mode) {
            Some(why) => {
                eprintln!("skipped: podman {:?}: {why}", $mode);
                return;
            }
            None => Podman::new($mode),
        }
    };
}

/// One private podman installation: storage, state, config and, rootless,
/// the user's runtime directory (so its pause process is ours alone).
struct Podman {
    mode: Mode,
    base: PathBuf,
}

impl Podman {
    fn new(mode: Mode) -> Podman {
        let base = tempfile::Builder::new()
            .prefix("cairn-podman.")
            .tempdir_in("/tmp")
            .expect("tempdir")
            .keep();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        let p = Podman { mode, base };
        for d in ["root", "runroot", "tmp", "xdg", "home", "ctx"] {
            fs::create_dir(p.base.join(d)).unwrap();
        }
        fs::set_permissions(p.base.join("xdg"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(p.base.join("containers.conf"), CONTAINERS_CONF).unwrap();
        // Our own storage.conf, saying what the command-line options say
        // (some podman commands, e.g. commit, read only the file).
        fs::write(
            p.base.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n\
                 [storage.options.overlay]\nmount_program = \"{}\"\n",
                p.base.join("root").display(),
                p.base.join("runroot").display(),
                mount_program()
            ),
        )
        .unwrap();
        if mode == Mode::Rootless {
            let (uid, gid) = user_ids(USER).unwrap();
            chown_tree(&p.base, uid, gid);
        }
        p
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.join(rel)
    }

    /// Runs `podman ARGS` (with this installation's options, as root or as
    /// the test user, limited in time) and returns its output.
    fn cmd(&self, args: &[&str]) -> Output {
        let s = |rel: &str| self.path(rel).display().to_string();
        let mut argv: Vec<String> = vec![
            "timeout".into(),
            "-k".into(),
            "10".into(),
            PODMAN_TIMEOUT.into(),
            "podman".into(),
            "--root".into(),
            s("root"),
            "--runroot".into(),
            s("runroot"),
            "--storage-driver".into(),
            "overlay".into(),
            "--storage-opt".into(),
            format!("overlay.mount_program={}", mount_program()),
        ];
        if self.mode == Mode::Root {
            // Rootless podman keeps this under XDG_RUNTIME_DIR already.
            argv.extend(["--tmpdir".into(), s("tmp")]);
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let env = [
            ("CONTAINERS_CONF", s("containers.conf")),
            ("CONTAINERS_STORAGE_CONF", s("storage.conf")),
            ("XDG_RUNTIME_DIR", s("xdg")),
            ("XDG_CONFIG_HOME", s("home/.config")),
            ("XDG_DATA_HOME", s("home/.local/share")),
            ("HOME", s("home")),
        ];
        let mut c = match self.mode {
            Mode::Root => Command::new(&argv[0]),
            Mode::Rootless => {
                let mut c = Command::new("runuser");
                c.args(["-u", USER, "--", "env"]);
                for (k, v) in &env {
                    c.arg(format!("{k}={v}"));
                }
                c.arg(&argv[0]);
                c
            }
        };
        c.args(&argv[1..]).envs(env).current_dir(&self.base);
        let out = c.output().expect("spawn podman");
        if out.status.code() == Some(124) || out.status.code() == Some(137) {
            panic!("podman {args:?} timed out after {PODMAN_TIMEOUT}s");
        }
        out
    }

    /// Runs podman and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "podman ({:?}) {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
            self.mode,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs a shell script in a new container of `image` (removed after)
    /// with extra `run` options; asserts it prints OK last.
    fn run_script(&self, opts: &[&str], image: &str, script: &str) -> String {
        let mut args = vec!["run", "--rm"];
        args.extend(opts);
        args.extend([image, "sh", "-c", script]);
        let out = self.ok(&args);
        assert!(
            out.lines().last() == Some("OK"),
            "script in {image} did not finish:\n{out}"
        );
        out
    }

    /// Imports the busybox image as `localhost/bb`: /bin/busybox with its
    /// applets, /etc/passwd and group, /data/a, /data/sub/b, /home/user
    /// (owned by 1000:1000), /tmp (1777).
    fn import_busybox(&self) {
        let r = self.path("rootfs");
        for d in ["bin", "etc", "tmp", "root", "data/sub", "home/user", "run"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::copy(busybox(), r.join("bin/busybox")).unwrap();
        fs::set_permissions(r.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        let list = Command::new(busybox()).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !r.join("bin").join(applet).exists() {
                std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
            }
        }
        fs::write(
            r.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
        )
        .unwrap();
        fs::write(r.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        fs::write(r.join("data/a"), "lower a\n").unwrap();
        fs::write(r.join("data/sub/b"), "lower b\n").unwrap();
        fs::write(r.join("home/user/file"), "user's\n").unwrap();
        fs::set_permissions(r.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        chown_tree(&r, 0, 0);
        chown_tree(&r.join("home/user"), 1000, 1000);
        // Image files are old: podman's naive diff (used with a mount
        // program) compares whole seconds when one side has no nanoseconds,
        // as tar mtimes do, so a change made in the second of the import
        // would not show.
        let st = Command::new("find")
            .arg(&r)
            .args(["-exec", "touch", "-h", "-d", "@1577836800", "{}", "+"])
            .status()
            .unwrap();
        assert!(st.success(), "touch");
        let tar = self.path("rootfs.tar");
        let st = Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&r)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success(), "tar");
        if self.mode == Mode::Rootless {
            let (uid, gid) = user_ids(USER).unwrap();
            std::os::unix::fs::chown(&tar, Some(uid), Some(gid)).unwrap();
        }
        self.ok(&["import", "-q", &tar.display().to_string(), "localhost/bb"]);
    }

    /// The host path of a (stopped) container's upper directory.
    fn upper_dir(&self, container: &str) -> PathBuf {
        let out = self.ok(&[
            "inspect",
            "--format",
            "{{.GraphDriver.Data.UpperDir}}",
            container,
        ]);
        PathBuf::from(out.trim())
    }

    /// The id the host sees for id `id` of the storage (rootless storage
    /// keeps ids of the user's namespace: 0 is the user, 1.. its subids).
    fn host_id(&self, id: u32, sub_file: &str) -> u32 {
        match self.mode {
            Mode::Root => id,
            Mode::Rootless if id == 0 => {
                let (uid, gid) = user_ids(USER).unwrap();
                if sub_file.ends_with("subuid") {
                    uid
                } else {
                    gid
                }
            }
            Mode::Rootless => sub_start(sub_file, USER).unwrap() + id - 1,
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "-af", "-t", "0"]);
        // Rootless: the pause process holds the user namespace and its mount
        // namespace (with any FUSE mounts left in it).
        if let Ok(pid) = fs::read_to_string(self.path("xdg/libpod/tmp/pause.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            kill(pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Mounts left under our directory (as root: storage's private bind
        // mount of overlay/, container shm, FUSE mounts), deepest first.
        let base = self.base.display().to_string();
        let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(unescape_mountinfo))
            .filter(|m| m.starts_with(&base))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        mounts.dedup();
        for m in &mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        // Processes still naming our directory: FUSE servers, conmon.
        for pid in procs_naming(&base) {
            eprintln!("cleanup: killing leftover process {pid}: {}", cmdline(pid));
            kill(pid);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn busybox() -> String {
    let out = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .args(["-hR", &format!("{uid}:{gid}")])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Processes (other than this one) whose command line contains `needle`.
fn procs_naming(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())
            && pid != me
            && cmdline(pid).contains(needle)
        {
            pids.push(pid);
        }
    }
    pids
}

fn kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Mount-program processes serving mounts of this installation.
fn fuse_servers(p: &Podman) -> Vec<i32> {
    let prog = mount_program();
    procs_naming(&p.base.display().to_string())
        .into_iter()
        .filter(|pid| cmdline(*pid).starts_with(&prog))
        .collect()
}

fn stat_ids(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

// ---------------------------------------------------------------------------
// The scenarios, each run as root and rootless.

/// Reads, writes, copies up, hard-links and deletes inside `podman run`;
/// the image is unchanged afterwards.
fn run_changes_files(mode: Mode) {
    let p = podman_or_skip!(mode);
    p.import_busybox();
    p.run_script(
        &[],
        "localhost/bb",
        r#"set -e
grep -q '^root:x:0:0:' /etc/passwd
test "$(cat /data/sub/b)" = "lower b"
echo new > /tmp/new; test "$(cat /tmp/new)" = new
echo appended >> /data/a; test "$(cat /data/a)" = "lower a
appended"
ln /data/a /tmp/a-link; test "$(stat -c %h /data/a)" = 2
echo via-link >> /tmp/a-link; tail -n 1 /data/a | grep -qx via-link
test "$(stat -c %i /data/a)" = "$(stat -c %i /tmp/a-link)"
ln /data/sub/b /data/b-link; test "$(stat -c %h /data/sub/b)" = 2
test "$(cat /data/b-link)" = "lower b"
cp /bin/busybox /tmp/bb-copy; cmp /bin/busybox /tmp/bb-copy
chmod 600 /etc/group; test "$(stat -c %a /etc/group)" = 600
rm /etc/group; test ! -e /etc/group
rm /data/sub/b; test "$(cat /data/b-link)" = "lower b"
rm -r /root; test ! -e /root
mkdir /root; test -z "$(ls -A /root)"
mv /tmp/new /tmp/renamed; test ! -e /tmp/new; test "$(cat /tmp/renamed)" = new
mv /data/sub /data/moved; test "$(ls -A /data/moved)" = ""; test ! -e /data/sub
rm /tmp/renamed /tmp/bb-copy
echo OK"#,
    );
    // A new container of the same image sees none of it.
    p.run_script(
        &[],
        "localhost/bb",
        r#"set -e
test "$(cat /data/a)" = "lower a"
test "$(cat /data/sub/b)" = "lower b"
test -e /etc/group; test ! -e /tmp/a-link; test -d /root
test "$(stat -c %h /data/a)" = 1
echo OK"#,
    );
    let left = fuse_servers(&p);
    assert!(
        left.is_empty(),
        "mount-program servers left after --rm: {left:?}"
    );
}

/// Files a container deletes are whiteouts in the committed layer: gone in
/// a container of the new image; a directory made again over a deleted one
/// is opaque in the layer after that. `podman diff` lists the changes.
fn commit_whiteouts_and_diff(mode: Mode) {
    let p = podman_or_skip!(mode);
    p.import_busybox();
    p.ok(&[
        "run",
        "--name",
        "c1",
        "localhost/bb",
        "sh",
        "-c",
        "set -e; rm /etc/group; rm -r /data/sub; echo added > /etc/added; echo changed > /data/a",
    ]);
    let diff = p.ok(&["diff", "c1"]);
    let lines: BTreeSet<&str> = diff.lines().map(str::trim).collect();
    for want in ["D /etc/group", "A /etc/added", "C /data/a", "D /data/sub"] {
        assert!(lines.contains(want), "podman diff lacks {want:?}:\n{diff}");
    }
    assert!(
        !lines.iter().any(|l| l.ends_with("/data/sub/b")),
        "podman diff lists a file of a deleted directory:\n{diff}"
    );
    p.ok(&["commit", "-q", "c1", "localhost/bb2"]);
    p.run_script(
        &[],
        "localhost/bb2",
        r#"set -e
test ! -e /etc/group; test ! -e /data/sub
test "$(cat /etc/added)" = added; test "$(cat /data/a)" = changed
test -x /bin/busybox; grep -q '^root:' /etc/passwd
echo OK"#,
    );
    // Over the whiteout: a new /data/sub (opaque) and /etc/group again.
    p.ok(&[
        "run",
        "--name",
        "c2",
        "localhost/bb2",
        "sh",
        "-c",
        "set -e; mkdir /data/sub; echo c > /data/sub/c; echo again > /etc/group",
    ]);
    let diff2 = p.ok(&["diff", "c2"]);
    assert!(
        diff2.lines().any(|l| l.trim() == "A /data/sub/c"),
        "podman diff c2:\n{diff2}"
    );
    p.ok(&["commit", "-q", "c2", "localhost/bb3"]);
    p.run_script(
        &[],
        "localhost/bb3",
        r#"set -e
test "$(ls -A /data/sub)" = c
test "$(cat /etc/group)" = again
test "$(cat /etc/added)" = added
echo OK"#,
    );
    // The same layers, read back through the image store: the history has
    // the three layers.
    let layers = p.ok(&[
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        "localhost/bb3",
    ]);
    assert_eq!(layers.trim(), "3");
}

/// `podman build` of a Containerfile whose RUN steps delete and add files.
fn build_containerfile(mode: Mode) {
    let p = podman_or_skip!(mode);
    p.import_busybox();
    let ctx = p.path("ctx");
    fs::write(
        ctx.join("Containerfile"),
        r#"FROM localhost/bb
RUN rm /etc/group && rm -r /data/sub && mkdir /built && echo one > /built/one
RUN rm /built/one && echo two > /built/two && echo appended >> /data/a && ln /built/two /built/two-link
COPY added.txt /built/added.txt
RUN test "$(cat /built/added.txt)" = "from context" && rm /home/user/file
"#,
    )
    .unwrap();
    fs::write(ctx.join("added.txt"), "from context\n").unwrap();
    if mode == Mode::Rootless {
        let (uid, gid) = user_ids(USER).unwrap();
        chown_tree(&ctx, uid, gid);
    }
    let ctx_s = ctx.display().to_string();
    p.ok(&[
        "build",
        "-q",
        "--network",
        "host",
        "-t",
        "localhost/built",
        "-f",
        &ctx.join("Containerfile").display().to_string(),
        &ctx_s,
    ]);
    p.run_script(
        &[],
        "localhost/built",
        r#"set -e
test ! -e /etc/group; test ! -e /data/sub; test ! -e /built/one
test "$(cat /built/two)" = two; test "$(stat -c %h /built/two)" = 2
test "$(cat /built/added.txt)" = "from context"
test "$(cat /data/a)" = "lower a
appended"
test -d /home/user; test ! -e /home/user/file
echo OK"#,
    );
}

/// A container process that is not root (`--user 1000:1000`, no user
/// namespace of its own) reads the image and writes where it may.
fn non_root_user(mode: Mode) {
    let p = podman_or_skip!(mode);
    p.import_busybox();
    p.run_script(
        &["--user", "1000:1000"],
        "localhost/bb",
        r#"set -e
test "$(id -u)" = 1000
grep -q '^user:' /etc/passwd
echo mine > /home/user/new; test "$(stat -c %u:%g /home/user/new)" = 1000:1000
echo more >> /home/user/file
echo t > /tmp/t
if echo no > /etc/denied 2>/dev/null; then echo "wrote /etc as 1000"; exit 1; fi
echo OK"#,
    );
}

/// `--uidmap`: podman passes uidmapping=/gidmapping= (or squash_to_uid= for
/// a single id). Files show their image owners inside and are stored with
/// the storage's ids in the container's upper directory.
fn uidmap_run(mode: Mode, map: &str) {
    let p = podman_or_skip!(mode);
    p.import_busybox();
    let script = r#"set -e
test "$(stat -c %u:%g /etc/passwd)" = 0:0
test "$(stat -c %u:%g /)" = 0:0
test "$(stat -c %u:%g /home/user)" = 1000:1000
test "$(stat -c %u:%g /home/user/file)" = 1000:1000
echo x > /tmp/by-root; test "$(stat -c %u:%g /tmp/by-root)" = 0:0
echo y > /tmp/by-user; chown 1000:1000 /tmp/by-user
test "$(stat -c %u:%g /tmp/by-user)" = 1000:1000
echo more >> /home/user/file; test "$(stat -c %u:%g /home/user/file)" = 1000:1000
su -s /bin/sh -c 'echo u > /home/user/own' user
test "$(stat -c %u:%g /home/user/own)" = 1000:1000
echo OK"#;
    let out = p.ok(&[
        "run",
        "--name",
        "mapped",
        "--uidmap",
        map,
        "--gidmap",
        map,
        "localhost/bb",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.lines().last(), Some("OK"), "{out}");
    // On disk: the storage's ids (the image's), not the container's host ids.
    let upper = p.upper_dir("mapped");
    let u = |id| p.host_id(id, "/etc/subuid");
    let g = |id| p.host_id(id, "/etc/subgid");
    assert_eq!(
        stat_ids(&upper.join("tmp/by-root")),
        (u(0), g(0)),
        "tmp/by-root"
    );
    assert_eq!(
        stat_ids(&upper.join("tmp/by-user")),
        (u(1000), g(1000)),
        "tmp/by-user"
    );
    assert_eq!(
        stat_ids(&upper.join("home/user/file")),
        (u(1000), g(1000)),
        "copied-up home/user/file"
    );
    assert_eq!(
        stat_ids(&upper.join("home/user/own")),
        (u(1000), g(1000)),
        "home/user/own"
    );
}

/// A single mapped id: podman passes squash_to_uid=/squash_to_gid=; every
/// file shows as the container's root.
fn squash_run(mode: Mode) {
    let p = podman_or_skip!(mode);
    p.import_busybox();
    let map = match mode {
        Mode::Root => "0:5000:1",
        Mode::Rootless => "0:1:1",
    };
    p.run_script(
        &["--uidmap", map, "--gidmap", map],
        "localhost/bb",
        r#"set -e
test "$(stat -c %u:%g /etc/passwd)" = 0:0
test "$(stat -c %u:%g /home/user/file)" = 0:0
echo x > /tmp/new; test "$(stat -c %u:%g /tmp/new)" = 0:0
echo more >> /home/user/file
echo OK"#,
    );
}

#[test]
fn root_run_changes_files() {
    run_changes_files(Mode::Root);
}

#[test]
fn rootless_run_changes_files() {
    run_changes_files(Mode::Rootless);
}

#[test]
fn root_commit_whiteouts_and_diff() {
    commit_whiteouts_and_diff(Mode::Root);
}

#[test]
fn rootless_commit_whiteouts_and_diff() {
    commit_whiteouts_and_diff(Mode::Rootless);
}

#[test]
fn root_build_containerfile() {
    build_containerfile(Mode::Root);
}

#[test]
fn rootless_build_containerfile() {
    build_containerfile(Mode::Rootless);
}

#[test]
fn root_uidmap_small_shift() {
    uidmap_run(Mode::Root, "0:1:2000");
}

#[test]
fn root_uidmap_subid_range() {
    uidmap_run(Mode::Root, "0:100000:65536");
}

#[test]
fn rootless_uidmap() {
    uidmap_run(Mode::Rootless, "0:1:2000");
}

#[test]
fn root_squash_to_uid() {
    squash_run(Mode::Root);
}

#[test]
fn rootless_squash_to_uid() {
    squash_run(Mode::Rootless);
}

#[test]
fn root_non_root_user() {
    non_root_user(Mode::Root);
}

#[test]
fn rootless_non_root_user() {
    non_root_user(Mode::Rootless);
}

/// A layer that containers/storage wrote in rootless mode with
/// `force_mask` (modes and owners kept in `user.containers.override_stat`),
/// mounted directly (as root, read-only): cairnfs shows the tree
/// fuse-overlayfs shows, with the modes from the xattr.
#[test]
fn rootless_storage_layer_reads_like_fuse_overlayfs() {
    let p = podman_or_skip!(Mode::Rootless);
    let Some(fo) = ["/usr/bin/fuse-overlayfs", "/bin/fuse-overlayfs"]
        .into_iter()
        .find(|f| Path::new(f).exists())
    else {
        eprintln!("skipped: no fuse-overlayfs");
        return;
    };
    // A dir and a file of a foreign owner. (No device: podman 4.3 drops
    // them when rootless; no fifo: it cannot carry a user xattr.)
    let tar = p.path("devs.tar");
    {
        use tar::EntryType as T;
        let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
        type Entry<'a> = (&'a str, T, u32, u64, &'a [u8]);
        let entries: [Entry; 2] = [
            ("data", T::Directory, 0o750, 1234, b""),
            ("data/owned", T::Regular, 0o640, 1234, b"secret\n"),
        ];
        for (name, kind, mode, owner, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(owner);
            h.set_gid(owner);
            h.set_mtime(1_577_836_800);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, data).unwrap();
        }
        b.finish().unwrap();
    }
    let (uid, gid) = user_ids(USER).unwrap();
    std::os::unix::fs::chown(&tar, Some(uid), Some(gid)).unwrap();
    // force_mask: containers/storage keeps modes, owners and devices in
    // `user.containers.override_stat` (what rootless stores use when they
    // cannot chown or mknod).
    const MASK: [&str; 2] = ["--storage-opt", "overlay.force_mask=shared"];
    p.ok(&[
        MASK[0],
        MASK[1],
        "import",
        "-q",
        &tar.display().to_string(),
        "localhost/devs",
    ]);
    let layer = PathBuf::from(
        p.ok(&[
            MASK[0],
            MASK[1],
            "image",
            "inspect",
            "--format",
            "{{.GraphDriver.Data.UpperDir}}",
            "localhost/devs",
        ])
        .trim(),
    );
    // On disk the mode is the forced one; the real one is in the xattr.
    let disk = fs::symlink_metadata(layer.join("data/owned")).unwrap();
    assert_ne!(disk.mode() & 0o7777, 0o640, "{}", layer.display());
    let view = |root: &Path| -> Vec<String> {
        ["data", "data/owned"]
            .iter()
            .map(|rel| match fs::symlink_metadata(root.join(rel)) {
                Ok(md) => format!(
                    "{rel} {:o} {}:{} rdev {:#x} size {}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.rdev(),
                    if md.is_file() { md.size() } else { 0 }
                ),
                Err(e) => format!("{rel} {e}"),
            })
            .collect()
    };
    let cairn = cairn::harness::TestOverlay::builder()
        .lower(&layer)
        .read_only()
        .mount()
        .unwrap();
    let fmnt = p.path("fo-mnt");
    fs::create_dir(&fmnt).unwrap();
    let ok = Command::new(fo)
        .arg("-o")
        .arg(format!("lowerdir={}", layer.display()))
        .arg(&fmnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "fuse-overlayfs mount");
    let (c, f) = (view(cairn.path()), view(&fmnt));
    let _ = Command::new("umount").arg(&fmnt).status();
    assert_eq!(c, f, "cairnfs vs fuse-overlayfs");
    let owned = fs::symlink_metadata(cairn.path().join("data/owned")).unwrap();
    assert_eq!(owned.mode() & 0o7777, 0o640, "{c:?}");
    assert_eq!(
        fs::read_to_string(cairn.path().join("data/owned")).unwrap(),
        "secret\n"
    );
}
