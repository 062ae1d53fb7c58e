//! The FUSE-agnostic overlay: name resolution through the layers, attributes,
//! and the state shared by the other operation modules (`namespace`,
//! `copy_up`, `readdir`, `handle`, `xattr`).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use rustix::fs::{FileType, Stat};
use rustix::io::Errno;

use crate::format::{self, is_whiteout_dev};
use crate::handle::Handles;
use crate::inode::{Ino, LayerId, Node, NodeTable, ROOT, UPPER};
use crate::layer::{Layer, Result, check_name, stat_at};
use crate::options::MountOptions;
use crate::upper::Work;

/// What the caller of an operation is, for ownership of new objects.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// Attributes as shown through the mount.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: Ino,
    pub st: Stat,
}

/// Where a node is: its path in the upper layer and in the lower layers
/// (they differ below a renamed directory). Derefs to the upper path.
#[derive(Debug, Clone)]
pub struct NodePath {
    pub upper: PathBuf,
    pub lower: PathBuf,
}

impl NodePath {
    /// The path to use in layer `lid`.
    pub fn at(&self, lid: LayerId) -> &Path {
        if lid == UPPER {
            &self.upper
        } else {
            &self.lower
        }
    }

    /// The paths of child `name`, whose lower dirs may be redirected.
    pub fn child(&self, name: &OsStr, redirect: Option<&Path>) -> NodePath {
        NodePath {
            upper: self.upper.join(name),
            lower: redirect.map_or_else(|| self.lower.join(name), Path::to_path_buf),
        }
    }
}

impl std::ops::Deref for NodePath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.upper
    }
}

/// Runtime settings derived from the mount options.
#[derive(Debug, Clone)]
pub struct Settings {
    /// fsync copy-ups and honour fsync requests (off with `fsync=0`/`volatile`).
    pub fsync: bool,
    /// Entry and attribute cache time given to the kernel.
    pub timeout: Duration,
    pub static_nlink: bool,
    /// Owner translation between the layers and the mount.
    pub ids: crate::ids::IdMapper,
    /// `xattr_permissions=`: owners and modes kept in this xattr.
    pub override_xattr: Option<&'static str>,
    /// The override xattr a layer declares on its root (see
    /// [`format::layer_override_xattr`]): honoured on every directory and
    /// regular file, not only on the empty files that stand for devices.
    pub layer_override_xattr: Option<&'static str>,
    pub metacopy: bool,
    pub redirect_dir: bool,
    pub index: bool,
    /// Try FUSE passthrough (the adapter decides per open).
    pub passthrough: bool,
    /// POSIX ACLs enforced by the kernel and inherited on create (off with
    /// `noacl`).
    pub acl: bool,
}

/// One resolved name: where it lives and what it is.
#[derive(Debug)]
pub(crate) struct Found {
    pub fmt: u32,
    pub layers: Vec<LayerId>,
    /// Stat of the topmost object.
    pub st: Stat,
    /// The identity that names the node: the object itself for non-dirs,
    /// the topmost lower dir for merged dirs (stable across copy-up).
    pub identity: (LayerId, u64),
    /// The inode number recorded at copy-up, for an upper non-directory.
    pub origin: Option<u64>,
    /// An upper metacopy file: its data is in the next lower file.
    pub metacopy: bool,
    /// A renamed directory: where its lower dirs are.
    pub redirect: Option<PathBuf>,
}

pub struct Overlay {
    pub(crate) upper: Option<Layer>,
    pub(crate) lowers: Vec<Layer>,
    pub(crate) work: Option<Work>,
    pub(crate) nodes: RwLock<NodeTable>,
    pub(crate) handles: Handles,
    /// Recently used directory fds, so lookups do not walk paths again.
    pub(crate) dir_cache: crate::dircache::DirCache,
    /// Names held by lower dirs of deep stacks (skips layers on lookup).
    pub(crate) name_index: crate::nameindex::NameIndex,
    /// Serialises operations that change the namespace or copy up, so that
    /// each sees a stable tree; reads never take it.
    ns: Mutex<()>,
    pub settings: Settings,
    /// Opens the kernel serves by FUSE passthrough (counted by the adapter).
    pub passthrough_opens: std::sync::atomic::AtomicU64,
}

