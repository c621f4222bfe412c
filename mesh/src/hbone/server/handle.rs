//! One CONNECT stream: validate, authorize, dial, answer, relay.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};

use super::{ConnectHook, ConnectRequest, HboneServer, ServerCertResolver};
use crate::hbone::relay::relay;
use crate::hbone::{UpstreamDialer, headers};
use crate::parse::{Authority, Identity};

/// Per-connection facts shared by its streams.
pub(super) struct Base {
    pub peer_identity: Identity,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub local_identity: Identity,
}

impl<R: ServerCertResolver, H: ConnectHook, D: UpstreamDialer> HboneServer<R, H, D> {
    pub(super) async fn handle(
        self: Arc<Self>,
        base: Arc<Base>,
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        if request.method() != Method::CONNECT {
            tracing::debug!(method = %request.method(), "refusing non-CONNECT HBONE request");
            return refuse(&mut respond, StatusCode::BAD_REQUEST);
        }
        let target = match request
            .uri()
            .authority()
            .ok_or(())
            .and_then(|a| Authority::parse(a.as_str()).map_err(|e| tracing::debug!(error = %e)))
        {
            Ok(t) => t,
            Err(()) => return refuse(&mut respond, StatusCode::BAD_REQUEST),
        };
        // The pod's cap on proxied connections, shared with its plaintext listeners.
        let _slot = match &self.tunnels {
            Some(limit) => match limit.try_acquire() {
                Some(permit) => Some(permit),
                None => return refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE),
            },
            None => None,
        };
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let connect = ConnectRequest {
            peer_identity: base.peer_identity.clone(),
            peer_addr: base.peer_addr,
            local_addr: base.local_addr,
            local_identity: base.local_identity.clone(),
            target,
            traceparent: header(headers::TRACEPARENT),
            baggage: header(headers::BAGGAGE),
            forwarded: header(headers::FORWARDED),
        };
        let accepted = match self.hook.authorize(&connect).await {
            Ok(a) => a,
            Err(refusal) => {
                tracing::info!(
                    peer = %connect.peer_identity, target = %connect.target, reason = %refusal,
                    "HBONE CONNECT refused"
                );
                return refuse(&mut respond, refusal.status());
            }
        };
        let upstream = match tokio::time::timeout(self.upstream_timeout, self.dialer.dial(&connect)).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::info!(target = %connect.target, error = %e, "HBONE upstream dial failed");
                return refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            }
            Err(_) => {
                tracing::info!(target = %connect.target, "HBONE upstream dial timed out");
                return refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let baggage = accepted.baggage.unwrap_or_else(|| self.default_baggage.clone());
        let mut ok = Response::builder().status(StatusCode::OK);
        if let Ok(v) = http::HeaderValue::from_str(&baggage) {
            ok = ok.header(headers::BAGGAGE, v);
        }
        let send = match respond.send_response(ok.body(()).expect("static response"), false) {
            Ok(s) => s,
            Err(e) => return tracing::debug!(error = %e, "client went away before 200"),
        };
        match relay(send, request.into_body(), upstream).await {
            Ok((up, down)) => tracing::debug!(
                target = %connect.target, bytes_in = up, bytes_out = down, "HBONE tunnel closed"
            ),
            Err(e) => tracing::debug!(target = %connect.target, error = %e, "HBONE tunnel aborted"),
        }
    }
}

/// ztunnel's error shape: a response carrying only `:status` (with END_STREAM), then
/// RST_STREAM(NO_ERROR) so the client stops sending. h2 emits that reset itself once the
/// request body and this handle are dropped with the request still open; an explicit
/// `send_reset` here would discard the queued response instead.
fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let response = Response::builder().status(status).body(()).expect("static response");
    if let Err(e) = respond.send_response(response, true) {
        tracing::debug!(error = %e, "client went away before the refusal");
    }
}
