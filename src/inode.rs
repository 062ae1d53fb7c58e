//! The table of nodes the kernel knows about.
//!
//! A node is a name in the merged tree: its parent and name, its type, and
//! the layers that hold it (topmost first). It keeps no open fd: objects are
//! reached by path beneath a layer root when needed, so memory does not grow
//! with open descriptors.
//!
//! Inode numbers are derived from the backing object, `(layer + 1) << 48 |
//! st_ino`, so they are unique within the mount and the same from readdir and
//! stat. A node keeps its number when it is copied up: both the lower and the
//! upper identity map to it.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use smallvec::SmallVec;
use thin_vec::ThinVec;

pub type Ino = u64;
pub const ROOT: Ino = 1;

/// Index of a layer: 0 is the upper dir, `i + 1` is lower dir `i`.
pub type LayerId = u16;
pub const UPPER: LayerId = 0;

const LAYER_SHIFT: u32 = 48;
const INO_MASK: u64 = (1 << LAYER_SHIFT) - 1;
/// Numbers handed out when the derived one is taken or does not fit.
const DYNAMIC_BASE: u64 = 0xffff << LAYER_SHIFT;

/// The layers of a node, topmost first: inline up to 8, so a node costs no
/// allocation for them (the table holds one node per name the kernel knows).
pub type Layers = SmallVec<[LayerId; 8]>;
/// Other names of a hard-linked node: nearly always none (8 bytes then).
pub type Aliases = ThinVec<(Ino, OsString)>;

#[derive(Debug, Clone)]
pub struct Node {
    pub parent: Ino,
    pub name: OsString,
    /// S_IFMT bits of the object.
    pub fmt: u32,
    /// The layers holding the object, topmost first. A non-directory lives in
    /// exactly one; a merged directory in several.
    pub layers: Layers,
    /// The kernel's lookup count.
    pub lookups: u64,
    /// Backing identities `(layer, st_ino)` registered for this node.
    pub backing: SmallVec<[(LayerId, u64); 1]>,
    /// Where a renamed directory's lower dirs are (kernel `redirect`),
    /// relative to the layer roots; None when it is its own path.
    pub redirect: Option<Box<Path>>,
    /// Other names of a hard-linked object, used when the first goes away.
    pub aliases: Aliases,
    /// No name refers to this node any more (it may still be open).
    pub unlinked: bool,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        self.fmt == libc::S_IFDIR
    }
    pub fn top(&self) -> LayerId {
        self.layers.first().copied().unwrap_or(UPPER)
    }
    pub fn in_upper(&self) -> bool {
        self.layers.first() == Some(&UPPER)
    }
    /// An upper file holding only metadata (kernel `metacopy`): its data
    /// still lives in the lower layer after it.
    pub fn is_metacopy(&self) -> bool {
        self.fmt != libc::S_IFDIR && self.layers.len() > 1
    }
    /// The layer whose file holds the data.
    pub fn data_layer(&self) -> LayerId {
        if self.is_metacopy() {
            self.layers[1]
        } else {
            self.top()
        }
    }
}

#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: HashMap<Ino, Node>,
    by_name: HashMap<(Ino, OsString), Ino>,
    by_backing: HashMap<(LayerId, u64), Ino>,
    next_dynamic: u64,
}

