//! Loading `docker save` archives, OCI archives and OCI layout dirs,
//! importing rootfs tarballs, and saving images as OCI or docker archives.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::blob::{Compression, StagedBlob, decompress, stage_blob};
use super::digest::{Digest, Hasher, HashingReader};
use super::meta::{ImageRecord, LayerRecord, LayerRef, write_atomic};
use super::unpack::{UnpackOptions, disk_usage, unpack_layer};
use super::{IoContext, Progress, Result, Store, StoreError, reference, sync_dir};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

// ---------------------------------------------------------------------------
// JSON documents

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The parts of an image config the store needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    pub rootfs: RootFs,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
}

/// One entry of a `docker save` manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerManifestEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

fn parse_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Json {
        what: what.to_string(),
        source: e,
    })
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Json {
        what: "output".into(),
        source: e,
    })
}

// ---------------------------------------------------------------------------
// Sources: a tar archive (indexed once, then read by offset) or a directory

trait Source {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>>;
    fn exists(&self, name: &str) -> bool;
    fn read_all(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open(name)?
            .take(limit + 1)
            .read_to_end(&mut v)
            .with_ctx(|| format!("reading {name}"))?;
        if v.len() as u64 > limit {
            return Err(StoreError::InvalidArchive(format!(
                "{name} is larger than {limit} bytes"
            )));
        }
        Ok(v)
    }
}

/// Normalize a name inside an archive: no leading `./` or `/`, no `.`.
fn norm_name(n: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in n.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

struct TarSource {
    path: PathBuf,
    entries: HashMap<String, (u64, u64)>,
}

impl TarSource {
    fn build(path: &Path) -> Result<TarSource> {
        let f = File::open(path).with_ctx(|| format!("opening {}", path.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut entries = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let what = || format!("reading archive {}", path.display());
        for e in ar.entries_with_seek().with_ctx(what)? {
            let e = e.with_ctx(what)?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let Some(name) = norm_name(&name) else {
                continue;
            };
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    entries.insert(name, (e.raw_file_position(), e.size()));
                }
                tar::EntryType::Symlink => {
                    if let Some(t) = e.link_name_bytes() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let dir = name.rsplit_once('/').map(|x| x.0).unwrap_or("");
                        if let Some(t) = norm_name(&format!("{dir}/{t}")) {
                            links.push((name, t));
                        }
                    }
                }
                tar::EntryType::Link => {
                    if let Some(t) = e.link_name_bytes()
                        && let Some(t) = norm_name(&String::from_utf8_lossy(&t))
                    {
                        links.push((name, t));
                    }
                }
                _ => {}
            }
        }
        for _ in 0..8 {
            for (n, t) in &links {
                if let Some(v) = entries.get(t).copied() {
                    entries.entry(n.clone()).or_insert(v);
                }
            }
        }
        Ok(TarSource {
            path: path.to_path_buf(),
            entries,
        })
    }
}

impl Source for TarSource {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let n = norm_name(name).unwrap_or_default();
        let (off, size) = *self
            .entries
            .get(&n)
            .ok_or_else(|| StoreError::InvalidArchive(format!("{name} not in archive")))?;
        let mut f =
            File::open(&self.path).with_ctx(|| format!("opening {}", self.path.display()))?;
        f.seek(SeekFrom::Start(off))
            .with_ctx(|| format!("reading {name}"))?;
        Ok(Box::new(ExactReader {
            inner: f.take(size),
            left: size,
        }))
    }
    fn exists(&self, name: &str) -> bool {
        norm_name(name).is_some_and(|n| self.entries.contains_key(&n))
    }
}

/// Fails with UnexpectedEof when the underlying file ends early.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive is truncated",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

struct DirSource {
    root: PathBuf,
}

impl DirSource {
    fn path(&self, name: &str) -> Result<PathBuf> {
        let n = norm_name(name)
            .filter(|n| !n.is_empty() && !name.split('/').any(|c| c == ".."))
            .ok_or_else(|| StoreError::InvalidArchive(format!("bad name {name:?}")))?;
        Ok(self.root.join(n))
    }
}

