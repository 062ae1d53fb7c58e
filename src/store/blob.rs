//! Content-addressed blobs: staged in a temp file, fsynced, verified
//! against their digest, then renamed into `blobs/sha256/HEX`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

use super::digest::{Digest, HashingWriter};
use super::{IoContext, Progress, Result, Store, StoreError, sync_dir};

/// Compression of a layer blob, detected by magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Detect from the first bytes of a stream.
    pub fn detect(head: &[u8]) -> Result<Compression> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if head.starts_with(b"BZh") {
            Err(StoreError::Unsupported("bzip2-compressed layer".into()))
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Err(StoreError::Unsupported("xz-compressed layer".into()))
        } else {
            Ok(Compression::None)
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Wrap `r` in the decompressor its magic bytes call for.
pub fn decompress<'a, R: Read + 'a>(r: R) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = fill_at_least(&mut br, 6).ctx("reading layer header")?;
    let c = Compression::detect(&head)?;
    let rd: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(br),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        Compression::Zstd => Box::new(MultiZstd {
            state: ZState::Between(br),
        }),
    };
    Ok((c, rd))
}

/// Peek up to `n` bytes without consuming them.
fn fill_at_least<R: Read>(br: &mut BufReader<R>, n: usize) -> io::Result<Vec<u8>> {
    let buf = br.fill_buf()?;
    Ok(buf[..buf.len().min(n)].to_vec())
}

enum ZState<R: Read> {
    Between(BufReader<R>),
    In(Box<StreamingDecoder<BufReader<R>, FrameDecoder>>),
    Poisoned,
}

/// A zstd reader that decodes every frame of the stream.
struct MultiZstd<R: Read> {
    state: ZState<R>,
}

fn zerr<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"))
}

impl<R: Read> Read for MultiZstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match std::mem::replace(&mut self.state, ZState::Poisoned) {
                ZState::Poisoned => return Err(zerr("decoder failed earlier")),
                ZState::Between(mut br) => {
                    if br.fill_buf()?.is_empty() {
                        self.state = ZState::Between(br);
                        return Ok(0);
                    }
                    let dec = StreamingDecoder::new(br).map_err(zerr)?;
                    self.state = ZState::In(Box::new(dec));
                }
                ZState::In(mut dec) => {
                    let n = dec.read(buf)?;
                    if n > 0 {
                        self.state = ZState::In(dec);
                        return Ok(n);
                    }
                    if !dec.decoder.is_finished() {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd: truncated frame",
                        ));
                    }
                    self.state = ZState::Between(dec.into_inner());
                }
            }
        }
    }
}

/// A blob written to a staging directory and verified, not yet in the store.
#[derive(Debug, Clone)]
pub struct StagedBlob {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
}

/// Copy `r` into a new file in `dir`, fsync it, and check it against
/// `expected` (digest and size) if given.
pub fn stage_blob(
    dir: &Path,
    r: &mut dyn Read,
    what: &str,
    expected: Option<&Digest>,
    expected_size: Option<u64>,
    progress: &dyn Progress,
) -> Result<StagedBlob> {
    let tmp = dir.join(format!(
        "blob-{}",
        expected.map(|d| d.hex().to_string()).unwrap_or_else(|| {
            format!(
                "anon-{}",
                super::TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )
        })
    ));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_ctx(|| format!("creating {}", tmp.display()))?;
    let mut w = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, f));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_ctx(|| format!("reading {what}")),
        };
        w.write_all(&buf[..n])
            .with_ctx(|| format!("writing {}", tmp.display()))?;
        progress.advance(n as u64);
    }
    let (bw, digest, size) = w.finish();
    let f = bw
        .into_inner()
        .map_err(|e| e.into_error())
        .with_ctx(|| format!("writing {}", tmp.display()))?;
    if let Some(es) = expected_size
        && es != size
    {
        return Err(StoreError::DigestMismatch {
            what: format!("size of {what}"),
            expected: es.to_string(),
            actual: size.to_string(),
        });
    }
    if let Some(ed) = expected
        && *ed != digest
    {
        return Err(StoreError::DigestMismatch {
            what: what.to_string(),
            expected: ed.to_string(),
            actual: digest.to_string(),
        });
    }
    f.sync_all()
        .with_ctx(|| format!("fsync {}", tmp.display()))?;
    Ok(StagedBlob {
        digest,
        size,
        path: tmp,
    })
}

impl Store {
    /// Move a staged, verified blob into the store (a blob already present
    /// is kept and the staged copy dropped).
    pub fn commit_blob(&self, b: &StagedBlob) -> Result<()> {
        let dst = self.blob_path(&b.digest);
        if dst.is_file() {
            let _ = fs::remove_file(&b.path);
            return Ok(());
        }
        fs::rename(&b.path, &dst).with_ctx(|| format!("moving {} into the store", b.digest))?;
        Ok(())
    }

    /// fsync `blobs/sha256` after commits.
    pub fn sync_blobs(&self) -> Result<()> {
        sync_dir(&self.root().join("blobs/sha256"))
    }

    /// Open a stored blob.
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).with_ctx(|| format!("opening blob {d}"))
    }

    /// Read a whole (small) stored blob, checking its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.open_blob(d)?
            .read_to_end(&mut v)
            .with_ctx(|| format!("reading blob {d}"))?;
        let got = Digest::of(&v);
        if got != *d {
            return Err(StoreError::Corrupt(format!("blob {d} has digest {got}")));
        }
        Ok(v)
    }

    /// Size of a stored blob.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d)).ok().map(|m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn detects_compression() {
        assert_eq!(
            Compression::detect(&[0x1f, 0x8b, 8]).unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(),
            Compression::Zstd
        );
        assert_eq!(Compression::detect(b"abc").unwrap(), Compression::None);
        assert!(Compression::detect(b"BZh9").is_err());
    }

    #[test]
    fn multi_member_gzip_and_zstd() {
        let mut gz = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part).unwrap();
            gz.extend(e.finish().unwrap());
        }
        let (c, mut r) = decompress(Cursor::new(gz)).unwrap();
        assert_eq!(c, Compression::Gzip);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello world");

        let mut zs = Vec::new();
        for part in [&b"hello "[..], b"zstd"] {
            zs.extend(ruzstd::encoding::compress_to_vec(
                part,
                ruzstd::encoding::CompressionLevel::Fastest,
            ));
        }
        let (c, mut r) = decompress(Cursor::new(zs)).unwrap();
        assert_eq!(c, Compression::Zstd);
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello zstd");
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&vec![7u8; 100_000]).unwrap();
        let mut gz = e.finish().unwrap();
        gz.truncate(gz.len() / 2);
        let (_, mut r) = decompress(Cursor::new(gz)).unwrap();
        assert!(io::copy(&mut r, &mut io::sink()).is_err());
    }

    #[test]
    fn stage_verifies_digest() {
        let dir = tempfile::tempdir().unwrap();
        let good = Digest::of(b"abc");
        let b = stage_blob(
            dir.path(),
            &mut &b"abc"[..],
            "x",
            Some(&good),
            Some(3),
            &super::super::NoProgress,
        )
        .unwrap();
        assert_eq!(b.digest, good);
        let bad = Digest::of(b"abd");
        let err = stage_blob(
            dir.path(),
            &mut &b"abc"[..],
            "x",
            Some(&bad),
            None,
            &super::super::NoProgress,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    }
}