impl NodeTable {
    pub fn new(root_layers: Vec<LayerId>) -> NodeTable {
        let mut t = NodeTable {
            next_dynamic: DYNAMIC_BASE,
            ..Default::default()
        };
        t.nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: OsString::new(),
                fmt: libc::S_IFDIR,
                layers: root_layers.into(),
                lookups: 1,
                backing: SmallVec::new(),
                redirect: None,
                aliases: ThinVec::new(),
                unlinked: false,
            },
        );
        t
    }

    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: Ino) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The path of a node relative to a layer root ("" for the root).
    pub fn path(&self, ino: Ino) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let n = self.nodes.get(&cur)?;
            if n.unlinked {
                return None;
            }
            parts.push(&n.name);
            cur = n.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        let mut p = PathBuf::new();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Some(p)
    }

    /// The path of a node in the lower layers: as `path`, except below a
    /// redirected directory, whose lower dirs live at its redirect.
    pub fn lower_path(&self, ino: Ino) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        let mut base = PathBuf::new();
        while cur != ROOT {
            let n = self.nodes.get(&cur)?;
            if n.unlinked {
                return None;
            }
            if let Some(r) = &n.redirect {
                base = r.to_path_buf();
                break;
            }
            parts.push(&n.name);
            cur = n.parent;
            if parts.len() > 4096 {
                return None;
            }
        }
        for part in parts.iter().rev() {
            base.push(part);
        }
        Some(base)
    }

    pub fn set_redirect(&mut self, ino: Ino, r: Option<PathBuf>) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.redirect = r.map(PathBuf::into_boxed_path);
        }
    }

    pub fn child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.by_name.get(&(parent, name.to_os_string())).copied()
    }

    /// The number a backing object has or would get, without registering it.
    pub fn ino_for(&self, layer: LayerId, st_ino: u64, origin: Option<Ino>) -> Ino {
        if let Some(&i) = self.by_backing.get(&(layer, st_ino)) {
            return i;
        }
        origin.or_else(|| derived(layer, st_ino)).unwrap_or(0)
    }

    /// Finds or creates the node for `(parent, name)` backed by `(layer,
    /// st_ino)`, refreshes its location, and counts one kernel lookup when
    /// `count` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn upsert(
        &mut self,
        parent: Ino,
        name: &OsStr,
        fmt: u32,
        layers: Vec<LayerId>,
        identity: (LayerId, u64),
        preferred: Option<Ino>,
        count: bool,
    ) -> Ino {
        let key = (parent, name.to_os_string());
        let existing = self
            .by_backing
            .get(&identity)
            .copied()
            .or_else(|| self.by_name.get(&key).copied())
            .filter(|i| self.nodes.get(i).is_some_and(|n| n.fmt == fmt));
        let ino = match existing {
            Some(i) => i,
            None => {
                let free = |i: &Ino| *i > ROOT && !self.nodes.contains_key(i);
                let ino = match preferred
                    .filter(free)
                    .or_else(|| derived(identity.0, identity.1).filter(free))
                {
                    Some(i) => i,
                    None => self.dynamic(),
                };
                self.nodes.insert(
                    ino,
                    Node {
                        parent,
                        name: name.to_os_string(),
                        fmt,
                        layers: SmallVec::new(),
                        lookups: 0,
                        backing: SmallVec::new(),
                        redirect: None,
                        aliases: ThinVec::new(),
                        unlinked: false,
                    },
                );
                ino
            }
        };
        // A different node previously under this name is no longer reachable by it.
        if let Some(old) = self.by_name.insert(key, ino)
            && old != ino
            && let Some(n) = self.nodes.get(&old)
            && n.parent == parent
            && n.name == name
        {
            self.mark_unlinked(old);
        }
        self.by_backing.insert(identity, ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            if !n.backing.contains(&identity) {
                n.backing.push(identity);
            }
            // The name just resolved becomes the one used for access: its
            // layers are the ones found now (another name of a hard link may
            // still be lower-only). The others stay known as aliases.
            if !(n.parent == parent && n.name == name) {
                if !n.unlinked && !n.layers.is_empty() {
                    let old = (n.parent, std::mem::take(&mut n.name));
                    n.aliases.push(old);
                }
                n.aliases.retain(|(p, a)| !(*p == parent && a == name));
                n.parent = parent;
                n.name = name.to_os_string();
            }
            n.unlinked = false;
            n.layers = layers.into();
            if count {
                n.lookups += 1;
            }
        }
        ino
    }

    /// After a copy-up that broke a hard link (no index): the other names
    /// are different files from now on, so they get nodes of their own.
    pub fn detach_aliases(&mut self, ino: Ino) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        let aliases = std::mem::take(&mut n.aliases);
        let lower: Vec<_> = n.backing.iter().copied().filter(|b| b.0 != UPPER).collect();
        n.backing.retain(|b| b.0 == UPPER);
        for id in lower {
            if self.by_backing.get(&id) == Some(&ino) {
                self.by_backing.remove(&id);
            }
        }
        for key in aliases {
            if self.by_name.get(&key) == Some(&ino) {
                self.by_name.remove(&key);
            }
        }
    }

    /// Records an extra backing identity (after a copy-up).
    pub fn add_backing(&mut self, ino: Ino, identity: (LayerId, u64)) {
        self.by_backing.insert(identity, ino);
        if let Some(n) = self.nodes.get_mut(&ino)
            && !n.backing.contains(&identity)
        {
            n.backing.push(identity);
        }
    }

    /// Drops the name `(parent, name)`. When it was the name used for access,
    /// another name of the same (hard-linked) object takes over, or the node
    /// is marked unlinked. Upper backing identities of an unlinked node are
    /// released so a recycled upper inode number is not mistaken for it.
    pub fn remove_name(&mut self, parent: Ino, name: &OsStr) {
        let Some(ino) = self.by_name.remove(&(parent, name.to_os_string())) else {
            return;
        };
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        n.aliases.retain(|(p, a)| !(*p == parent && a == name));
        if n.parent == parent && n.name == name {
            match n.aliases.pop() {
                Some((p, a)) => {
                    n.parent = p;
                    n.name = a;
                }
                None => self.mark_unlinked(ino),
            }
        }
    }

    fn mark_unlinked(&mut self, ino: Ino) {
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        n.unlinked = true;
        let ids: Vec<_> = n.backing.drain(..).collect();
        for id in ids {
            if self.by_backing.get(&id) == Some(&ino) {
                self.by_backing.remove(&id);
            }
        }
    }

    /// Moves a node to a new name (rename). Descendants follow automatically
    /// since paths are computed through parents.
    /// The name `(old_parent, old_name)` of node `ino` becomes `(new_parent,
    /// new_name)`: its name used for access when that was it, else the alias.
    pub fn rename(
        &mut self,
        ino: Ino,
        old_parent: Ino,
        old_name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
    ) {
        let old = (old_parent, old_name.to_os_string());
        if self.by_name.get(&old) == Some(&ino) {
            self.by_name.remove(&old);
        }
        let Some(n) = self.nodes.get_mut(&ino) else {
            return;
        };
        if n.parent == old_parent && n.name == old_name {
            n.parent = new_parent;
            n.name = new_name.to_os_string();
        } else if let Some(a) = n
            .aliases
            .iter_mut()
            .find(|(p, a)| *p == old_parent && a == old_name)
        {
            *a = (new_parent, new_name.to_os_string());
        } else {
            n.aliases.push((new_parent, new_name.to_os_string()));
        }
        n.unlinked = false;
        self.by_name
            .insert((new_parent, new_name.to_os_string()), ino);
    }

    /// Applies a kernel FORGET; the node is dropped when its count reaches 0.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            let key = (node.parent, node.name);
            if self.by_name.get(&key) == Some(&ino) {
                self.by_name.remove(&key);
            }
            for id in node.backing {
                if self.by_backing.get(&id) == Some(&ino) {
                    self.by_backing.remove(&id);
                }
            }
        }
    }

    fn dynamic(&mut self) -> Ino {
        loop {
            let i = self.next_dynamic;
            self.next_dynamic = self.next_dynamic.wrapping_add(1).max(DYNAMIC_BASE);
            if !self.nodes.contains_key(&i) {
                return i;
            }
        }
    }
}

