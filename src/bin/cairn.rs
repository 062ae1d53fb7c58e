//! `cairn`: images (and, later, containers) in a content-addressed store.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use cairn::store::archive::{self, SaveFormat};
use cairn::store::df::{self, human_size};
use cairn::store::gc::{self, GcReport, PruneMode};
use cairn::store::{Progress, Store};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Rootless images and containers")]
struct Cli {
    /// Store directory (default: $CAIRN_ROOT, else $XDG_DATA_HOME/cairn,
    /// ~/.local/share/cairn, or /var/lib/cairn for root).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    OciArchive,
    DockerArchive,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load images from a docker-save archive, an OCI archive or an OCI
    /// layout directory.
    Load {
        #[arg(short = 'i', long = "input", value_name = "FILE")]
        input: PathBuf,
        /// Print only the image ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Make a one-layer image from a rootfs tarball (plain, gzip or zstd).
    Import {
        tarball: PathBuf,
        /// NAME[:TAG]
        name: String,
    },
    /// List images.
    #[command(alias = "ls")]
    Images {
        /// Show only the ids.
        #[arg(short, long)]
        quiet: bool,
        /// Show full ids.
        #[arg(long)]
        no_trunc: bool,
    },
    /// Show an image's manifest, config and layers as JSON.
    Inspect { image: String },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove images (a tag of an image with other tags is only untagged).
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Write images to an archive that skopeo, podman and docker load.
    Save {
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "oci-archive")]
        format: Format,
    },
    /// Show disk usage: images, layers, shared and reclaimable space.
    Df {
        /// Per image and per layer detail.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove dangling images and all unreferenced data.
    Prune {
        /// Remove every image not used by a container.
        #[arg(short, long)]
        all: bool,
    },
    // ---------------------------------------------------------------------
    // Container commands (`run`, `ps`, `rm`, ...) go here: issue 6.
    // ---------------------------------------------------------------------
}

