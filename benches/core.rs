//! In-process benchmarks of cairn's core (no FUSE mount needed):
//! name resolution over 1, 10 and 100 lower layers, merging a 10k-entry
//! directory, and copy-up of sparse and dense files.
//!
//! `cargo bench --bench core` (add `-- --quick` for a fast smoke run).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::options::MountOptions;
use cairn::overlay::Overlay;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;

/// Names in the bottom layer's `d/` that the lookup benches resolve.
const NAMES: usize = 1000;
const ROOT: u64 = 1;

/// Builds `n` lower layers. Every layer has a directory `d` (so `d` is a
/// merged directory spanning all of them) with one name of its own; the
/// bottom layer also holds `d/f0..f{NAMES}`, so resolving those walks the
/// whole stack unless the overlay indexes it.
fn make_stack(n: usize) -> (TempDir, Vec<PathBuf>) {
    let tmp = TempDir::new().unwrap();
    let mut lowers = Vec::new();
    for i in 0..n {
        let l = tmp.path().join(format!("l{i:03}"));
        fs::create_dir_all(l.join("d")).unwrap();
        fs::write(l.join("d").join(format!("own{i}")), b"x").unwrap();
        lowers.push(l);
    }
    let bottom = lowers.last().unwrap().join("d");
    for k in 0..NAMES {
        File::create(bottom.join(format!("f{k}"))).unwrap();
    }
    (tmp, lowers)
}

fn overlay_of(lowers: &[PathBuf]) -> Overlay {
    let opts = MountOptions {
        lowers: lowers.to_vec(),
        ..MountOptions::default()
    };
    Overlay::new(&opts).unwrap()
}

fn names(prefix: &str, n: usize) -> Vec<OsString> {
    (0..n)
        .map(|k| OsString::from(format!("{prefix}{k}")))
        .collect()
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    for layers in [1usize, 10, 100] {
        let (_tmp, lowers) = make_stack(layers);
        let ov = overlay_of(&lowers);
        // Keep `d` known, as the kernel would after the first lookup.
        let d = ov.lookup(ROOT, OsStr::new("d")).unwrap().ino;
        let hit = names("f", NAMES);
        let miss = names("nope", NAMES);
        // A name that lives in the bottom layer, in a directory already seen.
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("bottom_hit", layers), &layers, |b, _| {
            b.iter(|| {
                let a = ov.lookup(d, &hit[i % NAMES]).unwrap();
                ov.forget(a.ino, 1);
                i += 1;
                black_box(a.st.st_size)
            })
        });
        // A name that no layer has (ENOENT: every layer must be asked or
        // an index must say no).
        let mut i = 0;
        g.bench_with_input(BenchmarkId::new("miss", layers), &layers, |b, _| {
            b.iter(|| {
                let r = ov.lookup(d, &miss[i % NAMES]);
                i += 1;
                black_box(r.is_err())
            })
        });
        // The merged directory itself, from the root: spans every layer.
        g.bench_with_input(BenchmarkId::new("merged_dir", layers), &layers, |b, _| {
            b.iter(|| {
                let a = ov.lookup(ROOT, OsStr::new("d")).unwrap();
                ov.forget(a.ino, 1);
                black_box(a.ino)
            })
        });
        ov.forget(d, 1);
    }
    g.finish();
}

/// A 10k-entry directory `big` split over three layers: the bottom holds
/// 6,000 names, the middle 3,000 more plus 500 shadowing names of the
/// bottom, the top 1,000 more plus 200 whiteouts of bottom names.
fn make_big_dir() -> (TempDir, Vec<PathBuf>) {
    let tmp = TempDir::new().unwrap();
    let l: Vec<PathBuf> = ["top", "mid", "bottom"]
        .iter()
        .map(|n| tmp.path().join(n))
        .collect();
    for p in &l {
        fs::create_dir_all(p.join("big")).unwrap();
    }
    let touch = |dir: &Path, name: String| File::create(dir.join("big").join(name)).unwrap();
    for k in 0..6000 {
        touch(&l[2], format!("b{k:05}"));
    }
    for k in 0..3000 {
        touch(&l[1], format!("m{k:05}"));
    }
    for k in 0..500 {
        touch(&l[1], format!("b{k:05}"));
    }
    for k in 0..1200 {
        touch(&l[0], format!("t{k:05}"));
    }
    for k in 5800..6000 {
        // OCI-style whiteouts hide 200 bottom names; 10,000 remain visible.
        touch(&l[0], format!(".wh.b{k:05}"));
    }
    (tmp, l)
}

fn bench_readdir(c: &mut Criterion) {
    let (_tmp, lowers) = make_big_dir();
    let ov = overlay_of(&lowers);
    let big = ov.lookup(ROOT, OsStr::new("big")).unwrap().ino;
    let visible = ov.merged_entries(big).unwrap().len();
    assert_eq!(visible, 10_000, "merged listing of the bench dir");
    let mut g = c.benchmark_group("readdir_10k");
    g.throughput(Throughput::Elements(visible as u64));
    g.bench_function("merged_entries", |b| {
        b.iter(|| black_box(ov.merged_entries(big).unwrap().len()))
    });
    g.bench_function("opendir_readdir_all", |b| {
        b.iter(|| {
            let fh = ov.opendir(big).unwrap();
            let mut off = 0;
            let mut n = 0;
            loop {
                let batch = ov.readdir(fh, off).unwrap();
                let Some(&(last, _)) = batch.last() else {
                    break;
                };
                n += batch.len();
                off = last;
            }
            ov.releasedir(fh);
            black_box(n)
        })
    });
    g.finish();
}

const DENSE: u64 = 16 << 20;
const SPARSE: u64 = 256 << 20;

fn bench_copy_up(c: &mut Criterion) {
    let tmp = TempDir::new().unwrap();
    // Dense: 16 MiB of data.
    let dense = tmp.path().join("dense");
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 3) as u8).collect();
    {
        let f = File::create(&dense).unwrap();
        for k in 0..DENSE / chunk.len() as u64 {
            f.write_all_at(&chunk, k * chunk.len() as u64).unwrap();
        }
        f.sync_all().unwrap();
    }
    // Sparse: 256 MiB apparent size, 16 data extents of 64 KiB (1 MiB data).
    let sparse = tmp.path().join("sparse");
    {
        let f = File::create(&sparse).unwrap();
        f.set_len(SPARSE).unwrap();
        for k in 0..16u64 {
            f.write_all_at(&chunk[..64 << 10], k * (SPARSE / 16))
                .unwrap();
        }
        f.sync_all().unwrap();
    }
    let dst = tmp.path().join("dst");
    let mut g = c.benchmark_group("copy_up");
    g.measurement_time(Duration::from_secs(3));
    for (name, src, size) in [
        ("dense_16MiB", &dense, DENSE),
        ("sparse_256MiB", &sparse, SPARSE),
    ] {
        let src = File::open(src).unwrap();
        g.throughput(Throughput::Bytes(size));
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&dst)
                    .unwrap();
                cairn::copy_up::copy_data(&src, &out, size).unwrap();
                black_box(out)
            })
        });
    }
    g.finish();
    // The sparse copy must keep its holes.
    use std::os::unix::fs::MetadataExt;
    let blocks = fs::metadata(&dst).unwrap().blocks() * 512;
    assert!(blocks < 8 << 20, "sparse copy allocated {blocks} bytes");
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = core;
    config = config();
    targets = bench_lookup, bench_readdir, bench_copy_up
}
criterion_main!(core);
