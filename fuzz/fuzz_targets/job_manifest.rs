//! A job manifest as a volunteer reads it from its cache (a blob the owner served): `from_cbor` with
//! `MAX_JOB_MANIFEST`, then `validate`. A manifest that validates must only name paths that stay inside the folder
//! they are joined under, which is what the volunteer's layout relies on.
#![no_main]

use std::path::{Component, Path};

use blenderdist::protocol::{from_cbor, project_path_components, JobManifest, MAX_JOB_MANIFEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = from_cbor::<JobManifest>(data, MAX_JOB_MANIFEST as usize) else { return };
    blenderdist_fuzz::cbor_stable(&manifest);
    for path in &manifest.missing {
        let _ = project_path_components(path);
    }
    if manifest.validate().is_err() {
        return;
    }
    let root = Path::new("/cache/projects/x/root");
    let mut seen = std::collections::HashSet::new();
    for file in manifest.all_files() {
        let parts = project_path_components(&file.path).expect("a validated manifest has usable paths");
        let joined = parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        assert!(joined.starts_with(root), "{:?} leaves the root", file.path);
        let rest = joined.strip_prefix(root).expect("under the root");
        assert!(rest.components().all(|c| matches!(c, Component::Normal(_))), "{:?}", file.path);
        assert!(seen.insert(joined), "{:?} listed twice", file.path);
    }
});
