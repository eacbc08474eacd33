//! The length-prefixed CBOR header at the start of every blob and update stream (`protocol::read_header`), read
//! from an in-memory stream: by the host (`BlobRequest`, `UpdateRequest`), by the volunteer (`BlobReply`, and the
//! owner's `Option<SignedManifest>` with `MAX_MANIFEST`). The first byte picks the type.
#![no_main]

use blenderdist::protocol::{
    read_header, read_header_max, write_header_max, BlobReply, BlobRequest, SignedManifest, UpdateRequest,
    MAX_BLOB_HEADER, MAX_MANIFEST,
};
use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

/// A decoded header must frame again and read back as itself.
fn reframes<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
    blenderdist_fuzz::cbor_stable(&value);
    let mut framed = Vec::new();
    block_on(write_header_max(&mut framed, &value, u32::MAX)).expect("a decoded header frames");
    let back: T = block_on(read_header_max(&mut framed.as_slice(), u32::MAX)).expect("a framed header reads");
    assert_eq!(back, value);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, mut stream)) = data.split_first() else { return };
    let before = stream.len();
    match kind % 4 {
        0 => {
            if let Ok(header) = block_on(read_header::<_, BlobRequest>(&mut stream)) {
                reframes(header);
            }
        }
        1 => {
            if let Ok(header) = block_on(read_header::<_, BlobReply>(&mut stream)) {
                reframes(header);
            }
        }
        2 => {
            if let Ok(header) = block_on(read_header::<_, UpdateRequest>(&mut stream)) {
                reframes(header);
            }
        }
        _ => {
            let max = MAX_MANIFEST as u32;
            if let Ok(header) = block_on(read_header_max::<_, Option<SignedManifest>>(&mut stream, max)) {
                reframes(header);
            }
        }
    }
    // The header reader never reads past its header: the blob's bytes that follow are left to the caller.
    let limit = if kind % 4 == 3 { MAX_MANIFEST } else { MAX_BLOB_HEADER as usize };
    assert!(before - stream.len() <= 4 + limit);
});
