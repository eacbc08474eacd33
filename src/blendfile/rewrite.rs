//! Finding and rewriting the absolute paths a .blend file stores in its path fields (image, library, sound, cache
//! files...), so a volunteer can point them into its own copy of a job's files.
//!
//! Two passes over the decompressed file: the first walks block headers to the `DNA1` block, whose SDNA says where
//! each struct's path fields are; the second streams every block to the output, patching only the blocks of structs
//! with path fields. Everything else is copied byte for byte. Little-endian classic files only: big-endian files and
//! Blender 5's format 1 are refused with an error.

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Write};
use std::path::Path;

use super::header::{read_header, BlendHeader, Endian};
use super::sdna::{base_name, is_array, is_pointer, DnaError, Sdna};
use super::{io_error, BlendFileError, BlendReader, Compression, TempFile, BUFFER};

/// Largest block read into memory: the DNA (about 120 KB from Blender 3.4), and blocks of structs with path fields (a
/// few KB in real files). Far below the memory a volunteer has: a compressed file of a few KB can claim, and hold,
/// a block this large.
pub const MAX_BLOCK_LEN: usize = 64 << 20;

/// Char-array fields that hold file paths, by struct. Old and new names: files come from many Blender versions, and
/// a name that is a pointer or a nested struct in some version (`Text.name`, the `ID` name) never matches.
const PATH_FIELDS: &[(&str, &[&str])] = &[
    ("Library", &["filepath", "name"]),
    ("Image", &["filepath", "name"]),
    ("bSound", &["filepath", "name"]),
    ("MovieClip", &["filepath", "name"]),
    ("VFont", &["filepath", "name"]),
    ("CacheFile", &["filepath"]),
    ("Volume", &["filepath"]),
    ("Strip", &["dir"]),
    ("StripData", &["dir"]),
    ("PointCache", &["path"]),
    ("FluidDomainSettings", &["cache_directory"]),
    ("OceanModifierData", &["cachepath"]),
    ("MeshCacheModifierData", &["filepath"]),
    ("NodeShaderTexIES", &["filepath"]),
    ("NodeShaderScript", &["filepath"]),
    ("Text", &["filepath", "name"]),
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// (old, new) for every field rewritten, in file order; a path stored in several fields appears once per field.
    pub changed: Vec<(String, String)>,
    /// Blocks copied, `ENDB` included.
    pub blocks: usize,
}

/// Writes `input` (plain, gzip or zstd) to `output` as an uncompressed .blend, identical except that each absolute
/// path (`/...`, not Blender's `//` relative ones) in a path field is replaced by `map`'s answer, when it gives one.
/// A replacement that does not fit its field is an error. `output` appears complete or not at all; compressed input
/// is first decompressed to a temp file next to `output`. Blocking I/O.
pub fn rewrite_paths(
    input: &Path,
    output: &Path,
    map: &dyn Fn(&str) -> Option<String>,
) -> Result<RewriteReport, BlendFileError> {
    let mut reader = BlendReader::open(input, input)?;
    let unpacked = if reader.compression == Compression::Plain {
        None
    } else {
        let (temp, file) = TempFile::create_next_to(output, "unpacked")?;
        let mut writer = BufWriter::with_capacity(BUFFER, file);
        reader.copy(None, &mut writer, temp.path())?;
        writer.flush().map_err(|e| io_error(temp.path(), e))?;
        Some(temp)
    };
    let source = unpacked.as_ref().map_or(input, TempFile::path);
    let layout = Layout::read(&mut BlendReader::open(source, input)?)?;

    let (temp, file) = TempFile::create_next_to(output, "rewrite")?;
    let mut writer = BufWriter::with_capacity(BUFFER, file);
    let out = Output { writer: &mut writer, path: temp.path() };
    let report = walk(&mut BlendReader::open(source, input)?, &layout, Some(out), &mut |old| map(old))?;
    let file = writer.into_inner().map_err(|e| io_error(temp.path(), e.into_error()))?;
    file.sync_all().map_err(|e| io_error(temp.path(), e))?;
    drop(file);
    temp.persist(output)?;
    Ok(report)
}

/// The absolute paths `input`'s path fields hold, each once, in file order; writes nothing. Empty means the file
/// needs no rewrite.
pub fn absolute_paths(input: &Path) -> Result<Vec<String>, BlendFileError> {
    let layout = Layout::read(&mut BlendReader::open(input, input)?)?;
    let (mut found, mut seen) = (Vec::new(), HashSet::new());
    let mut collect = |old: &str| {
        if seen.insert(old.to_owned()) {
            found.push(old.to_owned());
        }
        None
    };
    walk(&mut BlendReader::open(input, input)?, &layout, None, &mut collect)?;
    Ok(found)
}