impl Source for DirSource {
    fn open(&self, name: &str) -> Result<Box<dyn Read + '_>> {
        let p = self.path(name)?;
        let f = File::open(&p).with_ctx(|| format!("opening {}", p.display()))?;
        Ok(Box::new(f))
    }
    fn exists(&self, name: &str) -> bool {
        self.path(name).is_ok_and(|p| p.is_file())
    }
}

// ---------------------------------------------------------------------------
// What to load

struct LayerSrc {
    name: String,
    digest: Option<Digest>,
    size: Option<u64>,
    media_type: Option<String>,
}

struct ImagePlan {
    names: Vec<String>,
    /// Raw manifest (OCI or docker schema 2) with its digest and media type;
    /// None for docker-save archives, whose manifest is made up here.
    manifest: Option<(Vec<u8>, Digest, String)>,
    config_name: String,
    config_digest: Option<Digest>,
    config_size: Option<u64>,
    layers: Vec<LayerSrc>,
}

const JSON_LIMIT: u64 = 16 << 20;

fn blob_name(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

fn parse_digest(s: &str, what: &str) -> Result<Digest> {
    if !s.starts_with("sha256:") && s.contains(':') {
        return Err(StoreError::Unsupported(format!(
            "{what}: digest algorithm of {s}"
        )));
    }
    Digest::parse(s)
}

fn docker_plans(src: &dyn Source) -> Result<Vec<ImagePlan>> {
    let bytes = src.read_all("manifest.json", JSON_LIMIT)?;
    let entries: Vec<DockerManifestEntry> = parse_json(&bytes, "manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        // "blobs/sha256/HEX" or "HEX.json" name the config's digest.
        let base = e.config.rsplit('/').next().unwrap_or("");
        let config_digest = Digest::from_hex(base.strip_suffix(".json").unwrap_or(base)).ok();
        if !src.exists(&e.config) {
            return Err(StoreError::MissingBlob {
                what: "manifest.json".into(),
                name: e.config.clone(),
            });
        }
        let mut layers = Vec::new();
        for l in &e.layers {
            if !src.exists(l) {
                return Err(StoreError::MissingBlob {
                    what: "manifest.json".into(),
                    name: l.clone(),
                });
            }
            let digest = l
                .strip_prefix("blobs/sha256/")
                .and_then(|h| Digest::from_hex(h).ok());
            layers.push(LayerSrc {
                name: l.clone(),
                digest,
                size: None,
                media_type: None,
            });
        }
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            names.push(reference::normalize(&t)?);
        }
        out.push(ImagePlan {
            names,
            manifest: None,
            config_name: e.config,
            config_digest,
            config_size: None,
            layers,
        });
    }
    Ok(out)
}

fn read_verified(src: &dyn Source, d: &Descriptor, what: &str) -> Result<(Vec<u8>, Digest)> {
    let digest = parse_digest(&d.digest, what)?;
    let name = blob_name(&digest);
    if !src.exists(&name) {
        return Err(StoreError::MissingBlob {
            what: what.to_string(),
            name,
        });
    }
    let bytes = src.read_all(&name, JSON_LIMIT)?;
    let got = Digest::of(&bytes);
    if got != digest {
        return Err(StoreError::DigestMismatch {
            what: what.to_string(),
            expected: digest.to_string(),
            actual: got.to_string(),
        });
    }
    if bytes.len() as u64 != d.size {
        return Err(StoreError::DigestMismatch {
            what: format!("size of {what}"),
            expected: d.size.to_string(),
            actual: bytes.len().to_string(),
        });
    }
    Ok((bytes, digest))
}

fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    };
    (arch, "linux")
}

