//! The container's pid 1: it finishes the namespaces and the root
//! filesystem, starts the command, then reaps zombies, forwards signals and
//! exits with the command's status (128+N when signal N killed it).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use rustix::process::{Pid, Signal, WaitOptions};
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::config::{Network, RunSpec};
use super::userns::exit_code;
use super::{ContainerError, Ctx, Result, mounts};
use crate::sys::{self, Fork};

/// The capabilities a container keeps (docker's default set).
pub fn default_caps() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FSETID
        | CapabilitySet::FOWNER
        | CapabilitySet::MKNOD
        | CapabilitySet::NET_RAW
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::SYS_CHROOT
        | CapabilitySet::KILL
        | CapabilitySet::AUDIT_WRITE
}

/// What init needs from the launcher.
pub struct InitArgs<'a> {
    pub merged: &'a Path,
    pub cdir: &'a Path,
    pub spec: &'a RunSpec,
    /// The pty slave for `-t`, and its host path (bound on /dev/console).
    pub tty: Option<(OwnedFd, PathBuf)>,
}

/// The user the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

/// Resolves `UID[:GID]` or `NAME[:GROUP]` against the container's
/// `/etc/passwd` and `/etc/group` texts.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<User> {
    let bad = || ContainerError::Invalid {
        what: "user (no such user or group in the image)",
        value: spec.to_string(),
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let u = if u.is_empty() { "0" } else { u };
    let pw: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let entry = pw
        .iter()
        .find(|f| f[0] == u)
        .or_else(|| pw.iter().find(|f| f[2] == u));
    let (uid, mut gid, name, home) = match (entry, u.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse().map_err(|_| bad())?,
            f[3].parse().map_err(|_| bad())?,
            Some(f[0]),
            f[5].to_string(),
        ),
        (None, Ok(n)) => (n, 0, None, "/".to_string()),
        (None, Err(_)) => return Err(bad()),
    };
    let gr: Vec<Vec<&str>> = group
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => gr
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(bad)?,
        };
    }
    let mut groups = vec![gid];
    if let Some(n) = name {
        for f in &gr {
            if f[3].split(',').any(|m| m == n)
                && let Ok(x) = f[2].parse::<u32>()
                && !groups.contains(&x)
            {
                groups.push(x);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

/// Everything before the command starts, as pid 1 of the new pid namespace.
fn prepare(a: &InitArgs) -> Result<User> {
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    if a.spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags)
        .map_err(std::io::Error::from)
        .ctx("unshare")?;
    mounts::setup_rootfs(
        a.merged,
        a.cdir,
        a.spec,
        a.tty.as_ref().map(|(_, p)| p.as_path()),
    )?;
    rustix::system::sethostname(a.spec.hostname.as_bytes()).ctx("sethostname")?;
    if a.spec.network == Network::None {
        mounts::loopback_up()?;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let user = resolve_user(&a.spec.user, &passwd, &group)?;
    let cwd = Path::new(&a.spec.cwd);
    if !cwd.is_dir() {
        std::fs::create_dir_all(cwd).with_ctx(|| format!("creating workdir {}", a.spec.cwd))?;
    }
    // Capabilities: the bounding set first (it limits every exec below).
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let keep = default_caps();
    for bit in 0..=last.min(63) {
        let c = CapabilitySet::from_bits_retain(1u64 << bit);
        if !keep.contains(c) {
            match rustix::thread::remove_capability_from_bounding_set(c) {
                Ok(()) | Err(rustix::io::Errno::INVAL) => {}
                Err(e) => return Err(e).ctx("dropping capabilities"),
            }
        }
    }
    rustix::thread::set_no_new_privs(true).ctx("no_new_privs")?;
    Ok(user)
}

fn env_with_defaults(spec: &RunSpec, user: &User) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str, replace: bool| {
        if let Some(e) = env.iter_mut().find(|(ek, _)| ek == k) {
            if replace {
                e.1 = v.to_string();
            }
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        false,
    );
    set("HOSTNAME", &spec.hostname, false);
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v, true);
    }
    set("HOME", &user.home, false);
    if spec.tty {
        set("TERM", "xterm", false);
    }
    env
}

/// The command's process: session, terminal, ids, then exec.
fn exec_command(spec: &RunSpec, user: &User, tty: Option<OwnedFd>) -> i32 {
    let _ = rustix::process::setsid();
    if let Some(t) = tty {
        let ok = rustix::stdio::dup2_stdin(&t).is_ok()
            && rustix::stdio::dup2_stdout(&t).is_ok()
            && rustix::stdio::dup2_stderr(&t).is_ok();
        drop(t);
        if !ok || rustix::process::ioctl_tiocsctty(rustix::stdio::stdin()).is_err() {
            eprintln!("cairn: cannot set up the terminal");
            return 125;
        }
    } else if !spec.interactive
        && let Ok(null) = File::open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
    }
    let gids: Vec<rustix::process::Gid> = user
        .groups
        .iter()
        .map(|g| rustix::process::Gid::from_raw(*g))
        .collect();
    let g = rustix::process::Gid::from_raw(user.gid);
    let u = rustix::process::Uid::from_raw(user.uid);
    // setgroups is refused in a single-id user namespace: then there is
    // only one group anyway.
    let _ = rustix::thread::set_thread_groups(&gids);
    if let Err(e) = rustix::thread::set_thread_res_gid(g, g, g) {
        eprintln!("cairn: setgid {}: {e}", user.gid);
        return 125;
    }
    if let Err(e) = rustix::thread::set_thread_res_uid(u, u, u) {
        eprintln!("cairn: setuid {}: {e}", user.uid);
        return 125;
    }
    if user.uid == 0 {
        let caps = default_caps();
        let _ = rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: caps,
                permitted: caps,
                inheritable: CapabilitySet::empty(),
            },
        );
    }
    let Some(prog) = spec.args.first() else {
        eprintln!("cairn: no command");
        return 125;
    };
    // exec keeps the signal mask: give the command an empty one.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let err = Command::new(prog)
        .args(&spec.args[1..])
        .env_clear()
        .envs(env_with_defaults(spec, user))
        .current_dir(&spec.cwd)
        .exec();
    eprintln!("cairn: exec {prog}: {err}");
    match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Runs as pid 1 of the container's pid namespace; returns its exit code.
