//! Mark and sweep: images are roots (and containers hold their images);
//! every blob and layer no image reaches is removed, as is `tmp/`.

use std::collections::BTreeSet;
use std::fs;

use super::digest::Digest;
use super::meta::Meta;
use super::unpack::disk_usage;
use super::{IoContext, Result, Store, StoreError, remove_any};

/// What a removal did.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Tags removed from images that are kept.
    pub untagged: Vec<String>,
    /// Images removed, with the tags they had.
    pub deleted_images: Vec<(Digest, Vec<String>)>,
    pub deleted_blobs: Vec<Digest>,
    pub deleted_layers: Vec<Digest>,
    /// Bytes freed on disk (blob sizes, allocated bytes of layer trees).
    pub reclaimed: u64,
}

/// Which images `prune` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneMode {
    /// Untagged images no container uses.
    Dangling,
    /// Every image no container uses.
    All,
}

/// Blobs and layers reachable from the images in `m`.
pub fn mark(m: &Meta) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
    let mut blobs = BTreeSet::new();
    let mut layers = BTreeSet::new();
    for img in m.images.values() {
        blobs.insert(img.manifest.clone());
        blobs.insert(img.config.clone());
        for l in &img.layers {
            blobs.insert(l.digest.clone());
            layers.insert(l.chain_id.clone());
        }
    }
    (blobs, layers)
}

/// Remove every blob and layer not reachable from `m`, and `tmp/`.
/// The caller holds the exclusive lock.
fn sweep(store: &Store, m: &Meta, rep: &mut GcReport) -> Result<()> {
    let (blobs, layers) = mark(m);
    let bdir = store.root().join("blobs/sha256");
    for e in fs::read_dir(&bdir).with_ctx(|| format!("reading {}", bdir.display()))? {
        let e = e.with_ctx(|| format!("reading {}", bdir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let keep = Digest::from_hex(&name).is_ok_and(|d| blobs.contains(&d));
        if !keep {
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            remove_any(&e.path())?;
            rep.reclaimed += size;
            if let Ok(d) = Digest::from_hex(&name) {
                rep.deleted_blobs.push(d);
            }
        }
    }
    let ldir = store.root().join("layers");
    for e in fs::read_dir(&ldir).with_ctx(|| format!("reading {}", ldir.display()))? {
        let e = e.with_ctx(|| format!("reading {}", ldir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let d = Digest::from_hex(&name).ok();
        let keep = d
            .as_ref()
            .is_some_and(|d| layers.contains(d) && store.has_layer(d));
        if !keep {
            let size = disk_usage(&e.path()).map(|x| x.0).unwrap_or(0);
            remove_any(&e.path())?;
            rep.reclaimed += size;
            if let Some(d) = d {
                rep.deleted_layers.push(d);
            }
        }
    }
    let tmp = store.tmp_dir();
    rep.reclaimed += disk_usage(&tmp)
        .map(|x| x.0)
        .unwrap_or(0)
        .saturating_sub(4096);
    store.clean_tmp_locked()?;
    Ok(())
}

fn delete_image(m: &mut Meta, id: &Digest, rep: &mut GcReport) {
    let tags = m.tags_of(id);
    for t in &tags {
        m.tags.remove(t);
    }
    m.images.remove(id);
    rep.deleted_images.push((id.clone(), tags));
}

/// `prune`: remove dangling (or, with [`PruneMode::All`], all) images that
/// no container uses, then everything unreferenced.
pub fn prune(store: &Store, mode: PruneMode) -> Result<GcReport> {
    let _g = store.lock_exclusive()?;
    let mut rep = GcReport::default();
    let m = store.update_meta(|m| {
        let used = m.images_in_use();
        let ids: Vec<Digest> = m
            .images
            .keys()
            .filter(|id| !used.contains(*id))
            .filter(|id| mode == PruneMode::All || m.tags_of(id).is_empty())
            .cloned()
            .collect();
        for id in ids {
            delete_image(m, &id, &mut rep);
        }
        Ok(m.clone())
    })?;
    sweep(store, &m, &mut rep)?;
    Ok(rep)
}

/// `rmi`: a tag of an image that has other tags is only untagged; else
/// the image goes (unless a container uses it) with the data only it used.
pub fn rmi(store: &Store, refs: &[String]) -> Result<GcReport> {
    let _g = store.lock_exclusive()?;
    let mut rep = GcReport::default();
    let m = store.update_meta(|m| {
        for r in refs {
            let (id, tag) = m.resolve(r)?;
            let tags = m.tags_of(&id);
            if let Some(t) = tag
                && tags.len() > 1
            {
                m.tags.remove(&t);
                rep.untagged.push(t);
                continue;
            }
            if m.images_in_use().contains(&id) {
                return Err(StoreError::Unsupported(format!(
                    "image {} is used by a container",
                    id.short()
                )));
            }
            rep.untagged.extend(tags);
            delete_image(m, &id, &mut rep);
        }
        Ok(m.clone())
    })?;
    sweep(store, &m, &mut rep)?;
    Ok(rep)
}

/// `tag`: point a new name at an image.
pub fn tag(store: &Store, source: &str, target: &str) -> Result<Digest> {
    let name = super::reference::normalize(target)?;
    let _g = store.lock_shared()?;
    store.update_meta(|m| {
        let (id, _) = m.resolve(source)?;
        m.tags.insert(name, id.clone());
        Ok(id)
    })
}