fn oci_plans(src: &dyn Source) -> Result<Vec<ImagePlan>> {
    let bytes = src.read_all("index.json", JSON_LIMIT)?;
    let index: Index = parse_json(&bytes, "index.json")?;
    let mut out = Vec::new();
    for top in &index.manifests {
        let mut names = Vec::new();
        if let Some(n) = top
            .annotations
            .get(CONTAINERD_NAME)
            .or_else(|| top.annotations.get(REF_NAME))
        {
            names.push(reference::normalize(n)?);
        }
        let mut desc = top.clone();
        // Follow nested indexes to the manifest for this platform.
        for _ in 0..4 {
            let mt = desc.media_type.clone().unwrap_or_default();
            if mt != OCI_INDEX && mt != DOCKER_LIST {
                break;
            }
            let (b, _) = read_verified(src, &desc, "image index")?;
            let idx: Index = parse_json(&b, &format!("image index {}", desc.digest))?;
            let (arch, os) = host_platform();
            let pick = idx
                .manifests
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.architecture == arch && p.os == os)
                })
                .or_else(|| idx.manifests.first())
                .ok_or_else(|| {
                    StoreError::InvalidArchive(format!("image index {} is empty", desc.digest))
                })?;
            desc = pick.clone();
        }
        let what = format!("manifest {}", desc.digest);
        let (mbytes, mdigest) = read_verified(src, &desc, &what)?;
        let m: Manifest = parse_json(&mbytes, &what)?;
        let mt = m
            .media_type
            .clone()
            .or(desc.media_type.clone())
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        if mt != OCI_MANIFEST && mt != DOCKER_MANIFEST {
            return Err(StoreError::Unsupported(format!("manifest media type {mt}")));
        }
        let config_digest = parse_digest(&m.config.digest, "config")?;
        if !src.exists(&blob_name(&config_digest)) {
            return Err(StoreError::MissingBlob {
                what,
                name: blob_name(&config_digest),
            });
        }
        let mut layers = Vec::new();
        for l in &m.layers {
            let d = parse_digest(&l.digest, "layer")?;
            let name = blob_name(&d);
            if !src.exists(&name) {
                return Err(StoreError::MissingBlob {
                    what: what.clone(),
                    name,
                });
            }
            layers.push(LayerSrc {
                name,
                digest: Some(d),
                size: Some(l.size),
                media_type: l.media_type.clone(),
            });
        }
        out.push(ImagePlan {
            names,
            manifest: Some((mbytes, mdigest, mt)),
            config_name: blob_name(&config_digest),
            config_digest: Some(config_digest),
            config_size: Some(m.config.size),
            layers,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// A batch of staged blobs, layers and images, committed at the end

/// An image that a load or import added.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub id: Digest,
    pub names: Vec<String>,
    pub layers: usize,
    /// Layers that were not in the store yet and were unpacked.
    pub new_layers: usize,
}

struct Batch<'a> {
    store: &'a Store,
    staging: &'a Path,
    progress: &'a dyn Progress,
    blobs: HashMap<Digest, StagedBlob>,
    layers: Vec<(Digest, PathBuf)>,
    images: Vec<(ImageRecord, Vec<String>)>,
    loaded: Vec<LoadedImage>,
}

struct CountingReader<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<'a> Batch<'a> {
    fn new(store: &'a Store, staging: &'a Path, progress: &'a dyn Progress) -> Self {
        Batch {
            store,
            staging,
            progress,
            blobs: HashMap::new(),
            layers: Vec::new(),
            images: Vec::new(),
            loaded: Vec::new(),
        }
    }

    fn have_blob(&self, d: &Digest) -> bool {
        self.blobs.contains_key(d) || self.store.has_blob(d)
    }

    fn blob_file(&self, d: &Digest) -> Result<File> {
        match self.blobs.get(d) {
            Some(b) => File::open(&b.path).with_ctx(|| format!("opening staged {d}")),
            None => self.store.open_blob(d),
        }
    }

    fn add_staged(&mut self, b: StagedBlob) -> Digest {
        let d = b.digest.clone();
        if self.have_blob(&d) {
            let _ = fs::remove_file(&b.path);
        } else {
            self.blobs.insert(d.clone(), b);
        }
        d
    }

    fn stage_bytes(&mut self, bytes: &[u8], what: &str) -> Result<Digest> {
        let d = Digest::of(bytes);
        if self.have_blob(&d) {
            return Ok(d);
        }
        let b = stage_blob(
            self.staging,
            &mut &bytes[..],
            what,
            Some(&d),
            None,
            &super::NoProgress,
        )?;
        Ok(self.add_staged(b))
    }

