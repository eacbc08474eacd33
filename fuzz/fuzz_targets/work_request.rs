//! A work request as the host receives it from any connected peer: libp2p's CBOR codec reads at most
//! `MAX_WORK_MESSAGE` bytes and decodes them with `cbor4ii::serde::from_slice`. Then the checks the host applies to
//! what a peer chose: output names, display names, error texts.
#![no_main]

use blenderdist::protocol::{
    check_output_name, display_name, truncate_utf8, WorkRequest, MAX_ERROR_TEXT, MAX_NAME, MAX_WORK_MESSAGE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_WORK_MESSAGE {
        return;
    }
    let Ok(request) = cbor4ii::serde::from_slice::<WorkRequest>(data) else { return };
    blenderdist_fuzz::cbor_stable(&request);
    match request {
        WorkRequest::Claim { caps: Some(caps), .. } => {
            for text in [caps.name.as_deref().unwrap_or_default(), &caps.blender, &caps.device] {
                if let Some(name) = display_name(text) {
                    assert!(!name.is_empty() && name.len() <= MAX_NAME);
                    assert!(!name.chars().any(|c| c.is_control() || matches!(c, '<' | '>' | '"')), "{name:?}");
                }
            }
        }
        WorkRequest::Rendered { outputs, ext, .. } => {
            let _ = blenderdist::protocol::is_frame_extension(&ext.to_ascii_lowercase());
            for output in outputs {
                if check_output_name(&output.name).is_ok() {
                    // What the host relies on when it joins the name under the job's render folder.
                    let path = std::path::Path::new(&output.name);
                    assert!(path.is_relative(), "{:?}", output.name);
                    assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                }
            }
        }
        WorkRequest::Failed { mut error, .. } => {
            truncate_utf8(&mut error, MAX_ERROR_TEXT);
            assert!(error.len() <= MAX_ERROR_TEXT);
        }
        _ => {}
    }
});
