//! The .blend file header: which Blender wrote the file, and how its blocks are laid out.
//!
//! Two headers exist. The classic one is 12 bytes, `BLENDER-v304`: pointer size (`_` 4 bytes, `-` 8 bytes),
//! endianness (`v` little, `V` big) and three version digits. Blender 5 writes a longer one, `BLENDER17-01v0500`: the
//! header's own size, a file format version (1 means larger block headers) and four version digits.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BlendFileError, BlendReader};

const MAGIC: &[u8; 7] = b"BLENDER";
/// Length of the classic header, and the first bytes of every header.
pub const CLASSIC_HEADER_LEN: usize = 12;
/// Largest header size a new-style header may announce (two decimal digits).
const MAX_HEADER_LEN: usize = 99;

/// The Blender version that wrote a .blend file: `3.4`, `4.2`, `2.79`. Files carry no patch version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlendVersion {
    pub major: u16,
    pub minor: u16,
}

impl BlendVersion {
    /// Parses what Blender prints as its version (`bpy.app.version_string`, `blender --version`): `3.4.1`,
    /// `4.2.3 LTS`, `4.1`; the patch version and any suffix are ignored.
    pub fn from_blender_version_string(text: &str) -> Option<BlendVersion> {
        let word = text.split_whitespace().next()?;
        let mut parts = word.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(BlendVersion { major, minor })
    }

    /// From the number in a header: `304` is 3.4, `279` is 2.79, `500` is 5.0.
    fn from_file_number(number: u16) -> BlendVersion {
        BlendVersion { major: number / 100, minor: number % 100 }
    }
}

impl fmt::Display for BlendVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    Little,
    Big,
}

/// Everything the header says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlendHeader {
    pub version: BlendVersion,
    /// 4 or 8: the size of the old-pointer field in block headers and of pointer fields in structs.
    pub pointer_size: usize,
    pub endian: Endian,
    /// 0 for classic files; Blender 5's format 1 has larger block headers.
    pub format_version: u8,
    /// Bytes before the first block.
    pub len: usize,
}

/// The version of Blender that wrote the .blend file at `path`, which may be plain, gzip or zstd compressed.
/// Reads only the first bytes; blocking I/O.
pub fn read_version(path: &Path) -> Result<BlendVersion, BlendFileError> {
    let mut reader = BlendReader::open(path, path)?;
    Ok(read_header(&mut reader)?.0.version)
}

/// Reads and parses the header at the start of `reader`; returns it with its raw bytes.
pub(super) fn read_header(reader: &mut BlendReader) -> Result<(BlendHeader, Vec<u8>), BlendFileError> {
    let mut raw = vec![0u8; CLASSIC_HEADER_LEN];
    let got = reader.read_up_to(&mut raw)?;
    raw.truncate(got);
    if raw.len() == CLASSIC_HEADER_LEN && raw[7].is_ascii_digit() {
        let announced = new_header_len(&raw).ok_or_else(|| not_blend(reader.path(), &raw))?;
        let mut rest = vec![0u8; announced - CLASSIC_HEADER_LEN];
        let got = reader.read_up_to(&mut rest)?;
        raw.extend_from_slice(&rest[..got]);
    }
    let header = parse(&raw, reader.path())?;
    raw.truncate(header.len);
    Ok((header, raw))
}

/// Parses a header from the first bytes of a (decompressed) file.
pub fn parse(bytes: &[u8], path: &Path) -> Result<BlendHeader, BlendFileError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes.is_empty() || bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(not_blend(path, bytes));
    }
    let truncated = || BlendFileError::Truncated { path: path.to_owned() };
    if bytes.len() < CLASSIC_HEADER_LEN {
        return Err(truncated());
    }
    if bytes[7].is_ascii_digit() {
        let len = new_header_len(bytes).ok_or_else(|| not_blend(path, bytes))?;
        let header = bytes.get(..len).ok_or_else(truncated)?;
        parse_new(header).ok_or_else(|| not_blend(path, bytes))
    } else {
        parse_classic(&bytes[..CLASSIC_HEADER_LEN]).ok_or_else(|| not_blend(path, bytes))
    }
}

/// `BLENDER-v304`.
fn parse_classic(h: &[u8]) -> Option<BlendHeader> {
    let pointer_size = match h[7] {
        b'_' => 4,
        b'-' => 8,
        _ => return None,
    };
    Some(BlendHeader {
        version: BlendVersion::from_file_number(digits(&h[9..12])?),
        pointer_size,
        endian: endian(h[8])?,
        format_version: 0,
        len: CLASSIC_HEADER_LEN,
    })
}

/// `BLENDER17-01v0500`: pointers are always 8 bytes.
fn parse_new(h: &[u8]) -> Option<BlendHeader> {
    if h[9] != b'-' {
        return None;
    }
    Some(BlendHeader {
        version: BlendVersion::from_file_number(digits(&h[13..17])?),
        pointer_size: 8,
        endian: endian(h[12])?,
        format_version: u8::try_from(digits(&h[10..12])?).ok()?,
        len: h.len(),
    })
}

/// The size a new-style header announces in its bytes 7..9, when it is plausible.
fn new_header_len(bytes: &[u8]) -> Option<usize> {
    let len = usize::from(digits(bytes.get(7..9)?)?);
    (17..=MAX_HEADER_LEN).contains(&len).then_some(len)
}

fn endian(byte: u8) -> Option<Endian> {
    match byte {
        b'v' => Some(Endian::Little),
        b'V' => Some(Endian::Big),
        _ => None,
    }
}

