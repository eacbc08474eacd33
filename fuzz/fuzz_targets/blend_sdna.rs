//! The SDNA of a .blend file (its `DNA1` block), which says where every struct's fields lie: `Sdna::parse`, then
//! every struct's name, size and placed fields. Also the header parser on the same bytes. The first byte is the
//! pointer size (4, or 8 for any other value).
#![no_main]

use std::path::Path;

use blenderdist::blendfile::{header, sdna::Sdna};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pointer, rest)) = data.split_first() else { return };
    let _ = header::parse(rest, Path::new("fuzz.blend"));
    let pointer_size = if pointer == 4 { 4 } else { 8 };
    let Ok(sdna) = Sdna::parse(rest, pointer_size) else { return };
    for index in 0..sdna.struct_count() {
        let name = sdna.struct_name(index).expect("every struct has a name");
        let size = sdna.struct_size(index).expect("every struct has a size");
        let Ok(fields) = sdna.fields(index) else { continue };
        for field in fields {
            // What the .blend rewriter relies on: every field lies within its struct.
            assert!(field.offset + field.size <= size, "{name}.{}", field.name);
        }
    }
});