pub fn container_main(a: InitArgs) -> i32 {
    // Out of the caller's session: terminal signals reach the command
    // once, through `cairn run`.
    let _ = rustix::process::setsid();
    let user = match prepare(&a) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("cairn: {e}");
            return 125;
        }
    };
    // Every signal waits in a signalfd; the command gets an empty mask
    // back at exec.
    let all = SigSet::all();
    if sigprocmask(SigmaskHow::SIG_BLOCK, Some(&all), None).is_err() {
        return 125;
    }
    let sfd = match SignalFd::with_flags(&all, SfdFlags::SFD_CLOEXEC) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cairn: signalfd: {e}");
            return 125;
        }
    };
    let spec = a.spec;
    let tty_fd = a.tty.map(|(fd, _)| fd);
    let main = match sys::fork() {
        Ok(Fork::Child) => {
            drop(sfd);
            sys::exit_now(exec_command(spec, &user, tty_fd))
        }
        Ok(Fork::Parent(pid)) => pid,
        Err(e) => {
            eprintln!("cairn: fork: {e}");
            return 125;
        }
    };
    drop(tty_fd);
    let main_pid = Pid::from_raw(main).expect("child pid");
    loop {
        let sig = match sfd.read_signal() {
            Ok(Some(si)) => si.ssi_signo as i32,
            Ok(None) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("cairn: reading signals: {e}");
                return 125;
            }
        };
        if sig == Signal::CHILD.as_raw() {
            // Reap everything; stop once the command itself is gone.
            let mut main_status = None;
            while let Ok(Some((pid, st))) = rustix::process::wait(WaitOptions::NOHANG) {
                if pid == main_pid {
                    main_status = Some(st.as_raw());
                }
            }
            if let Some(st) = main_status {
                return exit_code(st);
            }
        } else if let Some(s) = Signal::from_named_raw(sig) {
            let _ = rustix::process::kill_process(main_pid, s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:u:/home/user:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nwheel:x:10:user,other\n";

    #[test]
    fn users() {
        let u = resolve_user("", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user("user", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups.clone()),
            (1000, 1000, vec![1000, 10])
        );
        assert_eq!(u.home, "/home/user");
        let u = resolve_user("1000:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve_user("4242:7", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 7, "/"));
        assert!(resolve_user("nobody", PASSWD, GROUP).is_err());
        assert!(resolve_user("user:nogroup", PASSWD, GROUP).is_err());
    }
}