    /// Copy a blob from the source unless the store has it; returns its
    /// digest (checked against `expected`).
    fn ensure_blob(
        &mut self,
        src: &dyn Source,
        name: &str,
        expected: Option<&Digest>,
        size: Option<u64>,
        what: &str,
    ) -> Result<Digest> {
        if let Some(d) = expected
            && self.have_blob(d)
        {
            return Ok(d.clone());
        }
        let mut r = src.open(name)?;
        self.progress.start(what, size.unwrap_or(0));
        let b = stage_blob(self.staging, &mut r, what, expected, size, self.progress)?;
        self.progress.finish();
        Ok(self.add_staged(b))
    }

    fn layer_dir(&self, chain: &Digest) -> Option<PathBuf> {
        if let Some((_, p)) = self.layers.iter().find(|(c, _)| c == chain) {
            return Some(p.join("diff"));
        }
        self.store
            .has_layer(chain)
            .then(|| self.store.layer_diff_path(chain))
    }

    /// Unpack a layer blob unless its chain id is already there; returns
    /// whether it was unpacked now, the compression, and the tar size.
    fn ensure_layer(
        &mut self,
        blob: &Digest,
        diff_id: &Digest,
        chain: &Digest,
        parent: Option<&Digest>,
        lowers: Vec<PathBuf>,
    ) -> Result<(bool, Compression)> {
        let f = self.blob_file(blob)?;
        if self.layer_dir(chain).is_some() {
            let mut head = [0u8; 6];
            let n = (&f)
                .read(&mut head)
                .with_ctx(|| format!("reading {blob}"))?;
            return Ok((false, Compression::detect(&head[..n])?));
        }
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let dir = self.staging.join(format!("layer-{}", chain.hex()));
        let diff = dir.join("diff");
        fs::create_dir_all(&diff).with_ctx(|| format!("creating {}", diff.display()))?;
        self.progress
            .start(&format!("unpacking {}", &diff_id.hex()[..12]), total);
        let counted = CountingReader {
            inner: f,
            progress: self.progress,
        };
        let (comp, dec) = decompress(counted)?;
        let mut h = HashingReader::new(dec);
        let opts = UnpackOptions {
            lowers,
            ..UnpackOptions::default()
        };
        let stats = unpack_layer(&mut h, &diff, &opts).map_err(|e| match e {
            StoreError::Io { context, source } => StoreError::Io {
                context: format!("layer {blob}: {context}"),
                source,
            },
            e => e,
        })?;
        h.drain()
            .with_ctx(|| format!("layer {blob}: decompressing"))?;
        self.progress.finish();
        let (got, diff_size) = h.finish();
        if got != *diff_id {
            return Err(StoreError::DigestMismatch {
                what: format!("uncompressed layer {blob} (diff_id)"),
                expected: diff_id.to_string(),
                actual: got.to_string(),
            });
        }
        let (disk_bytes, inodes) =
            disk_usage(&diff).with_ctx(|| format!("measuring {}", diff.display()))?;
        let rec = LayerRecord {
            chain_id: chain.clone(),
            diff_id: diff_id.clone(),
            parent: parent.cloned(),
            diff_size,
            disk_bytes,
            inodes,
            entries: stats.entries,
        };
        write_atomic(
            &dir.join("layer.json"),
            &dir.join("layer.json.tmp"),
            &to_json(&rec)?,
        )?;
        self.layers.push((chain.clone(), dir));
        Ok((true, comp))
    }

