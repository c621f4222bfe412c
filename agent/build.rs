//! Builds the kernel programs and copies the object into OUT_DIR, where
//! `include_bytes_aligned!` picks it up. Cargo reruns this whenever a kernel
//! source changes, so the agent never embeds a stale object.

#[path = "../ebpf/build_ebpf.rs"]
mod build_ebpf;

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let workspace = manifest.parent().expect("agent/ lives in the workspace").to_path_buf();
    for input in build_ebpf::inputs(&workspace) {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    let object = match build_ebpf::build(&workspace) {
        Ok(object) => object,
        Err(message) => panic!("{message}"),
    };
    std::fs::copy(&object, out.join(build_ebpf::OBJECT_NAME)).expect("copy the kernel object into OUT_DIR");
}
