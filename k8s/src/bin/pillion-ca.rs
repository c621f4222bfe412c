//! `pillion-ca serve`: the cluster's CA for node agents, speaking Istio's
//! `IstioCertificateService` over TLS on :15012.
//!
//! The root and intermediate live in the Secret `$PILLION_CA_ROOT_SECRET`
//! (generated on first start, read afterwards, so certificates issued
//! before a restart stay valid); the root certificate is published in the
//! ConfigMap `$PILLION_CA_ROOT_CONFIGMAP` for agents to verify the CA and
//! each other. Callers are authenticated by TokenReview and may impersonate
//! only identities with a pod on their own node (`KubeAuthorizer`).
#![forbid(unsafe_code)]

use std::{collections::BTreeMap, process::ExitCode, sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use mesh::{
    ca::{CaServer, EmbeddedCa, embedded::CaPem, server as ca_server},
    clock::SystemClock,
    telemetry::{HttpServer, Readiness, ReadinessEndpoint},
};
use pillion_k8s::KubeAuthorizer;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

const FILES: [&str; 3] = ["root-cert.pem", "ca-cert.pem", "ca-key.pem"];

/// Reads the CA from its Secret, creating it on first start.
async fn load_or_create(secrets: &Api<Secret>, name: &str, trust_domain: &str) -> anyhow::Result<EmbeddedCa> {
    let text = |s: &Secret, key: &str| -> Option<String> {
        s.data.as_ref()?.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    for _ in 0..3 {
        if let Some(secret) = secrets.get_opt(name).await? {
            let pem = CaPem {
                root_cert: text(&secret, FILES[0])
                    .ok_or_else(|| anyhow::anyhow!("secret {name} has no {}", FILES[0]))?,
                intermediate_cert: text(&secret, FILES[1])
                    .ok_or_else(|| anyhow::anyhow!("secret {name} has no {}", FILES[1]))?,
                intermediate_key: text(&secret, FILES[2])
                    .ok_or_else(|| anyhow::anyhow!("secret {name} has no {}", FILES[2]))?,
            };
            tracing::info!(secret = name, "loaded the CA");
            return Ok(EmbeddedCa::from_pem(trust_domain, &pem, SystemClock::shared())?);
        }
        let (_, pem) = EmbeddedCa::generate(trust_domain, SystemClock::shared())?;
        let data: BTreeMap<String, ByteString> =
            [(FILES[0], &pem.root_cert), (FILES[1], &pem.intermediate_cert), (FILES[2], &pem.intermediate_key)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect();
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
            data: Some(data),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => tracing::info!(secret = name, "generated a new CA"),
            // Another instance won the race: read what it wrote.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the CA secret {name} could be neither read nor created")
}

/// Publishes the root certificate (creates or updates the ConfigMap).
async fn publish_root(maps: &Api<ConfigMap>, name: &str, root_pem: &str) -> anyhow::Result<()> {
    let data = BTreeMap::from([(FILES[0].to_owned(), root_pem.to_owned())]);
    match maps.get_opt(name).await? {
        Some(mut cm) => {
            cm.data = Some(data);
            maps.replace(name, &PostParams::default(), &cm).await?;
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
                data: Some(data),
                ..Default::default()
            };
            maps.create(&PostParams::default(), &cm).await?;
        }
    }
    Ok(())
}

async fn serve() -> anyhow::Result<()> {
    let namespace = env("PILLION_CA_NAMESPACE", "pillion-system");
    let trust_domain = env("PILLION_TRUST_DOMAIN", "cluster.local");
    let audience = env("PILLION_CA_AUDIENCE", "pillion-ca");
    // `namespace/serviceaccount` pairs allowed to impersonate (the node agents).
    let agents: Vec<(String, String)> = env("PILLION_CA_AGENTS", &format!("{namespace}/pillion-agent"))
        .split(',')
        .filter_map(|p| p.split_once('/').map(|(n, s)| (n.trim().to_owned(), s.trim().to_owned())))
        .collect();
    let readiness = Readiness::new(["ca"]);
    let ready_addr = env("PILLION_READINESS_ADDR", "[::]:15021").parse()?;
    let stop = tokio_util::sync::CancellationToken::new();
    HttpServer::bind(ready_addr, ReadinessEndpoint::new(readiness.clone())).await?.spawn(stop.clone());

    let client = Client::try_default().await?;
    let ca = load_or_create(
        &Api::namespaced(client.clone(), &namespace),
        &env("PILLION_CA_ROOT_SECRET", "pillion-ca-root"),
        &trust_domain,
    )
    .await?;
    publish_root(
        &Api::namespaced(client.clone(), &namespace),
        &env("PILLION_CA_ROOT_CONFIGMAP", "pillion-ca-root-cert"),
        &ca.roots_pem(),
    )
    .await?;
    let dns = format!("pillion-ca.{namespace}.svc");
    let (chain, key) = ca.serving_cert(&[dns.as_str(), "pillion-ca"], Duration::from_secs(365 * 24 * 3600))?;
    let listener = tokio::net::TcpListener::bind(env("PILLION_CA_LISTEN", "[::]:15012")).await?;
    let authorizer = KubeAuthorizer::new(client, &trust_domain, &audience, agents);
    readiness.set("ca", true);
    tracing::info!(addr = %listener.local_addr()?, %dns, "serving IstioCertificateService");
    let server = CaServer::new(Arc::new(ca), authorizer)
        .max_handshakes(env("PILLION_CA_MAX_HANDSHAKES", &ca_server::DEFAULT_MAX_HANDSHAKES.to_string()).parse()?)
        .rate_limit(
            env("PILLION_CA_RATE_BURST", &ca_server::DEFAULT_RATE_BURST.to_string()).parse()?,
            env("PILLION_CA_RATE_PER_SECOND", &ca_server::DEFAULT_RATE_PER_SECOND.to_string()).parse()?,
        );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve_tls(listener, chain, key, shutdown).await?;
    stop.cancel();
    Ok(())
}

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    match std::env::args().nth(1).as_deref() {
        Some("serve") => {}
        _ => {
            eprintln!(
                "usage: pillion-ca serve   (configured by PILLION_CA_* environment variables; see docs/kubernetes.md)"
            );
            return ExitCode::from(2);
        }
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(serve()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
