//! Interoperability with real tools: images made by umoci, skopeo and
//! podman from Debian's busybox-static, loaded by cairn; images saved by
//! cairn, read by skopeo and podman. Each test prints a SKIP notice and
//! passes when a tool is missing (`scripts/store-test-setup.sh` installs
//! them).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn::store::{Digest, Store};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn need(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<_> = tools.iter().filter(|t| !have(t)).collect();
    if missing.is_empty() && Path::new("/bin/busybox").is_file() {
        return true;
    }
    eprintln!("SKIP {test}: missing {missing:?} or /bin/busybox (run scripts/store-test-setup.sh)");
    false
}

fn sh(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn cairn(root: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.arg("--root").arg(root);
    c
}

/// A busybox rootfs tarball made with GNU tar.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let r = dir.join("rootfs");
    for d in ["bin", "etc", "tmp", "opq"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    for l in ["sh", "ls", "cat"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(l)).unwrap();
    }
    fs::write(r.join("etc/gone"), "to be deleted\n").unwrap();
    fs::write(r.join("opq/old"), "hidden by the opaque dir\n").unwrap();
    let t = dir.join("rootfs.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&r)
        .arg("--numeric-owner")
        .arg("-cf")
        .arg(&t)
        .arg("."));
    t
}

/// OCI layout with tags `base` (busybox), `two` (umoci repack: whiteout,
/// hard link, fifo, device) and `three` (a GNU tar layer with an opaque
/// dir).
fn umoci_layout(dir: &Path) -> PathBuf {
    let rootfs = busybox_rootfs(dir);
    let l = dir.join("layout");
    let img = |t: &str| format!("{}:{t}", l.display());
    sh(Command::new("umoci").args(["init", "--layout"]).arg(&l));
    sh(Command::new("umoci").args(["new", "--image", &img("base")]));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img("base")])
        .arg(&rootfs));
    let b = dir.join("bundle");
    sh(Command::new("umoci")
        .args(["unpack", "--image", &img("base")])
        .arg(&b));
    let r = b.join("rootfs");
    fs::remove_file(r.join("etc/gone")).unwrap();
    fs::hard_link(r.join("bin/busybox"), r.join("bin/hard")).unwrap();
    sh(Command::new("mkfifo").arg(r.join("fifo")));
    fs::create_dir_all(r.join("dev")).unwrap();
    sh(Command::new("mknod")
        .arg(r.join("dev/null"))
        .args(["c", "1", "3"]));
    sh(Command::new("umoci")
        .args(["repack", "--image", &img("two")])
        .arg(&b));
    let o = dir.join("opq-layer");
    fs::create_dir_all(o.join("opq")).unwrap();
    fs::write(o.join("opq/.wh..wh..opq"), "").unwrap();
    fs::write(o.join("opq/new"), "new\n").unwrap();
    let ot = dir.join("opq.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&o)
        .arg("-cf")
        .arg(&ot)
        .arg("."));
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &img("two"), "--tag", "three"])
        .arg(&ot));
    l
}

fn manifest_digest(layout: &Path, tag: &str) -> Digest {
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    Digest::parse(m["digest"].as_str().unwrap()).unwrap()
}

