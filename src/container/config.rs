//! Container records: `ROOT/containers/ID/config.json` (replaced atomically),
//! the container's directories, and its run lock.
//!
//! ```text
//! ROOT/containers/ID/config.json  this record
//! ROOT/containers/ID/lock         flock held by `cairn run`/`start` while it runs
//! ROOT/containers/ID/init/        mountpoints (dev, proc, sys, etc/hosts...), top lower layer
//! ROOT/containers/ID/upper/       the container's writes (cairnfs upperdir)
//! ROOT/containers/ID/work/        cairnfs workdir
//! ROOT/containers/ID/merged/      where cairnfs mounts the container's root
//! ROOT/containers/ID/{hosts,resolv.conf,hostname}  bound into the container
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};

use super::{ContainerError, Ctx, Result};
use crate::store::meta::{ContainerRecord, write_atomic};
use crate::store::{Digest, Store};

/// Network mode of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's network namespace (and its resolv.conf and hosts).
    #[default]
    Host,
    /// A network namespace with only `lo`, up.
    None,
}

/// A `-v HOST:CTR[:ro]` bind mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub dest: String,
    pub readonly: bool,
}

impl BindMount {
    /// Parses `HOST:CTR[:ro|rw]`; HOST must be absolute and exist.
    pub fn parse(s: &str) -> Result<BindMount> {
        let bad = || ContainerError::Invalid {
            what: "volume (HOST:CTR[:ro])",
            value: s.to_string(),
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, ro) = match parts.as_slice() {
            [a, b] => (*a, *b, false),
            [a, b, "ro"] => (*a, *b, true),
            [a, b, "rw"] => (*a, *b, false),
            _ => return Err(bad()),
        };
        if !src.starts_with('/') || !dst.starts_with('/') {
            return Err(bad());
        }
        let source = fs::canonicalize(src).with_ctx(|| format!("volume source {src}"))?;
        Ok(BindMount {
            source,
            dest: dst.to_string(),
            readonly: ro,
        })
    }
}

/// What runs in the container, resolved from the image config and flags.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RunSpec {
    /// argv (entrypoint + command).
    pub args: Vec<String>,
    /// `K=V` environment.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// `UID[:GID]` or `NAME[:GROUP]`, resolved inside the container; empty = root.
    pub user: String,
    pub hostname: String,
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub interactive: bool,
}

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// `config.json` of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// Image id (config digest).
    pub image: Digest,
    /// The image as the user named it.
    pub image_ref: String,
    /// Layer dirs of the image, topmost first.
    pub layers: Vec<PathBuf>,
    pub spec: RunSpec,
    pub created: String,
    pub status: Status,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Host pid of the container's init while it runs.
    #[serde(default)]
    pub pid: Option<i32>,
    /// `--rm`: removed when it exits.
    #[serde(default)]
    pub auto_remove: bool,
    /// Set while `cairn mount` has the merged view mounted on the host.
    #[serde(default)]
    pub host_mounted: bool,
}

impl Container {
    pub fn short_id(&self) -> &str {
        &self.id[..12]
    }
}

/// The containers of a store.
#[derive(Debug, Clone)]
pub struct Containers {
    pub store: Store,
    dir: PathBuf,
}

/// A held run lock (released when the process and its forks are gone).
#[derive(Debug)]
pub struct RunLock {
    pub file: File,
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(_) => {
                // Fall back on time and pid: ids need to be unique, not secret.
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let d = Digest::of(format!("{t}-{}", std::process::id()).as_bytes());
                return d.hex().to_string();
            }
        }
    }
    hex::encode(b)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
}

