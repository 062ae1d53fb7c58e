//! Merged directory listings: each name once, the topmost entry wins, and
//! whiteouts (0:0 devices, `.wh.` files) hide names of the layers below.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::format::{OPAQUE_FILE, is_whiteout_dev, whiteout_target};
use crate::handle::Handle;
use crate::inode::{Ino, LayerId, UPPER};
use crate::layer::{Result, stat_at};
use crate::overlay::{NodePath, Overlay};

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: Ino,
    pub name: OsString,
    /// S_IFMT bits.
    pub fmt: u32,
}

/// One visible name found while merging, before inode numbers are known.
pub(crate) struct Raw {
    name: OsString,
    fmt: u32,
    layer: LayerId,
    d_ino: u64,
    /// A directory first seen in the upper layer that also has a lower dir.
    merged_below: bool,
    /// The origin inode number of a copied-up file.
    origin: Option<u64>,
}

/// Entries handed to the adapter per readdir call (it fills one reply buffer).
const READDIR_BATCH: usize = 256;

fn fmt_of_type(t: FileType) -> u32 {
    t.as_raw_mode()
}

impl Overlay {
    /// The visible entries of directory `ino`, without `.` and `..`.
    pub fn merged_entries(&self, ino: Ino) -> Result<Vec<DirEntry>> {
        let (node, path) = self.node_path(ino)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        let raw = self.list_merged(&path, &node.layers, None)?;
        Ok(self.number_entries(ino, &node.layers, &path, raw))
    }

    /// Merges the listings of directory `path` in `layers` (topmost first),
    /// stopping after `limit` visible names when given.
    pub(crate) fn list_merged(
        &self,
        path: &NodePath,
        layers: &[LayerId],
        limit: Option<usize>,
    ) -> Result<Vec<Raw>> {
        let mut seen: HashSet<OsString> = HashSet::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        let mut raw: Vec<Raw> = Vec::new();
        for (i, &lid) in layers.iter().enumerate() {
            let last = i + 1 == layers.len();
            let dir = match self.layer(lid)?.open_beneath(
                path.at(lid),
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            ) {
                Ok(d) => d,
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let mut new_hidden: Vec<OsString> = Vec::new();
            let d = rustix::fs::Dir::read_from(&dir)?;
            for ent in d {
                let ent = ent?;
                let bytes = ent.file_name().to_bytes();
                if bytes == b"." || bytes == b".." || bytes == OPAQUE_FILE.as_bytes() {
                    continue;
                }
                if let Some(target) = whiteout_target(bytes) {
                    if !last {
                        new_hidden.push(OsStr::from_bytes(target).to_os_string());
                    }
                    continue;
                }
                if bytes.starts_with(b".wh.") {
                    continue;
                }
                let name = OsStr::from_bytes(bytes);
                if hidden.contains(name) {
                    continue;
                }
                let mut ft = ent.file_type();
                if ft == FileType::CharacterDevice || ft == FileType::Unknown {
                    let st = match stat_at(&dir, name) {
                        Ok(st) => st,
                        Err(Errno::NOENT) => continue,
                        Err(e) => return Err(e),
                    };
                    if is_whiteout_dev(&st) {
                        if !last {
                            new_hidden.push(name.to_os_string());
                        }
                        continue;
                    }
                    ft = FileType::from_raw_mode(st.st_mode);
                }
                if seen.contains(name) {
                    // The same directory lower down: the upper one is merged.
                    if ft == FileType::Directory
                        && let Some(r) = raw.iter_mut().find(|r| r.name == name)
                        && r.layer == UPPER
                        && r.fmt == libc::S_IFDIR
                    {
                        r.merged_below = true;
                    }
                    continue;
                }
                seen.insert(name.to_os_string());
                let origin = match (&self.work, lid) {
                    (Some(w), UPPER) if ft != FileType::Directory => w.read_origin(&dir, name),
                    _ => None,
                };
                raw.push(Raw {
                    origin,
                    name: name.to_os_string(),
                    fmt: fmt_of_type(ft),
                    layer: lid,
                    d_ino: ent.ino(),
                    merged_below: false,
                });
                if limit.is_some_and(|l| raw.len() >= l) {
                    return Ok(raw);
                }
            }
            hidden.extend(new_hidden);
        }
        Ok(raw)
    }

    /// Gives each entry the inode number stat would show for it.
    fn number_entries(
        &self,
        parent: Ino,
        parent_layers: &[LayerId],
        parent_path: &NodePath,
        raw: Vec<Raw>,
    ) -> Vec<DirEntry> {
        let mut out = Vec::with_capacity(raw.len());
        let mut resolve_later = Vec::new();
        {
            let t = self.read_nodes();
            for r in raw {
                let known = t.child(parent, &r.name).filter(|i| {
                    t.get(*i)
                        .is_some_and(|n| !n.unlinked && n.parent == parent && n.name == r.name)
                });
                let ino = match known {
                    Some(i) => i,
                    None if r.merged_below => {
                        resolve_later.push(out.len());
                        0
                    }
                    None => t.ino_for(r.layer, r.d_ino, r.origin),
                };
                out.push(DirEntry {
                    ino,
                    name: r.name,
                    fmt: r.fmt,
                });
            }
        }
        for i in resolve_later {
            let e: &mut DirEntry = &mut out[i];
            e.ino = match self.resolve(parent, parent_path, parent_layers, &e.name) {
                Ok(Some(f)) => self.read_nodes().ino_for(f.identity.0, f.identity.1, None),
                _ => 0,
            };
        }
        out
    }

    pub fn opendir(&self, ino: Ino) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return Err(Errno::NOTDIR);
        }
        Ok(self.handles.insert(Handle::Dir {
            ino,
            entries: Mutex::new(Vec::new()),
        }))
    }

    /// Entries from `offset` on, `.` and `..` first; offset 0 (a fresh
    /// opendir or a rewinddir) takes a new snapshot of the merged listing.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>> {
        let h = self.handles.get(fh).ok_or(Errno::BADF)?;
        let Handle::Dir { ino, entries } = &*h else {
            return Err(Errno::BADF);
        };
        let mut entries = entries.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 {
            let parent = self.node(*ino).map(|n| n.parent).unwrap_or(*ino);
            let mut list = vec![
                DirEntry {
                    ino: *ino,
                    name: ".".into(),
                    fmt: libc::S_IFDIR,
                },
                DirEntry {
                    ino: parent,
                    name: "..".into(),
                    fmt: libc::S_IFDIR,
                },
            ];
            list.extend(self.merged_entries(*ino)?);
            *entries = list;
        }
        Ok(entries
            .iter()
            .enumerate()
            .skip(offset as usize)
            .take(READDIR_BATCH)
            .map(|(i, e)| (i as u64 + 1, e.clone()))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove(fh);
    }
}