    fn add_plan(&mut self, src: &dyn Source, plan: ImagePlan) -> Result<()> {
        // Config.
        let config = self.ensure_blob(
            src,
            &plan.config_name,
            plan.config_digest.as_ref(),
            plan.config_size,
            "config",
        )?;
        let cbytes = {
            let mut v = Vec::new();
            self.blob_file(&config)?
                .take(JSON_LIMIT)
                .read_to_end(&mut v)
                .with_ctx(|| format!("reading config {config}"))?;
            v
        };
        let cfg: ConfigFile = parse_json(&cbytes, &format!("config {config}"))?;
        if cfg.rootfs.diff_ids.len() != plan.layers.len() {
            return Err(StoreError::InvalidArchive(format!(
                "config {config} lists {} diff_ids but the manifest {} layers",
                cfg.rootfs.diff_ids.len(),
                plan.layers.len()
            )));
        }
        let diff_ids = cfg
            .rootfs
            .diff_ids
            .iter()
            .map(|d| parse_digest(d, "diff_id"))
            .collect::<Result<Vec<_>>>()?;
        let chains = Digest::chain_ids(&diff_ids);
        let mut refs = Vec::new();
        let mut new_layers = 0;
        for (i, l) in plan.layers.iter().enumerate() {
            let what = format!("layer {}", l.name);
            let blob = self.ensure_blob(src, &l.name, l.digest.as_ref(), l.size, &what)?;
            let lowers: Vec<PathBuf> = chains[..i]
                .iter()
                .rev()
                .filter_map(|c| self.layer_dir(c))
                .collect();
            let parent = if i > 0 { Some(&chains[i - 1]) } else { None };
            let (new, comp) = self.ensure_layer(&blob, &diff_ids[i], &chains[i], parent, lowers)?;
            if new {
                new_layers += 1;
            }
            let size = self
                .blobs
                .get(&blob)
                .map(|b| b.size)
                .or_else(|| self.store.blob_size(&blob))
                .unwrap_or(0);
            refs.push(LayerRef {
                digest: blob,
                media_type: l
                    .media_type
                    .clone()
                    .unwrap_or_else(|| comp.oci_layer_media_type().to_string()),
                size,
                diff_id: diff_ids[i].clone(),
                chain_id: chains[i].clone(),
            });
        }
        // Manifest: as received, or made up for docker-save archives.
        let (manifest, mt) = match plan.manifest {
            Some((bytes, d, mt)) => {
                let got = self.stage_bytes(&bytes, "manifest")?;
                debug_assert_eq!(got, d);
                (d, mt)
            }
            None => {
                let m = Manifest {
                    schema_version: 2,
                    media_type: Some(OCI_MANIFEST.into()),
                    config: Descriptor {
                        media_type: Some(OCI_CONFIG.into()),
                        digest: config.to_string(),
                        size: cbytes.len() as u64,
                        annotations: BTreeMap::new(),
                        platform: None,
                        urls: vec![],
                    },
                    layers: refs
                        .iter()
                        .map(|l| Descriptor {
                            media_type: Some(l.media_type.clone()),
                            digest: l.digest.to_string(),
                            size: l.size,
                            annotations: BTreeMap::new(),
                            platform: None,
                            urls: vec![],
                        })
                        .collect(),
                };
                let bytes = to_json(&m)?;
                (self.stage_bytes(&bytes, "manifest")?, OCI_MANIFEST.into())
            }
        };
        let img = ImageRecord {
            id: config.clone(),
            manifest,
            manifest_media_type: mt,
            config,
            layers: refs,
            loaded: super::now_rfc3339(),
            created: cfg.created,
            architecture: cfg.architecture,
            os: cfg.os,
        };
        self.loaded.push(LoadedImage {
            id: img.id.clone(),
            names: plan.names.clone(),
            layers: img.layers.len(),
            new_layers,
        });
        self.images.push((img, plan.names));
        Ok(())
    }

    /// Move everything staged into the store and register the images.
    fn commit(self) -> Result<Vec<LoadedImage>> {
        for b in self.blobs.values() {
            self.store.commit_blob(b)?;
        }
        self.store.sync_blobs()?;
        for (chain, dir) in &self.layers {
            let dst = self.store.layer_path(chain);
            match fs::rename(dir, &dst) {
                Ok(()) => {}
                // Another load put the same layer in place meanwhile.
                Err(_) if self.store.has_layer(chain) => {}
                Err(e) => {
                    return Err(e).with_ctx(|| format!("moving layer {chain} into the store"));
                }
            }
        }
        sync_dir(&self.store.root().join("layers"))?;
        let images = self.images;
        self.store.update_meta(|m| {
            for (img, names) in images {
                self.store.register_image(m, img, &names);
            }
            Ok(())
        })?;
        Ok(self.loaded)
    }
}

