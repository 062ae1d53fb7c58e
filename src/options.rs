//! The mount options of `cairnfs`, a drop-in for fuse-overlayfs's:
//! `lowerdir=A:B,upperdir=U,workdir=W,...`.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// A `DISK:SHOWN:LEN` id mapping range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub disk: u32,
    pub shown: u32,
    pub len: u32,
}

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Lower dirs, topmost first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub read_only: bool,
    /// fsync copy-ups and honour fsync (off with `fsync=0` or `volatile`).
    pub fsync: bool,
    pub timeout: Duration,
    pub allow_other: bool,
    pub allow_root: bool,
    pub suid: bool,
    pub dev: bool,
    pub exec: bool,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub uid_mapping: Vec<IdMap>,
    pub gid_mapping: Vec<IdMap>,
    pub static_nlink: bool,
    /// Metadata-only copy-up (kernel `metacopy` format); `metacopy=off`
    /// copies data on every copy-up, for uppers read by kernel overlayfs
    /// mounted without `metacopy=on`.
    pub metacopy: bool,
    /// Rename directories that exist in a lower layer in place (kernel
    /// `redirect_dir` format); `redirect_dir=off` answers EXDEV instead.
    pub redirect_dir: bool,
    /// Keep hard links together across copy-up (the `cairn-index` dir in
    /// the work dir); `index=off` copies each name on its own.
    pub index: bool,
    /// FUSE passthrough of file reads and writes where the kernel and the
    /// server's privileges allow it (`passthrough=off` never tries).
    pub passthrough: bool,
    pub noacl: bool,
    pub xattr_permissions: u8,
    pub threads: Option<usize>,
    /// Directory fds kept open to speed up lookups (`dir_cache=N`).
    pub dir_cache: usize,
    pub context: Option<String>,
    /// Options cairnfs does not know; warned about, as fuse-overlayfs does.
    pub unknown: Vec<String>,
}

/// Directory fds cached by default: well under the usual 1024 fd limit.
pub const DEFAULT_DIR_CACHE: usize = 512;

/// The default entry/attr cache time: long enough that a walk of a large
/// tree stays cached, short enough that changes made directly in the layers
/// show up soon; `timeout=0` shows them at once.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            lowers: Vec::new(),
            upper: None,
            work: None,
            read_only: false,
            fsync: true,
            timeout: DEFAULT_TIMEOUT,
            allow_other: false,
            allow_root: false,
            suid: true,
            dev: true,
            exec: true,
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            uid_mapping: Vec::new(),
            gid_mapping: Vec::new(),
            static_nlink: false,
            metacopy: true,
            redirect_dir: true,
            index: true,
            passthrough: true,
            noacl: false,
            xattr_permissions: 0,
            threads: None,
            dir_cache: DEFAULT_DIR_CACHE,
            context: None,
            unknown: Vec::new(),
        }
    }
}

/// Splits an option string at unescaped commas.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Splits `lowerdir` at unescaped colons; `\:` is a literal colon and `\\`
/// a literal backslash.
pub fn split_lowerdir(s: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ':' => out.push(PathBuf::from(std::mem::take(&mut cur))),
            c => cur.push(c),
        }
    }
    out.push(PathBuf::from(cur));
    out.retain(|p| !p.as_os_str().is_empty());
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| Error::Options(format!("{key}={v}: not a valid number")))
}

fn on_off(key: &str, v: &str) -> Result<bool> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(Error::Options(format!("{key}={v}: expected on or off"))),
    }
}

fn bool_value(key: &str, v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::Options(format!("{key}={v}: expected 0 or 1"))),
    }
}

/// Parses `uidmapping=`: `DISK:SHOWN:LEN[:DISK:SHOWN:LEN...]`, also with the
/// leading colon podman writes.
pub fn parse_id_map(key: &str, v: &str) -> Result<Vec<IdMap>> {
    let v = v.strip_prefix(':').unwrap_or(v);
    let parts: Vec<&str> = v.split(':').collect();
    if parts.is_empty() || !parts.len().is_multiple_of(3) {
        return Err(Error::Options(format!(
            "{key}={v}: expected DISK:SHOWN:LEN triples"
        )));
    }
    parts
        .chunks(3)
        .map(|c| {
            let m = IdMap {
                disk: number(key, c[0])?,
                shown: number(key, c[1])?,
                len: number(key, c[2])?,
            };
            if m.len == 0 {
                return Err(Error::Options(format!("{key}={v}: empty range")));
            }
            Ok(m)
        })
        .collect()
}

