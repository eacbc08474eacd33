//! The SDNA stored in a .blend file's `DNA1` block: the names, sizes and fields of every struct the file's blocks
//! hold, as the Blender that wrote it declared them.
//!
//! Layout of the block (little-endian): `SDNA`, then `NAME` + count + NUL-terminated field names, padded to 4 bytes,
//! `TYPE` + count + type names, padded, `TLEN` + one u16 size per type, padded, `STRC` + count + per struct its
//! type index, field count and (type, name) index pairs. Fields are packed in declaration order: makesdna rejects
//! structs that would need padding, so a field's offset is the sum of the sizes before it.

/// Why a DNA1 block cannot be used; the file is then refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnaError {
    #[error("it ends early, in {0}")]
    Truncated(&'static str),
    #[error("the {0:?} marker is missing")]
    Marker(&'static str),
    #[error("{what} index {index} is out of range")]
    Index { what: &'static str, index: usize },
    #[error("struct {structure}: field {field:?} {problem}")]
    Field { structure: String, field: String, problem: &'static str },
}

/// One field of a struct, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub type_name: &'a str,
    /// The declared name with its decorations: `filepath[1024]`, `*next`, `(*func)()`.
    pub name: &'a str,
    pub offset: usize,
    pub size: usize,
}

#[derive(Debug, Clone)]
pub struct Sdna {
    names: Vec<String>,
    types: Vec<String>,
    type_lens: Vec<usize>,
    /// Per struct: its type index and its (type index, name index) fields.
    structs: Vec<(usize, Vec<(usize, usize)>)>,
    pointer_size: usize,
}

impl Sdna {
    /// Parses the data of a little-endian file's DNA1 block.
    pub fn parse(data: &[u8], pointer_size: usize) -> Result<Sdna, DnaError> {
        let mut r = Cursor { data, pos: 0 };
        r.marker("SDNA")?;
        r.marker("NAME")?;
        let names = r.strings("NAME")?;
        r.align4();
        r.marker("TYPE")?;
        let types = r.strings("TYPE")?;
        r.align4();
        r.marker("TLEN")?;
        let type_lens = (0..types.len()).map(|_| r.u16("TLEN").map(usize::from)).collect::<Result<Vec<_>, _>>()?;
        r.align4();
        r.marker("STRC")?;
        let count = r.count("STRC")?;
        let mut structs = Vec::new();
        for _ in 0..count {
            let type_index = check(r.u16("STRC")?, types.len(), "struct type")?;
            let field_count = r.u16("STRC")?;
            let mut fields = Vec::with_capacity(usize::from(field_count));
            for _ in 0..field_count {
                let field_type = check(r.u16("STRC")?, types.len(), "field type")?;
                let field_name = check(r.u16("STRC")?, names.len(), "field name")?;
                fields.push((field_type, field_name));
            }
            structs.push((type_index, fields));
        }
        Ok(Sdna { names, types, type_lens, structs, pointer_size })
    }

    pub fn struct_count(&self) -> usize {
        self.structs.len()
    }

    /// The name of struct `index` (the index block headers carry), e.g. `Image`.
    pub fn struct_name(&self, index: usize) -> Option<&str> {
        self.structs.get(index).map(|(t, _)| self.types[*t].as_str())
    }

    /// The size of one struct `index` in bytes, as the file declares it.
    pub fn struct_size(&self, index: usize) -> Option<usize> {
        self.structs.get(index).map(|(t, _)| self.type_lens[*t])
    }

    /// The fields of struct `index` with their offsets; every field lies within the struct's declared size.
    pub fn fields(&self, index: usize) -> Result<Vec<Field<'_>>, DnaError> {
        let (type_index, fields) = self.structs.get(index).ok_or(DnaError::Index { what: "struct", index })?;
        let struct_size = self.type_lens[*type_index];
        let mut offset = 0usize;
        let mut placed = Vec::with_capacity(fields.len());
        for &(field_type, field_name) in fields {
            let (type_name, name) = (self.types[field_type].as_str(), self.names[field_name].as_str());
            let problem = |problem| DnaError::Field {
                structure: self.types[*type_index].clone(),
                field: name.to_owned(),
                problem,
            };
            let element = if is_pointer(name) { self.pointer_size } else { self.type_lens[field_type] };
            let count = array_len(name).ok_or_else(|| problem("has malformed array dimensions"))?;
            let size = element.checked_mul(count).ok_or_else(|| problem("is too large"))?;
            let end = offset.checked_add(size).filter(|&end| end <= struct_size);
            let end = end.ok_or_else(|| problem("lies outside the struct's size"))?;
            placed.push(Field { type_name, name, offset, size });
            offset = end;
        }
        Ok(placed)
    }
}

/// Whether a declared field name is a pointer: `*next`, `**mat`, `(*func)()`.
pub fn is_pointer(name: &str) -> bool {
    name.starts_with('*') || name.starts_with("(*")
}

/// Whether a declared field name is an array: `filepath[1024]`.
pub fn is_array(name: &str) -> bool {
    name.contains('[')
}

/// The bare identifier of a declared field name: `filepath[1024]` → `filepath`, `*next` → `next`,
/// `(*func)()` → `func`.
pub fn base_name(name: &str) -> &str {
    let name = name.trim_start_matches(['(', '*']);
    let end = name.find(['[', ')', '(']).unwrap_or(name.len());
    &name[..end]
}

/// The number of elements of a declared name: the product of its `[N]` dimensions, 1 without any; `None` when the
/// dimensions are malformed or overflow.
pub fn array_len(name: &str) -> Option<usize> {
    let mut total = 1usize;
    let mut rest = name;
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']')?;
        let dim: usize = rest[open + 1..close].trim().parse().ok()?;
        total = total.checked_mul(dim)?;
        rest = &rest[close + 1..];
    }
    Some(total)
}