impl Containers {
    pub fn new(store: &Store) -> Result<Containers> {
        let dir = store.root().join("containers");
        fs::create_dir_all(&dir).with_ctx(|| format!("creating {}", dir.display()))?;
        // Canonical, so that mountinfo lines compare equal to our paths.
        let dir = fs::canonicalize(&dir).with_ctx(|| format!("resolving {}", dir.display()))?;
        Ok(Containers {
            store: store.clone(),
            dir,
        })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Every container, oldest first.
    pub fn list(&self) -> Result<Vec<Container>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).with_ctx(|| format!("reading {}", self.dir.display()))?;
        for e in rd {
            let e = e.with_ctx(|| format!("reading {}", self.dir.display()))?;
            let id = e.file_name().to_string_lossy().into_owned();
            if id.len() != 64 {
                continue;
            }
            match self.load(&id) {
                Ok(c) => out.push(c),
                Err(err) => log::warn!("container {id}: {err}"),
            }
        }
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub fn load(&self, id: &str) -> Result<Container> {
        let p = self.dir(id).join("config.json");
        let b = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(id.to_string()));
            }
            Err(e) => return Err(e).with_ctx(|| format!("reading {}", p.display())),
        };
        serde_json::from_slice(&b).map_err(|e| ContainerError::Io {
            context: format!("parsing {}", p.display()),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
    }

    /// Writes `config.json` atomically.
    pub fn save(&self, c: &Container) -> Result<()> {
        let d = self.dir(&c.id);
        let bytes = serde_json::to_vec_pretty(c).map_err(|e| ContainerError::Io {
            context: "serializing container".into(),
            source: io::Error::other(e),
        })?;
        write_atomic(&d.join("config.json"), &d.join("config.json.tmp"), &bytes)?;
        Ok(())
    }

    /// Finds a container by name, full id or id prefix.
    pub fn resolve(&self, r: &str) -> Result<Container> {
        let all = self.list()?;
        if let Some(c) = all.iter().find(|c| c.name == r || c.id == r) {
            return Ok(c.clone());
        }
        let m: Vec<&Container> = all.iter().filter(|c| c.id.starts_with(r)).collect();
        match m.len() {
            1 if !r.is_empty() => Ok(m[0].clone()),
            0 | 1 => Err(ContainerError::NotFound(r.to_string())),
            _ => Err(ContainerError::Ambiguous(r.to_string())),
        }
    }

    /// Creates the container's directories and record, and registers it in
    /// the store so its image is kept.
    pub fn create(
        &self,
        name: Option<&str>,
        image: &Digest,
        image_ref: &str,
        layers: Vec<PathBuf>,
        spec: RunSpec,
        auto_remove: bool,
    ) -> Result<Container> {
        let id = random_id();
        let name = match name {
            Some(n) => {
                if !valid_name(n) {
                    return Err(ContainerError::Invalid {
                        what: "container name",
                        value: n.to_string(),
                    });
                }
                n.to_string()
            }
            None => format!("cairn-{}", &id[..8]),
        };
        let _g = self.store.lock_meta()?;
        // Names are unique: checked under meta.lock, which `create` holds.
        if self.list()?.iter().any(|c| c.name == name) {
            return Err(ContainerError::NameInUse(name));
        }
        let d = self.dir(&id);
        for sub in ["upper", "work", "merged", "init"] {
            let p = d.join(sub);
            fs::create_dir_all(&p).with_ctx(|| format!("creating {}", p.display()))?;
        }
        let c = Container {
            id: id.clone(),
            name: name.clone(),
            image: image.clone(),
            image_ref: image_ref.to_string(),
            layers,
            spec,
            created: crate::store::now_rfc3339(),
            status: Status::Created,
            started_at: None,
            finished_at: None,
            exit_code: None,
            pid: None,
            auto_remove,
            host_mounted: false,
        };
        self.save(&c)?;
        drop(_g);
        self.store.update_meta(|m| {
            m.containers.insert(
                id.clone(),
                ContainerRecord {
                    image: image.clone(),
                    name: Some(name.clone()),
                },
            );
            Ok(())
        })?;
        Ok(c)
    }

    fn lock_file(&self, id: &str) -> Result<File> {
        let p = self.dir(id).join("lock");
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .with_ctx(|| format!("opening {}", p.display()))
    }

    /// Takes the run lock, failing with `Running` when it is held.
    pub fn lock_run(&self, id: &str) -> Result<RunLock> {
        let f = self.lock_file(id)?;
        match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(RunLock { file: f }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(ContainerError::Running(id.to_string())),
            Err(e) => Err(e).ctx("locking container"),
        }
    }

    /// Whether some process holds the run lock (the container runs).
    pub fn is_running(&self, id: &str) -> bool {
        match self.lock_file(id) {
            Ok(f) => matches!(
                rustix::fs::flock(&f, FlockOperation::NonBlockingLockShared),
                Err(rustix::io::Errno::WOULDBLOCK)
            ),
            Err(_) => false,
        }
    }

    /// Removes a stopped container's files and record.
    pub fn remove(&self, c: &Container) -> Result<()> {
        let d = self.dir(&c.id);
        super::userns::remove_tree(&d)?;
        self.store.update_meta(|m| {
            m.containers.remove(&c.id);
            Ok(())
        })?;
        Ok(())
    }
}

/// Tests whether the canonical path `p` is a mountpoint in this mount
/// namespace (read from mountinfo: no access to a possibly dead mount).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    mi.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}
