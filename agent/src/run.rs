//! `pillion-agent run`: wire everything together and serve until SIGTERM.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use mesh::{
    ca::WithoutCa,
    certs::{CertManager, CertManagerConfig, CertMetrics},
    config::{ConfigMetrics, ConfigWatcher, WatchOptions},
    model::Model,
    telemetry::{
        AdminEndpoint, AgentMetrics, BatchedWriter, CertSummary, ConnectionMetrics, FlushGuard, HttpServer, LogControl,
        MetricsEndpoint, Readiness, ReadinessEndpoint,
    },
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::prelude::*;

use crate::{
    api::{self, ApiState},
    config::{LogFormat, RunArgs},
    drain,
    enrol::Registry,
    kernel::{Kernel, PinLayout, mounts},
    meshctx::MeshCtx,
    netns::Netns,
    probe::Probes,
    state::StateDir,
    stats::Counters,
};

/// Sets up logging with a runtime-adjustable filter (`PILLION_LOG`, default
/// `info`); the returned control backs the admin `/logging` endpoint. Lines
/// reach stdout in batches (`mesh::telemetry::batched`); keep the guard until
/// the end so the last ones are written.
pub fn init_logging(format: LogFormat) -> anyhow::Result<(LogControl, FlushGuard)> {
    let (filter, control) = LogControl::from_env("PILLION_LOG", "info")?;
    let (writer, guard) = BatchedWriter::stdout()?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let subscriber = tracing_subscriber::registry().with(filter);
    // `init` also routes the `log` crate (aya-log's output) into tracing.
    match format {
        LogFormat::Text => subscriber.with(fmt).init(),
        LogFormat::Json => subscriber.with(fmt.json().flatten_event(true).with_current_span(false)).init(),
    }
    Ok((control, guard))
}

/// The telemetry servers' listeners, dual-stack and shareable during a handoff.
fn reuse_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(crate::listeners::reuseport_listener(addr, false)?)
}