fn check(index: u16, len: usize, what: &'static str) -> Result<usize, DnaError> {
    let index = usize::from(index);
    if index < len {
        Ok(index)
    } else {
        Err(DnaError::Index { what, index })
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, len: usize, section: &'static str) -> Result<&[u8], DnaError> {
        let bytes = self.data.get(self.pos..).and_then(|rest| rest.get(..len)).ok_or(DnaError::Truncated(section))?;
        self.pos += len;
        Ok(bytes)
    }

    fn marker(&mut self, marker: &'static str) -> Result<(), DnaError> {
        match self.take(4, marker) {
            Ok(bytes) if bytes == marker.as_bytes() => Ok(()),
            _ => Err(DnaError::Marker(marker)),
        }
    }

    fn u16(&mut self, section: &'static str) -> Result<u16, DnaError> {
        let bytes = self.take(2, section)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    /// A non-negative i32 count.
    fn count(&mut self, section: &'static str) -> Result<usize, DnaError> {
        let bytes = self.take(4, section)?;
        let count = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        usize::try_from(count).map_err(|_| DnaError::Truncated(section))
    }

    /// A count, then that many NUL-terminated strings.
    fn strings(&mut self, section: &'static str) -> Result<Vec<String>, DnaError> {
        let count = self.count(section)?;
        let mut strings = Vec::new();
        for _ in 0..count {
            let rest = self.data.get(self.pos..).unwrap_or_default();
            let len = rest.iter().position(|&b| b == 0).ok_or(DnaError::Truncated(section))?;
            strings.push(String::from_utf8_lossy(&rest[..len]).into_owned());
            self.pos += len + 1;
        }
        Ok(strings)
    }

    fn align4(&mut self) {
        self.pos = self.pos.next_multiple_of(4);
    }
}

/// Builders for synthetic .blend files (8-byte pointers, little-endian) in tests.
#[cfg(test)]
pub(crate) mod fixture {
    use super::{array_len, is_pointer};

    /// Builds a DNA1 block's data, computing each struct's size from its fields.
    #[derive(Default)]
    pub struct DnaBuilder {
        names: Vec<String>,
        types: Vec<(String, u16)>,
        structs: Vec<(u16, Vec<(u16, u16)>)>,
    }

    impl DnaBuilder {
        pub fn new() -> Self {
            let mut dna = DnaBuilder::default();
            for (name, len) in [("char", 1), ("short", 2), ("int", 4), ("float", 4), ("void", 0)] {
                dna.types.push((name.to_owned(), len));
            }
            dna
        }

        fn type_index(&self, name: &str) -> u16 {
            self.types.iter().position(|(n, _)| n == name).expect("declare a struct before using it") as u16
        }

        /// Adds struct `name` with (type, declared name) fields; its struct index.
        pub fn add_struct(&mut self, name: &str, fields: &[(&str, &str)]) -> u32 {
            let mut size = 0;
            let mut pairs = Vec::new();
            for &(field_type, field_name) in fields {
                let t = self.type_index(field_type);
                let element = if is_pointer(field_name) { 8 } else { self.types[usize::from(t)].1 };
                size += element * array_len(field_name).unwrap() as u16;
                self.names.push(field_name.to_owned());
                pairs.push((t, (self.names.len() - 1) as u16));
            }
            self.types.push((name.to_owned(), size));
            self.structs.push(((self.types.len() - 1) as u16, pairs));
            (self.structs.len() - 1) as u32
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut out = b"SDNANAME".to_vec();
            out.extend_from_slice(&(self.names.len() as i32).to_le_bytes());
            for name in &self.names {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
            pad4(&mut out);
            out.extend_from_slice(b"TYPE");
            out.extend_from_slice(&(self.types.len() as i32).to_le_bytes());
            for (name, _) in &self.types {
                out.extend_from_slice(name.as_bytes());
                out.push(0);
            }
            pad4(&mut out);
            out.extend_from_slice(b"TLEN");
            for (_, len) in &self.types {
                out.extend_from_slice(&len.to_le_bytes());
            }
            pad4(&mut out);
            out.extend_from_slice(b"STRC");
            out.extend_from_slice(&(self.structs.len() as i32).to_le_bytes());
            for (t, fields) in &self.structs {
                out.extend_from_slice(&t.to_le_bytes());
                out.extend_from_slice(&(fields.len() as u16).to_le_bytes());
                for (ft, fname) in fields {
                    out.extend_from_slice(&ft.to_le_bytes());
                    out.extend_from_slice(&fname.to_le_bytes());
                }
            }
            out
        }
    }

    fn pad4(out: &mut Vec<u8>) {
        out.resize(out.len().next_multiple_of(4), 0);
    }

    /// A block: header (code, length, old pointer, SDNA index, count) then data.
    pub fn block(code: &[u8; 4], sdna: u32, count: u32, data: &[u8]) -> Vec<u8> {
        block_with_pointer(code, sdna, count, data, 8)
    }

    /// A block of a file with `pointer_size` (4 or 8) byte pointers.
    pub fn block_with_pointer(code: &[u8; 4], sdna: u32, count: u32, data: &[u8], pointer_size: usize) -> Vec<u8> {
        let mut out = code.to_vec();
        out.extend_from_slice(&(data.len() as i32).to_le_bytes());
        out.extend_from_slice(&0x7fff_1234_5678u64.to_le_bytes()[..pointer_size]);
        out.extend_from_slice(&sdna.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    /// A whole file: a `BLENDER-v304` header, the blocks, then ENDB.
    pub fn file(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"BLENDER-v304".to_vec();
        for b in blocks {
            out.extend_from_slice(b);
        }
        out.extend(block(b"ENDB", 0, 0, &[]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::DnaBuilder;
    use super::*;

    fn image_dna() -> Vec<u8> {
        let mut dna = DnaBuilder::new();
        dna.add_struct("Link", &[("void", "*next"), ("void", "*prev")]);
        dna.add_struct("ID", &[("void", "*next"), ("char", "name[66]"), ("short", "flag")]);
        dna.add_struct(
            "Image",
            &[("ID", "id"), ("char", "filepath[1024]"), ("float", "color[2][4]"), ("void", "(*fn)()")],
        );
        dna.bytes()
    }

    #[test]
    fn parses_structs_and_places_fields() {
        let sdna = Sdna::parse(&image_dna(), 8).unwrap();
        assert_eq!(sdna.struct_count(), 3);
        assert_eq!((sdna.struct_name(2), sdna.struct_size(2)), (Some("Image"), Some(76 + 1024 + 32 + 8)));
        assert_eq!(sdna.struct_size(1), Some(76));
        let fields = sdna.fields(2).unwrap();
        let placed: Vec<_> = fields.iter().map(|f| (f.type_name, f.name, f.offset, f.size)).collect();
        assert_eq!(
            placed,
            [
                ("ID", "id", 0, 76),
                ("char", "filepath[1024]", 76, 1024),
                ("float", "color[2][4]", 1100, 32),
                ("void", "(*fn)()", 1132, 8)
            ]
        );
        assert_eq!(sdna.struct_name(3), None);
        assert!(sdna.fields(3).is_err());
    }

    #[test]
    fn decorated_names() {
        assert_eq!(base_name("filepath[1024]"), "filepath");
        assert_eq!(base_name("**mat"), "mat");
        assert_eq!(base_name("(*func)()"), "func");
        assert_eq!(array_len("m[4][4]"), Some(16));
        assert_eq!(array_len("x"), Some(1));
        assert_eq!(array_len("x[a]"), None);
        assert_eq!(array_len("x[4"), None);
        assert_eq!(array_len("x[99999999999][99999999999]"), None);
        assert!(is_pointer("*next") && is_pointer("(*func)()") && !is_pointer("name[4]"));
    }

    #[test]
    fn every_truncation_and_bad_index_is_an_error() {
        let dna = image_dna();
        for len in 0..dna.len() {
            // Cutting inside STRC's last pair must fail; cutting only the padding cannot happen (STRC ends the block).
            assert!(Sdna::parse(&dna[..len], 8).is_err(), "cut at {len}");
        }
        let mut bad = dna.clone();
        let last = bad.len() - 1;
        bad[last] = 0x7f; // the last field's name index
        assert!(matches!(Sdna::parse(&bad, 8), Err(DnaError::Index { .. })));
        let mut bad = dna.clone();
        bad[0] = b'X';
        assert_eq!(Sdna::parse(&bad, 8).unwrap_err(), DnaError::Marker("SDNA"));
    }

    #[test]
    fn a_field_beyond_the_declared_size_is_an_error() {
        let mut dna = DnaBuilder::new();
        dna.add_struct("Small", &[("char", "name[8]")]);
        let mut bytes = dna.bytes();
        // The TLEN entry of "Small" (the 6th type) follows the 5 basic types' lengths.
        let tlen = bytes.windows(4).position(|w| w == b"TLEN").unwrap() + 4 + 5 * 2;
        bytes[tlen] = 4;
        let sdna = Sdna::parse(&bytes, 8).unwrap();
        assert!(sdna.fields(0).unwrap_err().to_string().contains("outside"));
    }
}
