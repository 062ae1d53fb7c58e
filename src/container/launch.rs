//! Starting a container: the monitor (`cairn run` itself, in the host's
//! namespaces), the helper that owns the container's cairnfs mount, and the
//! hand-off to the container's init.
//!
//! 1. The monitor blocks the signals it forwards (they wait in a signalfd),
//!    opens a pty for `-t`, and forks the helper.
//! 2. The helper unshares a mount namespace (and, without root, a user
//!    namespace whose maps the monitor writes: the caller becomes root).
//! 3. The helper runs `cairnfs -f` on `ROOT/containers/ID/merged` (lower dirs:
//!    the container's init layer, then the image's layers topmost first;
//!    upper and work dirs in the container dir) and waits for the mount.
//!    cairnfs thus serves from outside the container's mount namespace.
//! 4. The helper unshares a pid namespace and forks init (pid 1), which
//!    unshares mount/uts/ipc[/net], builds the root and pivots into it
//!    (see [`super::mounts`], [`super::init`]).
//! 5. When init exits, the helper unmounts, stops cairnfs and exits with
//!    init's status; the monitor records it and returns it.
//!
//! Every process below the monitor dies with its parent (PDEATHSIG).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use super::config::{Container, Containers, Status, is_mountpoint};
use super::init::{InitArgs, container_main};
use super::userns::{self, IdMaps, exit_code};
use super::{ContainerError, Ctx, Result, is_root, mounts};
use crate::sys::{self, Fork};

/// The cairnfs program: `$CAIRNFS`, else next to the current executable
/// (or one level up, for test binaries in `target/*/deps`), else in PATH.
pub fn find_cairnfs() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRNFS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().unwrap_or_default();
    if let Some(dir) = exe.parent() {
        for d in [Some(dir), dir.parent()].into_iter().flatten() {
            let p = d.join("cairnfs");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("cairnfs"))
        .find(|p| p.is_file())
        .ok_or(ContainerError::NoCairnfs(exe))
}

fn escape_lower(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, ':' | ',' | '\\') {
            o.push('\\');
        }
        o.push(ch);
    }
    o
}

fn escape_opt(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, ',' | '\\') {
            o.push('\\');
        }
        o.push(ch);
    }
    o
}

/// The cairnfs `-o` string of a container (lower dirs topmost first).
pub fn cairnfs_options(cdir: &Path, layers: &[PathBuf]) -> String {
    let mut lowers = vec![escape_lower(&cdir.join("init"))];
    lowers.extend(layers.iter().map(|l| escape_lower(l)));
    format!(
        "lowerdir={},upperdir={},workdir={},allow_other",
        lowers.join(":"),
        escape_opt(&cdir.join("upper")),
        escape_opt(&cdir.join("work"))
    )
}