/// `(layer + 1) << 48 | st_ino`, when st_ino fits in 48 bits.
fn derived(layer: LayerId, st_ino: u64) -> Option<Ino> {
    if st_ino > INO_MASK || layer >= 0xfffe {
        return None;
    }
    Some(((layer as u64 + 1) << LAYER_SHIFT) | st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_derived_and_stable_across_copy_up() {
        let mut t = NodeTable::new(vec![0, 1]);
        let a = t.upsert(
            ROOT,
            OsStr::new("a"),
            libc::S_IFREG,
            vec![1],
            (1, 42),
            None,
            true,
        );
        assert_eq!(a, (2 << 48) | 42);
        // copy-up: the upper identity joins the same node
        t.add_backing(a, (0, 7));
        let again = t.upsert(
            ROOT,
            OsStr::new("a"),
            libc::S_IFREG,
            vec![0],
            (0, 7),
            None,
            true,
        );
        assert_eq!(again, a);
        assert_eq!(t.path(a).unwrap(), PathBuf::from("a"));
        t.forget(a, 2);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn unlinked_identity_is_not_reused() {
        let mut t = NodeTable::new(vec![0]);
        let a = t.upsert(
            ROOT,
            OsStr::new("a"),
            libc::S_IFREG,
            vec![0],
            (0, 9),
            None,
            true,
        );
        t.remove_name(ROOT, OsStr::new("a"));
        // The upper inode 9 is recycled for a new file while `a` is still open.
        let b = t.upsert(
            ROOT,
            OsStr::new("b"),
            libc::S_IFREG,
            vec![0],
            (0, 9),
            None,
            true,
        );
        assert_ne!(a, b);
        assert!(t.get(a).unwrap().unlinked);
    }
}

#[cfg(test)]
mod alias_tests {
    use super::*;

    #[test]
    fn hard_link_names_survive_removal_of_the_first() {
        let mut t = NodeTable::new(vec![0, 1]);
        let b = t.upsert(
            ROOT,
            OsStr::new("b"),
            libc::S_IFDIR,
            vec![1],
            (1, 100),
            None,
            true,
        );
        let c = t.upsert(
            ROOT,
            OsStr::new("c"),
            libc::S_IFREG,
            vec![1],
            (1, 5),
            None,
            true,
        );
        let bb = t.upsert(
            b,
            OsStr::new("b"),
            libc::S_IFREG,
            vec![1],
            (1, 5),
            None,
            true,
        );
        assert_eq!(c, bb);
        t.add_backing(c, (0, 77));
        t.remove_name(ROOT, OsStr::new("c"));
        let again = t.upsert(
            b,
            OsStr::new("b"),
            libc::S_IFREG,
            vec![0],
            (0, 77),
            None,
            true,
        );
        assert_eq!(again, c);
        assert!(!t.get(c).unwrap().unlinked);
        assert_eq!(t.path(c).unwrap(), PathBuf::from("b/b"));
        // The other name is still known and takes over when b/b goes.
        t.remove_name(b, OsStr::new("b"));
        assert!(t.get(c).unwrap().unlinked);
    }
}
