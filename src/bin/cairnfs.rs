//! `cairnfs`: mount an overlay through FUSE, with fuse-overlayfs's command line.
//!
//! ```text
//! cairnfs [-f] [-d] -o lowerdir=A:B,upperdir=U,workdir=W MOUNTPOINT
//! cairnfs SOURCE MOUNTPOINT -o OPTIONS      (as mount.fuse3 calls it)
//! ```

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use cairn::options::MountOptions;
use cairn::sys::{self, Fork};

const USAGE: &str = "usage: cairnfs [-f] [-d] -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR][,OPTION...] MOUNTPOINT

Mounts the lower dirs (topmost first) merged under MOUNTPOINT, with writes
going to upperdir. Without upperdir the mount is read-only.

  -o OPTIONS   mount options (repeatable); see README.md for the list
  -f           stay in the foreground
  -d           log each request to stderr (implies -f)
  -h, --help   this text
  -V, --version
Unmount with: fusermount3 -u MOUNTPOINT, umount MOUNTPOINT, or SIGTERM.";

struct Args {
    options: Vec<String>,
    foreground: bool,
    debug: bool,
    mountpoint: PathBuf,
}

fn parse_args(args: Vec<OsString>) -> Result<Option<Args>> {
    let mut options = Vec::new();
    let mut positional: Vec<OsString> = Vec::new();
    let mut foreground = false;
    let mut debug = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy().into_owned();
        match s.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("cairnfs {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "-f" => foreground = true,
            "-d" | "--debug" => {
                debug = true;
                foreground = true;
            }
            "-s" => {} // libfuse single-thread flag: accepted, not needed
            "-o" => {
                let v = it.next().context("-o needs an argument")?;
                options.push(
                    v.into_string().map_err(|v| {
                        anyhow::anyhow!("mount options are not valid UTF-8: {:?}", v)
                    })?,
                );
            }
            _ if s.starts_with("-o") => options.push(s[2..].to_string()),
            _ if s.starts_with('-') && s.len() > 1 => bail!("unknown flag {s}\n{USAGE}"),
            _ => positional.push(a),
        }
    }
    let mountpoint = match positional.len() {
        1 => positional.remove(0),
        // mount.fuse3 passes the source first; it carries no meaning here.
        2 => positional.remove(1),
        0 => bail!("no mountpoint given\n{USAGE}"),
        _ => bail!("too many arguments\n{USAGE}"),
    };
    Ok(Some(Args {
        options,
        foreground,
        debug,
        mountpoint: PathBuf::from(mountpoint),
    }))
}

fn run() -> Result<()> {
    let Some(args) = parse_args(std::env::args_os().skip(1).collect())? else {
        return Ok(());
    };
    let opts = MountOptions::parse(args.options.iter().map(String::as_str))?;
    for u in &opts.unknown {
        eprintln!("cairnfs: unknown argument ignored: {u}");
    }
    let (session, _overlay) = cairn::mount::mount(&opts, &args.mountpoint, args.debug)
        .with_context(|| format!("cannot mount {}", args.mountpoint.display()))?;
    // Handlers are installed before the fork so that a signal sent as soon
    // as we return is already caught by the daemon (no thread starts here;
    // the one reading them starts in the daemon).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("signal handler")?;
    if !args.foreground {
        // The mount is live: let the caller go on, keep serving in a child.
        match sys::fork().context("fork")? {
            Fork::Parent(_) => sys::exit_now(0),
            Fork::Child => {
                let _ = sys::setsid();
                detach_stdio();
            }
        }
    }
    let mut session = session;
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                let _ = unmounter.unmount();
            }
        })
        .context("signal thread")?;
    session.run().context("serving the mount")?;
    Ok(())
}

/// Points stdin, stdout and stderr at /dev/null so a caller waiting for our
/// output (podman, a pipe) is not held open by the daemon.
fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairnfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