/// Starts `cairnfs -f` on `merged` as a child that dies with this process,
/// and waits until the mount is live. Returns its pid.
pub fn start_cairnfs(cairnfs: &Path, opts: &str, merged: &Path) -> Result<i32> {
    let me = rustix::process::getpid();
    let pid = match sys::fork().ctx("fork")? {
        Fork::Child => {
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            if rustix::process::getppid() != Some(me) {
                sys::exit_now(1);
            }
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
            let e = Command::new(cairnfs)
                .args(["-f", "-o", opts])
                .arg(merged)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .exec();
            eprintln!("cairn: running {}: {e}", cairnfs.display());
            sys::exit_now(127)
        }
        Fork::Parent(pid) => pid,
    };
    let start = Instant::now();
    let p = Pid::from_raw(pid).expect("child pid");
    loop {
        if is_mountpoint(merged) {
            return Ok(pid);
        }
        if let Ok(Some((_, st))) = rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
            return Err(ContainerError::Launch(format!(
                "cairnfs exited (status {}) before mounting {}",
                exit_code(st.as_raw()),
                merged.display()
            )));
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
            let _ = sys::waitpid(pid);
            return Err(ContainerError::Launch(
                "cairnfs did not mount in 30s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Unmounts `merged` and waits for its cairnfs to exit (killing it after 5s).
pub fn stop_cairnfs(pid: i32, merged: &Path) {
    let _ = rustix::mount::unmount(merged, rustix::mount::UnmountFlags::DETACH);
    let p = Pid::from_raw(pid).expect("cairnfs pid");
    let _ = rustix::process::kill_process(p, Signal::TERM);
    let start = Instant::now();
    loop {
        match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => {}
        }
        if start.elapsed() > Duration::from_secs(5) {
            let _ = rustix::process::kill_process(p, Signal::KILL);
            let _ = sys::waitpid(pid);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The helper: owns the cairnfs mount, forks init, returns init's status.
fn helper(
    c: &Container,
    cdir: &Path,
    cairnfs: &Path,
    mut pid_w: File,
    tty: Option<(OwnedFd, PathBuf)>,
) -> i32 {
    // Our mounts stay in this namespace; the host's still reach us.
    if let Err(e) = rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::DOWNSTREAM
            | rustix::mount::MountPropagationFlags::REC,
    ) {
        eprintln!("cairn: making / a slave mount: {e}");
        return 125;
    }
    let merged = cdir.join("merged");
    let opts = cairnfs_options(cdir, &c.layers);
    let cfs = match start_cairnfs(cairnfs, &opts, &merged) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cairn: {e}");
            return 125;
        }
    };
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        eprintln!("cairn: unshare(CLONE_NEWPID): {e}");
        stop_cairnfs(cfs, &merged);
        return 125;
    }
    let me = rustix::process::getpid();
    let init = match sys::fork() {
        Ok(Fork::Child) => {
            drop(pid_w);
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            if rustix::process::getppid() != Some(me) && rustix::process::getppid().is_some() {
                sys::exit_now(125);
            }
            let code = container_main(InitArgs {
                merged: &merged,
                cdir,
                spec: &c.spec,
                tty,
            });
            sys::exit_now(code)
        }
        Ok(Fork::Parent(pid)) => pid,
        Err(e) => {
            eprintln!("cairn: fork: {e}");
            stop_cairnfs(cfs, &merged);
            return 125;
        }
    };
    drop(tty);
    let _ = pid_w.write_all(format!("{init}\n").as_bytes());
    drop(pid_w);
    let code = match sys::waitpid(init) {
        Ok(st) => exit_code(st),
        Err(_) => 125,
    };
    stop_cairnfs(cfs, &merged);
    code
}

/// Signals the monitor forwards to the container (plus SIGCHLD, SIGWINCH).
fn forwarded() -> SigSet {
    let mut s = SigSet::empty();
    for sig in [
        NixSignal::SIGINT,
        NixSignal::SIGTERM,
        NixSignal::SIGHUP,
        NixSignal::SIGQUIT,
        NixSignal::SIGUSR1,
        NixSignal::SIGUSR2,
        NixSignal::SIGALRM,
        NixSignal::SIGWINCH,
        NixSignal::SIGCHLD,
    ] {
        s.add(sig);
    }
    s
}

/// Restores the terminal's settings on drop.
struct RawMode {
    saved: Option<rustix::termios::Termios>,
}

impl RawMode {
    fn enter() -> RawMode {
        let stdin = rustix::stdio::stdin();
        if !rustix::termios::isatty(stdin) {
            return RawMode { saved: None };
        }
        let Ok(t) = rustix::termios::tcgetattr(stdin) else {
            return RawMode { saved: None };
        };
        let mut raw = t.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(stdin, rustix::termios::OptionalActions::Now, &raw);
        RawMode { saved: Some(t) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                rustix::stdio::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

struct Pty {
    master: File,
    slave: OwnedFd,
    slave_path: PathBuf,
}

fn open_pty() -> Result<Pty> {
    use rustix::pty::OpenptFlags;
    let m = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
        .ctx("opening a pty")?;
    rustix::pty::grantpt(&m).ctx("grantpt")?;
    rustix::pty::unlockpt(&m).ctx("unlockpt")?;
    let name = rustix::pty::ptsname(&m, Vec::new()).ctx("ptsname")?;
    let slave_path = PathBuf::from(name.to_string_lossy().into_owned());
    let slave = rustix::fs::open(
        &slave_path,
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_ctx(|| format!("opening {}", slave_path.display()))?;
    Ok(Pty {
        master: File::from(m),
        slave,
        slave_path,
    })
}

fn copy_winsize(master: &File) {
    for fd in [rustix::stdio::stdin(), rustix::stdio::stdout()] {
        if let Ok(ws) = rustix::termios::tcgetwinsize(fd) {
            let _ = rustix::termios::tcsetwinsize(master, ws);
            return;
        }
    }
}

/// Runs a created or stopped container to its end; returns the exit code
/// (128+N when signal N ended it). The caller must be single-threaded.
pub fn run(cs: &Containers, c: &mut Container) -> Result<i32> {
    let lock = cs.lock_run(&c.id)?;
    let cdir = cs.dir(&c.id);
    let merged = cdir.join("merged");
    if c.host_mounted && is_mountpoint(&merged) {
        return Err(ContainerError::Launch(format!(
            "container {} is mounted on the host: cairn umount it first",
            c.name
        )));
    }
    for l in &c.layers {
        if !l.is_dir() {
            return Err(ContainerError::Launch(format!(
                "layer {} of the image is missing",
                l.display()
            )));
        }
    }
    let cairnfs = find_cairnfs()?;
    mounts::prepare_init_layer(&cdir.join("init"))?;
    mounts::write_net_files(&cdir, &c.spec)?;

    let mask = forwarded();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).ctx("blocking signals")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).ctx("signalfd")?;
    let pty = if c.spec.tty { Some(open_pty()?) } else { None };
    let (master, tty) = match pty {
        Some(p) => {
            copy_winsize(&p.master);
            (Some(p.master), Some((p.slave, p.slave_path)))
        }
        None => (None, None),
    };
    let (mut pid_r, pid_w) = userns::pipe()?;
    let maps = (!is_root()).then(IdMaps::for_caller);
    let helper_pid = {
        let c2 = c.clone();
        let cdir2 = cdir.clone();
        userns::spawn(CloneFlags::CLONE_NEWNS, maps.as_ref(), move || {
            helper(&c2, &cdir2, &cairnfs, pid_w, tty)
        })?
    };
    let mut buf = String::new();
    let _ = pid_r.read_to_string(&mut buf);
    let init_pid = buf.trim().parse::<i32>().ok();

    c.status = Status::Running;
    c.pid = init_pid;
    c.started_at = Some(crate::store::now_rfc3339());
    c.exit_code = None;
    c.finished_at = None;
    cs.save(c)?;

    let target = Pid::from_raw(init_pid.unwrap_or(helper_pid)).expect("pid");
    let hp = Pid::from_raw(helper_pid).expect("pid");
    let raw = master.as_ref().map(|_| RawMode::enter());
    let status = monitor(&sfd, hp, target, master.as_ref(), c.spec.interactive)?;
    drop(raw);
    let code = exit_code(status);

    c.status = Status::Exited;
    c.pid = None;
    c.exit_code = Some(code);
    c.finished_at = Some(crate::store::now_rfc3339());
    if c.auto_remove {
        drop(lock);
        cs.remove(c)?;
    } else {
        cs.save(c)?;
        drop(lock);
    }
    let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&mask), None);
    Ok(code)
}

fn write_all_fd(fd: impl AsFd, mut b: &[u8]) -> bool {
    while !b.is_empty() {
        match rustix::io::write(&fd, b) {
            Ok(0) => return false,
            Ok(n) => b = &b[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                let mut p = [PollFd::new(&fd, PollFlags::OUT)];
                let _ = rustix::event::poll(&mut p, None);
            }
            Err(_) => return false,
        }
    }
    true
}

/// Forwards signals and terminal traffic until the helper exits; returns
/// its raw wait status.
fn monitor(
    sfd: &SignalFd,
    helper: Pid,
    target: Pid,
    master: Option<&File>,
    interactive: bool,
) -> Result<i32> {
    let stdin = rustix::stdio::stdin();
    let stdout = rustix::stdio::stdout();
    let mut stdin_open = master.is_some() && interactive;
    let mut master_open = master.is_some();
    let mut buf = vec![0u8; 16384];
    let status = loop {
        let mut fds = vec![PollFd::new(sfd, PollFlags::IN)];
        if let Some(m) = master {
            if master_open {
                fds.push(PollFd::new(m, PollFlags::IN));
            }
            if stdin_open {
                fds.push(PollFd::new(&stdin, PollFlags::IN));
            }
        }
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e).ctx("poll"),
        }
        let sig_ready = !fds[0].revents().is_empty();
        let mut i = 1;
        let master_ready = if master.is_some() && master_open {
            let r = !fds[i].revents().is_empty();
            i += 1;
            r
        } else {
            false
        };
        let stdin_ready = if master.is_some() && stdin_open {
            !fds[i].revents().is_empty()
        } else {
            false
        };
        drop(fds);
        if let Some(m) = master {
            if master_ready {
                match rustix::io::read(m, &mut buf) {
                    Ok(0) | Err(rustix::io::Errno::IO) => master_open = false,
                    Ok(n) => {
                        let _ = write_all_fd(stdout, &buf[..n]);
                    }
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(_) => master_open = false,
                }
            }
            if stdin_ready {
                match rustix::io::read(stdin, &mut buf) {
                    Ok(0) | Err(rustix::io::Errno::IO) => {
                        stdin_open = false;
                        // End of input: an EOF character for the terminal.
                        let _ = write_all_fd(m, &[4]);
                    }
                    Ok(n) => {
                        if !write_all_fd(m, &buf[..n]) {
                            stdin_open = false;
                        }
                    }
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    Err(_) => stdin_open = false,
                }
            }
        }
        if !sig_ready {
            continue;
        }
        let Ok(Some(si)) = sfd.read_signal() else {
            continue;
        };
        let sig = si.ssi_signo as i32;
        if sig == Signal::CHILD.as_raw() {
            if let Ok(Some((_, st))) = rustix::process::waitpid(Some(helper), WaitOptions::NOHANG) {
                break st.as_raw();
            }
        } else if sig == Signal::WINCH.as_raw() {
            if let Some(m) = master {
                copy_winsize(m);
            }
        } else if let Some(s) = Signal::from_named_raw(sig) {
            let _ = rustix::process::kill_process(target, s);
        }
    };
    // What the container wrote just before it ended.
    if let Some(m) = master
        && master_open
    {
        let _ = rustix::fs::fcntl_setfl(m, rustix::fs::OFlags::NONBLOCK);
        while let Ok(n) = rustix::io::read(m, &mut buf) {
            if n == 0 {
                break;
            }
            let _ = write_all_fd(stdout, &buf[..n]);
        }
    }
    Ok(status)
}