/// Where the path fields are, from the file's SDNA.
struct Layout {
    header: BlendHeader,
    /// By struct index (a block header's SDNA index): the structs with path fields.
    structs: HashMap<u32, PathStruct>,
}

struct PathStruct {
    name: String,
    size: usize,
    fields: Vec<PathField>,
}

struct PathField {
    name: String,
    offset: usize,
    len: usize,
}

impl Layout {
    /// The first pass: the header, then block headers up to `DNA1`.
    fn read(reader: &mut BlendReader) -> Result<Layout, BlendFileError> {
        let header = read_supported_header(reader)?.0;
        loop {
            let block = BlockHeader::read(reader, header.pointer_size)?;
            match &block.code {
                b"DNA1" => {
                    let data = block.read_data(reader)?;
                    let dna_error = |source| BlendFileError::Dna { path: reader.path().to_owned(), source };
                    let sdna = Sdna::parse(&data, header.pointer_size).map_err(dna_error)?;
                    return Layout::from_sdna(header, &sdna).map_err(dna_error);
                }
                b"ENDB" => return Err(malformed(reader, "it has no DNA1 block".to_owned())),
                _ => reader.skip(block.len as u64)?,
            }
        }
    }

    fn from_sdna(header: BlendHeader, sdna: &Sdna) -> Result<Layout, DnaError> {
        let mut structs = HashMap::new();
        for index in 0..sdna.struct_count() {
            let name = sdna.struct_name(index).unwrap_or_default();
            let Some((_, wanted)) = PATH_FIELDS.iter().find(|(s, _)| *s == name) else { continue };
            let fields: Vec<PathField> = sdna
                .fields(index)?
                .into_iter()
                .filter(|f| f.type_name == "char" && !is_pointer(f.name) && is_array(f.name))
                .filter(|f| wanted.contains(&base_name(f.name)))
                .map(|f| PathField { name: base_name(f.name).to_owned(), offset: f.offset, len: f.size })
                .collect();
            let size = sdna.struct_size(index).unwrap_or(0);
            if let (false, Ok(index)) = (fields.is_empty() || size == 0, u32::try_from(index)) {
                structs.insert(index, PathStruct { name: name.to_owned(), size, fields });
            }
        }
        Ok(Layout { header, structs })
    }
}

/// The header, when this module can rewrite files of its kind.
fn read_supported_header(reader: &mut BlendReader) -> Result<(BlendHeader, Vec<u8>), BlendFileError> {
    let (header, raw) = read_header(reader)?;
    let unsupported = |what: String| BlendFileError::Unsupported { path: reader.path().to_owned(), what };
    if header.endian == Endian::Big {
        return Err(unsupported("it is big-endian (saved on a PowerPC or SPARC machine)".to_owned()));
    }
    if header.format_version != 0 {
        let version = header.version;
        return Err(unsupported(format!("it uses Blender {version}'s file format {}", header.format_version)));
    }
    Ok((header, raw))
}

fn malformed(reader: &BlendReader, what: String) -> BlendFileError {
    BlendFileError::Malformed { path: reader.path().to_owned(), what }
}

struct BlockHeader {
    raw: Vec<u8>,
    code: [u8; 4],
    len: usize,
    /// `None` when negative: then no struct.
    sdna: Option<u32>,
    count: usize,
}

impl BlockHeader {
    /// code[4], length (i32), old pointer, SDNA index (i32), count (i32).
    fn read(reader: &mut BlendReader, pointer_size: usize) -> Result<BlockHeader, BlendFileError> {
        let mut raw = vec![0u8; 16 + pointer_size];
        reader.read_exact(&mut raw)?;
        let i32_at = |at: usize| i32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let code = [raw[0], raw[1], raw[2], raw[3]];
        let (len, sdna, count) = (i32_at(4), i32_at(8 + pointer_size), i32_at(12 + pointer_size));
        let (Ok(len), Ok(count)) = (usize::try_from(len), usize::try_from(count)) else {
            let code = code.escape_ascii();
            return Err(malformed(reader, format!("block {code} has length {len} and count {count}")));
        };
        Ok(BlockHeader { code, len, sdna: u32::try_from(sdna).ok(), count, raw })
    }

