//! Throwaway overlays for test harnesses: lower dirs in, a temporary upper
//! and work dir made for the mount, the server running in this process, and
//! the mount gone when the guard is dropped (also when a test panics).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::options::MountOptions;

/// A mounted overlay that is unmounted on drop.
pub struct TestOverlay {
    mountpoint: PathBuf,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    session: Option<fuser::BackgroundSession>,
    overlay: std::sync::Arc<crate::overlay::Overlay>,
    // Declared last: removed after the mount is gone.
    _dir: tempfile::TempDir,
}

/// Options for a [`TestOverlay`] beyond the lower dirs.
#[derive(Default)]
pub struct Builder {
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    read_only: bool,
    extra: Vec<String>,
}

impl Builder {
    /// Adds a lower dir below the ones added before (first = topmost).
    pub fn lower(mut self, p: impl AsRef<Path>) -> Self {
        self.lowers.push(p.as_ref().to_path_buf());
        self
    }

    /// Uses an existing upper and work dir instead of temporary ones.
    pub fn upper(mut self, upper: impl AsRef<Path>, work: impl AsRef<Path>) -> Self {
        self.upper = Some(upper.as_ref().to_path_buf());
        self.work = Some(work.as_ref().to_path_buf());
        self
    }

    /// Mounts without an upper dir: writes fail with EROFS.
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Adds cairnfs `-o` options (e.g. `"timeout=0"`, `"allow_other"`).
    pub fn option(mut self, o: impl Into<String>) -> Self {
        self.extra.push(o.into());
        self
    }

    pub fn mount(self) -> Result<TestOverlay> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test.")
            .tempdir()
            .map_err(|source| Error::Path {
                what: "temporary dir",
                path: std::env::temp_dir(),
                source,
            })?;
        let mk = |name: &str| -> Result<PathBuf> {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).map_err(|source| Error::Path {
                what: "temporary dir",
                path: p.clone(),
                source,
            })?;
            Ok(p)
        };
        let mountpoint = mk("mnt")?;
        let (upper, work) = if self.read_only {
            (None, None)
        } else if let (Some(u), Some(w)) = (self.upper.clone(), self.work.clone()) {
            (Some(u), Some(w))
        } else {
            (Some(mk("upper")?), Some(mk("work")?))
        };
        let mut opts = MountOptions::parse(self.extra.iter().map(String::as_str))?;
        opts.lowers = self.lowers;
        opts.upper = upper.clone();
        opts.work = work.clone();
        let (session, overlay) = crate::mount::mount(&opts, &mountpoint, false)?;
        let session = session.spawn().map_err(Error::Mount)?;
        Ok(TestOverlay {
            mountpoint,
            upper,
            work,
            session: Some(session),
            overlay,
            _dir: dir,
        })
    }
}

impl TestOverlay {
    /// Mounts `lowers` (topmost first) with a temporary upper and work dir.
    pub fn new(lowers: &[&Path]) -> Result<TestOverlay> {
        lowers
            .iter()
            .fold(Self::builder(), |b, l| b.lower(l))
            .mount()
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The merged view.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The upper dir (panics for a read-only overlay, which has none).
    pub fn upper(&self) -> &Path {
        self.upper.as_deref().unwrap_or(Path::new("/nonexistent"))
    }

    pub fn work(&self) -> Option<&Path> {
        self.work.as_deref()
    }

    /// How many opens the kernel has served by FUSE passthrough.
    pub fn passthrough_opens(&self) -> u64 {
        self.overlay
            .passthrough_opens
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Unmounts now and waits for the server to finish.
    pub fn unmount(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::empty()) {
            Ok(()) => {
                let _ = session.join();
                Ok(())
            }
            Err(e) => {
                // Busy: detach it so nothing is left mounted; the server
                // thread ends when the last user closes its files.
                let _ =
                    rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
                std::mem::forget(session);
                Err(Error::Mount(e.into()))
            }
        }
    }
}

impl Drop for TestOverlay {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