fn digits(bytes: &[u8]) -> Option<u16> {
    bytes.iter().try_fold(0u16, |n, &b| b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0')))
}

fn not_blend(path: &Path, bytes: &[u8]) -> BlendFileError {
    let start = match bytes.len() {
        0 => "nothing: the file is empty".to_owned(),
        n => format!("\"{}\"", bytes[..n.min(CLASSIC_HEADER_LEN)].escape_ascii()),
    };
    BlendFileError::NotBlend { path: path.to_owned(), start }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn version(major: u16, minor: u16) -> BlendVersion {
        BlendVersion { major, minor }
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn versions_from_strings_order_and_display() {
        assert_eq!(BlendVersion::from_blender_version_string("3.4.1"), Some(version(3, 4)));
        assert_eq!(BlendVersion::from_blender_version_string("4.2.3 LTS"), Some(version(4, 2)));
        assert_eq!(BlendVersion::from_blender_version_string("4.1"), Some(version(4, 1)));
        assert_eq!(BlendVersion::from_blender_version_string("4"), None);
        assert_eq!(BlendVersion::from_blender_version_string("x.y"), None);
        assert_eq!(BlendVersion::from_blender_version_string(""), None);
        assert!(version(2, 79) < version(3, 0) && version(3, 6) < version(4, 2) && version(4, 2) < version(4, 10));
        assert_eq!(version(4, 2).to_string(), "4.2");
        assert_eq!(version(2, 79).to_string(), "2.79");
    }

    #[test]
    fn classic_and_blender5_headers() {
        let p = Path::new("a.blend");
        let h = parse(b"BLENDER-v304REND", p).unwrap();
        assert_eq!(
            (h.version, h.pointer_size, h.endian, h.format_version, h.len),
            (version(3, 4), 8, Endian::Little, 0, 12)
        );
        let h = parse(b"BLENDER_V279", p).unwrap();
        assert_eq!((h.version, h.pointer_size, h.endian), (version(2, 79), 4, Endian::Big));
        let h = parse(b"BLENDER17-01v0500xxxx", p).unwrap();
        assert_eq!(
            (h.version, h.pointer_size, h.endian, h.format_version, h.len),
            (version(5, 0), 8, Endian::Little, 1, 17)
        );
        assert_eq!(parse(b"BLENDER17-01v0405", p).unwrap().version, version(4, 5));
    }

    #[test]
    fn junk_and_truncated_headers_are_errors_naming_the_file() {
        let p = Path::new("/jobs/a.blend");
        let message = |bytes: &[u8]| parse(bytes, p).unwrap_err().to_string();
        assert_eq!(
            message(b"\x89PNG\r\n\x1a\nabcdefgh"),
            r#"/jobs/a.blend: not a .blend file (starts with "\x89PNG\r\n\x1a\nabcd")"#
        );
        assert_eq!(message(b""), "/jobs/a.blend: not a .blend file (starts with nothing: the file is empty)");
        assert_eq!(message(b"BLEN"), "/jobs/a.blend: truncated");
        assert_eq!(message(b"BLENDER-v3"), "/jobs/a.blend: truncated");
        assert_eq!(message(b"BLENDER17-01v05"), "/jobs/a.blend: truncated");
        assert!(message(b"BLENDER-x304").contains("not a .blend file"));
        assert!(message(b"BLENDER-v3a4").contains("not a .blend file"));
        assert!(message(b"BLENDER05-01v0500").contains("not a .blend file"));
        assert!(message(b"BLENDER17x01v0500").contains("not a .blend file"));
    }

    #[test]
    fn reads_plain_gzip_and_zstd_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut blend = b"BLENDER-v402".to_vec();
        blend.extend_from_slice(&[7u8; 5000]);
        let plain = write(dir.path(), "plain.blend", &blend);
        assert_eq!(read_version(&plain).unwrap(), version(4, 2));
        let gz = write(dir.path(), "gz.blend", &gzip(&blend));
        assert_eq!(read_version(&gz).unwrap(), version(4, 2));
        let zst = ruzstd::encoding::compress_to_vec(&blend[..], ruzstd::encoding::CompressionLevel::Fastest);
        let zst = write(dir.path(), "zst.blend", &zst);
        assert_eq!(read_version(&zst).unwrap(), version(4, 2));
        let new = write(dir.path(), "five.blend", &gzip(b"BLENDER17-01v0500"));
        assert_eq!(read_version(&new).unwrap(), version(5, 0));
    }

    #[test]
    fn reads_a_zstd_file_written_by_the_zstd_tool() {
        // `(printf BLENDER-v304; head -c 3000 /dev/zero) | zstd -19`: a frame from the reference encoder.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/blendfile/testdata/header304.blend.zst");
        assert_eq!(read_version(&path).unwrap(), version(3, 4));
    }

    #[test]
    fn broken_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.blend");
        assert!(read_version(&missing).unwrap_err().to_string().starts_with(&missing.display().to_string()));
        let junk = write(dir.path(), "junk.blend", b"hello world, not a blend");
        assert!(read_version(&junk).unwrap_err().to_string().contains("not a .blend file"));
        let gz = gzip(b"BLENDER-v304 and more and more");
        let cut = write(dir.path(), "cut.blend", &gz[..12]);
        assert!(read_version(&cut).is_err());
        let bad_gz = write(dir.path(), "bad.blend", &[0x1f, 0x8b, 0, 0, 0, 0]);
        assert!(read_version(&bad_gz).is_err());
        let bad_zstd = write(dir.path(), "bad2.blend", &[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff]);
        assert!(read_version(&bad_zstd).is_err());
        let empty_gz = write(dir.path(), "empty.blend", &gzip(b""));
        assert!(read_version(&empty_gz).unwrap_err().to_string().contains("the file is empty"));
    }
}