/// Load every image of a docker-save archive, an OCI archive or an OCI
/// layout directory (archives may be gzip or zstd compressed as a whole).
pub fn load(store: &Store, input: &Path, progress: &dyn Progress) -> Result<Vec<LoadedImage>> {
    let _g = store.lock_shared()?;
    let staging = store.staging("load")?;
    let src: Box<dyn Source> = if input.is_dir() {
        Box::new(DirSource {
            root: input.to_path_buf(),
        })
    } else {
        let mut f = File::open(input).with_ctx(|| format!("opening {}", input.display()))?;
        let mut head = [0u8; 6];
        let n = f
            .read(&mut head)
            .with_ctx(|| format!("reading {}", input.display()))?;
        let path = match Compression::detect(&head[..n])? {
            Compression::None => input.to_path_buf(),
            _ => {
                // Decompress the whole archive once so it can be indexed.
                f.seek(SeekFrom::Start(0))
                    .with_ctx(|| format!("reading {}", input.display()))?;
                let (_, mut dec) = decompress(f)?;
                let p = staging.path().join("archive.tar");
                let mut out = File::create(&p).with_ctx(|| format!("creating {}", p.display()))?;
                io::copy(&mut dec, &mut out)
                    .with_ctx(|| format!("decompressing {}", input.display()))?;
                p
            }
        };
        Box::new(TarSource::build(&path)?)
    };
    let plans = if src.exists("manifest.json") {
        docker_plans(&*src)?
    } else if src.exists("index.json") {
        oci_plans(&*src)?
    } else {
        return Err(StoreError::InvalidArchive(format!(
            "{}: neither a docker-save archive (manifest.json) nor an OCI layout (index.json)",
            input.display()
        )));
    };
    if plans.is_empty() {
        return Err(StoreError::InvalidArchive(format!(
            "{}: no images in it",
            input.display()
        )));
    }
    let mut batch = Batch::new(store, staging.path(), progress);
    for plan in plans {
        batch.add_plan(&*src, plan)?;
    }
    batch.commit()
}

/// A one-layer image from a rootfs tarball (plain, gzip or zstd), as
/// `docker import` makes.
pub fn import(
    store: &Store,
    tarball: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<LoadedImage> {
    let name = reference::normalize(name)?;
    let _g = store.lock_shared()?;
    let staging = store.staging("import")?;
    let mut batch = Batch::new(store, staging.path(), progress);
    let mut f = File::open(tarball).with_ctx(|| format!("opening {}", tarball.display()))?;
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    progress.start("copying", total);
    let b = stage_blob(staging.path(), &mut f, "rootfs", None, None, progress)?;
    progress.finish();
    let blob = batch.add_staged(b);
    // The diff_id is only known once the layer has been read: hash it first.
    let (_, mut dec) = decompress(batch.blob_file(&blob)?)?;
    let mut h = HashingReader::new(&mut dec);
    h.drain()
        .with_ctx(|| format!("decompressing {}", tarball.display()))?;
    let (diff_id, _) = h.finish();
    let (_, comp) = batch.ensure_layer(&blob, &diff_id, &diff_id, None, vec![])?;
    let (arch, os) = host_platform();
    let created = super::now_rfc3339();
    let config = serde_json::json!({
        "created": created,
        "architecture": arch,
        "os": os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
        "history": [{"created": created, "created_by": format!("cairn import {}", tarball.display())}],
    });
    let cbytes = to_json(&config)?;
    let cdigest = batch.stage_bytes(&cbytes, "config")?;
    let size = batch.blobs.get(&blob).map(|b| b.size).unwrap_or(total);
    let layer = LayerRef {
        digest: blob.clone(),
        media_type: comp.oci_layer_media_type().into(),
        size,
        diff_id: diff_id.clone(),
        chain_id: diff_id.clone(),
    };
    let m = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.into()),
        config: Descriptor {
            media_type: Some(OCI_CONFIG.into()),
            digest: cdigest.to_string(),
            size: cbytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
            urls: vec![],
        },
        layers: vec![Descriptor {
            media_type: Some(layer.media_type.clone()),
            digest: blob.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
            urls: vec![],
        }],
    };
    let mdigest = batch.stage_bytes(&to_json(&m)?, "manifest")?;
    let img = ImageRecord {
        id: cdigest.clone(),
        manifest: mdigest,
        manifest_media_type: OCI_MANIFEST.into(),
        config: cdigest.clone(),
        layers: vec![layer],
        loaded: created.clone(),
        created: Some(created),
        architecture: Some(arch.into()),
        os: Some(os.into()),
    };
    let new_layers = batch.layers.len();
    batch.loaded.push(LoadedImage {
        id: cdigest,
        names: vec![name.clone()],
        layers: 1,
        new_layers,
    });
    batch.images.push((img, vec![name]));
    let mut v = batch.commit()?;
    v.pop()
        .ok_or_else(|| StoreError::Corrupt("import registered nothing".into()))
}

