//! Errors of the library's setup paths. Filesystem operations themselves
//! return an errno (`rustix::io::Errno`) that goes straight to the kernel.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid mount options: {0}")]
    Options(String),
    #[error("{what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Layout(String),
    #[error("mount failed: {0}")]
    Mount(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
