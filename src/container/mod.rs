//! Containers: an image's layers merged by cairnfs under a private upper
//! layer, run in their own namespaces (rootless through a user namespace).
//!
//! Process tree of `cairn run` (see `docs/run.md`):
//!
//! ```text
//! cairn run (monitor: host namespaces; signals, pty, state)
//!  └─ helper  (unshare user ns when rootless + mount ns; cairnfs's parent)
//!      ├─ cairnfs -f  (serves ROOT/containers/ID/merged, outside the container)
//!      └─ init, pid 1 (new pid/mount/uts/ipc[/net] ns; pivot_root into merged)
//!          └─ the command
//! ```

pub mod commit;
pub mod config;
pub mod diff;
pub mod init;
pub mod launch;
pub mod mounts;
pub mod userns;

use std::io;
use std::path::PathBuf;

/// Errors of the container library.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("container name {0:?} is already in use")]
    NameInUse(String),
    #[error("container reference {0:?} is ambiguous")]
    Ambiguous(String),
    #[error("container {0} is running")]
    Running(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("invalid {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error("no command given and the image has none")]
    NoCommand,
    #[error("cannot find the cairnfs program (looked next to {0} and in PATH)")]
    NoCairnfs(PathBuf),
    #[error("{0}")]
    Launch(String),
}

pub type Result<T, E = ContainerError> = std::result::Result<T, E>;

/// Attach a human context to an I/O error.
pub(crate) trait Ctx<T> {
    fn ctx<C: std::fmt::Display>(self, c: C) -> Result<T>;
    fn with_ctx<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: Into<io::Error>> Ctx<T> for std::result::Result<T, E> {
    fn ctx<C: std::fmt::Display>(self, c: C) -> Result<T> {
        self.map_err(|e| ContainerError::Io {
            context: c.to_string(),
            source: e.into(),
        })
    }
    fn with_ctx<C: std::fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| ContainerError::Io {
            context: f().to_string(),
            source: e.into(),
        })
    }
}

/// Whether this process runs as real root (no user namespace needed).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
