//! A work response as a volunteer or `blenderdist status` receives it from a host: libp2p's CBOR codec reads at most
//! `MAX_STATUS_MESSAGE` bytes. A status report is then printed by `status` as tables and as JSON.
#![no_main]

use blenderdist::protocol::{WorkResponse, MAX_STATUS_MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_STATUS_MESSAGE {
        return;
    }
    let Ok(response) = cbor4ii::serde::from_slice::<WorkResponse>(data) else { return };
    blenderdist_fuzz::cbor_stable(&response);
    if let WorkResponse::Status(report) = &response {
        let _ = blenderdist::status::to_text(report);
        let _ = blenderdist::status::to_json(report);
    }
});
