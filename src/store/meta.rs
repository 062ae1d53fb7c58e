//! Store metadata: images, tags and containers in `images.json`, layer
//! records in `layers/HEX/layer.json`. Every file is replaced atomically
//! (temp file, fsync, rename); `images.json` updates hold `meta.lock`.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::{IoContext, Result, Store, StoreError, reference, sync_dir};

/// A layer as an image uses it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRef {
    /// Digest of the blob as stored (compressed or not).
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob.
    pub size: u64,
    pub diff_id: Digest,
    pub chain_id: Digest,
}

/// An image: manifest, config and layers, all in `blobs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The image id: digest of its config.
    pub id: Digest,
    pub manifest: Digest,
    pub manifest_media_type: String,
    pub config: Digest,
    pub layers: Vec<LayerRef>,
    /// When the image was added to this store.
    pub loaded: String,
    /// `created` of the config, if any.
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
}

/// A container's hold on the store (filled in by the container commands).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub image: Digest,
    #[serde(default)]
    pub name: Option<String>,
}

/// Contents of `images.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Meta {
    /// Images by id (config digest).
    #[serde(default)]
    pub images: BTreeMap<Digest, ImageRecord>,
    /// `name:tag` -> image id.
    #[serde(default)]
    pub tags: BTreeMap<String, Digest>,
    /// Containers by id.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
}

/// `layers/HEX/layer.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    /// Size of the uncompressed tar.
    pub diff_size: u64,
    /// Bytes the unpacked tree takes on disk (allocated blocks).
    pub disk_bytes: u64,
    pub inodes: u64,
    pub entries: u64,
}

impl Meta {
    /// Tags pointing at an image, sorted.
    pub fn tags_of(&self, id: &Digest) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, v)| *v == id)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Find an image by name[:tag], full id, `sha256:` id or id prefix.
    /// Returns the id and the tag that matched, if any.
    pub fn resolve(&self, r: &str) -> Result<(Digest, Option<String>)> {
        if let Ok(name) = reference::normalize(r) {
            for n in reference::aliases(&name) {
                if let Some(id) = self.tags.get(&n) {
                    return Ok((id.clone(), Some(n)));
                }
            }
        }
        let hex = r.strip_prefix("sha256:").unwrap_or(r);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let m: Vec<&Digest> = self
                .images
                .keys()
                .filter(|d| d.hex().starts_with(&hex))
                .collect();
            match m.len() {
                1 => return Ok((m[0].clone(), None)),
                0 => {}
                _ => return Err(StoreError::Ambiguous(r.to_string())),
            }
        }
        Err(StoreError::ImageNotFound(r.to_string()))
    }

    /// Ids of images that no container uses.
    pub fn images_in_use(&self) -> std::collections::BTreeSet<Digest> {
        self.containers.values().map(|c| c.image.clone()).collect()
    }
}

/// Write `bytes` to `path` atomically: `tmp_path`, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, tmp_path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(tmp_path).with_ctx(|| format!("creating {}", tmp_path.display()))?;
    f.write_all(bytes)
        .with_ctx(|| format!("writing {}", tmp_path.display()))?;
    f.sync_all()
        .with_ctx(|| format!("fsync {}", tmp_path.display()))?;
    drop(f);
    fs::rename(tmp_path, path).with_ctx(|| format!("replacing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

impl Store {
    fn meta_path(&self) -> std::path::PathBuf {
        self.root().join("images.json")
    }

    /// Read `images.json` (an empty store has none).
    pub fn read_meta(&self) -> Result<Meta> {
        let p = self.meta_path();
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Json {
                what: p.display().to_string(),
                source: e,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Meta::default()),
            Err(e) => Err(e).with_ctx(|| format!("reading {}", p.display())),
        }
    }

    fn write_meta(&self, m: &Meta) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| StoreError::Json {
            what: "images.json".into(),
            source: e,
        })?;
        write_atomic(
            &self.meta_path(),
            &self.root().join("images.json.tmp"),
            &bytes,
        )
    }

    /// Read-modify-write `images.json` under `meta.lock`. The file is only
    /// replaced when `f` succeeds.
    pub fn update_meta<T>(&self, f: impl FnOnce(&mut Meta) -> Result<T>) -> Result<T> {
        let _g = self.lock_meta()?;
        let mut m = self.read_meta()?;
        let out = f(&mut m)?;
        self.write_meta(&m)?;
        Ok(out)
    }

    /// Read a layer's record.
    pub fn read_layer_record(&self, chain_id: &Digest) -> Result<LayerRecord> {
        let p = self.layer_path(chain_id).join("layer.json");
        let b = fs::read(&p).with_ctx(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&b).map_err(|e| StoreError::Json {
            what: p.display().to_string(),
            source: e,
        })
    }

    /// Add an image and point `names` at it (moving them off other images).
    pub fn register_image(&self, m: &mut Meta, img: ImageRecord, names: &[String]) {
        let id = img.id.clone();
        m.images.entry(id.clone()).or_insert(img);
        for n in names {
            m.tags.insert(n.clone(), id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_update_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let id = Digest::of(b"config");
        s.update_meta(|m| {
            m.images.insert(
                id.clone(),
                ImageRecord {
                    id: id.clone(),
                    manifest: Digest::of(b"m"),
                    manifest_media_type: "x".into(),
                    config: id.clone(),
                    layers: vec![],
                    loaded: "now".into(),
                    created: None,
                    architecture: None,
                    os: None,
                },
            );
            m.tags.insert("a/b:latest".into(), id.clone());
            Ok(())
        })
        .unwrap();
        let m = s.read_meta().unwrap();
        assert_eq!(m.resolve("a/b").unwrap().0, id);
        assert_eq!(m.resolve("docker.io/library/a/b").unwrap().0, id);
        assert_eq!(m.resolve(&id.hex()[..8]).unwrap().0, id);
        assert_eq!(m.resolve(&id.to_string()).unwrap().0, id);
        assert!(matches!(
            m.resolve("nope"),
            Err(StoreError::ImageNotFound(_))
        ));
        // A failing update leaves the file alone.
        let r: Result<()> = s.update_meta(|m| {
            m.tags.clear();
            Err(StoreError::Unsupported("x".into()))
        });
        assert!(r.is_err());
        assert_eq!(s.read_meta().unwrap().tags.len(), 1);
    }
}
