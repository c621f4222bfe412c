//! `pillion-cni`: the chained CNI plugin. All logic is in `pillion_k8s::cni`; this adds
//! the process edges (environment, stdin, stdout, exit status) and the Kubernetes lookup
//! of a pod's enrolment labels.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use pillion_k8s::cni::{CniError, Decide, Invocation, NetConf};

/// Bounded: a runtime waiting on a hung plugin holds up the whole pod.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the pod's and its namespace's labels from the API server.
struct KubeLookup;

impl Decide for KubeLookup {
    fn captured(&self, conf: &NetConf, namespace: &str, name: &str) -> Result<bool, CniError> {
        let failed = |e: String| {
            CniError::new(
                CniError::LOOKUP_FAILED,
                format!("cannot read the labels of pod {namespace}/{name}"),
                format!("{e}; the plugin needs them to decide whether the pod is in the mesh"),
            )
        };
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| failed(e.to_string()))?;
        rt.block_on(async {
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(conf, namespace, name)).await {
                Ok(r) => r.map_err(failed),
                Err(_) => Err(failed(format!("the API server did not answer within {LOOKUP_TIMEOUT:?}"))),
            }
        })
    }
}

async fn lookup(conf: &NetConf, namespace: &str, name: &str) -> Result<bool, String> {
    let config = match &conf.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())?
        }
        None => Config::infer().await.map_err(|e| e.to_string())?,
    };
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    // Metadata only: labels are all we need.
    let pod = Api::<Pod>::namespaced(client.clone(), namespace).get_metadata(name).await.map_err(|e| e.to_string())?;
    let ns = Api::<Namespace>::all(client).get_metadata(namespace).await.map_err(|e| e.to_string())?;
    let empty = Default::default();
    Ok(pillion_k8s::captured(pod.metadata.labels.as_ref().unwrap_or(&empty), ns.metadata.labels.as_ref()))
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let invocation = Invocation::from_env(|k| std::env::var(k).ok());
    let outcome = match (read, invocation) {
        (Ok(_), Ok(inv)) => pillion_k8s::cni::run(&inv, &stdin, &KubeLookup),
        (Err(e), _) => fail(CniError::new(CniError::IO_FAILURE, "cannot read stdin", e.to_string())),
        (_, Err(e)) => fail(e),
    };
    for line in &outcome.log {
        eprintln!("{line}");
    }
    if let Some(out) = &outcome.stdout {
        println!("{out}");
    }
    if outcome.success { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn fail(e: CniError) -> pillion_k8s::cni::Outcome {
    pillion_k8s::cni::Outcome {
        stdout: Some(e.to_json("1.1.0")),
        success: false,
        log: vec![format!("pillion-cni: {e}")],
    }
}
