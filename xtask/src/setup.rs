//! `cargo xtask setup`: install, idempotently, what builds and tests need.

use std::process::Command;

use anyhow::{Context, bail};

use crate::run::{output, run};

/// Debian packages: LLVM 22 for bpf-linker, iproute2 (`ip netns`, veth),
/// procps (`sysctl`), bpftool (pins, map memory), iperf3 (benchmark).
const APT_PACKAGES: [&str; 7] =
    ["build-essential", "llvm-22-dev", "libpolly-22-dev", "iproute2", "procps", "bpftool", "iperf3"];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn step(what: &str, status: &str) {
    println!("[setup] {what:<28} {status}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Everything present? Used by `test` to decide whether to run `setup`.
pub fn needed() -> bool {
    APT_PACKAGES.iter().any(|p| !apt_installed(p)) || !has_rust_src() || !has_bpf_linker()
}

fn has_rust_src() -> bool {
    output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn has_bpf_linker() -> bool {
    output(Command::new("bpf-linker").arg("--version")).is_some_and(|s| s.contains(BPF_LINKER_VERSION))
}

pub fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !apt_installed(p)).collect();
    for pkg in APT_PACKAGES {
        step(pkg, if missing.contains(&pkg) { "missing" } else { "already installed" });
    }
    if !missing.is_empty() {
        if !is_root() {
            bail!("apt packages {missing:?} are missing and installing them needs root: run `sudo cargo xtask setup`");
        }
        step("apt-get update", "running");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        step("apt-get install", &missing.join(" "));
        run(Command::new("apt-get").args(["install", "-y", "-q", "--no-install-recommends"]).args(&missing))?;
    }

    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).context(
        "rustup is needed (the eBPF crate builds with nightly); install it from your distribution or rustup.rs",
    )?;
    if toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("nightly toolchain", "already installed");
    } else {
        step("nightly toolchain", "installing");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    if has_rust_src() {
        step("nightly rust-src", "already installed");
    } else {
        step("nightly rust-src", "installing");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    if has_bpf_linker() {
        step("bpf-linker", &format!("{BPF_LINKER_VERSION} already installed"));
    } else {
        step("bpf-linker", &format!("building {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"));
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX))?;
        if !has_bpf_linker() {
            bail!("bpf-linker {BPF_LINKER_VERSION} installed but not on PATH; add ~/.cargo/bin to PATH");
        }
    }
    println!("[setup] done");
    Ok(())
}