// ---------------------------------------------------------------------------
// Save

/// Output format of `save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    OciArchive,
    DockerArchive,
}

/// A reader that checks, at its end, the length and digest of what it read.
struct VerifyReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    expected: Digest,
    size: u64,
    what: String,
}

impl<R: Read> VerifyReader<R> {
    fn new(inner: R, expected: &Digest, size: u64, what: String) -> Self {
        VerifyReader {
            inner,
            hasher: Some(Hasher::new()),
            expected: expected.clone(),
            size,
            what,
        }
    }
}

impl<R: Read> Read for VerifyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(h) = self.hasher.as_mut() {
                h.update(&buf[..n]);
            }
        } else if !buf.is_empty()
            && let Some(h) = self.hasher.take()
        {
            let len = h.len();
            if len != self.size {
                return Err(io::Error::other(format!(
                    "{}: {len} bytes, expected {}",
                    self.what, self.size
                )));
            }
            let d = h.finish();
            if d != self.expected {
                return Err(io::Error::other(format!(
                    "{}: digest {d}, expected {}",
                    self.what, self.expected
                )));
            }
        }
        Ok(n)
    }
}

fn tar_header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append_bytes<W: Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = tar_header(data.len() as u64, 0o644);
    b.append_data(&mut h, name, data)
        .with_ctx(|| format!("writing {name}"))
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str) -> Result<()> {
    let mut h = tar_header(0, 0o755);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, name, io::empty())
        .with_ctx(|| format!("writing {name}"))
}

