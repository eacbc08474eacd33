//! Shared pieces of blenderdist's fuzz targets: the checks every decoded value must pass, and the seed inputs
//! (`cargo run --example seeds` writes them under `corpus/<target>/`).
//!
//! Every target feeds untrusted bytes to the crate's own decoder, exactly as the crate calls it (same size limits),
//! then checks what the crate relies on afterwards. A panic, an abort, a leak of more than the run's memory limit or
//! a failed check below is a finding.

pub mod seeds;

use serde::{de::DeserializeOwned, Serialize};

/// Checks that a value decoded from the network encodes again, and that the encoding is stable: decoding it gives
/// a value that encodes to the same bytes (a field that decodes but cannot be sent back is a protocol bug).
/// Bytes are compared rather than values, so a NaN in a report does not count as a difference.
pub fn cbor_stable<T: Serialize + DeserializeOwned>(value: &T) {
    let once = cbor4ii::serde::to_vec(Vec::new(), value).expect("a decoded value must encode");
    let back: T = cbor4ii::serde::from_slice(&once).expect("an encoded value must decode");
    let twice = cbor4ii::serde::to_vec(Vec::new(), &back).expect("a decoded value must encode");
    assert_eq!(once, twice, "CBOR encoding is not stable");
}