#[test]
fn umoci_and_skopeo_images_load_and_round_trip() {
    if !need(
        "umoci_and_skopeo_images_load_and_round_trip",
        &["umoci", "skopeo", "tar"],
    ) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let layout = umoci_layout(d.path());
    let root = d.path().join("st");
    let out = sh(cairn(&root).arg("load").arg("-i").arg(&layout));
    assert!(out.contains("three:latest"), "{out}");
    let s = Store::open(&root).unwrap();
    let m = s.read_meta().unwrap();
    let (id, _) = m.resolve("three").unwrap();
    let img = &m.images[&id];
    assert_eq!(img.layers.len(), 3);
    assert_eq!(img.manifest, manifest_digest(&layout, "three"));
    // Entry by entry.
    let l0 = s.layer_diff_path(&img.layers[0].chain_id);
    let l1 = s.layer_diff_path(&img.layers[1].chain_id);
    let l2 = s.layer_diff_path(&img.layers[2].chain_id);
    assert_eq!(
        fs::read(l0.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::read_link(l0.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(l0.join("etc/gone").is_file());
    assert!(l1.join("etc/.wh.gone").is_file(), "whiteout kept as a file");
    let hard = fs::metadata(l1.join("bin/hard")).unwrap();
    assert_eq!(hard.len(), fs::metadata("/bin/busybox").unwrap().len());
    if let Ok(bb) = fs::metadata(l1.join("bin/busybox")) {
        assert_eq!(bb.ino(), hard.ino(), "hard link kept in the layer");
    }
    assert!(
        fs::symlink_metadata(l1.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = fs::symlink_metadata(l1.join("dev/null")).unwrap();
    if rustix::process::geteuid().is_root() {
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    }
    assert!(l2.join("opq/.wh..wh..opq").is_file());
    assert_eq!(fs::read(l2.join("opq/new")).unwrap(), b"new\n");

    // skopeo converts the layout to both archive formats; cairn loads them.
    let da = d.path().join("skopeo-docker.tar");
    let oa = d.path().join("skopeo-oci.tar");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:three", layout.display()),
        &format!("docker-archive:{}:test/three:1", da.display()),
    ]));
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:three", layout.display()),
        &format!("oci-archive:{}:test/three:2", oa.display()),
    ]));
    for (a, name) in [(&da, "test/three:1"), (&oa, "test/three:2")] {
        let r2 = d.path().join(format!("st-{name}").replace([':', '/'], "-"));
        sh(cairn(&r2).arg("load").arg("-i").arg(a));
        let s2 = Store::open(&r2).unwrap();
        let (id2, _) = s2.read_meta().unwrap().resolve(name).unwrap();
        assert_eq!(id2, id, "same config from {}", a.display());
        // Loading into the first store too: no new layer is unpacked.
        let before = fs::read_dir(root.join("layers")).unwrap().count();
        sh(cairn(&root).arg("load").arg("-i").arg(a));
        assert_eq!(fs::read_dir(root.join("layers")).unwrap().count(), before);
    }

    // cairn save: skopeo reads both formats; OCI keeps every digest.
    let co = d.path().join("cairn-oci.tar");
    let cd = d.path().join("cairn-docker.tar");
    sh(cairn(&root).args(["save", "three", "-o"]).arg(&co));
    sh(cairn(&root)
        .args(["save", "three", "--format", "docker-archive", "-o"])
        .arg(&cd));
    let raw = sh(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", co.display())));
    assert_eq!(
        Digest::of(raw.as_bytes()),
        manifest_digest(&layout, "three")
    );
    let cfg = sh(Command::new("skopeo")
        .args(["inspect", "--config", "--raw"])
        .arg(format!("docker-archive:{}", cd.display())));
    assert_eq!(Digest::of(cfg.as_bytes()), id);
    let copy = d.path().join("copied");
    sh(Command::new("skopeo").args([
        "copy",
        &format!("oci-archive:{}", co.display()),
        &format!("oci:{}:x", copy.display()),
    ]));
    assert_eq!(
        manifest_digest(&copy, "x"),
        manifest_digest(&layout, "three")
    );
}

#[test]
fn podman_import_save_and_load() {
    if !need("podman_import_save_and_load", &["podman", "tar"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(d.path());
    let pod = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(d.path().join("podman"))
            .arg("--runroot")
            .arg(d.path().join("podman-run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    };
    let o = pod(&["import", rootfs.to_str().unwrap(), "test/pbase"])
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!(
            "SKIP podman_import_save_and_load: podman cannot run here: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return;
    }
    let root = d.path().join("st");
    for fmt in ["docker-archive", "oci-archive"] {
        let p = d.path().join(format!("podman-{fmt}.tar"));
        sh(&mut pod(&[
            "save",
            "--format",
            fmt,
            "-o",
            p.to_str().unwrap(),
            "test/pbase",
        ]));
        let out = sh(cairn(&root).arg("load").arg("-i").arg(&p));
        assert!(out.contains("test/pbase"), "{out}");
    }
    // podman loads what cairn saves, in both formats.
    sh(cairn(&root).args(["tag", "localhost/test/pbase", "cairn/out:1"]));
    for fmt in ["docker-archive", "oci-archive"] {
        let p = d.path().join(format!("cairn-{fmt}.tar"));
        sh(cairn(&root)
            .args(["save", "cairn/out:1", "--format", fmt, "-o"])
            .arg(&p));
        sh(&mut pod(&["rmi", "-a", "-f"]));
        let out = sh(&mut pod(&["load", "-i", p.to_str().unwrap()]));
        assert!(out.contains("cairn/out:1"), "{fmt}: {out}");
        let imgs = sh(&mut pod(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ]));
        assert!(imgs.contains("cairn/out:1"), "{imgs}");
    }
}
