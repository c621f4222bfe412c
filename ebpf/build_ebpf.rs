// Builds Pillion's kernel object. Shared by `agent/build.rs` and
// `cargo xtask build-ebpf` (both include this file with `#[path]`), so the
// object the agent embeds is built exactly as the xtask builds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Name of the object file the kernel crate produces.
pub const OBJECT_NAME: &str = "pillion";

/// Builds the kernel programs with nightly + build-std into
/// `<workspace>/target/ebpf` and returns the object's path. The nested cargo
/// gets a clean environment: the outer build's RUSTFLAGS, RUSTUP_TOOLCHAIN and
/// CARGO_* variables would otherwise select the wrong toolchain or target.
pub fn build(workspace: &Path) -> Result<PathBuf, String> {
    let crate_dir = workspace.join("ebpf/pillion-ebpf");
    let target_dir = workspace.join("target/ebpf");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--quiet"])
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&crate_dir)
        .env_clear();
    for var in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "TERM", "TMPDIR"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    let status =
        cmd.status().map_err(|e| format!("cannot run rustup ({e}); install rustup and run `cargo xtask setup`"))?;
    if !status.success() {
        return Err(format!(
            "building the kernel programs failed ({status}); `cargo xtask setup` installs \
             the nightly rust-src component and bpf-linker they need"
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release").join(OBJECT_NAME);
    if !object.is_file() {
        return Err(format!("the kernel build produced no object at {}", object.display()));
    }
    Ok(object)
}

/// Paths whose change must rebuild the object.
pub fn inputs(workspace: &Path) -> Vec<PathBuf> {
    [
        "ebpf/pillion-ebpf/src",
        "ebpf/pillion-ebpf/Cargo.toml",
        "ebpf/pillion-ebpf/Cargo.lock",
        "ebpf/pillion-ebpf/.cargo/config.toml",
        "ebpf/pillion-ebpf/rust-toolchain.toml",
        "ebpf/pillion-common/src",
        "ebpf/pillion-common/Cargo.toml",
    ]
    .iter()
    .map(|p| workspace.join(p))
    .collect()
}
