//! FUSE passthrough: which opens the kernel serves from the backing file
//! itself, without a round trip through cairnfs for each read and write.
//!
//! With passthrough (kernel 6.9+, and the server needs CAP_SYS_ADMIN in the
//! initial user namespace to register a backing file) a regular file's
//! reads, writes and mmap go straight to the layer file that cairnfs opened
//! for the handle. Semantics do not change, since a handle's file is fixed
//! at open either way.
//!
//! The kernel's rules, per FUSE inode: while a passthrough open is live,
//! every open must be a passthrough open of the same backing file (any
//! other answer fails the open with EIO), and a passthrough open fails
//! while a cached open is live. An overlay inode's file changes at copy-up,
//! so passthrough is offered only where it cannot: for files whose data is
//! in the upper layer (new and copied-up files), and for every file of a
//! mount without an upper layer. A lower file on a writable mount is read
//! through cairnfs, with the kernel keeping its pages (the file never
//! changes), so that a writer may copy it up while readers hold it open.
//! An inode with a cached open gets cached opens until it is closed.
//!
//! A registration that fails (no privilege, layers on a stacked filesystem)
//! turns passthrough off for the mount. Passthrough conflicts with the
//! kernel's writeback cache, which cairnfs does not enable.
//!
//! Generic over the registration type so the rules are unit-tested without
//! a kernel; the `fuser` adapter uses `fuser::BackingId`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::inode::Ino;

/// How the kernel is to serve one open.
pub enum OpenAs<B> {
    /// From the backing file registered as `B`.
    Passthrough(Arc<B>),
    /// Through cairnfs, with the kernel's page cache.
    Cached,
    /// Neither is allowed now: the inode is registered with another file
    /// (its upper file was replaced behind the mount's back while open).
    Busy,
}

enum InodeIo<B> {
    Backed {
        id: Arc<B>,
        /// (st_dev, st_ino) of the registered file.
        file: (u64, u64),
        opens: usize,
    },
    Cached {
        opens: usize,
    },
}

impl<B> InodeIo<B> {
    fn opens(&mut self) -> &mut usize {
        match self {
            InodeIo::Backed { opens, .. } | InodeIo::Cached { opens } => opens,
        }
    }
}

struct State<B> {
    inodes: HashMap<Ino, InodeIo<B>>,
    /// The inode of each handle counted in `inodes`.
    handles: HashMap<u64, Ino>,
}

pub struct Passthrough<B> {
    enabled: AtomicBool,
    /// Whether the mount has an upper layer (lower files may be copied up).
    writable: bool,
    state: Mutex<State<B>>,
}

