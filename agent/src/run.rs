//! `pillion-agent run`: wire everything together and serve until SIGTERM.

use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    api::{self, ApiState},
    config::{LogFormat, RunArgs},
    drain,
    enrol::Registry,
    kernel::{Kernel, PinLayout, mounts},
    netns::Netns,
    state::StateDir,
    stats::Counters,
};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PILLION_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    // `init` also routes the `log` crate (aya-log's output) into tracing.
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("pillion-agent run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON): run it as root");
    }
    if let Some(dir) = &args.agent_cgroup {
        mounts::join_cgroup(dir).with_context(|| format!("joining the agent cgroup {}", dir.display()))?;
    }
    // Pin down the agent's own netns before any thread enters a pod's.
    let own = Netns::own();
    tracing::info!(node = %args.node.node, pid = std::process::id(), netns_inode = own.inode(), cgroup_root = %args.cgroup_root.display(), "starting pillion-agent");

    let pins = PinLayout::new(&args.node.bpffs, &args.node.node);
    let kernel = Arc::new(Kernel::open(pins, &args.cgroup_root)?);
    tracing::info!(origin = ?kernel.origin(), pins = %kernel.pins().root().display(), "kernel programs ready");
    let cgroup_id = mounts::own_cgroup_id().context("finding the agent's cgroup id")?;
    kernel.exempt_cgroup(cgroup_id)?;
    spawn_kernel_logs(kernel.log_program_id());

    let (trigger, drain) = drain::new();
    let counters = Arc::new(Counters::default());
    let state = StateDir::new(&args.node.state_dir())
        .with_context(|| format!("creating the state directory {}", args.node.state_dir().display()))?;
    let registry = Arc::new(Registry::new(
        kernel.clone(),
        state,
        &args.cgroup_root,
        &args.host_netns,
        counters.clone(),
        drain.clone(),
        args.connect_timeout(),
    ));
    let adopted = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.adopt_persisted()).await??
    };
    let api_path = args.node.api_socket();
    let listener = api::bind(&api_path).with_context(|| format!("binding the API socket {}", api_path.display()))?;
    let api_state = Arc::new(ApiState { node: args.node.node.clone(), registry, kernel, counters });
    tokio::spawn(api::serve(listener, api_state, drain.clone()));
    tracing::info!(api = %api_path.display(), adopted, "ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    // Programs stay pinned: capture outlives the agent (fail closed).
    let left = trigger.drain(args.drain()).await;
    if left > 0 {
        tracing::warn!(connections = left, "drain deadline reached; closing the rest");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Bridges the kernel programs' aya-log output into tracing.
fn spawn_kernel_logs(program_id: u32) {
    match aya_log::EbpfLogger::init_from_id(program_id) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the logger owns its fd for as long as the AsyncFd lives.
                let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
                else {
                    return;
                };
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "kernel program logs unavailable"),
    }
}