impl MountOptions {
    /// Parses one or more `-o` strings (in order; later ones win).
    pub fn parse<'a>(opts: impl IntoIterator<Item = &'a str>) -> Result<MountOptions> {
        let mut o = MountOptions::default();
        for s in opts {
            for opt in split_options(s) {
                o.apply(&opt)?;
            }
        }
        Ok(o)
    }

    fn apply(&mut self, opt: &str) -> Result<()> {
        let opt = opt.trim();
        if opt.is_empty() {
            return Ok(());
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| {
            v.ok_or_else(|| Error::Options(format!("{key} needs a value")))
                .map(str::to_string)
        };
        match key {
            "lowerdir" => {
                self.lowers = split_lowerdir(&need(value)?);
                if self.lowers.is_empty() {
                    return Err(Error::Options("lowerdir is empty".into()));
                }
            }
            "upperdir" => self.upper = Some(PathBuf::from(unescape(&need(value)?))),
            "workdir" => self.work = Some(PathBuf::from(unescape(&need(value)?))),
            "ro" => self.read_only = true,
            "rw" => self.read_only = false,
            "volatile" => self.fsync = false,
            "fsync" => self.fsync = bool_value(key, &need(value)?)?,
            "timeout" => {
                let v = need(value)?;
                let secs: f64 = number(key, &v)?;
                if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
                    return Err(Error::Options(format!("timeout={v}: out of range")));
                }
                self.timeout = Duration::from_secs_f64(secs);
            }
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "suid" => self.suid = true,
            "nosuid" => self.suid = false,
            "dev" => self.dev = true,
            "nodev" => self.dev = false,
            "exec" => self.exec = true,
            "noexec" => self.exec = false,
            "squash_to_root" => self.squash_to_root = true,
            "squash_to_uid" => self.squash_to_uid = Some(number(key, &need(value)?)?),
            "squash_to_gid" => self.squash_to_gid = Some(number(key, &need(value)?)?),
            "uidmapping" => self.uid_mapping = parse_id_map(key, &need(value)?)?,
            "gidmapping" => self.gid_mapping = parse_id_map(key, &need(value)?)?,
            "static_nlink" => self.static_nlink = true,
            "redirect_dir" => {
                let v = need(value)?;
                self.redirect_dir = match v.as_str() {
                    "on" | "follow" => true,
                    "off" | "nofollow" => false,
                    _ => {
                        return Err(Error::Options(format!(
                            "redirect_dir={v}: expected on or off"
                        )));
                    }
                };
            }
            "index" => self.index = on_off(key, &need(value)?)?,
            "passthrough" => self.passthrough = on_off(key, &need(value)?)?,
            "metacopy" => {
                let v = need(value)?;
                self.metacopy = match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(Error::Options(format!("metacopy={v}: expected on or off"))),
                };
            }
            "noacl" => self.noacl = true,
            "xattr_permissions" => {
                let v: u8 = number(key, &need(value)?)?;
                if v > 2 {
                    return Err(Error::Options(format!(
                        "xattr_permissions={v}: expected 0, 1 or 2"
                    )));
                }
                self.xattr_permissions = v;
            }
            "threaded" => {
                let v: usize = number(key, &need(value)?)?;
                self.threads = Some(v.clamp(1, 64));
            }
            "dir_cache" => self.dir_cache = number(key, &need(value)?)?,
            "context" | "fscontext" | "defcontext" | "rootcontext" => {
                self.context = Some(need(value)?)
            }
            // Generic options mount(8) and mount.fuse3 pass; nothing to do.
            "default_permissions"
            | "async"
            | "atime"
            | "noatime"
            | "relatime"
            | "nodiratime"
            | "diratime"
            | "auto"
            | "noauto"
            | "user"
            | "nouser"
            | "users"
            | "_netdev"
            | "nofail"
            | "defaults"
            | "strictatime"
            | "lazytime"
            | "sync"
            | "dirsync" => {}
            _ => self.unknown.push(opt.to_string()),
        }
        Ok(())
    }

    /// Checks the combination of options and returns a clear error.
    pub fn validate(&self) -> Result<()> {
        if self.lowers.is_empty() {
            return Err(Error::Options("no lowerdir specified".into()));
        }
        if self.upper.is_some() != self.work.is_some() && !self.read_only {
            return Err(Error::Options(
                "upperdir and workdir must be given together".into(),
            ));
        }
        Ok(())
    }

    /// Whether the mount can be written.
    pub fn writable(&self) -> bool {
        !self.read_only && self.upper.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podman_style_options() {
        let o = MountOptions::parse([
            "lowerdir=l/A:l/B,upperdir=U/diff,workdir=U/work,,volatile,uidmapping=:0:100000:65536",
        ])
        .unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("l/A"), PathBuf::from("l/B")]);
        assert_eq!(o.upper, Some(PathBuf::from("U/diff")));
        assert!(!o.fsync);
        assert_eq!(
            o.uid_mapping,
            vec![IdMap {
                disk: 0,
                shown: 100000,
                len: 65536
            }]
        );
        o.validate().unwrap();
    }

    #[test]
    fn escaped_colon_and_errors() {
        let o = MountOptions::parse(["lowerdir=a\\:b:c"]).unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("a:b"), PathBuf::from("c")]);
        assert!(MountOptions::parse(["timeout=abc"]).is_err());
        assert!(MountOptions::parse(["lowerdir="]).is_err());
        assert!(MountOptions::parse(["uidmapping=1:2"]).is_err());
        assert!(MountOptions::parse(["xattr_permissions=7"]).is_err());
        let o = MountOptions::parse(["lowerdir=a,frobnicate"]).unwrap();
        assert_eq!(o.unknown, vec!["frobnicate".to_string()]);
        assert!(
            MountOptions::parse(["upperdir=u"])
                .unwrap()
                .validate()
                .is_err()
        );
    }
}