pub async fn run(args: RunArgs, logs: LogControl) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("pillion-agent run needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON): run it as root");
    }
    if let Some(dir) = &args.agent_cgroup {
        mounts::join_cgroup(dir).with_context(|| format!("joining the agent cgroup {}", dir.display()))?;
    }
    // Pin down the agent's own netns before any thread enters a pod's.
    let own = Netns::own();
    tracing::info!(node = %args.node.node, pid = std::process::id(), netns_inode = own.inode(), cgroup_root = %args.cgroup_root.display(), "starting pillion-agent");
    let stop = CancellationToken::new();
    let readiness = Readiness::new(["kernel", "config", "pods"]);
    let mut registry_metrics = prometheus_client::registry::Registry::default();
    let tcp = ConnectionMetrics::register(&mut registry_metrics);
    let agent_metrics = AgentMetrics::register(&mut registry_metrics);
    let cert_metrics = CertMetrics::register(&mut registry_metrics);
    let config_metrics = ConfigMetrics::register(&mut registry_metrics);
    let limit_metrics = mesh::limits::LimitMetrics::register(&mut registry_metrics);
    HttpServer::from_listener(reuse_listener(args.readiness_addr)?, ReadinessEndpoint::new(readiness.clone()))?
        .spawn(stop.clone());

    raise_nofile();
    let pins = PinLayout::new(&args.node.bpffs, args.pins_node.as_deref().unwrap_or(&args.node.node));
    let kernel = Arc::new(Kernel::open(pins, &args.cgroup_root)?);
    tracing::info!(origin = ?kernel.origin(), pins = %kernel.pins().root().display(), "kernel programs ready");
    let cgroup_id = mounts::own_cgroup_id().context("finding the agent's cgroup id")?;
    kernel.exempt_cgroup(cgroup_id)?;
    spawn_kernel_logs(kernel.log_program_id());
    // A per-pod agent shares the node agent's programs: probes are the node agent's.
    let probes = (!args.probe_cgroups.is_empty() && args.pins_node.is_none())
        .then(|| Arc::new(Probes::new(kernel.clone(), &args.probe_cgroups, &args.cgroup_root)));
    if let Some(probes) = &probes {
        probes.reconcile();
        probes.clone().spawn(stop.clone());
    }
    readiness.set("kernel", true);

    // The model: from Kubernetes, the config file (watched), or empty.
    let mut kube_source = None;
    let (_watcher, model_rx) = match &args.config {
        _ if args.kubernetes => {
            let source = crate::kubernetes::start(&args.node.node).await?;
            let rx = source.subscribe();
            kube_source = Some(source);
            (None, rx)
        }
        Some(path) => {
            let watcher = ConfigWatcher::start(path, WatchOptions::default(), config_metrics)?;
            let rx = watcher.subscribe();
            (Some(watcher), rx)
        }
        None => (None, watch::channel(Arc::new(Model::default())).1),
    };
    readiness.set("config", true);
    let trust_domain = model_rx.borrow().mesh().trust_domain.clone();
    let source = args.ca.source(&trust_domain, true, WithoutCa::Throwaway)?;
    let certs = CertManager::new(source, CertManagerConfig::default(), cert_metrics);
    // A per-pod agent serves workloads of the node whose programs it shares.
    let mesh_node = args.pins_node.clone().unwrap_or_else(|| args.node.node.clone());
    let unknown_pods = args.unknown_pods();
    if !unknown_pods.refuses() {
        tracing::warn!(
            "no --config and no --kubernetes: no mesh model, enrolled pods are captured and relayed in plaintext"
        );
    }
    let mesh = Arc::new(MeshCtx::new(mesh_node, model_rx, certs.clone(), tcp, unknown_pods));
    spawn_reevaluation(mesh.clone(), agent_metrics.clone());

    let (trigger, drain) = drain::new();
    let counters = Arc::new(Counters::default());
    let state = StateDir::new(&args.node.state_dir())
        .with_context(|| format!("creating the state directory {}", args.node.state_dir().display()))?;
    let registry = Arc::new(
        Registry::new(
            kernel.clone(),
            mesh.clone(),
            state,
            &args.cgroup_root,
            &args.host_netns,
            counters.clone(),
            drain.clone(),
            args.connect_timeout(),
            !args.no_hbone_pooling,
            &args.proc_root,
        )
        .with_limits(crate::proxy::limits::Limits { args: args.limits.clone(), metrics: limit_metrics }),
    );
    let adopted = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || registry.adopt_persisted()).await??
    };
    agent_metrics.enrolled_pods.set(adopted as i64);
    if let Some(source) = &kube_source {
        crate::kubernetes::spawn_reconciler(
            source.local_pods(),
            source.subscribe(),
            registry.clone(),
            mesh.node.clone(),
            args.proc_root.clone(),
        );
    }
    readiness.set("pods", true);

    let metrics = Arc::new(registry_metrics);
    HttpServer::from_listener(reuse_listener(args.metrics_addr)?, MetricsEndpoint::new(metrics))?.spawn(stop.clone());
    let dump_mesh = mesh.clone();
    let dump = move || {
        let certificates: Vec<CertSummary> = dump_mesh
            .certs
            .identities()
            .iter()
            .filter_map(|id| dump_mesh.certs.current(id))
            .flat_map(|c| CertSummary::chain_of(&c))
            .collect();
        serde_json::json!({ "node": dump_mesh.node, "model": &*dump_mesh.snapshot(), "certificates": certificates })
    };
    HttpServer::from_listener(reuse_listener(args.admin_addr)?, AdminEndpoint::new(dump, logs))?.spawn(stop.clone());

    let api_path = args.node.api_socket();
    let listener = api::bind(&api_path).with_context(|| format!("binding the API socket {}", api_path.display()))?;
    let api_state = Arc::new(ApiState {
        node: args.node.node.clone(),
        registry: registry.clone(),
        kernel: kernel.clone(),
        counters,
    });
    tokio::spawn(api::serve(listener, api_state, drain.clone()));
    tracing::info!(api = %api_path.display(), adopted, "ready");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    readiness.set("pods", false);
    if kube_source.is_some() && crate::kubernetes::uninstalling().await {
        // Uninstall: leave no pod unable to open connections.
        let pods = registry.unenrol_all();
        crate::kernel::unpin_all(kernel.pins())?;
        if probes.is_some() {
            crate::probe::remove_sources();
        }
        let _ = std::fs::remove_dir_all(args.node.state_dir());
        tracing::info!(pods, "Pillion is being uninstalled: pods unenrolled, programs unpinned");
    }
    // Otherwise programs stay pinned: capture outlives the agent (fail closed).
    let left = trigger.drain(args.drain()).await;
    if left > 0 {
        tracing::warn!(connections = left, "drain deadline reached; closing the rest");
    }
    stop.cancel();
    tracing::info!("stopped");
    Ok(())
}

/// Every proxied connection holds two sockets: take the hard limit.
fn raise_nofile() {
    if let Ok((_, hard)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// On every new model: re-judge live connections, closing what is now denied.
fn spawn_reevaluation(mesh: Arc<MeshCtx>, metrics: AgentMetrics) {
    let mut rx = mesh.model.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let model = rx.borrow_and_update().clone();
            metrics.config_reloaded(mesh::telemetry::ReloadResult::Success);
            let closed = mesh.reevaluate(&model);
            // Certificates are held only for workloads still on this node.
            let local: Vec<_> = model.workloads_on_node(&mesh.node).map(|w| w.identity().clone()).collect();
            for id in mesh.certs.identities() {
                if !local.contains(&id) {
                    mesh.certs.forget(&id);
                }
            }
            tracing::info!(version = model.version(), closed, live = mesh.tracker.len(), "configuration applied");
        }
    });
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
