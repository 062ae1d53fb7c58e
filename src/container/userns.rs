//! User namespaces for rootless containers: which ids to map, writing the
//! maps from the parent (`newuidmap`/`newgidmap` with `/etc/subuid` and
//! `/etc/subgid` ranges when available, else the caller alone as root), and
//! running work on container files inside such a namespace.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::CloneFlags;
use rustix::process::{Pid, Signal};

use super::{ContainerError, Ctx, Result};
use crate::sys::{self, Fork};

/// One `INSIDE OUTSIDE COUNT` line of a uid or gid map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid maps of a rootless container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    pub uids: Vec<Range>,
    pub gids: Vec<Range>,
    /// Written through newuidmap/newgidmap (else directly, single mapping).
    pub helpers: Option<(PathBuf, PathBuf)>,
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn user_name(uid: u32) -> Option<String> {
    let pw = fs::read_to_string("/etc/passwd").ok()?;
    pw.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    })
}

/// The first `NAME_OR_ID:START:COUNT` range for this user in a subid file.
pub fn sub_range(file: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    parse_sub_range(&text, name, id)
}

fn parse_sub_range(text: &str, name: Option<&str>, id: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 {
            return None;
        }
        let who = f[0];
        if Some(who) != name && who != id.to_string() {
            return None;
        }
        let start = f[1].parse().ok()?;
        let count = f[2].parse().ok()?;
        (count > 0).then_some((start, count))
    })
}

impl IdMaps {
    /// The maps for the calling user: the caller is root inside; with
    /// subordinate ranges and the setuid helpers, ids 1.. map to the range.
    pub fn for_caller() -> IdMaps {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let own_u = Range {
            inside: 0,
            outside: uid,
            count: 1,
        };
        let own_g = Range {
            inside: 0,
            outside: gid,
            count: 1,
        };
        let name = user_name(uid);
        let helpers = find_program("newuidmap").zip(find_program("newgidmap"));
        let su = sub_range("/etc/subuid", name.as_deref(), uid);
        let sg = sub_range("/etc/subgid", name.as_deref(), uid);
        if std::env::var_os("CAIRN_NO_SUBIDS").is_none()
            && let (Some(h), Some((us, uc)), Some((gs, gc))) = (helpers, su, sg)
        {
            return IdMaps {
                uids: vec![
                    own_u,
                    Range {
                        inside: 1,
                        outside: us,
                        count: uc,
                    },
                ],
                gids: vec![
                    own_g,
                    Range {
                        inside: 1,
                        outside: gs,
                        count: gc,
                    },
                ],
                helpers: Some(h),
            };
        }
        IdMaps {
            uids: vec![own_u],
            gids: vec![own_g],
            helpers: None,
        }
    }

    /// Writes the maps of process `pid` (which has unshared its user ns).
    pub fn write(&self, pid: i32) -> Result<()> {
        let text = |rs: &[Range]| {
            rs.iter()
                .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
                .collect::<String>()
        };
        match &self.helpers {
            Some((nu, ng)) => {
                for (prog, rs) in [(nu, &self.uids), (ng, &self.gids)] {
                    let mut cmd = Command::new(prog);
                    cmd.arg(pid.to_string());
                    for r in rs.iter() {
                        cmd.args([
                            r.inside.to_string(),
                            r.outside.to_string(),
                            r.count.to_string(),
                        ]);
                    }
                    let out = cmd
                        .output()
                        .with_ctx(|| format!("running {}", prog.display()))?;
                    if !out.status.success() {
                        return Err(ContainerError::Launch(format!(
                            "{} failed: {}",
                            prog.display(),
                            String::from_utf8_lossy(&out.stderr).trim()
                        )));
                    }
                }
            }
            None => {
                let p = format!("/proc/{pid}");
                fs::write(format!("{p}/uid_map"), text(&self.uids)).ctx("writing uid_map")?;
                fs::write(format!("{p}/setgroups"), "deny").ctx("writing setgroups")?;
                fs::write(format!("{p}/gid_map"), text(&self.gids)).ctx("writing gid_map")?;
            }
        }
        Ok(())
    }
}

/// A pipe pair with close-on-exec set.
pub fn pipe() -> Result<(fs::File, fs::File)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).ctx("pipe")?;
    Ok((fs::File::from(r), fs::File::from(w)))
}

