//! `cargo xtask`: Pillion's developer and CI commands.

mod abuse;
mod bench;
mod demo;
mod images;
mod kind;
mod manifests;
mod run;
mod setup;
mod test;

#[path = "../../ebpf/build_ebpf.rs"]
#[allow(dead_code, reason = "shared with agent/build.rs, which also uses inputs()")]
mod build_ebpf;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Pillion's build, test and demo commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and tests need (apt packages, nightly rust-src,
    /// bpf-linker). Idempotent; skips what is present.
    Setup,
    /// Build the eBPF object (the agent's build script does the same).
    BuildEbpf,
    /// Run every test tier that can run here; the last line is the summary.
    Test,
    /// Build, create a small topology, capture traffic, show it, clean up.
    Demo,
    /// Measure Pillion against direct traffic and per-pod sidecars
    /// (shared/bench.md): JSON, Markdown report and SVG chart.
    Bench {
        /// About a minute; checks the harness produces every figure.
        #[arg(long)]
        quick: bool,
        /// Output directory (default target/bench).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the number of rounds (the protocol asks for at least 5).
        #[arg(long)]
        rounds: Option<usize>,
        /// Only these scenarios, by letter (e.g. `AW`); direct (A) is always
        /// added since ratios need it. Skips the memory runs. For A/B work;
        /// committed reports run everything.
        #[arg(long)]
        only: Option<String>,
    },
    /// The hostile-peer load run: HTTP/2 and HBONE abuse against the agents
    /// and the waypoint while another tenant keeps working; JSON and Markdown.
    Abuse {
        /// Scaled-down counts, under a minute of attacks; checks every figure
        /// is produced and the victim keeps ≥ 99% success.
        #[arg(long)]
        quick: bool,
        /// Output directory (default target/abuse).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only the cases whose name contains one of these (repeatable),
        /// in the usual order: for chasing one finding.
        #[arg(long)]
        only: Vec<String>,
    },
    /// The kind cluster e2e tier (needs Docker and kind; not part of `test`).
    E2eKind,
    /// Build the container images from deploy/images/ (needs Docker; exits 3 without it).
    Images {
        #[arg(long, default_value = "pillion")]
        registry: String,
        #[arg(long, default_value = "0.1.0")]
        tag: String,
    },
    /// Generate deploy/ from xtask/src/manifests/ (--check only compares).
    Manifests {
        #[arg(long)]
        check: bool,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Where cargo puts the workspace's builds: `target/` unless `CARGO_TARGET_DIR` or a
/// cargo config says otherwise, as `cargo metadata` reports it.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    target_dir_of(&mut std::process::Command::new(env!("CARGO")))
}

fn target_dir_of(cargo: &mut std::process::Command) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let cmd = cargo.current_dir(workspace()).args(["metadata", "--format-version", "1", "--no-deps"]);
    let out = run::output(cmd).context("`cargo metadata` failed: is the workspace's Cargo.toml readable?")?;
    let meta: serde_json::Value = serde_json::from_str(&out).context("`cargo metadata` printed no JSON")?;
    let dir = meta["target_directory"].as_str().context("`cargo metadata` reported no target_directory")?;
    Ok(PathBuf::from(dir))
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::BuildEbpf => build_ebpf::build(&workspace())
            .map(|object| println!("eBPF object: {}", object.display()))
            .map_err(anyhow::Error::msg),
        Command::Test => return test::test(),
        Command::Demo => demo::demo(),
        Command::Bench { quick, out, rounds, only } => bench::bench(quick, out, rounds, only.as_deref()),
        Command::Abuse { quick, out, only } => abuse::abuse(quick, out, &only),
        Command::E2eKind => return kind::e2e_kind(),
        Command::Images { registry, tag } => return images::images(&registry, &tag),
        Command::Manifests { check } => manifests::run(&workspace(), check),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod target_dir_tests {
    #[test]
    fn the_target_directory_follows_cargo_target_dir() {
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo.env("CARGO_TARGET_DIR", "/tmp/pillion-elsewhere");
        assert_eq!(super::target_dir_of(&mut cargo).unwrap(), std::path::Path::new("/tmp/pillion-elsewhere"));
        let mut cargo = std::process::Command::new(env!("CARGO"));
        cargo.env_remove("CARGO_TARGET_DIR");
        assert_eq!(super::target_dir_of(&mut cargo).unwrap(), super::workspace().join("target"));
    }
}
