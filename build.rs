//! Records the target triple, so a running blenderdist knows which build in an update manifest is its own.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=BLENDERDIST_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