/// Forks a child that unshares `flags` (plus a user namespace when the
/// caller is not root), waits until this process has written its id maps,
/// then runs `child` and exits with the code it returns. The child dies with
/// this process. Only call while single-threaded.
pub fn spawn(flags: CloneFlags, maps: Option<&IdMaps>, child: impl FnOnce() -> i32) -> Result<i32> {
    let (mut ready_r, ready_w) = pipe()?;
    let (go_r, mut go_w) = pipe()?;
    let parent = rustix::process::getpid();
    match sys::fork().ctx("fork")? {
        Fork::Child => {
            drop(ready_r);
            drop(go_w);
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            if rustix::process::getppid() != Some(parent) {
                sys::exit_now(125);
            }
            let code = child_enter(flags, maps.is_some(), ready_w, go_r);
            if code != 0 {
                sys::exit_now(code);
            }
            let code = child();
            let _ = std::io::stdout().flush();
            sys::exit_now(code)
        }
        Fork::Parent(pid) => {
            drop(ready_w);
            drop(go_r);
            let mut b = [0u8; 1];
            let n = ready_r
                .read(&mut b)
                .ctx("waiting for the namespace helper")?;
            if n == 0 {
                // The child failed to unshare and said why on stderr.
                let st = sys::waitpid(pid).ctx("waitpid")?;
                return Err(ContainerError::Launch(format!(
                    "cannot create namespaces (status {})",
                    exit_code(st)
                )));
            }
            if let Some(m) = maps
                && let Err(e) = m.write(pid)
            {
                let _ = rustix::process::kill_process(
                    Pid::from_raw(pid).expect("child pid"),
                    Signal::KILL,
                );
                let _ = sys::waitpid(pid);
                return Err(e);
            }
            go_w.write_all(b"g").ctx("starting the namespace helper")?;
            Ok(pid)
        }
    }
}

fn child_enter(flags: CloneFlags, userns: bool, mut ready: fs::File, mut go: fs::File) -> i32 {
    let flags = if userns {
        flags | CloneFlags::CLONE_NEWUSER
    } else {
        flags
    };
    if let Err(e) = nix::sched::unshare(flags) {
        eprintln!("cairn: unshare: {e}");
        return 125;
    }
    if ready.write_all(b"r").is_err() {
        return 125;
    }
    let mut b = [0u8; 1];
    if !matches!(go.read(&mut b), Ok(1)) {
        return 125;
    }
    if userns {
        // Become root of the namespace for good (the maps now exist).
        let root_g = rustix::process::Gid::ROOT;
        let root_u = rustix::process::Uid::ROOT;
        if rustix::thread::set_thread_res_gid(root_g, root_g, root_g).is_err()
            || rustix::thread::set_thread_res_uid(root_u, root_u, root_u).is_err()
        {
            eprintln!("cairn: cannot become root in the user namespace");
            return 125;
        }
    }
    0
}

/// The shell-style exit code of a raw wait status: the code, or 128+N for
/// signal N.
pub fn exit_code(status: i32) -> i32 {
    let sig = status & 0x7f;
    if sig == 0 {
        (status >> 8) & 0xff
    } else if sig != 0x7f {
        128 + sig
    } else {
        125
    }
}

/// Runs `f` where container files are fully accessible: directly as root,
/// else in a child inside a user namespace with the container id maps.
/// What `f` returns comes back through a pipe.
pub fn run_as_root<F>(f: F) -> Result<Vec<u8>>
where
    F: FnOnce() -> std::result::Result<Vec<u8>, String>,
{
    if super::is_root() {
        return f().map_err(ContainerError::Launch);
    }
    let maps = IdMaps::for_caller();
    let (mut rr, mut w) = pipe()?;
    // `w` moves into the closure: the parent's copy is dropped with it.
    let pid = spawn(CloneFlags::empty(), Some(&maps), move || match f() {
        Ok(v) => {
            if w.write_all(&[0]).and_then(|_| w.write_all(&v)).is_err() {
                return 1;
            }
            0
        }
        Err(e) => {
            let _ = w.write_all(&[1]).and_then(|_| w.write_all(e.as_bytes()));
            1
        }
    })?;
    let mut out = Vec::new();
    let read = rr.read_to_end(&mut out);
    let st = sys::waitpid(pid).ctx("waitpid")?;
    read.ctx("reading from the user namespace helper")?;
    match out.first() {
        Some(0) => Ok(out[1..].to_vec()),
        Some(_) => Err(ContainerError::Launch(
            String::from_utf8_lossy(&out[1..]).into_owned(),
        )),
        None => Err(ContainerError::Launch(format!(
            "user namespace helper failed (status {})",
            exit_code(st)
        ))),
    }
}

/// Removes a directory tree whose files may belong to container users.
pub fn remove_tree(p: &Path) -> Result<()> {
    if fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    let owned = p.to_path_buf();
    run_as_root(move || {
        crate::store::unpack::remove_tree_path(&owned)
            .map(|_| Vec::new())
            .map_err(|e| format!("removing {}: {e}", owned.display()))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subid_lines() {
        let t = "root:100000:65536\ncairn-test:165536:65536\n1002:231072:100\nbad\n";
        assert_eq!(
            parse_sub_range(t, Some("cairn-test"), 1001),
            Some((165536, 65536))
        );
        assert_eq!(parse_sub_range(t, None, 1002), Some((231072, 100)));
        assert_eq!(parse_sub_range(t, Some("nobody"), 9), None);
    }
}
