//! The waypoint's side of HBONE: which tunnels it accepts ([`WaypointHook`]) and what it
//! connects them to ([`WaypointDialer`]) — the HTTP proxy through an in-memory pipe when the
//! Service has routes or L7 policy, otherwise straight to an endpoint (L4 pass-through).

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use mesh::hbone::{Accepted, ConnectHook, ConnectRequest, Refusal, Tunnel, UpstreamDialer};
use mesh::model::WaypointRef;
use tokio::io::DuplexStream;
use tokio_util::either::Either;

use crate::proxy::{Downstream, Proxy, ServeLimits, serve_http};
use crate::upstream::HboneUpstream;

#[cfg(test)]
mod tests;

/// Bytes buffered between the tunnel and the HTTP server per direction.
const PIPE_BUFFER: usize = 256 * 1024;

/// Accepts tunnels only for Services that use this waypoint (never an open proxy).
pub struct WaypointHook {
    pub proxy: Arc<Proxy>,
}

#[async_trait]
impl ConnectHook for WaypointHook {
    async fn authorize(&self, request: &ConnectRequest) -> Result<Accepted, Refusal> {
        let snapshot = self.proxy.snapshot();
        let Some((service, _)) = self.proxy.resolve_service(&snapshot, &request.target) else {
            return Err(Refusal::BadTarget(format!("{} is not a service this waypoint knows", request.target)));
        };
        let me = &self.proxy.config().waypoint;
        let ours = WaypointRef { namespace: me.namespace.clone(), name: me.name.clone() };
        let uses_us = snapshot
            .model
            .service(&service.namespace, &service.name)
            .is_some_and(|s| s.waypoint.as_ref() == Some(&ours));
        if !uses_us {
            return Err(Refusal::BadTarget(format!("service {service} does not use waypoint {ours}")));
        }
        Ok(Accepted::default())
    }
}

pub struct WaypointDialer {
    pub proxy: Arc<Proxy>,
    pub upstream: HboneUpstream,
    pub limits: ServeLimits,
}

#[async_trait]
impl UpstreamDialer for WaypointDialer {
    type Stream = Either<DuplexStream, Tunnel>;

    async fn dial(&self, request: &ConnectRequest) -> io::Result<Self::Stream> {
        let snapshot = self.proxy.snapshot();
        let (service, port) = self
            .proxy
            .resolve_service(&snapshot, &request.target)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "service vanished"))?;
        if self.proxy.needs_l7(&snapshot, &service, port) {
            let (near, far) = tokio::io::duplex(PIPE_BUFFER);
            let down = Downstream {
                peer_identity: Some(request.peer_identity.clone()),
                peer_addr: request.peer_addr,
                target: request.target.clone(),
            };
            tokio::spawn(serve_http(self.proxy.clone(), far, down, self.limits));
            return Ok(Either::Left(near));
        }
        let ep = self
            .proxy
            .pick_endpoint(&snapshot, &service, port)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("service {service} has no endpoints")))?;
        let tunnel = self.upstream.tunnel(ep.addr, &ep.identity, request.traceparent.clone()).await?;
        Ok(Either::Right(tunnel))
    }
}