/// Stops a running container: SIGKILL to its init, then waits (up to 10s)
/// until its monitor has released the run lock.
pub fn kill(cs: &Containers, c: &Container) -> Result<()> {
    if let Some(pid) = c.pid.and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
    let start = Instant::now();
    while cs.is_running(&c.id) {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(ContainerError::Running(c.id.clone()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `cairn mount`: the container's merged view on the host, served by a
/// daemonized cairnfs. Returns the mountpoint.
pub fn mount_on_host(cs: &Containers, c: &mut Container) -> Result<PathBuf> {
    let _lock = cs.lock_run(&c.id)?;
    let cdir = cs.dir(&c.id);
    let merged = cdir.join("merged");
    if is_mountpoint(&merged) {
        return Ok(merged);
    }
    mounts::prepare_init_layer(&cdir.join("init"))?;
    let cairnfs = find_cairnfs()?;
    let out = Command::new(&cairnfs)
        .args(["-o", &cairnfs_options(&cdir, &c.layers)])
        .arg(&merged)
        .stdin(Stdio::null())
        .output()
        .with_ctx(|| format!("running {}", cairnfs.display()))?;
    if !out.status.success() {
        return Err(ContainerError::Launch(format!(
            "cairnfs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    c.host_mounted = true;
    cs.save(c)?;
    Ok(merged)
}

/// `cairn umount`: undoes [`mount_on_host`].
pub fn umount_on_host(cs: &Containers, c: &mut Container) -> Result<()> {
    let merged = cs.dir(&c.id).join("merged");
    if is_mountpoint(&merged)
        && rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::empty()).is_err()
    {
        let st = Command::new("fusermount3")
            .arg("-u")
            .arg(&merged)
            .status()
            .ctx("running fusermount3")?;
        if !st.success() {
            return Err(ContainerError::Launch(format!(
                "cannot unmount {}",
                merged.display()
            )));
        }
    }
    c.host_mounted = false;
    cs.save(c)?;
    Ok(())
}
