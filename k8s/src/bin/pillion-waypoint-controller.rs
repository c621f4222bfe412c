//! `pillion-waypoint-controller`: runs `pillion_k8s::waypoints` (one replica per cluster;
//! see that module for why it is not in the node agents).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use pillion_k8s::waypoints::{self, Settings};

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let settings = Settings {
        image: std::env::var("WAYPOINT_IMAGE").unwrap_or_else(|_| "pillion/pillion-waypoint:0.1.0".into()),
        pull_policy: std::env::var("WAYPOINT_PULL_POLICY").unwrap_or_else(|_| "IfNotPresent".into()),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pillion-waypoint-controller: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "pillion-waypoint-controller: no Kubernetes client ({e}); run it in the cluster or set KUBECONFIG"
                );
                return ExitCode::FAILURE;
            }
        };
        println!("pillion-waypoint-controller: reconciling Gateways of class {}", waypoints::CLASS);
        waypoints::run(client, settings).await;
        ExitCode::SUCCESS
    })
}
