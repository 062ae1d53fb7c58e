//! Which lower layers hold each name of a directory merged across many.
//!
//! Resolving a name in a directory merged across many layers probes every
//! layer in turn: an `fstatat` of the name and, where it is missing, one of
//! its `.wh.` whiteout. In a 100-layer image that is 200 syscalls for a
//! name that lives in the bottom layer. Once a directory of a deep stack has
//! been looked into, this index maps each of its names to the few layers
//! that hold the name or its whiteout, so a lookup costs one hash probe and
//! syscalls only in those layers, however deep the stack.
//!
//! Only lower layers are indexed: they never change through the mount, so
//! no write path has to keep the index up to date. Changes made to a lower
//! layer behind the mount's back are seen when an entry expires, after the
//! same `timeout=` the kernel's own entry cache uses (0 disables the index).
//! Memory is bounded by a budget of names across all entries, evicting the
//! least recently used directories; huge directories are not indexed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::inode::{Ino, LayerId};
use crate::layer::Result;

/// Directories held by fewer lower layers resolve fast enough by probing.
pub const MIN_LAYERS: usize = 4;
/// Names kept across all entries (about 50 bytes each).
const NAME_BUDGET: usize = 256 * 1024;
/// A directory with more names than this (all layers) is probed, not indexed.
const MAX_DIR_NAMES: usize = 64 * 1024;

/// For each name: the lower layers that hold it or its `.wh.` whiteout,
/// topmost first.
type Holders = HashMap<Box<[u8]>, Vec<LayerId>>;

struct Entry {
    built: Instant,
    /// The lower layers the entry was built from, topmost first.
    layers: Box<[LayerId]>,
    /// `None`: too large (or unreadable) to index; probe it.
    holders: Option<Arc<Holders>>,
}

struct State {
    lru: LruCache<Ino, Entry>,
    names: usize,
}

impl State {
    fn remove(&mut self, ino: Ino) {
        if let Some(e) = self.lru.pop(&ino) {
            self.names -= e.holders.map_or(0, |h| h.len());
        }
    }
}

/// What the index knows of one name.
pub enum Holding {
    /// Not indexed: probe every layer.
    Unknown,
    /// Only these lower layers can hold the name or its whiteout.
    Only(Vec<LayerId>),
}

impl Holding {
    /// Whether lower layer `lid` has to be probed.
    pub fn may_hold(&self, lid: LayerId) -> bool {
        match self {
            Holding::Unknown => true,
            Holding::Only(l) => l.contains(&lid),
        }
    }
}

pub struct NameIndex {
    state: Option<Mutex<State>>,
    ttl: Duration,
}

impl NameIndex {
    /// An index whose entries live `ttl`; a zero `ttl` disables it.
    pub fn new(ttl: Duration) -> NameIndex {
        NameIndex {
            state: (!ttl.is_zero()).then(|| {
                Mutex::new(State {
                    lru: LruCache::unbounded(),
                    names: 0,
                })
            }),
            ttl,
        }
    }

    /// Which of `lowers` (directory node `dir`'s lower layers, topmost
    /// first) may hold `name`; `open` gives the directory's fd in a layer,
    /// and is called only when the entry is (re)built.
    pub fn lookup(
        &self,
        dir: Ino,
        lowers: &[LayerId],
        name: &OsStr,
        open: impl Fn(LayerId) -> Result<Arc<OwnedFd>>,
    ) -> Holding {
        let Some(state) = &self.state else {
            return Holding::Unknown;
        };
        if lowers.len() < MIN_LAYERS {
            return Holding::Unknown;
        }
        let cached = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            match s.lru.get(&dir) {
                Some(e) if e.built.elapsed() < self.ttl && *e.layers == *lowers => {
                    Some(e.holders.clone())
                }
                _ => None,
            }
        };
        let holders = match cached {
            Some(h) => h,
            None => {
                // Read outside the lock: other lookups go on meanwhile.
                let holders = build(lowers, &open).map(Arc::new);
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.remove(dir);
                s.names += holders.as_ref().map_or(0, |h| h.len());
                s.lru.put(
                    dir,
                    Entry {
                        built: Instant::now(),
                        layers: lowers.into(),
                        holders: holders.clone(),
                    },
                );
                while s.names > NAME_BUDGET {
                    match s.lru.pop_lru() {
                        Some((_, e)) => s.names -= e.holders.map_or(0, |h| h.len()),
                        None => break,
                    }
                }
                holders
            }
        };
        match holders {
            None => Holding::Unknown,
            Some(h) => Holding::Only(h.get(name.as_bytes()).cloned().unwrap_or_default()),
        }
    }

    /// Drops the entry of directory node `dir` (forgotten or removed).
    pub fn forget(&self, dir: Ino) {
        if let Some(state) = &self.state {
            state.lock().unwrap_or_else(|p| p.into_inner()).remove(dir);
        }
    }
}