impl Overlay {
    /// Opens the layers named in `opts` and prepares the work dir.
    pub fn new(opts: &MountOptions) -> crate::error::Result<Overlay> {
        let open = |what: &'static str, p: &Path| {
            let l = Layer::open(p).map_err(|source| crate::error::Error::Path {
                what,
                path: p.to_path_buf(),
                source,
            })?;
            Ok::<_, crate::error::Error>(l)
        };
        let mut lowers = Vec::new();
        let mapped = !opts.uid_mapping.is_empty() || !opts.gid_mapping.is_empty();
        for p in &opts.lowers {
            let p = if mapped {
                crate::idmapped::unmapped_path(p)
            } else {
                p.clone()
            };
            lowers.push(open("lower dir", &p)?);
        }
        let (upper, work) = match (&opts.upper, &opts.work) {
            (Some(u), Some(w)) if !opts.read_only => {
                let upper = open("upper dir", u)?;
                let workdir = open("work dir", w)?;
                if upper.dev != workdir.dev {
                    return Err(crate::error::Error::Layout(format!(
                        "upper dir {} and work dir {} must be on the same filesystem",
                        u.display(),
                        w.display()
                    )));
                }
                let work = Work::prepare(&workdir).map_err(|source| crate::error::Error::Path {
                    what: "work dir",
                    path: w.clone(),
                    source,
                })?;
                (Some(upper), Some(work))
            }
            (Some(_), None) if !opts.read_only => {
                return Err(crate::error::Error::Options(
                    "upperdir needs a workdir".into(),
                ));
            }
            _ => (None, None),
        };
        let mut root_layers: Vec<LayerId> = Vec::new();
        if upper.is_some() {
            root_layers.push(UPPER);
        }
        root_layers.extend((1..=lowers.len()).map(|i| i as LayerId));
        let layer_override_xattr = upper
            .iter()
            .chain(lowers.iter())
            .find_map(|l| format::layer_override_xattr(l.root()));
        Ok(Overlay {
            upper,
            lowers,
            work,
            nodes: RwLock::new(NodeTable::new(root_layers)),
            handles: Handles::default(),
            dir_cache: crate::dircache::DirCache::new(opts.dir_cache),
            name_index: crate::nameindex::NameIndex::new(opts.timeout),
            ns: Mutex::new(()),
            settings: Settings {
                fsync: opts.fsync,
                timeout: opts.timeout,
                static_nlink: opts.static_nlink,
                ids: crate::ids::IdMapper::from_options(opts),
                override_xattr: format::override_xattr_for(opts.xattr_permissions),
                layer_override_xattr,
                metacopy: opts.metacopy,
                redirect_dir: opts.redirect_dir,
                index: opts.index,
                passthrough: opts.passthrough,
                acl: !opts.noacl,
            },
            passthrough_opens: Default::default(),
        })
    }

    pub(crate) fn layer(&self, id: LayerId) -> Result<&Layer> {
        if id == UPPER {
            self.upper.as_ref().ok_or(Errno::ROFS)
        } else {
            self.lowers.get(id as usize - 1).ok_or(Errno::IO)
        }
    }

    pub(crate) fn upper_layer(&self) -> Result<&Layer> {
        self.upper.as_ref().ok_or(Errno::ROFS)
    }

    pub(crate) fn work(&self) -> Result<&Work> {
        self.work.as_ref().ok_or(Errno::ROFS)
    }

    pub(crate) fn read_nodes(&self) -> RwLockReadGuard<'_, NodeTable> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write_nodes(&self) -> RwLockWriteGuard<'_, NodeTable> {
        self.nodes.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_ns(&self) -> MutexGuard<'_, ()> {
        self.ns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of a node and its path; ENOENT for a forgotten or unlinked one.
    pub(crate) fn node_path(&self, ino: Ino) -> Result<(Node, NodePath)> {
        let t = self.read_nodes();
        let n = t.get(ino).ok_or(Errno::NOENT)?;
        let upper = t.path(ino).ok_or(Errno::NOENT)?;
        let lower = t.lower_path(ino).ok_or(Errno::NOENT)?;
        Ok((n.clone(), NodePath { upper, lower }))
    }

    pub(crate) fn node(&self, ino: Ino) -> Result<Node> {
        self.read_nodes().get(ino).cloned().ok_or(Errno::NOENT)
    }

    /// Splits a node path into its parent path and name (root: "" and ".").
    pub(crate) fn split(path: &Path) -> (&Path, &OsStr) {
        match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => (p, n),
            _ => (Path::new(""), OsStr::new(".")),
        }
    }

    /// Resolves `name` in the directory at `parent_path` held by `layers`.
    pub(crate) fn resolve(
        &self,
        parent: Ino,
        parent_path: &NodePath,
        layers: &[LayerId],
        name: &OsStr,
    ) -> Result<Option<Found>> {
        let mut found: Option<Found> = None;
        // Deep stacks: the lower layers that can hold the name or its
        // whiteout, from the index; the others cost no syscall.
        let lowers = layers.strip_prefix(&[UPPER]).unwrap_or(layers);
        let holding = self.name_index.lookup(parent, lowers, name, |lid| {
            self.dir_fd(lid, parent, parent_path.at(lid))
        });
        for (i, &lid) in layers.iter().enumerate() {
            if lid != UPPER && !holding.may_hold(lid) {
                continue;
            }
            let more_below = i + 1 < layers.len();
            let dir = match self.dir_fd(lid, parent, parent_path.at(lid)) {
                Ok(d) => d,
                // The directory went away in this layer behind our back.
                Err(Errno::NOENT) | Err(Errno::NOTDIR) => continue,
                Err(e) => return Err(e),
            };
            let st = match stat_at(&dir, name) {
                Ok(st) => st,
                Err(Errno::NOENT) => {
                    if more_below && crate::format::wh_exists(&dir, name)? {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if is_whiteout_dev(&st) {
                break;
            }
            let fmt = st.st_mode & libc::S_IFMT;
            match &mut found {
                None => {
                    let mut st = st;
                    self.apply_overrides(&dir, name, &mut st);
                    let shown_fmt = st.st_mode & libc::S_IFMT;
                    let origin = match (&self.work, lid, fmt) {
                        (Some(w), UPPER, f) if f != libc::S_IFDIR => w.read_origin(&dir, name),
                        _ => None,
                    };
                    let metacopy = lid == UPPER
                        && fmt == libc::S_IFREG
                        && st.st_size > 0
                        && more_below
                        && self.is_metacopy_file(&dir, name);
                    found = Some(Found {
                        fmt: shown_fmt,
                        layers: vec![lid],
                        st,
                        identity: (lid, st.st_ino),
                        origin,
                        metacopy,
                        redirect: None,
                    });
                    if fmt != libc::S_IFDIR {
                        // A metacopy file looks further down for its data,
                        // unless a `.wh.` beside it hides what is below.
                        if !metacopy || crate::format::wh_exists(&*dir, name)? {
                            break;
                        }
                        continue;
                    }
                    // A renamed directory: its lower dirs are found at the
                    // redirect, in every lower layer.
                    if lid == UPPER
                        && let Some(r) = self.read_redirect(&dir, name, parent_path)
                        && let Some(mut f) = found.take()
                    {
                        if !self.stops_below(&dir, name)? {
                            self.resolve_redirect(&mut f, r)?;
                        }
                        return Ok(Some(f));
                    }
                    if more_below && self.stops_below(&dir, name)? {
                        break;
                    }
                }
                Some(f) => {
                    if f.metacopy {
                        // The data of a metacopy file: the next lower file.
                        if fmt == libc::S_IFREG {
                            f.layers.push(lid);
                            f.st.st_blocks = st.st_blocks;
                        }
                        break;
                    }
                    if fmt != libc::S_IFDIR {
                        break;
                    }
                    if f.identity.0 == UPPER {
                        f.identity = (lid, st.st_ino);
                    }
                    f.layers.push(lid);
                    if more_below && self.stops_below(&dir, name)? {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Adds the lower dirs of a renamed directory, found at `redirect`
    /// from the top of the lower layers down, as kernel overlayfs does.
    fn resolve_redirect(&self, f: &mut Found, redirect: PathBuf) -> Result<()> {
        let comps: Vec<&OsStr> = redirect.iter().collect();
        let Some((last, ancestors)) = comps.split_last() else {
            return Ok(());
        };
        // Each lower layer is searched along the whole path; as in the
        // kernel, a non-directory, a whiteout or an opaque directory on the
        // way stops the search in the layers below.
        'layers: for lid in 1..=self.lowers.len() as LayerId {
            let more_below = (lid as usize) < self.lowers.len();
            let mut stop = false;
            let mut dir = self.layer(lid)?.dir(Path::new(""))?;
            for c in ancestors {
                match stat_at(&dir, c) {
                    Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Ok(_) => break 'layers,
                    Err(Errno::NOENT) => {
                        if crate::format::wh_exists(&dir, c)? {
                            break 'layers;
                        }
                        continue 'layers;
                    }
                    Err(e) => return Err(e),
                }
                let next = match rustix::fs::openat(
                    &dir,
                    *c,
                    rustix::fs::OFlags::PATH
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                ) {
                    Ok(d) => d,
                    Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue 'layers,
                    Err(e) => return Err(e),
                };
                if format::is_opaque_dir(&dir, c, &next)? {
                    stop = true;
                }
                dir = next;
            }
            match stat_at(&dir, last) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                    if f.identity.0 == UPPER {
                        f.identity = (lid, st.st_ino);
                    }
                    f.layers.push(lid);
                    if more_below && self.stops_below(&dir, last)? {
                        break;
                    }
                }
                Ok(_) => break,
                Err(Errno::NOENT) => {
                    if more_below && crate::format::wh_exists(&dir, last)? {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
            if stop {
                break;
            }
        }
        f.redirect = Some(redirect);
        Ok(())
    }

    /// The lower path an upper directory was renamed from, if it carries a
    /// redirect (absolute from the layer root, or a name in the same
    /// lower parent).
    fn read_redirect(&self, dir: &OwnedFd, name: &OsStr, parent: &NodePath) -> Option<PathBuf> {
        let x = self.work.as_ref()?.redirect_xattr?;
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::lgetxattr(crate::layer::proc_path(dir, name), x, &mut buf[..]).ok()?;
        let v = &buf[..n];
        use std::os::unix::ffi::OsStrExt;
        match v.strip_prefix(b"/") {
            Some(abs) => Some(PathBuf::from(OsStr::from_bytes(abs))),
            None if !v.is_empty() && !v.contains(&b'/') => {
                Some(parent.lower.join(OsStr::from_bytes(v)))
            }
            None => None,
        }
    }

    /// Whether an upper file carries the metacopy marker.
    fn is_metacopy_file(&self, dir: &OwnedFd, name: &OsStr) -> bool {
        let Some(x) = self.work.as_ref().and_then(|w| w.metacopy_xattr) else {
            return false;
        };
        let mut buf = [0u8; 64];
        rustix::fs::lgetxattr(crate::layer::proc_path(dir, name), x, &mut buf[..]).is_ok()
    }

    /// Whether a directory hides what lies below it: opaque, or whited out
    /// by a `.wh.` file beside it in the same layer.
    fn stops_below(&self, parent: &OwnedFd, name: &OsStr) -> Result<bool> {
        if crate::format::wh_exists(parent, name)? {
            return Ok(true);
        }
        let dir = match rustix::fs::openat(
            parent,
            name,
            rustix::fs::OFlags::PATH
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(d) => d,
            Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => return Ok(true),
            Err(e) => return Err(e),
        };
        format::is_opaque_dir(parent, name, &dir)
    }

    /// Looks up `name` in `parent`, registering the node (one kernel lookup).
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Attr> {
        check_name(name)?;
        if format::is_reserved_name(name.as_encoded_bytes()) {
            return Err(Errno::NOENT);
        }
        let (pnode, ppath) = self.node_path(parent)?;
        if !pnode.is_dir() {
            return Err(Errno::NOTDIR);
        }
        let mut found = self
            .resolve(parent, &ppath, &pnode.layers, name)?
            .ok_or(Errno::NOENT)?;
        if self.needs_link_up(&found) {
            let _ns = self.lock_ns();
            found = self
                .resolve_linked(parent, &ppath, &pnode.layers, name)?
                .ok_or(Errno::NOENT)?;
        }
        Ok(self.register(parent, name, found, true))
    }

    /// Whether a lower file is a name of a file already copied up through
    /// another name (it has an index entry).
    fn needs_link_up(&self, f: &Found) -> bool {
        self.settings.index
            && f.layers[0] != UPPER
            && self.work.as_ref().is_some_and(|w| w.indexed(&f.st))
    }

    /// Resolves a name, first linking it to its upper copy when another of
    /// its names was copied up. The caller holds the namespace lock.
    pub(crate) fn resolve_linked(
        &self,
        parent: Ino,
        ppath: &NodePath,
        players: &[LayerId],
        name: &OsStr,
    ) -> Result<Option<Found>> {
        let found = self.resolve(parent, ppath, players, name)?;
        let Some(f) = found else {
            return Ok(None);
        };
        if !self.needs_link_up(&f) {
            return Ok(Some(f));
        }
        let work = self.work()?;
        let pfd = self.upper_dir(parent)?;
        let key = crate::upper::Work::index_key(&f.st);
        rustix::fs::linkat(
            work.index.root(),
            &key,
            &pfd,
            name,
            rustix::fs::AtFlags::empty(),
        )?;
        // The parent may have just been copied up: take its layers anew.
        let players = self.node(parent)?.layers;
        self.resolve(parent, ppath, &players, name)
    }

    /// Records a resolved object in the node table and returns its attributes.
    pub(crate) fn register(&self, parent: Ino, name: &OsStr, f: Found, count: bool) -> Attr {
        let merged = f.layers.len() > 1;
        let redirect = f.redirect.clone();
        let mut t = self.write_nodes();
        let ino = t.upsert(parent, name, f.fmt, f.layers, f.identity, f.origin, count);
        t.set_redirect(ino, redirect);
        drop(t);
        self.attr(ino, f.st, merged)
    }

    pub(crate) fn attr(&self, ino: Ino, mut st: Stat, merged_dir: bool) -> Attr {
        if (merged_dir && st.st_mode & libc::S_IFMT == libc::S_IFDIR) || self.settings.static_nlink
        {
            st.st_nlink = 1;
        }
        st.st_ino = ino;
        let ids = &self.settings.ids;
        if !ids.is_identity() {
            st.st_uid = ids.shown_uid(st.st_uid);
            st.st_gid = ids.shown_gid(st.st_gid);
        }
        Attr { ino, st }
    }

    /// Stats the topmost object of a node (applying `override_stat`).
    pub(crate) fn stat_node(&self, node: &Node, path: &NodePath) -> Result<Stat> {
        let top = node.top();
        let (ppath, name) = Self::split(path.at(top));
        let dir = if path.upper.as_os_str().is_empty() {
            Arc::new(self.layer(top)?.dir(ppath)?)
        } else {
            self.dir_fd(top, node.parent, ppath)?
        };
        let mut st = stat_at(&*dir, name)?;
        self.apply_overrides(&dir, name, &mut st);
        let data_layer = node.data_layer();
        let (dpath, dname) = Self::split(path.at(data_layer));
        if node.is_metacopy()
            && let Ok(d) = self.dir_fd(data_layer, node.parent, dpath)
            && let Ok(data) = stat_at(&*d, dname)
        {
            st.st_blocks = data.st_blocks;
        }
        Ok(st)
    }

    /// The override of `name` in `dir` and the xattr it lives in: the
    /// `xattr_permissions` one, or containers/storage's on an empty file.
    pub(crate) fn read_overrides(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        st: &Stat,
    ) -> Option<(format::OverrideStat, &'static str)> {
        if let Some(x) = self.settings.override_xattr
            && let Some(o) = format::read_override_xattr(dir, name, x)
        {
            return Some((o, x));
        }
        let fmt = st.st_mode & libc::S_IFMT;
        if let Some(x) = self.settings.layer_override_xattr
            && (fmt == libc::S_IFREG || fmt == libc::S_IFDIR)
            && let Some(o) = format::read_override_xattr(dir, name, x)
        {
            return Some((o, x));
        }
        if fmt == libc::S_IFREG && st.st_size == 0 {
            return format::read_override(dir, name).map(|o| (o, format::OVERRIDE_STAT));
        }
        None
    }

    /// Applies any override to a stat of `name` in `dir`.
    pub(crate) fn apply_overrides(&self, dir: &OwnedFd, name: &OsStr, st: &mut Stat) {
        if let Some((o, _)) = self.read_overrides(dir, name, st) {
            format::apply_override(st, &o);
        }
        // An indexed file counts its names in the merged view.
        if st.st_nlink > 1
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
            && let Some(w) = &self.work
            && let Some((n, _)) = w.read_nlink_at(dir, name)
        {
            st.st_nlink = n as _;
        }
    }

    pub fn getattr(&self, ino: Ino, fh: Option<u64>) -> Result<Attr> {
        if let Some(fh) = fh
            && let Some(h) = self.handles.get(fh)
            && let Some(fd) = h.file()
        {
            let node = self.node(ino).ok();
            let mut st = rustix::fs::fstat(fd)?;
            if st.st_nlink > 1
                && let Some(n) = self.work.as_ref().and_then(|w| w.read_nlink_fd(fd))
            {
                st.st_nlink = n as _;
            }
            // A lower file whose last name was removed while it is open.
            if node.as_ref().is_some_and(|n| n.unlinked && !n.in_upper()) {
                st.st_nlink = 0;
            }
            let merged = node.is_some_and(|n| n.layers.len() > 1 && n.is_dir());
            return Ok(self.attr(ino, st, merged));
        }
        let (node, path) = match self.node_path(ino) {
            Ok(x) => x,
            Err(e) => {
                // An unlinked file that is still open answers from its fd.
                if let Some(fd) = self.handles.any_file_of(ino) {
                    // No name is left in the merged view.
                    let mut st = rustix::fs::fstat(&fd)?;
                    st.st_nlink = 0;
                    return Ok(self.attr(ino, st, false));
                }
                return Err(e);
            }
        };
        let st = self.stat_node(&node, &path)?;
        Ok(self.attr(ino, st, node.layers.len() > 1))
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        let gone_dir = {
            let mut t = self.write_nodes();
            let dir = t.get(ino).is_some_and(|n| n.is_dir());
            t.forget(ino, n);
            dir && t.get(ino).is_none()
        };
        if gone_dir {
            self.forget_dir_fds(ino);
        }
    }

    /// Drops cached fds of a directory node in every layer.
    pub(crate) fn forget_dir_fds(&self, ino: Ino) {
        self.dir_cache.forget(ino, 0..=self.lowers.len() as LayerId);
        self.name_index.forget(ino);
    }

    /// An `O_PATH` fd of directory node `ino` (at `path`) in layer `lid`,
    /// from the cache when it is there.
    pub(crate) fn dir_fd(&self, lid: LayerId, ino: Ino, path: &Path) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.dir_cache.get(lid, ino) {
            return Ok(fd);
        }
        let fd = Arc::new(self.layer(lid)?.dir(path)?);
        self.dir_cache.put(lid, ino, fd.clone());
        Ok(fd)
    }

    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let (node, path) = self.node_path(ino)?;
        let (ppath, name) = Self::split(path.at(node.top()));
        let dir = self.layer(node.top())?.dir(ppath)?;
        let target = rustix::fs::readlinkat(&dir, name, Vec::new())?;
        Ok(target.into_bytes())
    }

    pub fn statfs(&self) -> Result<rustix::fs::StatVfs> {
        let layer = match &self.upper {
            Some(u) => u,
            None => self.lowers.first().ok_or(Errno::IO)?,
        };
        rustix::fs::fstatvfs(layer.root())
    }

    /// Number of nodes the kernel holds; for tests and diagnostics.
    pub fn node_count(&self) -> usize {
        self.read_nodes().len()
    }

    pub fn root_ino(&self) -> Ino {
        ROOT
    }
}

/// The S_IFMT bits of a stat.
pub(crate) fn fmt_of(st: &Stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// The file type of a mode, for readdir.
pub fn file_type(fmt: u32) -> FileType {
    FileType::from_raw_mode(fmt)
}
