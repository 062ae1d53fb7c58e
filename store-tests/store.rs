//! Integration tests of the image store, on archives built in the test.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use cairn::store::archive::{self, SaveFormat};
use cairn::store::gc::{self, PruneMode};
use cairn::store::unpack::{OVERRIDE_STAT_XATTR, UnpackOptions, unpack_layer};
use cairn::store::{NoProgress, Store, StoreError, df};
use common::*;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("store")).unwrap();
    (d, s)
}

fn load(s: &Store, p: &Path) -> Result<Vec<archive::LoadedImage>, StoreError> {
    archive::load(s, p, &NoProgress)
}

/// Base layer with every kind of entry, and a second layer with
/// whiteouts, an opaque dir and a hard link to a file below.
fn rich_layers() -> Vec<Vec<u8>> {
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(150));
    let mut l = Layer::new();
    l.dir("./", 0o755)
        .dir("bin", 0o755)
        .dir("tmp", 0o1777)
        .dir("ro", 0o555)
        .file("ro/inside", b"ro", 0o444)
        .file("bin/su", b"#!su", 0o4755)
        .file("bin/sg", b"#!sg", 0o2711)
        .owned_file("home", b"owned", 0o600, 1000, 1001)
        .file("bin/busybox", b"busybox binary", 0o755)
        .hardlink("bin/sh", "bin/busybox")
        .symlink("bin/ls", "busybox")
        .symlink("abs", "/etc/passwd")
        .fifo("fifo", 0o640)
        .chardev("null", 1, 3, 0o666)
        .file(&long, b"long", 0o644)
        .gnu_long(&gnu_long(), b"gnu", &gnu_link(), &gnu_long())
        .file_bytes(b"latin1-\xe9t\xe9", b"bytes", 0o644, &[])
        .file_bytes(b"xattr", b"x", 0o644, &[("user.cairn.test", b"value")])
        .dir("gone-dir", 0o755)
        .file("gone-dir/a", b"a", 0o644)
        .file("gone", b"gone", 0o644)
        .dir("opq", 0o755)
        .file("opq/old", b"old", 0o644);
    let base = l.finish();
    let mut t = Layer::new();
    t.file(".wh.gone", b"", 0o644)
        .file(".wh.gone-dir", b"", 0o644)
        .dir("opq", 0o755)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .file("opq/new", b"new", 0o644)
        .hardlink("bin/sh2", "bin/busybox")
        .file("bin/busybox", b"replaced", 0o755);
    vec![base, t.finish()]
}

fn gnu_long() -> String {
    format!("gnu/{}", "n".repeat(200))
}

fn gnu_link() -> String {
    format!("gnu/{}", "l".repeat(180))
}