/// The holders of every name of the directory in `lowers`, or `None` when a
/// layer cannot be read or the directory is too large (the caller then
/// probes, which is always correct).
fn build(lowers: &[LayerId], open: &impl Fn(LayerId) -> Result<Arc<OwnedFd>>) -> Option<Holders> {
    let mut holders = Holders::new();
    let mut total = 0;
    for &lid in lowers {
        // `open` gives an O_PATH fd: open the directory itself to read it.
        let fd = rustix::fs::openat(
            &*open(lid).ok()?,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .ok()?;
        for ent in rustix::fs::Dir::new(fd).ok()? {
            let ent = ent.ok()?;
            let b = ent.file_name().to_bytes();
            if b == b"." || b == b".." {
                continue;
            }
            total += 1;
            if total > MAX_DIR_NAMES {
                return None;
            }
            // A whiteout `.wh.NAME` counts as a holder of NAME.
            let key = b.strip_prefix(crate::format::WH_PREFIX).unwrap_or(b);
            let layers = holders.entry(Box::from(key)).or_default();
            if layers.last() != Some(&lid) {
                layers.push(lid);
            }
        }
    }
    Some(holders)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn dir_of(p: &Path) -> Arc<OwnedFd> {
        Arc::new(
            rustix::fs::open(
                p,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap(),
        )
    }

    /// Five layer dirs (ids 1..=5) and an `open` over them.
    fn layers() -> (tempfile::TempDir, Vec<LayerId>) {
        let t = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            std::fs::create_dir(t.path().join(i.to_string())).unwrap();
        }
        (t, (1..=5).collect())
    }

    fn only(h: Holding) -> Vec<LayerId> {
        match h {
            Holding::Only(l) => l,
            Holding::Unknown => panic!("not indexed"),
        }
    }

    #[test]
    fn maps_names_and_whiteouts_to_the_layers_holding_them() {
        let (t, ls) = layers();
        std::fs::write(t.path().join("2/a"), "").unwrap();
        std::fs::write(t.path().join("5/a"), "").unwrap();
        std::fs::write(t.path().join("3/.wh.a"), "").unwrap();
        std::fs::write(t.path().join("4/.wh.gone"), "").unwrap();
        let open = |lid: LayerId| Ok(dir_of(&t.path().join(lid.to_string())));
        let idx = NameIndex::new(Duration::from_secs(60));
        assert_eq!(only(idx.lookup(7, &ls, OsStr::new("a"), open)), [2, 3, 5]);
        assert_eq!(only(idx.lookup(7, &ls, OsStr::new("gone"), open)), [4]);
        assert!(only(idx.lookup(7, &ls, OsStr::new("b"), open)).is_empty());
        // Cached: a name added behind its back is not seen until forget.
        std::fs::write(t.path().join("1/b"), "").unwrap();
        assert!(only(idx.lookup(7, &ls, OsStr::new("b"), open)).is_empty());
        idx.forget(7);
        assert_eq!(only(idx.lookup(7, &ls, OsStr::new("b"), open)), [1]);
        // Another layer list (the dir changed layers): rebuilt.
        std::fs::write(t.path().join("2/b"), "").unwrap();
        assert_eq!(only(idx.lookup(7, &ls[1..], OsStr::new("b"), open)), [2]);
    }

    #[test]
    fn shallow_stacks_a_zero_ttl_and_unreadable_dirs_are_not_indexed() {
        let (t, ls) = layers();
        let open = |lid: LayerId| Ok(dir_of(&t.path().join(lid.to_string())));
        let idx = NameIndex::new(Duration::from_secs(60));
        assert!(matches!(
            idx.lookup(1, &ls[..3], OsStr::new("x"), open),
            Holding::Unknown
        ));
        let off = NameIndex::new(Duration::ZERO);
        assert!(matches!(
            off.lookup(1, &ls, OsStr::new("x"), open),
            Holding::Unknown
        ));
        let failing = |lid: LayerId| {
            if lid == 3 {
                Err(rustix::io::Errno::NOENT)
            } else {
                open(lid)
            }
        };
        assert!(matches!(
            idx.lookup(2, &ls, OsStr::new("x"), failing),
            Holding::Unknown
        ));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let (t, ls) = layers();
        let open = |lid: LayerId| Ok(dir_of(&t.path().join(lid.to_string())));
        let idx = NameIndex::new(Duration::from_millis(50));
        assert!(only(idx.lookup(1, &ls, OsStr::new("late"), open)).is_empty());
        std::fs::write(t.path().join("4/late"), "").unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(only(idx.lookup(1, &ls, OsStr::new("late"), open)), [4]);
    }
}
