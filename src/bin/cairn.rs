//! `cairn`: images in a content-addressed store, and containers that run
//! them over cairnfs in their own namespaces (rootless too).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use cairn::container::config::{BindMount, Containers, Network, RunSpec, Status};
use cairn::container::{commit, diff, launch};
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
    // Containers
    /// Run a command in a new container (exit status: the command's, 128+N
    /// when signal N killed it, 125 when the container could not start).
    Run(RunArgs),
    /// List containers.
    Ps {
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove containers (with their writes).
    Rm {
        /// Kill running ones first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a stopped container again, its writes kept (always attached).
    Start {
        /// Attach to its output (the default; accepted for docker's syntax).
        #[arg(short, long)]
        attach: bool,
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        container: String,
    },
    /// List what a container changed: A added, C changed, D deleted.
    Diff { container: String },
    /// Make an image of a container: its image plus its changes as a layer.
    Commit {
        container: String,
        /// NAME[:TAG]
        image: String,
    },
    /// Mount a stopped container's merged root on the host; prints the path.
    Mount { container: String },
    /// Undo `cairn mount`.
    Umount { container: String },
}

#[derive(Clone, Copy, ValueEnum)]
enum NetArg {
    Host,
    None,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Remove the container and its writes when it exits.
    #[arg(long)]
    rm: bool,
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (K=V, or K to copy it from here).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// UID[:GID] or NAME[:GROUP] inside the container.
    #[arg(short = 'u', long = "user")]
    user: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    /// Bind mount HOST:CTR[:ro].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CTR[:ro]")]
    volumes: Vec<String>,
    #[arg(long, value_enum, default_value = "host")]
    network: NetArg,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal.
    #[arg(short, long)]
    tty: bool,
    image: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn json_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Creates a container from `run` flags and the image's config.
fn create_container(
    store: &Store,
    cs: &Containers,
    a: RunArgs,
) -> Result<cairn::container::config::Container> {
    let m = store.read_meta()?;
    let (id, _) = m.resolve(&a.image)?;
    let img = m
        .images
        .get(&id)
        .with_context(|| format!("image {id} has no record"))?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&img.config)?)?;
    let cc = &config["config"];
    let mut args = json_strings(&cc["Entrypoint"]);
    if a.cmd.is_empty() {
        args.extend(json_strings(&cc["Cmd"]));
    } else {
        args.extend(a.cmd);
    }
    if args.is_empty() {
        return Err(cairn::container::ContainerError::NoCommand.into());
    }
    let mut env = json_strings(&cc["Env"]);
    for e in a.env {
        let kv = if e.contains('=') {
            e
        } else {
            match std::env::var(&e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            }
        };
        let k = kv.split('=').next().unwrap_or("").to_string();
        env.retain(|x| x.split('=').next() != Some(&k));
        env.push(kv);
    }
    let cwd = a
        .workdir
        .or_else(|| cc["WorkingDir"].as_str().map(str::to_string))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    anyhow::ensure!(
        cwd.starts_with('/'),
        "the working directory must be absolute: {cwd}"
    );
    let mounts = a
        .volumes
        .iter()
        .map(|v| BindMount::parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = RunSpec {
        args,
        env,
        cwd,
        user: a
            .user
            .or_else(|| cc["User"].as_str().map(str::to_string))
            .unwrap_or_default(),
        hostname: String::new(),
        mounts,
        network: match a.network {
            NetArg::Host => Network::Host,
            NetArg::None => Network::None,
        },
        tty: a.tty,
        interactive: a.interactive,
    };
    let layers = img
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_diff_path(&l.chain_id))
        .collect();
    let mut c = cs.create(a.name.as_deref(), &id, &a.image, layers, spec, a.rm)?;
    c.spec.hostname = a.hostname.unwrap_or_else(|| c.short_id().to_string());
    cs.save(&c)?;
    Ok(c)
}

fn status_text(cs: &Containers, c: &cairn::container::config::Container) -> String {
    match c.status {
        Status::Created => "Created".into(),
        Status::Running if cs.is_running(&c.id) => {
            format!("Up since {}", ago(c.started_at.as_deref()))
        }
        Status::Running => "Exited (unknown)".into(),
        Status::Exited => format!(
            "Exited ({}) {}",
            c.exit_code.map(|c| c.to_string()).unwrap_or("?".into()),
            ago(c.finished_at.as_deref())
        ),
    }
}

