//! `pillion-waypoint`: the per-namespace L7 proxy. See waypoint/README.md.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(name = "pillion-waypoint", version, about = "Pillion's per-namespace L7 proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve HBONE as a waypoint.
    Run(Box<pillion_waypoint::run::RunArgs>),
    /// Check a config file's model and L7 objects, then exit.
    Check {
        #[arg(long)]
        config: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let (filter, _logs) = mesh::telemetry::LogControl::from_env("PILLION_LOG", "info")?;
    // Colours only on a terminal: log files and collectors get plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    // One access line per request: batched off the request path (mesh::telemetry::batched).
    let (writer, _flush) = mesh::telemetry::BatchedWriter::stdout()?;
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer))
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let runtime = runtime(args.worker_threads)?;
            let result = runtime.block_on(pillion_waypoint::run::run(*args));
            // Tasks still running may log while they stop: before the last flush.
            drop(runtime);
            result
        }
        Command::Check { config } => {
            let s = pillion_waypoint::run::load(&config, 1)?;
            println!(
                "ok: {} services, {} L7 authorization policies, {} backend policies",
                s.model.services().len(),
                s.l7.authz.len(),
                s.l7.backend_policies.len()
            );
            Ok(())
        }
    }
}

/// `1` (the default): every task on one thread; `0`: a worker per core (tokio's default);
/// more: that many workers.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}
