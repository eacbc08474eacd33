//! Reading Blender's .blend format without Blender: which version wrote a file ([`read_version`]), and which
//! absolute paths it stores and rewriting them ([`absolute_paths`], [`rewrite_paths`]), so a volunteer can lay a
//! job's files out in its own folder.
//!
//! Files come from the network: every length and offset is checked, a bad file is an error naming the file, never a
//! panic. Files may be hundreds of MB: they are streamed block by block, never held whole in memory. Blocking I/O
//! only; callers on an async runtime use `spawn_blocking`. This module knows nothing of jobs, blobs or the network.

pub mod header;
pub mod rewrite;
pub mod sdna;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::bufread::GzDecoder;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

pub use header::{read_version, BlendVersion};
pub use rewrite::{absolute_paths, rewrite_paths, RewriteReport};

/// Read and write buffer size: files are hundreds of MB, copied in few system calls.
const BUFFER: usize = 256 * 1024;

/// Why a .blend file could not be read or rewritten; every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum BlendFileError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a .blend file (starts with {start})", path.display())]
    NotBlend { path: PathBuf, start: String },
    #[error("{}: truncated", path.display())]
    Truncated { path: PathBuf },
    #[error("{}: corrupt {format} data: {source}", path.display())]
    Corrupt { path: PathBuf, format: &'static str, source: io::Error },
    #[error("{}: cannot rewrite this .blend file: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("{}: malformed .blend file: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: malformed DNA: {source}", path.display())]
    Dna { path: PathBuf, source: sdna::DnaError },
    #[error(
        "{}: the new value for {structure}.{field} (was {old:?}) needs {needed} bytes with its NUL, the field holds {capacity}",
        path.display()
    )]
    TooLong { path: PathBuf, structure: String, field: String, old: String, needed: usize, capacity: usize },
    #[error("{}: the new value for {structure}.{field} (was {old:?}) contains a NUL byte", path.display())]
    NulInReplacement { path: PathBuf, structure: String, field: String, old: String },
}

fn io_error(path: &Path, source: io::Error) -> BlendFileError {
    BlendFileError::Io { path: path.to_owned(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    fn sniff(first: &[u8]) -> Compression {
        match first {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            // A skippable zstd frame (magic 0x184D2A50..=0x184D2A5F).
            [b, 0x2a, 0x4d, 0x18, ..] if b & 0xf0 == 0x50 => Compression::Zstd,
            _ => Compression::Plain,
        }
    }
}

/// The decompressed bytes of a .blend file, with errors that name the file.
pub(crate) struct BlendReader {
    inner: Inner,
    compression: Compression,
    /// The name errors use: the file the caller gave, even when this reads a decompressed copy of it.
    path: PathBuf,
}

enum Inner {
    Plain(BufReader<File>),
    Gzip(BufReader<GzDecoder<BufReader<File>>>),
    Zstd(Box<BufReader<ZstdFrames<BufReader<File>>>>),
}

impl BlendReader {
    /// Opens `file`, decompressing it if it starts like gzip or zstd; errors name `path`.
    fn open(file: &Path, path: &Path) -> Result<BlendReader, BlendFileError> {
        let mut raw = File::open(file).map_err(|e| io_error(path, e))?;
        let mut first = [0u8; 4];
        let got = read_up_to(&mut raw, &mut first).map_err(|e| io_error(path, e))?;
        raw.seek(SeekFrom::Start(0)).map_err(|e| io_error(path, e))?;
        let compression = Compression::sniff(&first[..got]);
        let raw = BufReader::with_capacity(BUFFER, raw);
        let inner = match compression {
            Compression::Plain => Inner::Plain(raw),
            Compression::Gzip => Inner::Gzip(BufReader::with_capacity(BUFFER, GzDecoder::new(raw))),
            Compression::Zstd => Inner::Zstd(Box::new(BufReader::with_capacity(BUFFER, ZstdFrames::new(raw)))),
        };
        Ok(BlendReader { inner, compression, path: path.to_owned() })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn read_error(&self, source: io::Error) -> BlendFileError {
        let path = self.path.clone();
        match (source.kind(), self.compression) {
            (io::ErrorKind::UnexpectedEof, _) => BlendFileError::Truncated { path },
            (io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other, Compression::Gzip) => {
                BlendFileError::Corrupt { path, format: "gzip", source }
            }
            (io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::Other, Compression::Zstd) => {
                BlendFileError::Corrupt { path, format: "zstd", source }
            }
            _ => BlendFileError::Io { path, source },
        }
    }

    fn reader(&mut self) -> &mut dyn BufRead {
        match &mut self.inner {
            Inner::Plain(r) => r,
            Inner::Gzip(r) => r,
            Inner::Zstd(r) => r,
        }
    }

    /// Fills as much of `buf` as the file has; the count read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize, BlendFileError> {
        read_up_to(self.reader(), buf).map_err(|e| self.read_error(e))
    }

    /// Fills `buf`, or fails with [`BlendFileError::Truncated`].
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), BlendFileError> {
        self.reader().read_exact(buf).map_err(|e| self.read_error(e))
    }

    /// Reads `len` bytes into memory, growing the buffer as they arrive (a bad length costs no large allocation).
    fn read_vec(&mut self, len: usize) -> Result<Vec<u8>, BlendFileError> {
        let mut data = Vec::new();
        let got = self.reader().take(len as u64).read_to_end(&mut data).map_err(|e| self.read_error(e))?;
        if got < len {
            return Err(BlendFileError::Truncated { path: self.path.clone() });
        }
        Ok(data)
    }

    /// Passes over `len` bytes: a seek in a plain file, decompressing otherwise.
    fn skip(&mut self, len: u64) -> Result<(), BlendFileError> {
        if let Inner::Plain(r) = &mut self.inner {
            let offset = i64::try_from(len).map_err(|_| BlendFileError::Truncated { path: self.path.clone() })?;
            return r.seek_relative(offset).map_err(|e| io_error(&self.path, e));
        }
        self.copy(Some(len), &mut io::sink(), Path::new(""))
    }

    /// Copies `len` bytes (or all that is left, for `None`) to `out`, whose write errors name `out_path`.
    fn copy(&mut self, len: Option<u64>, out: &mut dyn Write, out_path: &Path) -> Result<(), BlendFileError> {
        let mut left = len.unwrap_or(u64::MAX);
        while left > 0 {
            let chunk = match self.reader().fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_error(e)),
            };
            if chunk.is_empty() {
                return match len {
                    Some(_) => Err(BlendFileError::Truncated { path: self.path.clone() }),
                    None => Ok(()),
                };
            }
            let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            out.write_all(&chunk[..take]).map_err(|e| io_error(out_path, e))?;
            self.reader().consume(take);
            left -= take as u64;
        }
        Ok(())
    }
}

fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Decodes a stream of zstd frames, skipping skippable ones: Blender writes many frames and a seek table in a
/// skippable frame, while ruzstd's `StreamingDecoder` reads a single frame.
struct ZstdFrames<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(source: R) -> Self {
        ZstdFrames { source, decoder: FrameDecoder::new(), in_frame: false }
    }

    /// Starts the next frame; false at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.decoder.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame { length, .. })) => {
                    let length = u64::from(length);
                    if io::copy(&mut (&mut self.source).take(length), &mut io::sink())? < length {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::MagicNumberReadError(e))) => {
                    return Err(e)
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if !self.next_frame()? {
                    return Ok(0);
                }
                self.in_frame = true;
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                self.in_frame = false;
            }
        }
    }
}

/// A file created next to its destination and removed when dropped, unless renamed onto the destination: nothing
/// half-written is left behind on an error.
pub(crate) struct TempFile {
    path: PathBuf,
    armed: bool,
}

impl TempFile {
    /// Creates `.NAME.TAG.PID-N.tmp` in `target`'s folder.
    fn create_next_to(target: &Path, tag: &str) -> Result<(TempFile, File), BlendFileError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = target.parent().unwrap_or(Path::new(""));
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.{tag}.{}-{n}.tmp", std::process::id()));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((TempFile { path, armed: true }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&path, e)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn persist(mut self, target: &Path) -> Result<(), BlendFileError> {
        std::fs::rename(&self.path, target).map_err(|e| io_error(target, e))?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    use super::*;

    fn decompress(bytes: &[u8]) -> Result<Vec<u8>, BlendFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.blend");
        std::fs::write(&path, bytes).unwrap();
        let mut reader = BlendReader::open(&path, &path)?;
        let mut out = Vec::new();
        reader.copy(None, &mut out, Path::new("out"))?;
        Ok(out)
    }

    #[test]
    fn zstd_frames_and_skippable_frames_are_concatenated() {
        let (a, b) = (vec![1u8; 200_000], b"second frame".to_vec());
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        stream.extend_from_slice(&[0x5e, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
        stream.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut expected = a.clone();
        expected.extend_from_slice(&b);
        assert_eq!(decompress(&stream).unwrap(), expected);

        let mut skippable_first = vec![0x50, 0x2a, 0x4d, 0x18, 1, 0, 0, 0, 0];
        skippable_first.extend(compress_to_vec(&b[..], CompressionLevel::Fastest));
        assert_eq!(decompress(&skippable_first).unwrap(), b);
    }

    #[test]
    fn broken_compressed_streams_are_errors() {
        let stream = compress_to_vec(&vec![5u8; 100_000][..], CompressionLevel::Fastest);
        let cut = decompress(&stream[..stream.len() - 3]).unwrap_err();
        assert!(matches!(cut, BlendFileError::Truncated { .. } | BlendFileError::Corrupt { .. }), "{cut}");
        let skip_cut = decompress(&[0x50, 0x2a, 0x4d, 0x18, 100, 0, 0, 0, 1]).unwrap_err();
        assert!(matches!(skip_cut, BlendFileError::Truncated { .. }), "{skip_cut}");
        let junk = decompress(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(junk.to_string().contains("f.blend"), "{junk}");
    }

    #[test]
    fn temp_files_vanish_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.blend");
        let (temp, _) = TempFile::create_next_to(&target, "t").unwrap();
        let kept = temp.path().to_owned();
        assert!(kept.exists());
        drop(temp);
        assert!(!kept.exists());
        let (temp, mut file) = TempFile::create_next_to(&target, "t").unwrap();
        file.write_all(b"x").unwrap();
        temp.persist(&target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