fn container_cmd(store: &Store, cmd: Cmd, out: &mut impl Write) -> Result<i32> {
    let cs = Containers::new(store)?;
    match cmd {
        Cmd::Run(a) => {
            let mut c = create_container(store, &cs, a)?;
            let code = launch::run(&cs, &mut c)?;
            return Ok(code);
        }
        Cmd::Start {
            container,
            interactive,
            ..
        } => {
            let mut c = cs.resolve(&container)?;
            if interactive {
                c.spec.interactive = true;
            }
            return Ok(launch::run(&cs, &mut c)?);
        }
        Cmd::Ps { all, quiet } => {
            if !quiet {
                writeln!(
                    out,
                    "{:<14} {:<24} {:<24} {:<21} {:<32} NAMES",
                    "CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS"
                )?;
            }
            for c in cs.list()? {
                let running = cs.is_running(&c.id);
                if !all && !running {
                    continue;
                }
                if quiet {
                    writeln!(out, "{}", c.short_id())?;
                    continue;
                }
                let mut cmd = c.spec.args.join(" ");
                if cmd.chars().count() > 22 {
                    cmd = format!("{}…", cmd.chars().take(21).collect::<String>());
                }
                writeln!(
                    out,
                    "{:<14} {:<24} {:<24} {:<21} {:<32} {}",
                    c.short_id(),
                    c.image_ref,
                    format!("\"{cmd}\""),
                    ago(Some(&c.created)),
                    status_text(&cs, &c),
                    c.name
                )?;
            }
        }
        Cmd::Rm { force, containers } => {
            let mut failed = false;
            for r in containers {
                let res = (|| -> Result<()> {
                    let c = cs.resolve(&r)?;
                    if cs.is_running(&c.id) {
                        anyhow::ensure!(
                            force,
                            "container {} is running: stop it or use rm -f",
                            c.name
                        );
                        launch::kill(&cs, &c)?;
                    }
                    let mut c = cs.resolve(&c.id)?;
                    if c.host_mounted {
                        launch::umount_on_host(&cs, &mut c)?;
                    }
                    cs.remove(&c)?;
                    Ok(())
                })();
                match res {
                    Ok(()) => writeln!(out, "{r}")?,
                    Err(e) => {
                        eprintln!("cairn: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed { 1 } else { 0 });
        }
        Cmd::Diff { container } => {
            let c = cs.resolve(&container)?;
            let cdir = cs.dir(&c.id);
            let mut lowers = vec![cdir.join("init")];
            lowers.extend(c.layers.iter().cloned());
            let upper = cdir.join("upper");
            let text = cairn::container::userns::run_as_root(move || {
                diff::changes(&upper, &lowers)
                    .map(|v| {
                        v.iter()
                            .map(|c| format!("{} {}\n", c.kind, c.path))
                            .collect::<String>()
                            .into_bytes()
                    })
                    .map_err(|e| format!("reading the container's changes: {e}"))
            })?;
            out.write_all(&text)?;
        }
        Cmd::Commit { container, image } => {
            let c = cs.resolve(&container)?;
            anyhow::ensure!(
                !cs.is_running(&c.id),
                "container {} is running: commit it once it has stopped",
                c.name
            );
            let id = commit::commit(&cs, &c, &image)?;
            writeln!(out, "{id}")?;
        }
        Cmd::Mount { container } => {
            let mut c = cs.resolve(&container)?;
            let p = launch::mount_on_host(&cs, &mut c)?;
            writeln!(out, "{}", p.display())?;
        }
        Cmd::Umount { container } => {
            let mut c = cs.resolve(&container)?;
            launch::umount_on_host(&cs, &mut c)?;
            writeln!(out, "{}", c.name)?;
        }
        _ => unreachable!("not a container command"),
    }
    Ok(0)
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
    // docker's convention: 125 when the container could not be run.
    let fail = if matches!(cli.cmd, Cmd::Run(_) | Cmd::Start { .. }) {
        125
    } else {
        1
    };
    match run(cli) {
        Ok(code) => {
            let _ = std::io::stdout().flush();
            std::process::exit(code);
        }
        Err(e) => {
            eprintln!("cairn: {e:#}");
            std::process::exit(fail);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let root = cli.root.unwrap_or_else(Store::default_root);
    let store = Store::open(&root).with_context(|| format!("opening store {}", root.display()))?;
    let bars = Bars::new();
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        cmd @ (Cmd::Run(_)
        | Cmd::Start { .. }
        | Cmd::Ps { .. }
        | Cmd::Rm { .. }
        | Cmd::Diff { .. }
        | Cmd::Commit { .. }
        | Cmd::Mount { .. }
        | Cmd::Umount { .. }) => {
            // The container's output goes straight to our fds: let go of
            // the lock on stdout first.
            drop(out);
            let mut o = std::io::stdout();
            return container_cmd(&store, cmd, &mut o);
        }
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
    Ok(0)
}
