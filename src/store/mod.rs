//! The image store: content-addressed blobs, unpacked layers shared by
//! chain id, and image/tag metadata.
//!
//! Layout of a store root:
//!
//! ```text
//! ROOT/gc.lock               flock: shared by every writer, exclusive for GC
//! ROOT/meta.lock             flock: exclusive around images.json updates
//! ROOT/images.json           images, tags and (later) containers
//! ROOT/blobs/sha256/HEX      manifests, configs and layer blobs as received
//! ROOT/layers/HEX/           one dir per layer, keyed by chain id
//! ROOT/layers/HEX/layer.json the layer's record (written before the rename)
//! ROOT/layers/HEX/diff/      the unpacked layer (whiteouts kept as files)
//! ROOT/tmp/                  staging; everything here is garbage once no
//!                            process holds gc.lock
//! ```
//!
//! Everything that becomes visible under `blobs/`, `layers/` or in
//! `images.json` is complete and verified: it is written in `tmp/` first
//! and renamed into place.

pub mod archive;
pub mod blob;
pub mod df;
pub mod digest;
pub mod gc;
pub mod meta;
pub mod reference;
pub mod unpack;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::FlockOperation;

pub use digest::Digest;

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("unsafe layer entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("invalid layer entry {entry:?}: {reason}")]
    InvalidEntry { entry: String, reason: String },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid JSON in {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} refers to {name}, which is not in the archive")]
    MissingBlob { what: String, name: String },
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    #[error("invalid image reference {0:?}")]
    InvalidReference(String),
    #[error("no such image: {0}")]
    ImageNotFound(String),
    #[error("image reference {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attach a human context to an I/O error.
pub trait IoContext<T> {
    fn ctx<C: std::fmt::Display>(self, context: C) -> Result<T>;
    fn with_ctx<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn ctx<C: std::fmt::Display>(self, context: C) -> Result<T> {
        self.map_err(|e| StoreError::Io {
            context: context.to_string(),
            source: e.into(),
        })
    }
    fn with_ctx<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| StoreError::Io {
            context: f().to_string(),
            source: e.into(),
        })
    }
}

/// Progress reporting hooks; the library stays quiet by default.
pub trait Progress: Sync {
    /// A new unit of work (a layer, a blob) of `total` bytes starts.
    fn start(&self, _what: &str, _total: u64) {}
    /// `n` more bytes of the current unit were processed.
    fn advance(&self, _n: u64) {}
    /// The current unit is finished.
    fn finish(&self) {}
}

/// A [`Progress`] that reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// An open image store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held flock; released on drop.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// Open (creating if needed) a store at `root`. Leftovers of interrupted
    /// commands are removed when no other process uses the store.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).with_ctx(|| format!("creating {}", p.display()))?;
        }
        let store = Store { root };
        store.clean_leftovers()?;
        Ok(store)
    }

    /// The default store location: `$CAIRN_ROOT`, else `/var/lib/cairn` for
    /// root, else `$XDG_DATA_HOME/cairn` or `~/.local/share/cairn`.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("CAIRN_ROOT").filter(|v| !v.is_empty()) {
            return PathBuf::from(r);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/cairn");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("cairn");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/cairn")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Directory of the layer with this chain id (contains `diff/`).
    pub fn layer_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("layers").join(chain_id.hex())
    }

    /// The unpacked tree of a layer.
    pub fn layer_diff_path(&self, chain_id: &Digest) -> PathBuf {
        self.layer_path(chain_id).join("diff")
    }

    /// A layer counts as present only with its record, which is written
    /// before the layer is renamed into place.
    pub fn has_layer(&self, chain_id: &Digest) -> bool {
        self.layer_path(chain_id).join("layer.json").is_file()
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Create a fresh staging directory under `tmp/`, removed on drop.
    pub fn staging(&self, kind: &str) -> Result<Staging> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self
            .tmp_dir()
            .join(format!("{kind}-{}-{nanos:x}-{seq}", std::process::id()));
        fs::create_dir(&path).with_ctx(|| format!("creating {}", path.display()))?;
        Ok(Staging { path })
    }

    fn lock_file(&self, name: &str) -> Result<File> {
        let p = self.root.join(name);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .with_ctx(|| format!("opening lock {}", p.display()))
    }

    /// Shared use of the store: held by every command that adds data.
    pub fn lock_shared(&self) -> Result<LockGuard> {
        let f = self.lock_file("gc.lock")?;
        rustix::fs::flock(&f, FlockOperation::LockShared).ctx("locking gc.lock (shared)")?;
        Ok(LockGuard { _file: f })
    }

    /// Exclusive use of the store: garbage collection and removal.
    pub fn lock_exclusive(&self) -> Result<LockGuard> {
        let f = self.lock_file("gc.lock")?;
        rustix::fs::flock(&f, FlockOperation::LockExclusive).ctx("locking gc.lock (exclusive)")?;
        Ok(LockGuard { _file: f })
    }

    /// Serializes read-modify-write of the metadata file.
    pub fn lock_meta(&self) -> Result<LockGuard> {
        let f = self.lock_file("meta.lock")?;
        rustix::fs::flock(&f, FlockOperation::LockExclusive).ctx("locking meta.lock")?;
        Ok(LockGuard { _file: f })
    }

    /// Remove what interrupted commands left in `tmp/`, if nobody else is
    /// using the store right now (else a later command does it).
    pub fn clean_leftovers(&self) -> Result<()> {
        let f = self.lock_file("gc.lock")?;
        match rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => self.clean_tmp_locked(),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(()),
            Err(e) => Err(e).ctx("locking gc.lock"),
        }
    }

    /// Remove everything in `tmp/`; the caller holds the exclusive lock.
    pub(crate) fn clean_tmp_locked(&self) -> Result<()> {
        let tmp = self.tmp_dir();
        let rd = match fs::read_dir(&tmp) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_ctx(|| format!("reading {}", tmp.display())),
        };
        for ent in rd {
            let ent = ent.with_ctx(|| format!("reading {}", tmp.display()))?;
            remove_any(&ent.path())?;
        }
        Ok(())
    }
}

/// A directory under `tmp/` that is removed when dropped.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.path) {
            log::warn!("removing {}: {e}", self.path.display());
        }
    }
}

/// Remove a file or a whole tree (making read-only dirs writable first).
pub(crate) fn remove_any(p: &Path) -> Result<()> {
    let md = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_ctx(|| format!("stat {}", p.display())),
    };
    if md.is_dir() {
        unpack::remove_tree_path(p).with_ctx(|| format!("removing {}", p.display()))
    } else {
        fs::remove_file(p).with_ctx(|| format!("removing {}", p.display()))
    }
}

/// fsync a directory so renames into it are durable.
pub(crate) fn sync_dir(p: &Path) -> Result<()> {
    let f = File::open(p).with_ctx(|| format!("opening {}", p.display()))?;
    f.sync_all().with_ctx(|| format!("fsync {}", p.display()))
}

/// Seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