impl<B> Passthrough<B> {
    /// Off until [`Passthrough::enable`] (the kernel offered it at init).
    pub fn new(writable: bool) -> Passthrough<B> {
        Passthrough {
            enabled: AtomicBool::new(false),
            writable,
            state: Mutex::new(State {
                inodes: HashMap::new(),
                handles: HashMap::new(),
            }),
        }
    }

    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Decides how handle `fh` of inode `ino`, open on `fd`, is served;
    /// `lower`: its data is a lower layer's file. `register` makes a new
    /// registration of `fd`.
    pub fn open<E>(
        &self,
        ino: Ino,
        fh: u64,
        fd: &OwnedFd,
        lower: bool,
        register: impl FnOnce(&OwnedFd) -> Result<B, E>,
    ) -> OpenAs<B> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing registered and nothing to register: no bookkeeping.
        if !self.is_enabled() && s.inodes.is_empty() {
            return OpenAs::Cached;
        }
        let eligible = self.is_enabled() && !(lower && self.writable);
        // The file's identity, needed only beside or for a registration.
        let identity = || match rustix::fs::fstat(fd) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(_) => (0, 0),
        };
        let answer = match s.inodes.get_mut(&ino) {
            Some(InodeIo::Backed { id, file, opens }) => {
                if *file != identity() {
                    return OpenAs::Busy;
                }
                *opens += 1;
                OpenAs::Passthrough(id.clone())
            }
            Some(c @ InodeIo::Cached { .. }) => {
                *c.opens() += 1;
                OpenAs::Cached
            }
            None => {
                let io = match eligible.then(|| register(fd)) {
                    Some(Ok(id)) => InodeIo::Backed {
                        id: Arc::new(id),
                        file: identity(),
                        opens: 1,
                    },
                    failed => {
                        if failed.is_some() {
                            self.enabled.store(false, Ordering::Relaxed);
                        }
                        InodeIo::Cached { opens: 1 }
                    }
                };
                let answer = match &io {
                    InodeIo::Backed { id, .. } => OpenAs::Passthrough(id.clone()),
                    InodeIo::Cached { .. } => OpenAs::Cached,
                };
                s.inodes.insert(ino, io);
                answer
            }
        };
        s.handles.insert(fh, ino);
        answer
    }

    /// Handle `fh` was released; the last one of an inode ends its entry
    /// (and drops its registration).
    pub fn release(&self, fh: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ino) = s.handles.remove(&fh) else {
            return;
        };
        if let Some(io) = s.inodes.get_mut(&ino) {
            let opens = io.opens();
            *opens -= 1;
            if *opens == 0 {
                s.inodes.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn open_file(p: &std::path::Path) -> OwnedFd {
        std::fs::File::open(p).unwrap().into()
    }

    fn kind<B>(o: &OpenAs<B>) -> &'static str {
        match o {
            OpenAs::Passthrough(_) => "passthrough",
            OpenAs::Cached => "cached",
            OpenAs::Busy => "busy",
        }
    }

    #[test]
    fn one_registration_per_inode_and_lower_files_cached_on_writable_mounts() {
        let t = tempfile::tempdir().unwrap();
        let (lower, upper) = (t.path().join("lower"), t.path().join("upper"));
        std::fs::write(&lower, "l").unwrap();
        std::fs::write(&upper, "u").unwrap();
        let p = Passthrough::<u32>::new(true);
        p.enable();
        let registered = Cell::new(0);
        let reg = |_: &OwnedFd| -> Result<u32, ()> {
            registered.set(registered.get() + 1);
            Ok(registered.get())
        };
        // A lower file may be copied up while open: cached.
        assert_eq!(kind(&p.open(5, 1, &open_file(&lower), true, reg)), "cached");
        // Copied up while that reader is open: still cached (the kernel
        // refuses passthrough beside a cached open).
        assert_eq!(
            kind(&p.open(5, 2, &open_file(&upper), false, reg)),
            "cached"
        );
        p.release(1);
        p.release(2);
        assert_eq!(registered.get(), 0);
        // Closed: the upper file is registered once for all its opens.
        let a = p.open(5, 3, &open_file(&upper), false, reg);
        let b = p.open(5, 4, &open_file(&upper), false, reg);
        assert_eq!((kind(&a), kind(&b)), ("passthrough", "passthrough"));
        assert_eq!(registered.get(), 1);
        // Another file under the same inode while registered: refused.
        assert_eq!(kind(&p.open(5, 5, &open_file(&lower), false, reg)), "busy");
        p.release(3);
        p.release(4);
        assert_eq!(
            kind(&p.open(5, 6, &open_file(&lower), false, reg)),
            "passthrough"
        );
        assert_eq!(registered.get(), 2);
    }

    #[test]
    fn read_only_mounts_pass_lower_files_through() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "f").unwrap();
        let p = Passthrough::<u32>::new(false);
        p.enable();
        let o = p.open(1, 1, &open_file(&t.path().join("f")), true, |_| {
            Ok::<_, ()>(9)
        });
        assert_eq!(kind(&o), "passthrough");
    }

    #[test]
    fn a_failed_registration_turns_passthrough_off() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), "f").unwrap();
        let fd = open_file(&t.path().join("f"));
        let p = Passthrough::<u32>::new(true);
        assert_eq!(
            kind(&p.open(1, 1, &fd, false, |_| Ok::<_, ()>(1))),
            "cached"
        );
        p.enable();
        assert_eq!(kind(&p.open(2, 2, &fd, false, |_| Err(()))), "cached");
        assert!(!p.is_enabled());
        assert_eq!(
            kind(&p.open(3, 3, &fd, false, |_| Ok::<_, ()>(1))),
            "cached"
        );
    }
}
