//! The length-prefixed CBOR header at the start of every blob, chunk and update stream (`protocol::read_header`),
//! read from an in-memory stream: by the host (`BlobRequest`, `UpdateRequest`), by the volunteer (`BlobReply`, and
//! the owner's `Option<SignedManifest>` with `MAX_MANIFEST`), by both on chunk streams (`ChunkRequest`,
//! `ChunkReply`, with `MAX_CHUNK_HEADER`; their bitfields and tickets are read as the receivers read them). The first
//! byte picks the type.
#![no_main]

use blenderdist::protocol::{
    read_header, read_header_max, write_header_max, Bitfield, BlobReply, BlobRequest, ChunkReply, ChunkRequest,
    SignedManifest, UpdateRequest, MAX_BLOB_HEADER, MAX_CHUNK_HEADER, MAX_MANIFEST,
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

/// A received bitfield, read for blobs of a few sizes, holds only chunks that exist.
fn bitfield(bytes: &[u8]) {
    for len in [0, 1, 7, 8, 9, bytes.len() * 8, bytes.len() * 8 + 3] {
        let bits = Bitfield::from_wire(bytes, len);
        assert!(bits.count() <= len && bits.ones().all(|i| i < len));
        assert_eq!(Bitfield::from_wire(&bits.to_wire(), len), bits);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, mut stream)) = data.split_first() else { return };
    let before = stream.len();
    match kind % 6 {
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
        4 => {
            if let Ok(header) = block_on(read_header_max::<_, ChunkRequest>(&mut stream, MAX_CHUNK_HEADER)) {
                match &header {
                    ChunkRequest::AnyOf { want, .. } => bitfield(want),
                    ChunkRequest::Have { ticket, .. } | ChunkRequest::Get { ticket, .. } => {
                        let _ = ticket.claimed_manifest();
                    }
                    ChunkRequest::Swarm { addrs, .. } => {
                        assert!(blenderdist::protocol::decode_addrs(addrs).len() <= 8);
                    }
                    ChunkRequest::List { .. } => {}
                }
                reframes(header);
            }
        }
        5 => {
            if let Ok(header) = block_on(read_header_max::<_, ChunkReply>(&mut stream, MAX_CHUNK_HEADER)) {
                if let ChunkReply::Have { bits } = &header {
                    bitfield(bits);
                }
                if let ChunkReply::Swarm { peers, .. } = &header {
                    peers.iter().for_each(|p| drop(p.decode()));
                }
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
    let limit = match kind % 6 {
        3 => MAX_MANIFEST,
        4 | 5 => MAX_CHUNK_HEADER as usize,
        _ => MAX_BLOB_HEADER as usize,
    };
    assert!(before - stream.len() <= 4 + limit);
});
