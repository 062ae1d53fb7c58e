//! cairn: what kernel overlayfs and a container engine give root, for
//! users without privileges.
//!
//! The overlay filesystem (`cairnfs`) is built from a FUSE-agnostic core
//! ([`overlay::Overlay`] and the operation modules beside it) and a thin
//! `fuser` adapter ([`fuse`]). Test harnesses mount throwaway overlays with
//! [`harness::TestOverlay`]:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lower = tempfile::tempdir()?;
//! std::fs::write(lower.path().join("hello"), "from the lower layer\n")?;
//! let ovl = cairn::harness::TestOverlay::new(&[lower.path()])?;
//! std::fs::write(ovl.path().join("hello"), "changed\n")?; // copied up
//! assert_eq!(std::fs::read(lower.path().join("hello"))?, b"from the lower layer\n");
//! assert_eq!(std::fs::read(ovl.upper().join("hello"))?, b"changed\n");
//! # Ok(()) }  // dropping `ovl` unmounts it
//! ```

pub mod attr;
pub mod container;
pub mod copy_up;
pub mod dircache;
pub mod error;
pub mod format;
pub mod fuse;
pub mod handle;
pub mod harness;
pub mod idmapped;
pub mod ids;
pub mod inode;
pub mod layer;
pub mod mount;
pub mod nameindex;
pub mod namespace;
pub mod options;
pub mod overlay;
pub mod passthrough;
pub mod readdir;
pub mod store;
pub mod sys;
pub mod upper;