    fn read_data(&self, reader: &mut BlendReader) -> Result<Vec<u8>, BlendFileError> {
        if self.len > MAX_BLOCK_LEN {
            let (code, len) = (self.code.escape_ascii(), self.len);
            return Err(malformed(
                reader,
                format!("block {code} is {len} bytes, more than the {MAX_BLOCK_LEN} allowed"),
            ));
        }
        reader.read_vec(self.len)
    }
}

/// Where the second pass writes, when it writes.
struct Output<'a> {
    writer: &'a mut dyn Write,
    path: &'a Path,
}

fn write(out: &mut Option<Output>, bytes: &[u8]) -> Result<(), BlendFileError> {
    match out {
        Some(out) => out.writer.write_all(bytes).map_err(|e| io_error(out.path, e)),
        None => Ok(()),
    }
}

/// The second pass: every block, in order, to `out`, with `visit` asked about each absolute path.
fn walk(
    reader: &mut BlendReader,
    layout: &Layout,
    mut out: Option<Output>,
    visit: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<RewriteReport, BlendFileError> {
    let mut report = RewriteReport::default();
    write(&mut out, &read_supported_header(reader)?.1)?;
    loop {
        let block = BlockHeader::read(reader, layout.header.pointer_size)?;
        report.blocks += 1;
        write(&mut out, &block.raw)?;
        if &block.code == b"ENDB" {
            if let Some(out) = &mut out {
                reader.copy(None, out.writer, out.path)?;
            }
            return Ok(report);
        }
        let path_struct = block.sdna.and_then(|index| layout.structs.get(&index)).filter(|_| &block.code != b"DNA1");
        match (path_struct, &mut out) {
            (Some(path_struct), _) => {
                let mut data = block.read_data(reader)?;
                patch_block(&mut data, &block, path_struct, reader, visit, &mut report.changed)?;
                write(&mut out, &data)?;
            }
            (None, Some(out)) => reader.copy(Some(block.len as u64), out.writer, out.path)?,
            (None, None) => reader.skip(block.len as u64)?,
        }
    }
}

/// Patches the path fields of each of the block's `count` structs.
fn patch_block(
    data: &mut [u8],
    block: &BlockHeader,
    path_struct: &PathStruct,
    reader: &BlendReader,
    visit: &mut dyn FnMut(&str) -> Option<String>,
    changed: &mut Vec<(String, String)>,
) -> Result<(), BlendFileError> {
    let (count, size) = (block.count, path_struct.size);
    let Some(used) = count.checked_mul(size).filter(|&used| used <= data.len()) else {
        let (code, name, len) = (block.code.escape_ascii(), &path_struct.name, data.len());
        return Err(malformed(reader, format!("block {code} of {count} {name} ({size} bytes each) has {len} bytes")));
    };
    for element in data[..used].chunks_exact_mut(size) {
        for field in &path_struct.fields {
            let Some(bytes) = element.get_mut(field.offset..field.offset + field.len) else {
                let what = format!("{}.{} lies outside the struct", path_struct.name, field.name);
                return Err(malformed(reader, what));
            };
            let Some((old, new)) = replacement(bytes, visit) else { continue };
            let context = || (reader.path().to_owned(), path_struct.name.clone(), field.name.clone(), old.clone());
            if new.contains('\0') {
                let (path, structure, field, old) = context();
                return Err(BlendFileError::NulInReplacement { path, structure, field, old });
            }
            if new.len() >= bytes.len() {
                let (path, structure, field, old) = context();
                let (needed, capacity) = (new.len() + 1, bytes.len());
                return Err(BlendFileError::TooLong { path, structure, field, old, needed, capacity });
            }
            bytes.fill(0);
            bytes[..new.len()].copy_from_slice(new.as_bytes());
            changed.push((old, new));
        }
    }
    Ok(())
}

/// The field's value and `visit`'s different replacement for it, when the value is an absolute path. Values that
/// are not UTF-8 are left alone: Blender stores paths as UTF-8 on every platform.
fn replacement(field: &[u8], visit: &mut dyn FnMut(&str) -> Option<String>) -> Option<(String, String)> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let old = std::str::from_utf8(&field[..end]).ok()?;
    if !old.starts_with('/') || old.starts_with("//") {
        return None;
    }
    let new = visit(old)?;
    (new != old).then(|| (old.to_owned(), new))
}

#[cfg(test)]
#[path = "rewrite_tests.rs"]
mod tests;
