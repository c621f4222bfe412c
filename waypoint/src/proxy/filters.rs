//! Request filters in rule order — fault injection, redirects, header modifiers, URL
//! rewrites — and request mirroring, which copies the request to another backend in the
//! background once its body has arrived whole within the retry buffer (a larger body is not
//! mirrored, as with Envoy's buffer limit).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use super::Proxy;
use super::forward::{endpoints, upstream_form, upstream_http2};
use super::replay::Replay;
use super::respond::{Context, ResponseFlags};
use crate::route::{BackendRef, Filter, PathMatch, RouteMatch, rewrite_path, with_path};
use crate::telemetry::Metered;
use crate::upstream::{Target, UpstreamError};

/// How long a mirrored request may take; it never holds up the main one either way.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

fn prefix_of(matched: Option<&RouteMatch>) -> Option<&str> {
    match matched.map(|m| &m.path) {
        Some(PathMatch::Prefix(p)) => Some(p),
        _ => None,
    }
}

impl Proxy {
    /// Applies request filters in order; returns a response when one ends the request
    /// (fault abort, redirect).
    pub(super) async fn request_filters(
        self: &Arc<Self>,
        ctx: &mut Context,
        filters: &[&Filter],
        parts: &mut http::request::Parts,
        matched: Option<&RouteMatch>,
        body: &Replay,
        port: u16,
    ) -> Option<Response<Metered>> {
        for f in filters {
            match f {
                Filter::Fault(fault) => {
                    let d = fault.decide(self.rng.percent(), self.rng.percent());
                    if let Some(delay) = d.delay {
                        ctx.delayed = true;
                        tokio::time::sleep(delay).await;
                    }
                    if let Some(status) = d.abort {
                        return Some(ctx.local(status, ResponseFlags::FAULT_ABORT, "fault filter abort"));
                    }
                }
                Filter::Redirect(r) => {
                    let host = parts
                        .uri
                        .host()
                        .map(str::to_owned)
                        .or_else(|| {
                            let h = parts.headers.get(http::header::HOST)?.to_str().ok()?;
                            Some(h.rsplit_once(':').map_or(h, |(h, _)| h).to_owned())
                        })
                        .unwrap_or_default();
                    let scheme = r.scheme.clone().unwrap_or_else(|| parts.uri.scheme_str().unwrap_or("http").into());
                    let host = r.hostname.clone().unwrap_or(host);
                    let port = match (r.port, scheme.as_str()) {
                        (Some(80), "http") | (Some(443), "https") | (None, _) => String::new(),
                        (Some(p), _) => format!(":{p}"),
                    };
                    let path = match &r.path {
                        Some(p) => rewrite_path(p, parts.uri.path(), prefix_of(matched)),
                        None => parts.uri.path().to_owned(),
                    };
                    let location = format!("{scheme}://{host}{port}{}", with_path(&parts.uri, &path));
                    return Some(ctx.local_with(r.status, ResponseFlags::NONE, "", |h| {
                        if let Ok(v) = HeaderValue::from_str(&location) {
                            h.insert(http::header::LOCATION, v);
                        }
                    }));
                }
                Filter::RequestHeaders(m) => m.apply(&mut parts.headers),
                Filter::Rewrite(rw) => {
                    if let Some(h) = &rw.hostname
                        && let Ok(v) = HeaderValue::from_str(h)
                    {
                        parts.headers.insert(http::header::HOST, v);
                        if parts.uri.authority().is_some() {
                            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                            if let Ok(u) = format!("{}://{h}{pq}", parts.uri.scheme_str().unwrap_or("http")).parse() {
                                parts.uri = u;
                            }
                        }
                    }
                    if let Some(p) = &rw.path {
                        let path = rewrite_path(p, parts.uri.path(), prefix_of(matched));
                        let mut uri = parts.uri.clone().into_parts();
                        uri.path_and_query = with_path(&parts.uri, &path).parse().ok();
                        if let Ok(u) = Uri::from_parts(uri) {
                            parts.uri = u;
                        }
                    }
                }
                Filter::Mirror(m) => {
                    if self.rng.percent() < m.percent {
                        self.mirror(m.backend.clone(), port, parts, body.clone());
                    }
                }
                Filter::ResponseHeaders(_) => {}
            }
        }
        None
    }

    /// Sends a copy of the request to `backend` in the background; its response is dropped
    /// and its failure only logged.
    fn mirror(self: &Arc<Self>, backend: BackendRef, port: u16, parts: &http::request::Parts, body: Replay) {
        let mut req = Request::new(());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        // Envoy's convention: the shadow's Host carries a `-shadow` suffix.
        if let Some(h) = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()) {
            let shadow = match h.rsplit_once(':') {
                Some((host, p)) => format!("{host}-shadow:{p}"),
                None => format!("{h}-shadow"),
            };
            if let Ok(v) = HeaderValue::from_str(&shadow) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let http2 = upstream_http2(&self.snapshot(), &backend, port, parts.version, &parts.headers);
        upstream_form(&mut req, http2);
        let proxy = self.clone();
        tokio::spawn(async move {
            let snapshot = proxy.snapshot();
            let eps = endpoints(&snapshot, &backend, port);
            if eps.is_empty() {
                return tracing::debug!(backend = %backend.service, "mirror backend has no endpoints");
            }
            let ep = &eps[proxy.rng.below(eps.len() as u64) as usize];
            let target = Target {
                addr: ep.addr,
                identity: ep.identity.clone(),
                service: backend.service.clone(),
                http2,
                hbone: ep.hbone,
                traceparent: None,
                forwarded: None,
                pool: Default::default(),
            };
            let sent = tokio::time::timeout(MIRROR_TIMEOUT, async {
                let Some((data, trailers)) = body.whole().await else {
                    tracing::debug!("request not mirrored: its body outgrew the retry buffer or broke off");
                    return Ok(());
                };
                let frames = data.into_iter().map(Frame::data).chain(trailers.map(Frame::trailers));
                let body = StreamBody::new(futures::stream::iter(frames.map(Ok::<_, crate::upstream::BoxError>)));
                let r = proxy.upstream.send(&target, req.map(|()| body.boxed_unsync())).await?;
                let _ = r.into_body().collect().await;
                Ok::<_, UpstreamError>(())
            });
            match sent.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "mirrored request failed"),
                Err(_) => tracing::debug!("mirrored request timed out"),
            }
        });
    }
}
