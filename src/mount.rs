//! Turning mount options into a live FUSE session: layout checks, the
//! `fuser` configuration, and the session itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::error::{Error, Result};
use crate::fuse::FuseAdapter;
use crate::options::MountOptions;
use crate::overlay::Overlay;

/// Worker threads serving requests when `threaded=` is not given.
pub const DEFAULT_THREADS: usize = 4;

fn canonical(what: &'static str, p: &Path) -> Result<PathBuf> {
    let c = p.canonicalize().map_err(|source| Error::Path {
        what,
        path: p.to_path_buf(),
        source,
    })?;
    if !c.is_dir() {
        return Err(Error::Layout(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    Ok(c)
}

/// Refuses layouts that would loop or hang: a mountpoint inside a layer,
/// layers inside each other, a work dir inside the upper dir.
pub fn check_layout(opts: &MountOptions, mountpoint: &Path) -> Result<()> {
    let mnt = canonical("mountpoint", mountpoint)?;
    let mut layers: Vec<(&'static str, PathBuf)> = Vec::new();
    for l in &opts.lowers {
        layers.push(("lowerdir", canonical("lower dir", l)?));
    }
    if let Some(u) = &opts.upper {
        layers.push(("upperdir", canonical("upper dir", u)?));
    }
    if let Some(w) = &opts.work {
        layers.push(("workdir", canonical("work dir", w)?));
    }
    for (what, p) in &layers {
        if mnt.starts_with(p) {
            return Err(Error::Layout(format!(
                "mountpoint {} is inside {what} {}",
                mountpoint.display(),
                p.display()
            )));
        }
    }
    for (i, (wa, a)) in layers.iter().enumerate() {
        for (wb, b) in layers.iter().skip(i + 1) {
            if *wa == "lowerdir" && *wb == "lowerdir" && a == b {
                continue; // the same lower twice is harmless
            }
            if a.starts_with(b) || b.starts_with(a) {
                return Err(Error::Layout(format!(
                    "{wa} {} and {wb} {} overlap",
                    a.display(),
                    b.display()
                )));
            }
        }
    }
    Ok(())
}

/// Lifts the soft open-file limit to the hard one: copy-ups, open files
/// and the directory-fd cache all hold descriptors.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// The `fuser` configuration for these options.
pub fn fuser_config(opts: &MountOptions) -> Config {
    let mut c = Config::default();
    let mut mo = vec![
        MountOption::FSName("cairnfs".into()),
        // The kernel takes the subtype as a mount option: the mount then
        // shows as `fuse.cairnfs` (fuser's own Subtype only names the source).
        MountOption::CUSTOM("subtype=cairnfs".into()),
        MountOption::DefaultPermissions,
    ];
    if !opts.writable() {
        mo.push(MountOption::RO);
    }
    mo.push(if opts.suid {
        MountOption::Suid
    } else {
        MountOption::NoSuid
    });
    mo.push(if opts.dev {
        MountOption::Dev
    } else {
        MountOption::NoDev
    });
    mo.push(if opts.exec {
        MountOption::Exec
    } else {
        MountOption::NoExec
    });
    c.mount_options = mo;
    // As fuse-overlayfs: when we may (as root, also of a user namespace),
    // every user may use the mount; the kernel checks permissions
    // (default_permissions). Containers run as many uids.
    let may_allow_other = rustix::process::geteuid().is_root();
    c.acl = if opts.allow_other || may_allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    c.n_threads = Some(opts.threads.unwrap_or(DEFAULT_THREADS));
    c.clone_fd = true;
    c
}

/// Opens the layers and mounts: when this returns, the FUSE handshake is
/// done and the mount is live (requests queue until the session runs).
pub fn mount(
    opts: &MountOptions,
    mountpoint: &Path,
    debug: bool,
) -> Result<(fuser::Session<FuseAdapter>, Arc<Overlay>)> {
    opts.validate()?;
    check_layout(opts, mountpoint)?;
    // Modes of new objects come from the request, not from our umask.
    rustix::process::umask(rustix::fs::Mode::empty());
    raise_fd_limit();
    let overlay = Arc::new(Overlay::new(opts)?);
    let fs = FuseAdapter::new(overlay.clone(), debug);
    // Resolved before mounting: once mounted, a lookup of it would wait for
    // the server, which does not serve yet.
    let resolved = mountpoint.canonicalize().ok();
    let session = fuser::Session::new(fs, mountpoint, &fuser_config(opts)).map_err(Error::Mount)?;
    if let Some(p) = resolved {
        raise_readahead(&p);
    }
    Ok((session, overlay))
}

/// Readahead of the mount, in KiB: one maximal (1 MiB) read request.
const READAHEAD_KB: u32 = 1024;

/// Sequential reads of files served through cairnfs (lower files of a
/// writable mount) take 1 MiB requests instead of the kernel's default
/// 128 KiB: the mount's readahead is raised through sysfs once the FUSE
/// handshake is done (the handshake can only lower it). Only root may;
/// otherwise, or when the mount is not found, nothing changes.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    // mountinfo escapes space, tab, newline and backslash in octal.
    let mut want = String::new();
    for &b in mountpoint.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => want.push_str(&format!("\\{b:03o}")),
            _ => want.push(b as char),
        }
    }
    let Some(dev) = info
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == want).then(|| f[2].to_string())
        })
        .next_back()
    else {
        return;
    };
    let _ = std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        READAHEAD_KB.to_string(),
    );
}
