//! A bounded cache of directory fds keyed by (layer, node).
//!
//! Resolving a name needs the parent directory open in each layer; opening
//! it by path costs a path walk per layer. Keeping the most recently used
//! ones open makes lookups cost one `fstatat` per layer, while the LRU bound
//! keeps the server's fd count flat however large the tree walked.
//! An fd follows its directory through renames; entries are dropped when
//! the node is forgotten or removed.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::inode::{Ino, LayerId};

type Lru = LruCache<(LayerId, Ino), Arc<OwnedFd>>;

pub struct DirCache {
    inner: Option<Mutex<Lru>>,
}

impl DirCache {
    /// A cache of at most `cap` fds; 0 disables it.
    pub fn new(cap: usize) -> DirCache {
        DirCache {
            inner: NonZeroUsize::new(cap).map(|c| Mutex::new(LruCache::new(c))),
        }
    }

    pub fn get(&self, lid: LayerId, ino: Ino) -> Option<Arc<OwnedFd>> {
        let m = self.inner.as_ref()?;
        m.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(lid, ino))
            .cloned()
    }

    pub fn put(&self, lid: LayerId, ino: Ino, fd: Arc<OwnedFd>) {
        if let Some(m) = &self.inner {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .put((lid, ino), fd);
        }
    }

    /// Drops the fds of a directory node in `layers` (forgotten, removed
    /// or replaced).
    pub fn forget(&self, ino: Ino, layers: impl IntoIterator<Item = LayerId>) {
        if let Some(m) = &self.inner {
            let mut c = m.lock().unwrap_or_else(|p| p.into_inner());
            for lid in layers {
                c.pop(&(lid, ino));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |m| m.lock().unwrap_or_else(|p| p.into_inner()).len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