/// Write images to an archive. `refs` are names or ids; every tag given
/// is recorded in the archive.
pub fn save(
    store: &Store,
    refs: &[String],
    out: &Path,
    format: SaveFormat,
    progress: &dyn Progress,
) -> Result<()> {
    let _g = store.lock_shared()?;
    let meta = store.read_meta()?;
    // (image, tags to record), in the order asked, one entry per image.
    let mut sel: Vec<(ImageRecord, Vec<String>)> = Vec::new();
    for r in refs {
        let (id, tag) = meta.resolve(r)?;
        let img = meta
            .images
            .get(&id)
            .ok_or_else(|| StoreError::Corrupt(format!("tag points to unknown image {id}")))?;
        let pos = match sel.iter().position(|(i, _)| i.id == id) {
            Some(p) => p,
            None => {
                sel.push((img.clone(), vec![]));
                sel.len() - 1
            }
        };
        if let Some(t) = tag
            && !sel[pos].1.contains(&t)
        {
            sel[pos].1.push(t);
        }
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = match dir {
        Some(d) => d.join(format!(
            ".{}.tmp-{}",
            out.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            std::process::id()
        )),
        None => PathBuf::from(format!(".cairn-save.tmp-{}", std::process::id())),
    };
    let res = (|| {
        let f = File::create(&tmp).with_ctx(|| format!("creating {}", tmp.display()))?;
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
        match format {
            SaveFormat::OciArchive => write_oci(store, &sel, &mut b, progress)?,
            SaveFormat::DockerArchive => write_docker(store, &sel, &mut b, progress)?,
        }
        let w = b.into_inner().ctx("finishing archive")?;
        let f = w
            .into_inner()
            .map_err(|e| e.into_error())
            .ctx("writing archive")?;
        f.sync_all().ctx("fsync archive")?;
        fs::rename(&tmp, out).with_ctx(|| format!("renaming to {}", out.display()))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

fn append_blob<W: Write>(
    store: &Store,
    b: &mut tar::Builder<W>,
    d: &Digest,
    progress: &dyn Progress,
) -> Result<()> {
    let f = store.open_blob(d)?;
    let size = f.metadata().with_ctx(|| format!("stat blob {d}"))?.len();
    progress.start(&format!("blob {}", d.short()), size);
    let r = CountingReader {
        inner: VerifyReader::new(f, d, size, format!("blob {d}")),
        progress,
    };
    let mut h = tar_header(size, 0o644);
    b.append_data(&mut h, blob_name(d), r)
        .with_ctx(|| format!("writing blob {d}"))?;
    progress.finish();
    Ok(())
}

fn write_oci<W: Write>(
    store: &Store,
    sel: &[(ImageRecord, Vec<String>)],
    b: &mut tar::Builder<W>,
    progress: &dyn Progress,
) -> Result<()> {
    append_bytes(b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    append_dir(b, "blobs")?;
    append_dir(b, "blobs/sha256")?;
    let mut written = std::collections::HashSet::new();
    let mut manifests = Vec::new();
    for (img, tags) in sel {
        let mut all = vec![img.config.clone(), img.manifest.clone()];
        all.extend(img.layers.iter().map(|l| l.digest.clone()));
        for d in all {
            if written.insert(d.clone()) {
                append_blob(store, b, &d, progress)?;
            }
        }
        let size = store
            .blob_size(&img.manifest)
            .ok_or_else(|| StoreError::Corrupt(format!("manifest {} missing", img.manifest)))?;
        let base = Descriptor {
            media_type: Some(img.manifest_media_type.clone()),
            digest: img.manifest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
            urls: vec![],
        };
        if tags.is_empty() {
            manifests.push(base.clone());
        }
        for t in tags {
            let mut d = base.clone();
            d.annotations.insert(REF_NAME.into(), t.clone());
            manifests.push(d);
        }
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(OCI_INDEX.into()),
        manifests,
    };
    append_bytes(b, "index.json", &to_json(&index)?)
}

fn write_docker<W: Write>(
    store: &Store,
    sel: &[(ImageRecord, Vec<String>)],
    b: &mut tar::Builder<W>,
    progress: &dyn Progress,
) -> Result<()> {
    let mut written = std::collections::HashSet::new();
    let mut entries = Vec::new();
    for (img, tags) in sel {
        let cname = format!("{}.json", img.config.hex());
        if written.insert(cname.clone()) {
            let bytes = store.read_blob(&img.config)?;
            append_bytes(b, &cname, &bytes)?;
        }
        let mut layers = Vec::new();
        for l in &img.layers {
            let rec = store.read_layer_record(&l.chain_id)?;
            let lname = format!("{}/layer.tar", l.diff_id.hex());
            if written.insert(lname.clone()) {
                append_dir(b, l.diff_id.hex())?;
                let f = store.open_blob(&l.digest)?;
                let (_, dec) = decompress(f)?;
                progress.start(&format!("layer {}", l.diff_id.short()), rec.diff_size);
                let r = CountingReader {
                    inner: VerifyReader::new(
                        dec,
                        &l.diff_id,
                        rec.diff_size,
                        format!("layer {}", l.diff_id),
                    ),
                    progress,
                };
                let mut h = tar_header(rec.diff_size, 0o644);
                b.append_data(&mut h, &lname, r)
                    .with_ctx(|| format!("writing layer {}", l.diff_id))?;
                progress.finish();
            }
            layers.push(lname);
        }
        entries.push(DockerManifestEntry {
            config: cname,
            repo_tags: Some(tags.clone()),
            layers,
        });
    }
    append_bytes(b, "manifest.json", &to_json(&entries)?)
}
