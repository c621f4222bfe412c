//! `pillion-agent`: the node agent (`run`) and the CLI that talks to it.

use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use pillion_agent::{
    api::{Client, Request},
    config::{LogFormat, NodeArgs, RunArgs},
    kernel::{self, PinLayout},
    pod::PodSpec,
    run,
};

#[derive(Parser)]
#[command(name = "pillion-agent", version, about = "Pillion's per-node mesh agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load (or adopt) the kernel programs and serve pods.
    Run(Box<RunArgs>),
    /// Enrol a pod: capture its TCP traffic.
    Enrol {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The pod's network namespace file.
        #[arg(long)]
        netns: PathBuf,
        /// The pod's IP addresses (repeat for several).
        #[arg(long = "ip", required = true)]
        ips: Vec<IpAddr>,
        /// The pod's cgroup v2 directory (checked to be under the capture root).
        #[arg(long)]
        cgroup: Option<PathBuf>,
        /// The pod's uid, checked against the model's when it has one.
        #[arg(long)]
        uid: Option<String>,
    },
    /// Stop capturing a pod.
    Unenrol {
        #[command(flatten)]
        node: NodeArgs,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
    },
    /// List enrolled pods (JSON).
    List {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// The agent's status: pods, counters, kernel counters, link ids (JSON).
    Status {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Create an embedded CA (root + intermediate) in a directory, for
    /// `run --ca-dir`. Every node's agent must use the same one.
    CaInit {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Unenrol every pod and remove the node's pins and state. The agent must
    /// be stopped first; this is the uninstall path, not a restart.
    Reset {
        #[command(flatten)]
        node: NodeArgs,
    },
}

fn main() -> ExitCode {
    // One process-wide TLS provider, chosen before any client (kube, CA) is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::init_logging(args.log_format).and_then(|(logs, _flush)| {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let result = runtime.block_on(run::run(*args, logs));
            // Tasks still running may log while they stop: before the last flush.
            drop(runtime);
            result
        }),
        Command::CaInit { dir, trust_domain } => ca_init(&dir, &trust_domain),
        Command::Enrol { node, name, namespace, netns, ips, cgroup, uid } => {
            let pod = PodSpec { name, namespace, netns, ips, cgroup, uid };
            call(&node, &Request::Enrol { pod })
        }
        Command::Unenrol { node, name, namespace } => call(&node, &Request::Unenrol { namespace, name, netns: None }),
        Command::List { node } => call(&node, &Request::List {}),
        Command::Status { node } => call(&node, &Request::Status {}),
        Command::Reset { node } => reset(&node),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn call(node: &NodeArgs, request: &Request) -> anyhow::Result<()> {
    let value = Client::new(node.api_socket()).call(request)?;
    if !value.is_null() {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(())
}

fn reset(node: &NodeArgs) -> anyhow::Result<()> {
    if Client::new(node.api_socket()).status().is_ok() {
        anyhow::bail!("an agent is running for node {}; stop it first (SIGTERM), then reset", node.node);
    }
    let (_logs, _flush) = run::init_logging(LogFormat::Text)?;
    let pins = PinLayout::new(&node.bpffs, &node.node);
    let had_probes = std::fs::read_dir(pins.probes_dir()).is_ok_and(|mut d| d.next().is_some());
    kernel::unpin_all(&pins)?;
    if had_probes {
        // Run reset in the node's (host) netns, where the agent put them.
        pillion_agent::probe::remove_sources();
    }
    match std::fs::remove_dir_all(node.state_dir()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    println!(
        "node {}: pods unenrolled, pins under {} and state in {} removed",
        node.node,
        pins.root().display(),
        node.state_dir().display()
    );
    Ok(())
}

fn ca_init(dir: &std::path::Path, trust_domain: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let files = ["root-cert.pem", "ca-cert.pem", "ca-key.pem"];
    if files.iter().any(|f| dir.join(f).exists()) {
        anyhow::bail!("{} already holds a CA; remove it first to make a new one", dir.display());
    }
    let (_, pem) = mesh::ca::EmbeddedCa::generate(trust_domain, mesh::clock::SystemClock::shared())?;
    std::fs::create_dir_all(dir)?;
    for (name, text, mode) in [
        (files[0], &pem.root_cert, 0o644),
        (files[1], &pem.intermediate_cert, 0o644),
        (files[2], &pem.intermediate_key, 0o600),
    ] {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(dir.join(name))?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
    }
    println!("CA for trust domain {trust_domain} written to {}", dir.display());
    Ok(())
}