/// indicatif bars, shown only when stderr is a terminal.
struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Bars {
    fn new() -> Bars {
        Bars {
            bar: Mutex::new(None),
            enabled: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Bars {
    fn start(&self, what: &str, total: u64) {
        if !self.enabled {
            return;
        }
        let pb = ProgressBar::new(total);
        if let Ok(st) = ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        ) {
            pb.set_style(st.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(pb);
        }
    }
    fn advance(&self, n: u64) {
        if let Ok(b) = self.bar.lock()
            && let Some(pb) = b.as_ref()
        {
            pb.inc(n);
        }
    }
    fn finish(&self) {
        if let Ok(mut b) = self.bar.lock()
            && let Some(pb) = b.take()
        {
            pb.finish_and_clear();
        }
    }
}

fn ago(created: Option<&str>) -> String {
    created
        .and_then(|c| c.get(..19))
        .map(|c| c.replace('T', " "))
        .unwrap_or_else(|| "N/A".into())
}

fn print_gc(rep: &GcReport) {
    for t in &rep.untagged {
        println!("Untagged: {t}");
    }
    for (id, _) in &rep.deleted_images {
        println!("Deleted: {id}");
    }
    for l in &rep.deleted_layers {
        println!("Deleted layer: {l}");
    }
    println!(
        "Deleted {} blobs, {} layers. Total reclaimed space: {}",
        rep.deleted_blobs.len(),
        rep.deleted_layers.len(),
        human_size(rep.reclaimed)
    );
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("cairn: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = cli.root.unwrap_or_else(Store::default_root);
    let store = Store::open(&root).with_context(|| format!("opening store {}", root.display()))?;
    let bars = Bars::new();
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Load { input, quiet } => {
            let imgs = archive::load(&store, &input, &bars)
                .with_context(|| format!("loading {}", input.display()))?;
            for i in imgs {
                if quiet {
                    writeln!(out, "{}", i.id)?;
                    continue;
                }
                if i.names.is_empty() {
                    writeln!(out, "Loaded image ID: {}", i.id)?;
                }
                for n in &i.names {
                    writeln!(out, "Loaded image: {n}")?;
                }
            }
        }
        Cmd::Import { tarball, name } => {
            let i = archive::import(&store, &tarball, &name, &bars)
                .with_context(|| format!("importing {}", tarball.display()))?;
            writeln!(out, "{}", i.id)?;
        }
        Cmd::Images { quiet, no_trunc } => {
            let m = store.read_meta()?;
            let rep = df::df(&store)?;
            if !quiet {
                writeln!(
                    out,
                    "{:<40} {:<12} {:<14} {:<21} {:>10}",
                    "REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"
                )?;
            }
            for u in &rep.images {
                let id = if no_trunc {
                    u.id.to_string()
                } else {
                    u.id.short().to_string()
                };
                if quiet {
                    writeln!(out, "{id}")?;
                    continue;
                }
                let tags = if u.tags.is_empty() {
                    vec!["<none>:<none>".to_string()]
                } else {
                    u.tags.clone()
                };
                let created = ago(m.images.get(&u.id).and_then(|i| i.created.as_deref()));
                for t in tags {
                    let (repo, tag) = cairn::store::reference::split(&t);
                    writeln!(
                        out,
                        "{:<40} {:<12} {:<14} {:<21} {:>10}",
                        repo,
                        tag,
                        id,
                        created,
                        human_size(u.size)
                    )?;
                }
            }
        }
        Cmd::Inspect { image } => {
            let m = store.read_meta()?;
            let (id, _) = m.resolve(&image)?;
            let img = m
                .images
                .get(&id)
                .with_context(|| format!("image {id} has no record"))?;
            let manifest: serde_json::Value =
                serde_json::from_slice(&store.read_blob(&img.manifest)?)?;
            let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&img.config)?)?;
            let mut layers = Vec::new();
            for l in &img.layers {
                let rec = store.read_layer_record(&l.chain_id).ok();
                layers.push(serde_json::json!({
                    "Digest": l.digest,
                    "MediaType": l.media_type,
                    "Size": l.size,
                    "DiffID": l.diff_id,
                    "ChainID": l.chain_id,
                    "UncompressedSize": rec.as_ref().map(|r| r.diff_size),
                    "DiskSize": rec.as_ref().map(|r| r.disk_bytes),
                    "Path": store.layer_diff_path(&l.chain_id),
                }));
            }
            let v = serde_json::json!([{
                "Id": img.id,
                "RepoTags": m.tags_of(&img.id),
                "Digest": img.manifest,
                "ManifestMediaType": img.manifest_media_type,
                "Created": img.created,
                "Loaded": img.loaded,
                "Architecture": img.architecture,
                "Os": img.os,
                "Layers": layers,
                "Manifest": manifest,
                "Config": config,
            }]);
            serde_json::to_writer_pretty(&mut out, &v)?;
            writeln!(out)?;
        }
        Cmd::Tag { source, target } => {
            gc::tag(&store, &source, &target)?;
        }
        Cmd::Rmi { images } => {
            let rep = gc::rmi(&store, &images)?;
            print_gc(&rep);
        }
        Cmd::Save {
            images,
            output,
            format,
        } => {
            let f = match format {
                Format::OciArchive => SaveFormat::OciArchive,
                Format::DockerArchive => SaveFormat::DockerArchive,
            };
            archive::save(&store, &images, &output, f, &bars)
                .with_context(|| format!("saving to {}", output.display()))?;
        }
        Cmd::Df { verbose } => {
            let r = df::df(&store)?;
            let pct = |part: u64, whole: u64| (part * 100).checked_div(whole).unwrap_or(0);
            if verbose {
                writeln!(out, "Images space usage:\n")?;
                writeln!(
                    out,
                    "{:<32} {:<10} {:<14} {:<21} {:>10} {:>12} {:>12} {:>10}",
                    "REPOSITORY",
                    "TAG",
                    "IMAGE ID",
                    "CREATED",
                    "SIZE",
                    "SHARED SIZE",
                    "UNIQUE SIZE",
                    "CONTAINERS"
                )?;
                for u in &r.images {
                    let tags = if u.tags.is_empty() {
                        vec!["<none>:<none>".to_string()]
                    } else {
                        u.tags.clone()
                    };
                    for t in tags {
                        let (repo, tag) = cairn::store::reference::split(&t);
                        writeln!(
                            out,
                            "{:<32} {:<10} {:<14} {:<21} {:>10} {:>12} {:>12} {:>10}",
                            repo,
                            tag,
                            u.id.short(),
                            ago(u.created.as_deref()),
                            human_size(u.size),
                            human_size(u.shared),
                            human_size(u.unique),
                            u.containers
                        )?;
                    }
                }
                writeln!(out, "\nLayers space usage:\n")?;
                writeln!(
                    out,
                    "{:<14} {:<14} {:>10} {:>8} {:>7}",
                    "CHAIN ID", "DIFF ID", "SIZE", "INODES", "IMAGES",
                )?;
                for l in &r.layers {
                    writeln!(
                        out,
                        "{:<14} {:<14} {:>10} {:>8} {:>7}",
                        l.chain_id.short(),
                        l.diff_id.as_ref().map(|d| d.short()).unwrap_or("?"),
                        human_size(l.size),
                        l.inodes,
                        l.images
                    )?;
                }
                writeln!(
                    out,
                    "\nTotal: {}, shared: {}, reclaimable: {}",
                    human_size(r.total()),
                    human_size(r.shared),
                    human_size(r.reclaimable)
                )?;
            } else {
                writeln!(
                    out,
                    "{:<12} {:>6} {:>7} {:>10} {:>10} {:>16}",
                    "TYPE", "TOTAL", "ACTIVE", "SIZE", "SHARED", "RECLAIMABLE"
                )?;
                let img_size: u64 = r.total() - r.unreferenced;
                writeln!(
                    out,
                    "{:<12} {:>6} {:>7} {:>10} {:>10} {:>16}",
                    "Images",
                    r.images.len(),
                    r.active_images,
                    human_size(img_size),
                    human_size(r.shared),
                    format!(
                        "{} ({}%)",
                        human_size(r.reclaimable - r.unreferenced),
                        pct(r.reclaimable - r.unreferenced, img_size)
                    )
                )?;
                let lshared: u64 = r
                    .layers
                    .iter()
                    .filter(|l| l.images > 1)
                    .map(|l| l.size)
                    .sum();
                writeln!(
                    out,
                    "{:<12} {:>6} {:>7} {:>10} {:>10} {:>16}",
                    "Layers",
                    r.layers.len(),
                    r.layers.iter().filter(|l| l.active).count(),
                    human_size(r.layers_size),
                    human_size(lshared),
                    format!(
                        "{} ({}%)",
                        human_size(r.layers_reclaimable),
                        pct(r.layers_reclaimable, r.layers_size)
                    )
                )?;
                writeln!(
                    out,
                    "{:<12} {:>6} {:>7} {:>10} {:>10} {:>16}",
                    "Blobs",
                    r.blobs_count,
                    "",
                    human_size(r.blobs_size),
                    "",
                    format!(
                        "{} ({}%)",
                        human_size(r.blobs_reclaimable),
                        pct(r.blobs_reclaimable, r.blobs_size)
                    )
                )?;
                writeln!(
                    out,
                    "{:<12} {:>6} {:>7} {:>10} {:>10} {:>16}",
                    "Containers", r.containers, r.containers, "0B", "0B", "0B (0%)"
                )?;
                writeln!(
                    out,
                    "\nTotal: {}, reclaimable by prune: {}, by prune -a: {}",
                    human_size(r.total()),
                    human_size(r.unreferenced),
                    human_size(r.reclaimable)
                )?;
            }
        }
        Cmd::Prune { all } => {
            let mode = if all {
                PruneMode::All
            } else {
                PruneMode::Dangling
            };
            let rep = gc::prune(&store, mode)?;
            print_gc(&rep);
        }
    }
    Ok(())
}
