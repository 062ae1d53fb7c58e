//! Space accounting, as `docker system df`: what each image takes, what
//! it shares with others, and what `prune` would reclaim.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use super::digest::Digest;
use super::gc::mark;
use super::unpack::disk_usage;
use super::{IoContext, Result, Store};

/// Space used by one image.
#[derive(Debug, Clone)]
pub struct ImageUsage {
    pub id: Digest,
    pub tags: Vec<String>,
    pub created: Option<String>,
    /// Everything the image references: layer trees and blobs.
    pub size: u64,
    /// The part of `size` that other images reference too.
    pub shared: u64,
    /// The part of `size` only this image references.
    pub unique: u64,
    pub containers: usize,
}

/// Space used by one unpacked layer.
#[derive(Debug, Clone)]
pub struct LayerUsage {
    pub chain_id: Digest,
    pub diff_id: Option<Digest>,
    /// Allocated bytes of the unpacked tree.
    pub size: u64,
    pub inodes: u64,
    /// Number of images using it.
    pub images: usize,
    /// Used by an image that a container uses.
    pub active: bool,
}

/// The whole store.
#[derive(Debug, Clone, Default)]
pub struct DfReport {
    pub images: Vec<ImageUsage>,
    pub layers: Vec<LayerUsage>,
    pub blobs_count: usize,
    pub blobs_size: u64,
    pub layers_size: u64,
    /// Bytes referenced by more than one image.
    pub shared: u64,
    /// Bytes that `prune -a` would free (data of images no container uses,
    /// and unreferenced data).
    pub reclaimable: u64,
    /// Bytes no image references (`prune` frees them).
    pub unreferenced: u64,
    pub containers: usize,
    pub active_images: usize,
    /// Bytes of layer trees and of blobs that `prune -a` would free.
    pub layers_reclaimable: u64,
    pub blobs_reclaimable: u64,
}

impl DfReport {
    pub fn total(&self) -> u64 {
        self.blobs_size + self.layers_size
    }
}

/// Measure the store.
pub fn df(store: &Store) -> Result<DfReport> {
    let m = store.read_meta()?;
    let mut rep = DfReport {
        containers: m.containers.len(),
        ..Default::default()
    };
    // Sizes of every item on disk.
    let mut blob_size: BTreeMap<Digest, u64> = BTreeMap::new();
    let bdir = store.root().join("blobs/sha256");
    for e in fs::read_dir(&bdir).with_ctx(|| format!("reading {}", bdir.display()))? {
        let e = e.with_ctx(|| format!("reading {}", bdir.display()))?;
        if let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) {
            let s = e.metadata().map(|m| m.len()).unwrap_or(0);
            blob_size.insert(d, s);
        }
    }
    let mut layer_size: BTreeMap<Digest, (u64, u64, Option<Digest>)> = BTreeMap::new();
    let ldir = store.root().join("layers");
    for e in fs::read_dir(&ldir).with_ctx(|| format!("reading {}", ldir.display()))? {
        let e = e.with_ctx(|| format!("reading {}", ldir.display()))?;
        if let Ok(d) = Digest::from_hex(&e.file_name().to_string_lossy()) {
            let v = match store.read_layer_record(&d) {
                Ok(r) => (r.disk_bytes, r.inodes, Some(r.diff_id)),
                Err(_) => {
                    let (b, i) = disk_usage(&e.path()).unwrap_or((0, 0));
                    (b, i, None)
                }
            };
            layer_size.insert(d, v);
        }
    }
    rep.blobs_count = blob_size.len();
    rep.blobs_size = blob_size.values().sum();
    rep.layers_size = layer_size.values().map(|v| v.0).sum();

    // Who uses what.
    let mut blob_users: BTreeMap<&Digest, BTreeSet<&Digest>> = BTreeMap::new();
    let mut layer_users: BTreeMap<&Digest, BTreeSet<&Digest>> = BTreeMap::new();
    for img in m.images.values() {
        for b in std::iter::once(&img.manifest)
            .chain(std::iter::once(&img.config))
            .chain(img.layers.iter().map(|l| &l.digest))
        {
            blob_users.entry(b).or_default().insert(&img.id);
        }
        for l in &img.layers {
            layer_users.entry(&l.chain_id).or_default().insert(&img.id);
        }
    }
    let in_use = m.images_in_use();
    rep.active_images = m.images.keys().filter(|i| in_use.contains(*i)).count();
    let item_sizes = blob_users
        .iter()
        .map(|(d, u)| (blob_size.get(*d).copied().unwrap_or(0), u))
        .chain(
            layer_users
                .iter()
                .map(|(d, u)| (layer_size.get(*d).map(|v| v.0).unwrap_or(0), u)),
        )
        .collect::<Vec<_>>();
    for img in m.images.values() {
        let mut u = ImageUsage {
            id: img.id.clone(),
            tags: m.tags_of(&img.id),
            created: img.created.clone(),
            size: 0,
            shared: 0,
            unique: 0,
            containers: m.containers.values().filter(|c| c.image == img.id).count(),
        };
        for (size, users) in &item_sizes {
            if users.contains(&img.id) {
                u.size += size;
                if users.len() > 1 {
                    u.shared += size;
                } else {
                    u.unique += size;
                }
            }
        }
        rep.images.push(u);
    }
    rep.images
        .sort_by(|a, b| a.tags.first().cmp(&b.tags.first()).then(a.id.cmp(&b.id)));
    for (size, users) in &item_sizes {
        if users.len() > 1 {
            rep.shared += size;
        }
        if !users.iter().any(|i| in_use.contains(*i)) {
            rep.reclaimable += size;
        }
    }
    let (mb, ml) = mark(&m);
    rep.unreferenced = blob_size
        .iter()
        .filter(|(d, _)| !mb.contains(*d))
        .map(|(_, s)| s)
        .sum::<u64>()
        + layer_size
            .iter()
            .filter(|(d, _)| !ml.contains(*d))
            .map(|(_, v)| v.0)
            .sum::<u64>();
    rep.reclaimable += rep.unreferenced;
    let active = |users: Option<&BTreeSet<&Digest>>| {
        users.is_some_and(|u| u.iter().any(|i| in_use.contains(*i)))
    };
    rep.blobs_reclaimable = blob_size
        .iter()
        .filter(|(d, _)| !active(blob_users.get(d)))
        .map(|(_, s)| s)
        .sum();
    for (d, (size, inodes, diff_id)) in layer_size {
        let act = active(layer_users.get(&d));
        if !act {
            rep.layers_reclaimable += size;
        }
        rep.layers.push(LayerUsage {
            active: act,
            images: layer_users.get(&d).map(|u| u.len()).unwrap_or(0),
            chain_id: d,
            diff_id,
            size,
            inodes,
        });
    }
    Ok(rep)
}

/// Bytes in the style of `docker system df` (decimal units).
pub fn human_size(n: u64) -> String {
    const U: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        return format!("{n}B");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", U[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1500), "1.5kB");
        assert_eq!(human_size(2_000_000), "2MB");
        assert_eq!(human_size(1_234_567), "1.235MB");
    }
}
