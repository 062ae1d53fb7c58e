//! The container's filesystem, set up by its init in a fresh mount namespace
//! on top of the cairnfs mount: `/proc`, `/dev` (tmpfs with bound device
//! nodes, devpts, shm), `/sys` read-only, `-v` binds resolved inside the root,
//! hosts/resolv.conf/hostname, then `pivot_root` with the old root detached.

use std::ffi::CStr;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags, StatVfsMountFlags};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};

use super::config::{Network, RunSpec};
use super::{ContainerError, Ctx, Result};

/// Mountpoints every container needs, kept in the container's `init` layer
/// (the topmost lower layer) so they never show up as container changes.
pub const INIT_DIRS: [&str; 4] = ["dev", "proc", "sys", "etc"];
pub const INIT_FILES: [&str; 3] = ["etc/hosts", "etc/resolv.conf", "etc/hostname"];

/// Devices bound from the host's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Fills the container's init layer with empty mountpoints.
pub fn prepare_init_layer(init: &Path) -> Result<()> {
    for d in INIT_DIRS {
        let p = init.join(d);
        fs::create_dir_all(&p).with_ctx(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .with_ctx(|| format!("chmod {}", p.display()))?;
    }
    for f in INIT_FILES {
        let p = init.join(f);
        if !p.exists() {
            fs::write(&p, b"").with_ctx(|| format!("creating {}", p.display()))?;
        }
    }
    Ok(())
}

/// Writes `hosts`, `resolv.conf` and `hostname` in the container dir.
pub fn write_net_files(cdir: &Path, spec: &RunSpec) -> Result<()> {
    let mut hosts = String::new();
    let mut resolv = String::new();
    if spec.network == Network::Host {
        hosts = fs::read_to_string("/etc/hosts").unwrap_or_default();
        resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    }
    if !hosts.contains("localhost") {
        hosts.insert_str(
            0,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        );
    }
    if !hosts.ends_with('\n') && !hosts.is_empty() {
        hosts.push('\n');
    }
    hosts.push_str(&format!("127.0.1.1\t{}\n", spec.hostname));
    for (name, text) in [
        ("hosts", hosts),
        ("resolv.conf", resolv),
        ("hostname", format!("{}\n", spec.hostname)),
    ] {
        let p = cdir.join(name);
        fs::write(&p, text).with_ctx(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
            .with_ctx(|| format!("chmod {}", p.display()))?;
    }
    Ok(())
}

fn mnt_err(what: &str, target: &Path, e: rustix::io::Errno) -> ContainerError {
    ContainerError::Io {
        context: format!("mounting {what} on {}", target.display()),
        source: e.into(),
    }
}

fn mount_fs(
    src: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: Option<&CStr>,
) -> Result<()> {
    rustix::mount::mount(src, target, fstype, flags, data).map_err(|e| mnt_err(fstype, target, e))
}

/// The flags of the mount at `p` that a bind remount must keep (they are
/// locked in a user namespace).
fn locked_flags(p: &Path) -> MountFlags {
    let Ok(st) = rustix::fs::statvfs(p) else {
        return MountFlags::empty();
    };
    let mut f = MountFlags::empty();
    for (s, m) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if st.f_flag.contains(s) {
            f |= m;
        }
    }
    f
}

/// Makes the bind mount at `p` read-only.
fn remount_ro(p: &Path) -> rustix::io::Result<()> {
    rustix::mount::mount_remount(
        p,
        MountFlags::BIND | MountFlags::RDONLY | locked_flags(p),
        "",
    )
}

/// Mount points at or below `root` in this namespace, parents first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(root))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// An `O_PATH` fd for `dest` inside `root`, every component resolved as if
/// `root` were `/` (symlinks cannot lead out); missing components are made,
/// the last one as a directory or as an empty file.
pub fn open_in_root(root: &OwnedFd, dest: &str, dir: bool) -> Result<OwnedFd> {
    let how = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let rel: PathBuf = Path::new(dest)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    if rel.as_os_str().is_empty() {
        return Err(ContainerError::Invalid {
            what: "volume destination",
            value: dest.to_string(),
        });
    }
    let comps: Vec<_> = rel.components().collect();
    let mut cur = PathBuf::new();
    for (i, c) in comps.iter().enumerate() {
        let parent = cur.clone();
        cur.push(c);
        let last = i + 1 == comps.len();
        match rustix::fs::openat2(
            root,
            &cur,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            how,
        ) {
            Ok(fd) => {
                if last {
                    return Ok(fd);
                }
            }
            Err(rustix::io::Errno::NOENT) => {
                let pfd = if parent.as_os_str().is_empty() {
                    rustix::fs::openat(root, ".", OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                } else {
                    rustix::fs::openat2(
                        root,
                        &parent,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                        how,
                    )
                }
                .with_ctx(|| format!("resolving {dest}"))?;
                let name = c.as_os_str();
                if last && !dir {
                    let pdir = rustix::fs::openat(
                        &pfd,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY,
                        Mode::empty(),
                    )
                    .with_ctx(|| format!("resolving {dest}"))?;
                    rustix::fs::openat(
                        &pdir,
                        name,
                        OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o644),
                    )
                    .with_ctx(|| format!("creating {dest}"))?;
                } else {
                    let pdir = rustix::fs::openat(
                        &pfd,
                        ".",
                        OFlags::RDONLY | OFlags::DIRECTORY,
                        Mode::empty(),
                    )
                    .with_ctx(|| format!("resolving {dest}"))?;
                    match rustix::fs::mkdirat(&pdir, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(e).with_ctx(|| format!("creating {dest}")),
                    }
                }
                if last {
                    return rustix::fs::openat2(
                        root,
                        &cur,
                        OFlags::PATH | OFlags::CLOEXEC,
                        Mode::empty(),
                        how,
                    )
                    .with_ctx(|| format!("resolving {dest}"));
                }
            }
            Err(e) => return Err(e).with_ctx(|| format!("resolving {dest}")),
        }
    }
    unreachable!("the loop returns at the last component")
}

fn proc_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Everything up to and including `pivot_root`. Runs in the container's
/// init, in its own mount namespace, before anything of the image runs.
/// `console` is the pty slave bound on `/dev/console` for `-t`.
pub fn setup_rootfs(
    merged: &Path,
    cdir: &Path,
    spec: &RunSpec,
    console: Option<&Path>,
) -> Result<()> {
    // Nothing mounted from now on propagates back to the helper's namespace.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .ctx("making / private")?;
    let root = merged.to_path_buf();

    let rootfd = rustix::fs::open(
        &root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_ctx(|| format!("opening {}", root.display()))?;

    let proc_ = root.join("proc");
    mount_fs(
        "proc",
        &proc_,
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        None,
    )?;

    let dev = root.join("dev");
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::STRICTATIME,
        Some(c"mode=755,size=65536k"),
    )?;
    for d in DEVICES {
        let host = Path::new("/dev").join(d);
        if !host.exists() {
            continue;
        }
        let t = dev.join(d);
        fs::write(&t, b"").with_ctx(|| format!("creating {}", t.display()))?;
        rustix::mount::mount_bind(&host, &t).map_err(|e| mnt_err(d, &t, e))?;
    }
    if let Some(c) = console {
        let t = dev.join("console");
        fs::write(&t, b"").with_ctx(|| format!("creating {}", t.display()))?;
        rustix::mount::mount_bind(c, &t).map_err(|e| mnt_err("console", &t, e))?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).with_ctx(|| format!("creating {}", pts.display()))?;
    let pts_flags = MountFlags::NOSUID | MountFlags::NOEXEC;
    if mount_fs(
        "devpts",
        &pts,
        "devpts",
        pts_flags,
        Some(c"newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .is_err()
    {
        // gid 5 (tty) is not mapped in a single-id user namespace.
        mount_fs(
            "devpts",
            &pts,
            "devpts",
            pts_flags,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        )?;
    }
    let shm = dev.join("shm");
    fs::create_dir(&shm).with_ctx(|| format!("creating {}", shm.display()))?;
    mount_fs(
        "shm",
        &shm,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(c"mode=1777,size=65536k"),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let p = dev.join(link);
        std::os::unix::fs::symlink(to, &p).with_ctx(|| format!("creating {}", p.display()))?;
    }

    let sys = root.join("sys");
    rustix::mount::mount_bind_recursive("/sys", &sys).map_err(|e| mnt_err("/sys", &sys, e))?;
    for m in mounts_under(&sys) {
        // Best effort below /sys (some submounts may refuse).
        if let Err(e) = remount_ro(&m)
            && m == sys
        {
            return Err(mnt_err("/sys read-only", &sys, e));
        }
    }

    for f in ["hosts", "resolv.conf", "hostname"] {
        let t = root.join("etc").join(f);
        let fd = open_in_root(&rootfd, &format!("/etc/{f}"), false)?;
        rustix::mount::mount_bind(cdir.join(f), proc_fd(&fd)).map_err(|e| mnt_err(f, &t, e))?;
    }
    // -v binds last: they win over everything above.
    for m in &spec.mounts {
        let is_dir = m.source.is_dir();
        let fd = open_in_root(&rootfd, &m.dest, is_dir)?;
        let target = proc_fd(&fd);
        rustix::mount::mount_bind_recursive(&m.source, &target).map_err(|e| {
            ContainerError::Io {
                context: format!("binding {} on {}", m.source.display(), m.dest),
                source: e.into(),
            }
        })?;
        if m.readonly {
            // Open the new mount's root and remount through it.
            let fd2 = open_in_root(&rootfd, &m.dest, is_dir)?;
            remount_ro(&proc_fd(&fd2)).map_err(|e| ContainerError::Io {
                context: format!("making {} read-only", m.dest),
                source: e.into(),
            })?;
        }
    }

    drop(rootfd);

    // pivot_root(".", ".") stacks the old root on the new one; detach it.
    rustix::process::chdir(&root).with_ctx(|| format!("chdir {}", root.display()))?;
    rustix::process::pivot_root(".", ".").ctx("pivot_root")?;
    rustix::mount::unmount(".", UnmountFlags::DETACH).ctx("detaching the old root")?;
    rustix::process::chdir("/").ctx("chdir /")?;
    Ok(())
}

/// Brings `lo` up in a fresh network namespace (an RTM_NEWLINK request on
/// a netlink socket; `lo` is interface 1 in every new namespace).
pub fn loopback_up() -> Result<()> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, netlink};
    let sock = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None, // NETLINK_ROUTE
    )
    .ctx("netlink socket")?;
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const IFF_UP: u32 = 1;
    let mut msg = Vec::with_capacity(32);
    msg.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.push(0); // ifi_family AF_UNSPEC
    msg.push(0);
    msg.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    msg.extend_from_slice(&1i32.to_ne_bytes()); // ifi_index: lo
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    msg.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    let kernel = netlink::SocketAddrNetlink::new(0, 0);
    rustix::net::sendto(&sock, &msg, rustix::net::SendFlags::empty(), &kernel)
        .ctx("netlink send")?;
    let mut buf = [0u8; 1024];
    let (n, _) = rustix::net::recv(&sock, &mut buf, rustix::net::RecvFlags::empty())
        .ctx("netlink receive")?;
    // An NLMSG_ERROR (type 2) answer carries the errno (0 = success).
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(ContainerError::Io {
                context: "bringing lo up".into(),
                source: std::io::Error::from_raw_os_error(-err),
            });
        }
    }
    Ok(())
}
