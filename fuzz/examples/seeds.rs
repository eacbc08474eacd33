//! Writes the seed inputs under `corpus/<target>/` (run from fuzz/: `cargo run --example seeds`), after checking
//! that the valid ones are read by the crate as intended. The files are kept in git; the corpora the fuzzer grows
//! next to them are not (see .gitignore).

use std::path::Path;

use blenderdist::protocol::{JobManifest, WorkRequest, WorkResponse};

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let scratch = std::env::temp_dir().join(format!("blenderdist-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    for (target, name, bytes) in blenderdist_fuzz::seeds::all() {
        if !name.starts_with("huge-") {
            check(target, &name, &bytes, &scratch);
        }
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), &bytes)?;
        println!("{target}/seed-{name}: {} bytes", bytes.len());
    }
    std::fs::remove_dir_all(&scratch)
}

/// Panics unless a valid seed reads as its target's decoder should read it.
fn check(target: &str, name: &str, bytes: &[u8], scratch: &Path) {
    let what = format!("{target}/{name}");
    match target {
        "work_request" => drop(cbor4ii::serde::from_slice::<WorkRequest>(bytes).expect(&what)),
        "work_response" => drop(cbor4ii::serde::from_slice::<WorkResponse>(bytes).expect(&what)),
        "job_manifest" => {
            let manifest: JobManifest = cbor4ii::serde::from_slice(bytes).expect(&what);
            manifest.validate().expect(&what);
        }
        "job_file" => {
            let text = std::str::from_utf8(bytes).expect(&what);
            blenderdist::host::jobfile::parse_job_text("seed", text, Path::new("/jobs")).expect(&what);
        }
        "blend_file" if name != "header5" => {
            let path = scratch.join(format!("{name}.blend"));
            std::fs::write(&path, bytes).expect(&what);
            let version = blenderdist::blendfile::read_version(&path).expect(&what);
            assert_eq!((version.major, version.minor), (3, 4), "{what}");
            if name != "header304_zst" {
                let paths = blenderdist::blendfile::absolute_paths(&path).expect(&what);
                assert_eq!(paths, ["/home/ann/tex/wood.png"], "{what}");
            }
        }
        "blend_sdna" => {
            let sdna = blenderdist::blendfile::sdna::Sdna::parse(&bytes[1..], usize::from(bytes[0])).expect(&what);
            for index in 0..sdna.struct_count() {
                sdna.fields(index).expect(&what);
            }
        }
        "driver_reply" => {
            let text = String::from_utf8_lossy(&bytes[1..]);
            let mark = blenderdist_fuzz::seeds::DRIVER_MARK;
            for json in text.lines().filter_map(|l| l.strip_prefix(mark)) {
                assert!(blenderdist::worker::parse_reply(json).is_some(), "{what}: {json}");
            }
        }
        _ => {}
    }
}
