//! HBONE: HTTP/2 CONNECT over mutual TLS 1.3 (port 15008, ALPN `h2`), wire-compatible with
//! Istio's ztunnel. See `docs/architecture.md` for the protocol as Pillion speaks it.
//!
//! - [`server`]: accepts tunnels; the caller supplies the certificate per destination
//!   ([`ServerCertResolver`]), the authorization hook ([`ConnectHook`]) and how the upstream is
//!   dialled ([`UpstreamDialer`]).
//! - [`pool`]: opens tunnels over pooled connections keyed by [`PoolKey`]; the caller supplies
//!   how TCP is dialled ([`TcpDialer`]) and the source certificates ([`CertProvider`]).

use std::net::SocketAddr;
use std::time::Duration;

pub mod dial;
pub mod pool;
pub mod relay;
pub mod server;
pub mod stream;

pub use dial::{CertProvider, DirectTcpDialer, TcpDialer, TcpUpstream, UpstreamDialer};
pub use pool::{Pool, PoolConfig, PoolKey, Tunnel, TunnelRequest};
pub use server::{
    Accepted, ByLocalAddress, ConnectHook, ConnectRequest, HboneServer, HboneServerBuilder, Refusal,
    ServerCertResolver, per_source_share,
};
pub use stream::H2Stream;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 settings, as ztunnel advertises them.
pub mod settings {
    /// Streams a peer may open on one connection.
    pub const MAX_CONCURRENT_STREAMS: u32 = 200;
    /// Per-stream window: large, so one bulk stream reaches line rate on its own.
    pub const INITIAL_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
    /// Per-connection window: several streams' worth, so one busy stream cannot starve the
    /// others sharing the connection.
    pub const INITIAL_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
    pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
    pub const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
    /// Streams the client resets before the server accepts them; beyond this the server
    /// answers GOAWAY(ENHANCE_YOUR_CALM) (HTTP/2 "rapid reset" defence).
    pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
}

/// Headers HBONE carries end to end.
pub mod headers {
    pub const TRACEPARENT: &str = "traceparent";
    pub const BAGGAGE: &str = "baggage";
    pub const FORWARDED: &str = "forwarded";
}

/// Errors of the HBONE client and server.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error(
        "dialling {addr} failed: {source}; is the peer's agent listening on 15008, or is a NetworkPolicy blocking it?"
    )]
    Dial {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TCP connect to {0} timed out: the peer is unreachable or dropping SYNs")]
    ConnectTimeout(SocketAddr),
    #[error(
        "TLS/HTTP2 handshake with {0} timed out: the peer accepted TCP but did not answer; is it an HBONE listener?"
    )]
    HandshakeTimeout(SocketAddr),
    #[error(
        "TLS handshake with {addr} failed: {source}; check both sides share a trust root and the peer's identity is the expected one"
    )]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("peer {0} did not negotiate ALPN h2: it is not an HBONE endpoint")]
    Alpn(SocketAddr),
    #[error("peer presented no valid SPIFFE identity: {0}")]
    PeerIdentity(#[from] crate::tls::SvidError),
    #[error("HTTP/2 error: {0}")]
    H2(#[from] h2::Error),
    #[error("CONNECT to {target} refused with HTTP {status}: {}", status_hint(*status))]
    Refused { target: String, status: u16 },
    #[error("CONNECT to {0} got no response in time: the peer is overloaded or stuck")]
    ResponseTimeout(String),
    #[error("no certificate for the local workload: {0}")]
    Cert(#[from] crate::certs::CertError),
    #[error("TLS configuration failed: {0}")]
    TlsConfig(#[from] crate::tls::TlsError),
    #[error("refused {0}: too many HBONE {1} at once (raise the limit if this load is legitimate)")]
    Overloaded(SocketAddr, &'static str),
    #[error("pool is shut down")]
    PoolClosed,
}

fn status_hint(status: u16) -> &'static str {
    match status {
        400 => "the target was malformed or is not an address of the destination workload",
        401 => "the destination's policy denied this identity",
        431 => "request headers exceed 64 KiB",
        503 => "the destination could not reach the target application",
        _ => "unexpected status from the HBONE peer",
    }
}

/// Default timeouts.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server limits. Handshakes are unauthenticated work anyone who can reach the port can
/// start, so they get the tightest cap.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Each source pod of the cluster keeps its own pooled connection to a destination, so a
/// popular workload (or a waypoint) legitimately holds thousands.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Twice the client pool's idle release (60 s), so a client normally closes first and never
/// races a server-side close with a new stream.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
