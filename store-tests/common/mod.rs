//! Builders for test images: layer tars, docker-save archives, OCI
//! archives and layouts, made with the `tar` crate (no external tools).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cairn::store::Digest;
use serde_json::json;

pub const MTIME: u64 = 1_600_000_000;

/// A layer tar under construction. Names are raw bytes and written as
/// given (no validation), so hostile archives can be built too.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(etype: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(etype);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// Append an entry with raw name/link bytes; long names go to PAX.
    pub fn raw(
        &mut self,
        mut h: tar::Header,
        name: &[u8],
        link: Option<&[u8]>,
        data: &[u8],
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut pax: Vec<(String, Vec<u8>)> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.to_vec()))
            .collect();
        if name.len() < 100 {
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
        } else {
            pax.push(("path".into(), name.to_vec()));
            h.as_old_mut().name[..9].copy_from_slice(b"long-name");
        }
        if let Some(l) = link {
            if l.len() < 100 {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            } else {
                pax.push(("linkpath".into(), l.to_vec()));
            }
        }
        if !pax.is_empty() {
            self.b
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = Self::header(tar::EntryType::Directory, mode, 0);
        self.raw(h, name.as_bytes(), None, b"", &[])
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.file_bytes(name.as_bytes(), data, mode, &[])
    }

    pub fn file_bytes(
        &mut self,
        name: &[u8],
        data: &[u8],
        mode: u32,
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.raw(h, name, None, data, xattrs)
    }

    pub fn owned_file(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(h, name.as_bytes(), None, data, &[])
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.raw(h, name.as_bytes(), Some(target.as_bytes()), b"", &[])
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.raw(h, name.as_bytes(), Some(target.as_bytes()), b"", &[])
    }

    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = Self::header(tar::EntryType::Fifo, mode, 0);
        self.raw(h, name.as_bytes(), None, b"", &[])
    }

    pub fn chardev(&mut self, name: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, mode, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, name.as_bytes(), None, b"", &[])
    }

    /// A file and a symlink with names too long for the header, written by
    /// the tar crate as GNU long name / long link entries.
    pub fn gnu_long(&mut self, name: &str, data: &[u8], link: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        self.b.append_data(&mut h, name, data).unwrap();
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, link, target).unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

impl Comp {
    pub fn apply(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Comp::None => tar.to_vec(),
            Comp::Gzip => gzip(tar),
            Comp::Zstd => zstd(tar),
        }
    }
    pub fn media_type(self) -> &'static str {
        match self {
            Comp::None => "application/vnd.oci.image.layer.v1.tar",
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// An image to put in an archive.
#[derive(Clone)]
pub struct Image {
    pub tags: Vec<String>,
    /// Uncompressed layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
    pub comp: Comp,
    /// Extra text in the config, to make distinct images.
    pub label: String,
}

impl Image {
    pub fn new(tag: &str, layers: Vec<Vec<u8>>) -> Image {
        Image {
            tags: if tag.is_empty() {
                vec![]
            } else {
                vec![tag.to_string()]
            },
            layers,
            comp: Comp::Gzip,
            label: tag.to_string(),
        }
    }
    pub fn comp(mut self, c: Comp) -> Image {
        self.comp = c;
        self
    }

    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| Digest::of(l)).collect()
    }

    pub fn config(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self.diff_ids().iter().map(|d| d.to_string()).collect();
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": {"Labels": {"test": self.label}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// The config digest, which is the image id.
    pub fn id(&self) -> Digest {
        Digest::of(&self.config())
    }

    pub fn blobs(&self) -> Vec<Vec<u8>> {
        self.layers.iter().map(|l| self.comp.apply(l)).collect()
    }

    pub fn manifest(&self) -> Vec<u8> {
        let cfg = self.config();
        let layers: Vec<_> = self
            .blobs()
            .iter()
            .map(|b| {
                json!({"mediaType": self.comp.media_type(), "digest": Digest::of(b).to_string(), "size": b.len()})
            })
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": Digest::of(&cfg).to_string(), "size": cfg.len()},
            "layers": layers,
        }))
        .unwrap()
    }
}

/// Files of an archive, by name, in order.
pub type Files = Vec<(String, Vec<u8>)>;

pub fn tar_of(files: &Files) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Files of a classic `docker save` archive (layers as HEX/layer.tar).
pub fn docker_files(images: &[Image]) -> Files {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifest = Vec::new();
    for img in images {
        let cfg = img.config();
        let cname = format!("{}.json", Digest::of(&cfg).hex());
        files.insert(cname.clone(), cfg);
        let mut lnames = Vec::new();
        for b in img.blobs() {
            let n = format!("{}/layer.tar", Digest::of(&b).hex());
            files.insert(n.clone(), b);
            lnames.push(n);
        }
        manifest.push(json!({"Config": cname, "RepoTags": img.tags, "Layers": lnames}));
    }
    let mut v: Files = files.into_iter().collect();
    v.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    v
}

/// Files of an OCI layout.
pub fn oci_files(images: &[Image]) -> Files {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut manifests = Vec::new();
    for img in images {
        let cfg = img.config();
        files.insert(format!("blobs/sha256/{}", Digest::of(&cfg).hex()), cfg);
        for b in img.blobs() {
            files.insert(format!("blobs/sha256/{}", Digest::of(&b).hex()), b);
        }
        let m = img.manifest();
        let md = Digest::of(&m);
        files.insert(format!("blobs/sha256/{}", md.hex()), m.clone());
        let mut d = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": m.len()});
        if let Some(t) = img.tags.first() {
            d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
        }
        manifests.push(d);
    }
    let mut v: Files = vec![(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    )];
    v.extend(files);
    v.push((
        "index.json".into(),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": manifests})).unwrap(),
    ));
    v
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

pub fn write_layout(dir: &Path, files: &Files) {
    for (n, d) in files {
        let p = dir.join(n);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, d).unwrap();
    }
}

/// A small base layer: a few dirs and files.
pub fn base_layer(seed: &str) -> Vec<u8> {
    let mut l = Layer::new();
    l.dir("bin", 0o755)
        .dir("etc", 0o755)
        .file(
            "bin/tool",
            format!("tool {seed}\n").repeat(2000).as_bytes(),
            0o755,
        )
        .file("etc/os-release", format!("ID={seed}\n").as_bytes(), 0o644);
    l.finish()
}

/// Snapshot of a store: every path with its type and size, and the
/// metadata file, to check that a failed command changed nothing.
pub fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if rel.ends_with(".lock") {
            continue;
        }
        if md.is_dir() {
            out.push(format!("d {rel}"));
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else {
            out.push(format!("f {rel} {}", md.len()));
        }
    }
    if let Ok(m) = fs::read_to_string(root.join("images.json")) {
        out.push(m);
    }
    out.sort();
    out
}