fn check_rich_tree(s: &Store, img: &Image) {
    let chains = cairn::store::Digest::chain_ids(&img.diff_ids());
    let base = s.layer_diff_path(&chains[0]);
    let top = s.layer_diff_path(&chains[1]);
    let md = |p: &str| fs::symlink_metadata(base.join(p)).unwrap();
    assert_eq!(md("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(md("bin/sg").mode() & 0o7777, 0o2711);
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("ro").mode() & 0o7777, 0o555);
    assert_eq!(md("ro/inside").mode() & 0o7777, 0o444);
    assert_eq!(md("bin/busybox").mtime(), MTIME as i64);
    assert_eq!(md("bin").mtime(), MTIME as i64, "dir mtimes are set last");
    assert_eq!(md("ro").mtime(), MTIME as i64);
    assert_eq!(md("bin/busybox").ino(), md("bin/sh").ino());
    assert_eq!(md("bin/busybox").nlink(), 2);
    assert!(md("bin/ls").file_type().is_symlink());
    assert_eq!(
        fs::read_link(base.join("bin/ls")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_link(base.join("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(md("fifo").file_type().is_fifo());
    assert_eq!(md("fifo").mode() & 0o7777, 0o640);
    if is_root() {
        assert!(md("null").file_type().is_char_device());
        assert_eq!(md("null").rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(md("home").uid(), 1000);
        assert_eq!(md("home").gid(), 1001);
    } else {
        assert!(md("null").file_type().is_file());
    }
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(150));
    assert_eq!(fs::read(base.join(long)).unwrap(), b"long");
    assert_eq!(fs::read(base.join(gnu_long())).unwrap(), b"gnu");
    assert_eq!(
        fs::read_link(base.join(gnu_link())).unwrap(),
        Path::new(&gnu_long())
    );
    let latin = std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9");
    assert_eq!(fs::read(base.join(latin)).unwrap(), b"bytes");
    let mut v = [0u8; 64];
    let n = rustix::fs::getxattr(base.join("xattr"), "user.cairn.test", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"value");
    // Top layer: whiteouts and opaque marker kept as plain files.
    let tmd = |p: &str| fs::symlink_metadata(top.join(p)).unwrap();
    assert!(tmd(".wh.gone").is_file());
    assert!(tmd(".wh.gone-dir").is_file());
    assert!(tmd("opq/.wh..wh..opq").is_file());
    assert_eq!(fs::read(top.join("opq/new")).unwrap(), b"new");
    assert!(!top.join("opq/old").exists());
    // The hard link to a lower file was copied up.
    assert_eq!(fs::read(top.join("bin/sh2")).unwrap(), b"busybox binary");
    assert_eq!(fs::read(top.join("bin/busybox")).unwrap(), b"replaced");
}

#[test]
fn load_docker_archive_and_check_tree() {
    let (d, s) = store();
    let img = Image::new("rich:1", rich_layers());
    let p = write(
        d.path(),
        "a.tar",
        &tar_of(&docker_files(std::slice::from_ref(&img))),
    );
    let got = load(&s, &p).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, img.id());
    assert_eq!(got[0].names, vec!["rich:1".to_string()]);
    assert_eq!(got[0].new_layers, 2);
    check_rich_tree(&s, &img);
    let m = s.read_meta().unwrap();
    assert_eq!(m.resolve("rich:1").unwrap().0, img.id());
    assert!(fs::read_dir(s.tmp_dir()).unwrap().next().is_none());
}

#[test]
fn load_oci_archive_each_compression() {
    for comp in [Comp::None, Comp::Gzip, Comp::Zstd] {
        let (d, s) = store();
        let img = Image::new("rich:oci", rich_layers()).comp(comp);
        let p = write(
            d.path(),
            "o.tar",
            &tar_of(&oci_files(std::slice::from_ref(&img))),
        );
        let got = load(&s, &p).unwrap();
        assert_eq!(got[0].id, img.id(), "{comp:?}");
        check_rich_tree(&s, &img);
        let m = s.read_meta().unwrap();
        let rec = &m.images[&img.id()];
        assert_eq!(rec.manifest, cairn::store::Digest::of(&img.manifest()));
        assert_eq!(rec.layers[0].media_type, comp.media_type());
    }
}

#[test]
fn load_oci_layout_dir_and_compressed_archive() {
    let (d, s) = store();
    let img = Image::new("dir/img:v1", vec![base_layer("a")]);
    let layout = d.path().join("layout");
    write_layout(&layout, &oci_files(std::slice::from_ref(&img)));
    assert_eq!(load(&s, &layout).unwrap()[0].id, img.id());
    // A whole archive gzip-compressed (docker save | gzip).
    let (d2, s2) = store();
    let p = write(
        d2.path(),
        "a.tar.gz",
        &gzip(&tar_of(&docker_files(std::slice::from_ref(&img)))),
    );
    assert_eq!(load(&s2, &p).unwrap()[0].id, img.id());
}

#[test]
fn multi_image_archive_loads_every_image() {
    let (d, s) = store();
    let a = Image::new("a:1", vec![base_layer("a")]);
    let b = Image::new("b:1", vec![base_layer("b")]);
    let c = Image::new("", vec![base_layer("c")]);
    for (i, files) in [
        docker_files(&[a.clone(), b.clone(), c.clone()]),
        oci_files(&[a.clone(), b.clone(), c.clone()]),
    ]
    .iter()
    .enumerate()
    {
        let p = write(d.path(), &format!("m{i}.tar"), &tar_of(files));
        let got = load(&s, &p).unwrap();
        assert_eq!(got.len(), 3);
    }
    let m = s.read_meta().unwrap();
    assert_eq!(m.images.len(), 3);
    assert!(m.tags_of(&c.id()).is_empty(), "untagged image is dangling");
}

#[test]
fn save_round_trips() {
    let (d, s) = store();
    let img = Image::new("round/trip:1", rich_layers());
    let p = write(
        d.path(),
        "o.tar",
        &tar_of(&oci_files(std::slice::from_ref(&img))),
    );
    load(&s, &p).unwrap();
    let orig = s.read_meta().unwrap().images[&img.id()].clone();
    for fmt in [SaveFormat::OciArchive, SaveFormat::DockerArchive] {
        let out = d.path().join(format!("{fmt:?}.tar"));
        archive::save(&s, &["round/trip:1".into()], &out, fmt, &NoProgress).unwrap();
        let (_d2, s2) = store();
        let got = load(&s2, &out).unwrap();
        assert_eq!(got[0].id, img.id());
        assert_eq!(got[0].names, vec!["round/trip:1".to_string()]);
        let rec = s2.read_meta().unwrap().images[&img.id()].clone();
        let diffs = |r: &cairn::store::meta::ImageRecord| {
            r.layers
                .iter()
                .map(|l| l.diff_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(diffs(&rec), diffs(&orig));
        if fmt == SaveFormat::OciArchive {
            // Not recompressed: every digest stays the same.
            assert_eq!(rec.manifest, orig.manifest);
            assert_eq!(rec.layers, orig.layers);
        }
        check_rich_tree(&s2, &img);
    }
}

#[test]
fn import_rootfs_tarball() {
    let (d, s) = store();
    let p = write(d.path(), "rootfs.tar.gz", &gzip(&base_layer("imp")));
    let got = archive::import(&s, &p, "imported", &NoProgress).unwrap();
    let m = s.read_meta().unwrap();
    assert_eq!(m.resolve("imported:latest").unwrap().0, got.id);
    let rec = &m.images[&got.id];
    assert_eq!(rec.layers.len(), 1);
    assert_eq!(
        rec.layers[0].diff_id,
        cairn::store::Digest::of(&base_layer("imp"))
    );
    assert!(
        s.layer_diff_path(&rec.layers[0].chain_id)
            .join("bin/tool")
            .is_file()
    );
    assert!(matches!(
        archive::import(&s, &p, "bad name", &NoProgress),
        Err(StoreError::InvalidReference(_))
    ));
}

#[test]
fn shared_base_is_unpacked_once_and_reported_shared() {
    let (d, s) = store();
    let base = base_layer("shared");
    let mut t1 = Layer::new();
    t1.file("one", b"1", 0o644);
    let mut t2 = Layer::new();
    t2.file("two", &vec![2u8; 50_000], 0o644);
    let a = Image::new("app/one:1", vec![base.clone(), t1.finish()]);
    let b = Image::new("app/two:1", vec![base.clone(), t2.finish()]);
    let pa = write(
        d.path(),
        "a.tar",
        &tar_of(&docker_files(std::slice::from_ref(&a))),
    );
    let pb = write(
        d.path(),
        "b.tar",
        &tar_of(&oci_files(std::slice::from_ref(&b))),
    );
    assert_eq!(load(&s, &pa).unwrap()[0].new_layers, 2);
    assert_eq!(load(&s, &pb).unwrap()[0].new_layers, 1, "base reused");
    let layers: Vec<_> = fs::read_dir(s.root().join("layers")).unwrap().collect();
    assert_eq!(layers.len(), 3, "base + two tops");
    // The base file exists once on disk.
    let base_chain = cairn::store::Digest::of(&base);
    let f = s.layer_diff_path(&base_chain).join("bin/tool");
    assert_eq!(fs::metadata(&f).unwrap().nlink(), 1);
    let r = df::df(&s).unwrap();
    let bl = r.layers.iter().find(|l| l.chain_id == base_chain).unwrap();
    assert_eq!(bl.images, 2);
    assert!(r.shared >= bl.size && bl.size > 0);
    for u in &r.images {
        assert_eq!(u.shared, r.shared, "both images share the same base");
        assert_eq!(u.size, u.shared + u.unique);
    }
    assert_eq!(r.unreferenced, 0);
}

#[test]
fn prune_and_rmi_remove_exactly_the_unreferenced() {
    let (d, s) = store();
    let base = base_layer("p");
    let mut t1 = Layer::new();
    t1.file("one", b"1", 0o644);
    let mut t2 = Layer::new();
    t2.file("two", b"2", 0o644);
    let a = Image::new("a:1", vec![base.clone(), t1.finish()]);
    let b = Image::new("b:1", vec![base.clone(), t2.finish()]);
    let p = write(
        d.path(),
        "ab.tar",
        &tar_of(&oci_files(&[a.clone(), b.clone()])),
    );
    load(&s, &p).unwrap();
    gc::tag(&s, "a:1", "a:extra").unwrap();
    // Nothing is dangling yet.
    let before = snapshot(s.root());
    let rep = gc::prune(&s, PruneMode::Dangling).unwrap();
    assert!(rep.deleted_images.is_empty() && rep.deleted_blobs.is_empty());
    assert_eq!(snapshot(s.root()), before);
    // rmi of one of two tags only untags.
    let rep = gc::rmi(&s, &["a:extra".into()]).unwrap();
    assert_eq!(rep.untagged, vec!["a:extra".to_string()]);
    assert!(rep.deleted_images.is_empty());
    // rmi a:1 removes a's top layer and blobs, keeps the shared base.
    let rep = gc::rmi(&s, &["a".to_string() + ":1"]).unwrap();
    assert_eq!(rep.deleted_images.len(), 1);
    assert_eq!(rep.deleted_layers.len(), 1);
    assert_eq!(rep.deleted_blobs.len(), 3, "config, manifest, top layer");
    assert!(rep.reclaimed > 0);
    let base_chain = cairn::store::Digest::of(&base);
    assert!(s.has_layer(&base_chain));
    check_consistent(&s);
    // Untag b: prune removes it as dangling, and everything with it.
    s.update_meta(|m| {
        m.tags.clear();
        Ok(())
    })
    .unwrap();
    let rep = gc::prune(&s, PruneMode::Dangling).unwrap();
    assert_eq!(rep.deleted_images.len(), 1);
    assert_eq!(rep.deleted_layers.len(), 2);
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 0);
}

#[test]
fn prune_all_removes_tagged_images_too() {
    let (d, s) = store();
    let a = Image::new("a:1", vec![base_layer("x")]);
    let p = write(d.path(), "a.tar", &tar_of(&docker_files(&[a])));
    load(&s, &p).unwrap();
    assert!(
        gc::prune(&s, PruneMode::Dangling)
            .unwrap()
            .deleted_images
            .is_empty()
    );
    let rep = gc::prune(&s, PruneMode::All).unwrap();
    assert_eq!(rep.deleted_images.len(), 1);
    assert_eq!(
        fs::read_dir(s.root().join("blobs/sha256")).unwrap().count(),
        0
    );
}

/// Every image's blobs and layers are in place and complete; tmp/ is empty.
fn check_consistent(s: &Store) {
    let m = s.read_meta().unwrap();
    for img in m.images.values() {
        assert!(s.has_blob(&img.manifest));
        assert!(s.has_blob(&img.config));
        for l in &img.layers {
            assert!(s.has_blob(&l.digest), "blob {}", l.digest);
            assert!(s.has_layer(&l.chain_id), "layer {}", l.chain_id);
        }
    }
    for t in m.tags.values() {
        assert!(m.images.contains_key(t));
    }
}

// --------------------------------------------------------------------------
// Hostile inputs: a clear error and an unchanged store.

fn hostile(files: Files, expect: &[&str]) {
    let (d, s) = store();
    // The store already holds an image.
    let ok = Image::new("ok:1", vec![base_layer("ok")]);
    load(
        &s,
        &write(d.path(), "ok.tar", &tar_of(&docker_files(&[ok]))),
    )
    .unwrap();
    let before = snapshot(s.root());
    let p = write(d.path(), "bad.tar", &tar_of(&files));
    let err = load(&s, &p).expect_err("hostile archive must be rejected");
    let msg = err.to_string();
    eprintln!("rejected as expected: {msg}");
    for e in expect {
        assert!(msg.contains(e), "error {msg:?} should mention {e:?}");
    }
    assert_eq!(snapshot(s.root()), before, "store changed after: {msg}");
    check_consistent(&s);
    // Nothing was written next to the store either.
    let names: Vec<_> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["bad.tar", "ok.tar", "store"], "{msg}");
}

fn one_layer(l: Vec<u8>) -> Vec<Image> {
    vec![Image::new("evil:1", vec![l])]
}

#[test]
fn hostile_path_traversal() {
    let mut l = Layer::new();
    l.file("a/../../escaped", b"x", 0o644);
    hostile(
        docker_files(&one_layer(l.finish())),
        &["a/../../escaped", ".."],
    );
}

#[test]
fn hostile_absolute_path() {
    let mut l = Layer::new();
    l.file("/escaped-abs", b"x", 0o644);
    hostile(
        docker_files(&one_layer(l.finish())),
        &["/escaped-abs", "absolute"],
    );
}

#[test]
fn hostile_symlink_then_file() {
    let outside = tempfile::tempdir().unwrap();
    let mut l = Layer::new();
    l.symlink("link", outside.path().to_str().unwrap())
        .file("link/pwned", b"x", 0o644);
    hostile(
        docker_files(&one_layer(l.finish())),
        &["link/pwned", "symlink"],
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    // Relative symlink up and out, then a file through it.
    let mut l = Layer::new();
    l.dir("d", 0o755)
        .symlink("d/up", "../../../../../../../../tmp")
        .file("d/up/cairn-pwned", b"x", 0o644);
    hostile(
        docker_files(&one_layer(l.finish())),
        &["d/up/cairn-pwned", "symlink"],
    );
    assert!(!Path::new("/tmp/cairn-pwned").exists());
}

#[test]
fn hostile_hard_links() {
    let mut l = Layer::new();
    l.hardlink("passwd", "../../../../etc/passwd");
    hostile(docker_files(&one_layer(l.finish())), &["passwd", "outside"]);
    let mut l = Layer::new();
    l.hardlink("passwd", "/etc/passwd");
    hostile(docker_files(&one_layer(l.finish())), &["passwd", "outside"]);
    let mut l = Layer::new();
    l.symlink("etc", "/etc").hardlink("passwd", "etc/passwd");
    hostile(docker_files(&one_layer(l.finish())), &["passwd", "symlink"]);
}

#[test]
fn hostile_digest_mismatch() {
    // OCI: a layer blob whose content does not match its digest.
    let img = Image::new("evil:1", vec![base_layer("e")]);
    let mut files = oci_files(std::slice::from_ref(&img));
    let bd = cairn::store::Digest::of(&img.blobs()[0]);
    let name = format!("blobs/sha256/{}", bd.hex());
    for (n, d) in files.iter_mut() {
        if *n == name {
            d[20] ^= 0xff;
        }
    }
    hostile(files, &["digest mismatch", &bd.to_string()]);
    // Docker: a layer that does not match the config's diff_id.
    let mut img = Image::new("evil:1", vec![base_layer("e")]);
    let cfg_layers = img.clone();
    img.layers[0] = base_layer("other");
    let mut files = docker_files(std::slice::from_ref(&img));
    // Replace the config by one listing the original diff_id.
    let cfg = cfg_layers.config();
    files.retain(|(n, _)| !n.ends_with(".json"));
    let cname = format!("{}.json", cairn::store::Digest::of(&cfg).hex());
    let lname = files[0].0.clone();
    files.push((cname.clone(), cfg));
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(
            &serde_json::json!([{"Config": cname, "RepoTags": ["evil:1"], "Layers": [lname]}]),
        )
        .unwrap(),
    ));
    hostile(files, &["digest mismatch", "diff_id"]);
    // A manifest whose digest is wrong in index.json.
    let img = Image::new("evil:1", vec![base_layer("e")]);
    let mut files = oci_files(std::slice::from_ref(&img));
    let md = cairn::store::Digest::of(&img.manifest());
    for (n, d) in files.iter_mut() {
        if n.ends_with(md.hex()) {
            d.push(b' ');
        }
    }
    hostile(files, &["digest mismatch", "manifest"]);
}

#[test]
fn hostile_truncated_gzip() {
    let mut big = Layer::new();
    big.file(
        "big",
        &(0..200_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
        0o644,
    );
    let img = Image::new("evil:1", vec![big.finish()]);
    let mut files = docker_files(std::slice::from_ref(&img));
    for (n, d) in files.iter_mut() {
        if n.ends_with("layer.tar") {
            let l = d.len();
            d.truncate(l / 2);
        }
    }
    hostile(files, &["layer"]);
}

#[test]
fn hostile_truncated_tar() {
    let mut big = Layer::new();
    big.file("big", &vec![1u8; 100_000], 0o644);
    let img = Image::new("evil:1", vec![big.finish()]).comp(Comp::None);
    let mut files = docker_files(std::slice::from_ref(&img));
    for (n, d) in files.iter_mut() {
        if n.ends_with("layer.tar") {
            d.truncate(50_000);
        }
    }
    hostile(files, &["big"]);
    // The outer archive itself cut short.
    let (d, s) = store();
    let img = Image::new("a:1", vec![base_layer("t")]);
    let mut bytes = tar_of(&docker_files(&[img]));
    bytes.truncate(bytes.len() - 3000);
    let before = snapshot(s.root());
    assert!(load(&s, &write(d.path(), "t.tar", &bytes)).is_err());
    assert_eq!(snapshot(s.root()), before);
}

#[test]
fn hostile_invalid_json() {
    hostile(
        vec![("manifest.json".into(), b"[{\"Config\": ".to_vec())],
        &["invalid JSON", "manifest.json"],
    );
    let img = Image::new("evil:1", vec![base_layer("e")]);
    let mut files = oci_files(std::slice::from_ref(&img));
    for (n, d) in files.iter_mut() {
        if n == "index.json" {
            *d = b"{not json".to_vec();
        }
    }
    hostile(files, &["invalid JSON", "index.json"]);
    hostile(vec![("other".into(), b"x".to_vec())], &["neither"]);
}

#[test]
fn hostile_missing_blob() {
    let img = Image::new("evil:1", vec![base_layer("e")]);
    let bd = cairn::store::Digest::of(&img.blobs()[0]);
    let mut files = oci_files(std::slice::from_ref(&img));
    files.retain(|(n, _)| !n.ends_with(bd.hex()));
    hostile(files, &["not in the archive", bd.hex()]);
    let mut files = docker_files(std::slice::from_ref(&img));
    files.retain(|(n, _)| !n.ends_with("layer.tar"));
    hostile(files, &["not in the archive", "layer.tar"]);
}

#[test]
fn hostile_bare_whiteout() {
    let mut l = Layer::new();
    l.dir("d", 0o755).file("d/.wh.", b"", 0o644);
    hostile(
        docker_files(&one_layer(l.finish())),
        &["d/.wh.", "whiteout"],
    );
}

/// A layer that expands beyond the disk: the store is on a 4 MiB tmpfs.
#[test]
fn hostile_gzip_bomb_hits_enospc() {
    if !is_root() {
        eprintln!("SKIP hostile_gzip_bomb_hits_enospc: needs root to mount a tmpfs");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mnt = d.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("SKIP hostile_gzip_bomb_hits_enospc: cannot mount a tmpfs here");
        return;
    }
    struct Umount<'a>(&'a Path);
    impl Drop for Umount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Umount(&mnt);
    let s = Store::open(mnt.join("store")).unwrap();
    let before = snapshot(s.root());
    let mut l = Layer::new();
    l.file("zeros", &vec![0u8; 64 << 20], 0o644);
    let img = Image::new("bomb:1", vec![l.finish()]);
    let files = docker_files(&[img]);
    let p = write(d.path(), "bomb.tar", &tar_of(&files));
    assert!(fs::metadata(&p).unwrap().len() < 1 << 20);
    let err = load(&s, &p).unwrap_err();
    assert!(
        err.to_string().contains("No space left"),
        "unexpected error: {err}"
    );
    assert_eq!(snapshot(s.root()), before);
}

// --------------------------------------------------------------------------
// Unprivileged unpacking, interrupted loads, concurrency, the CLI

#[test]
fn devices_without_privileges_get_override_stat() {
    let mut l = Layer::new();
    l.chardev("dev/null", 1, 3, 0o666)
        .owned_file("f", b"x", 0o640, 1000, 1000);
    let d = tempfile::tempdir().unwrap();
    let opts = UnpackOptions {
        chown: false,
        mknod: false,
        lowers: vec![],
    };
    unpack_layer(&l.finish()[..], d.path(), &opts).unwrap();
    let p = d.path().join("dev/null");
    assert!(fs::symlink_metadata(&p).unwrap().is_file());
    let mut v = [0u8; 128];
    let n = rustix::fs::getxattr(&p, OVERRIDE_STAT_XATTR, &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"0:0:0666:char-1-3");
}

#[test]
fn later_entries_replace_earlier_ones() {
    let mut l = Layer::new();
    l.dir("a", 0o555)
        .dir("a/sub", 0o700)
        .file("a/sub/f", b"1", 0o644)
        .file("a", b"now a file", 0o600)
        .file("b", b"file first", 0o644)
        .dir("b", 0o750)
        .dir("c", 0o755)
        .symlink("c", "/etc")
        .file("d", b"old", 0o644)
        .file("d", b"new", 0o640);
    let d = tempfile::tempdir().unwrap();
    unpack_layer(&l.finish()[..], d.path(), &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(d.path().join("a")).unwrap(), b"now a file");
    let b = fs::symlink_metadata(d.path().join("b")).unwrap();
    assert!(b.is_dir());
    assert_eq!(b.mode() & 0o7777, 0o750);
    assert!(
        fs::symlink_metadata(d.path().join("c"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(d.path().join("d")).unwrap(), b"new");
    assert_eq!(
        fs::metadata(d.path().join("d")).unwrap().mode() & 0o7777,
        0o640
    );
}

#[test]
fn interrupted_leftovers_are_never_trusted_and_cleaned() {
    let (d, s) = store();
    let img = Image::new("a:1", vec![base_layer("i")]);
    let chain = img.diff_ids()[0].clone();
    // What kill -9 in the middle of a load leaves: a staging dir, and (in
    // the worst case) a layer dir renamed before its record existed.
    fs::create_dir_all(s.tmp_dir().join("load-1-2-3/layer-x/diff/etc")).unwrap();
    fs::create_dir_all(s.layer_diff_path(&chain).join("half")).unwrap();
    assert!(
        !s.has_layer(&chain),
        "a layer without its record is not trusted"
    );
    let s = Store::open(s.root()).unwrap();
    assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0, "tmp cleaned");
    // Loading the image replaces the untrusted dir... via prune first.
    gc::prune(&s, PruneMode::Dangling).unwrap();
    assert!(!s.layer_path(&chain).exists());
    load(
        &s,
        &write(d.path(), "a.tar", &tar_of(&docker_files(&[img]))),
    )
    .unwrap();
    assert!(s.has_layer(&chain));
    assert!(!s.layer_diff_path(&chain).join("half").exists());
}

fn cairn(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.arg("--root").arg(root);
    c
}

fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn kill_during_load_leaves_a_consistent_store() {
    let (d, s) = store();
    let mut l = Layer::new();
    for i in 0..200 {
        l.file(&format!("f{i}"), &vec![i as u8; 100_000], 0o644);
    }
    let img = Image::new("big:1", vec![l.finish()]);
    let p = write(d.path(), "big.tar", &tar_of(&docker_files(&[img])));
    for delay in [5u64, 30, 80] {
        let mut child = cairn(s.root())
            .arg("load")
            .arg("-i")
            .arg(&p)
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        let s = Store::open(s.root()).unwrap();
        check_consistent(&s);
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }
    run_ok(cairn(s.root()).arg("load").arg("-i").arg(&p));
    check_consistent(&s);
    assert_eq!(s.read_meta().unwrap().images.len(), 1);
}

#[test]
fn concurrent_loads_and_prune() {
    let (d, s) = store();
    let base = base_layer("conc");
    let mut paths = Vec::new();
    for i in 0..4 {
        let mut t = Layer::new();
        t.file(&format!("top{i}"), &vec![i as u8; 300_000], 0o644);
        let img = Image::new(&format!("c/{i}:1"), vec![base.clone(), t.finish()]);
        paths.push(write(
            d.path(),
            &format!("{i}.tar"),
            &tar_of(&docker_files(&[img])),
        ));
    }
    let loads: Vec<_> = paths
        .iter()
        .map(|p| {
            cairn(s.root())
                .arg("load")
                .arg("-i")
                .arg(p)
                .spawn()
                .unwrap()
        })
        .collect();
    let prunes: Vec<_> = (0..3)
        .map(|_| {
            cairn(s.root())
                .arg("prune")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in loads {
        assert!(c.wait().unwrap().success());
    }
    for mut c in prunes {
        assert!(c.wait().unwrap().success());
    }
    check_consistent(&s);
    let m = s.read_meta().unwrap();
    assert_eq!(m.images.len(), 4);
    assert_eq!(fs::read_dir(s.root().join("layers")).unwrap().count(), 5);
}

#[test]
fn cli_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("st");
    let base = base_layer("cli");
    let mut t = Layer::new();
    t.file("app", b"app", 0o755);
    let a = Image::new("cli/base:1", vec![base.clone()]);
    let b = Image::new("cli/app:1", vec![base, t.finish()]);
    let pa = write(d.path(), "a.tar", &tar_of(&docker_files(&[a])));
    let pb = write(d.path(), "b.tar", &tar_of(&oci_files(&[b])));
    let out = run_ok(cairn(&root).arg("load").arg("-i").arg(&pa));
    assert_eq!(out, "Loaded image: cli/base:1\n");
    run_ok(cairn(&root).arg("load").arg("-i").arg(&pb));
    let out = run_ok(cairn(&root).arg("images"));
    assert!(out.contains("cli/base") && out.contains("cli/app"), "{out}");
    let out = run_ok(cairn(&root).arg("df").arg("-v"));
    assert!(
        out.contains("SHARED SIZE") && out.contains("UNIQUE SIZE"),
        "{out}"
    );
    let out = run_ok(cairn(&root).arg("df"));
    assert!(out.starts_with("TYPE"), "{out}");
    let out = run_ok(cairn(&root).args(["inspect", "cli/app:1"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Layers"].as_array().unwrap().len(), 2);
    run_ok(cairn(&root).args(["tag", "cli/app:1", "other:2"]));
    let out = run_ok(cairn(&root).args(["rmi", "other:2"]));
    assert!(out.contains("Untagged: other:2"), "{out}");
    let save = d.path().join("s.tar");
    run_ok(
        cairn(&root)
            .args(["save", "cli/app:1", "--format", "docker-archive", "-o"])
            .arg(&save),
    );
    assert!(save.is_file());
    let out = run_ok(cairn(&root).args(["rmi", "cli/base:1"]));
    assert!(out.contains("Deleted: sha256:"), "{out}");
    let out = run_ok(cairn(&root).args(["prune", "-a"]));
    assert!(out.contains("Total reclaimed space"), "{out}");
    let o = cairn(&root).args(["inspect", "nope"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such image"));
}
