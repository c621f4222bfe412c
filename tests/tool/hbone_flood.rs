//! A CONTINUATION flood on the agent's own HBONE server (the outer HTTP/2
//! layer on a pod's 15008), from a client holding a valid mesh certificate:
//! issued here from the harness's embedded CA for the identity given.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use mesh::{
    Identity,
    ca::{EmbeddedCa, generate_csr},
    clock::SystemClock,
    tls::{TrustBundle, client_config, workload_cert::WorkloadCert},
};
use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};
use serde_json::json;

use crate::h2raw::{self, END_STREAM, GOAWAY, HEADERS, PREFACE, SETTINGS};

/// A client TLS config presenting a fresh certificate for `client`, trusting
/// only a server presenting `server`.
fn tls_config(ca_dir: &Path, client: &Identity, server: &Identity) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let ca = EmbeddedCa::from_dir(client.trust_domain(), ca_dir, SystemClock::shared())?;
    let csr = generate_csr(client)?;
    let issued = ca.sign_csr(client, &csr.csr_pem, Duration::from_secs(3600))?;
    let cert = WorkloadCert::new(issued.chain, csr.key, TrustBundle::new(issued.roots)?)?;
    Ok(Arc::new(client_config(&cert, vec![server.clone()], SystemClock::shared())?))
}

/// One connection: TLS, preface, HEADERS without END_HEADERS, then
/// CONTINUATION frames until the server stops us or the bounds are reached.
/// Returns (frames written, GOAWAY code seen).
fn flood_one(
    to: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    max_frames: u64,
    deadline: Instant,
) -> anyhow::Result<(u64, Option<u32>)> {
    let tcp = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    let tls = ClientConnection::new(config.clone(), ServerName::IpAddress(to.ip().into()))?;
    let mut s = StreamOwned::new(tls, tcp);
    let mut start = PREFACE.to_vec();
    h2raw::frame(&mut start, SETTINGS, 0, 0, &[]);
    // A CONNECT-shaped request would do as well: the flood is in the header block.
    h2raw::frame(&mut start, HEADERS, END_STREAM, 1, &h2raw::get_block(&to.to_string()));
    s.write_all(&start)?;
    let cont = h2raw::flood_frame();
    let mut frames = 0;
    while frames < max_frames && Instant::now() < deadline {
        if s.write_all(&cont).and_then(|()| s.flush()).is_err() {
            break;
        }
        frames += 1;
    }
    // What the server said before it closed (bounded by the read timeout).
    let mut payload = Vec::new();
    let mut goaway = None;
    while let Ok((kind, _)) = h2raw::read_frame(&mut s, &mut payload) {
        if kind == GOAWAY {
            goaway = h2raw::goaway_code(&payload);
        }
    }
    Ok((frames, goaway))
}

/// `hbone-continuation-flood <addr> <ca-dir> <client-identity> <server-identity> <max-frames> <secs>`.
pub fn flood(
    to: SocketAddr,
    ca_dir: &Path,
    client: &str,
    server: &str,
    max_frames: u64,
    secs: u64,
) -> serde_json::Value {
    let parse = |s: &str| s.parse::<Identity>().map_err(|e| anyhow::anyhow!("{s}: {e}"));
    let config = match parse(client).and_then(|c| tls_config(ca_dir, &c, &parse(server)?)) {
        Ok(c) => c,
        Err(e) => return json!({"ok": false, "error": format!("{e:#}")}),
    };
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let (mut frames, mut conns, mut most, mut goaways, mut errors) = (0u64, 0u64, 0u64, Vec::new(), Vec::new());
    while frames < max_frames && Instant::now() < deadline && conns < 2000 && errors.len() <= 10 {
        match flood_one(to, &config, max_frames - frames, deadline) {
            Ok((n, goaway)) => {
                conns += 1;
                frames += n;
                most = most.max(n);
                goaways.extend(goaway.map(|c| format!("0x{c:x}")));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    goaways.sort();
    goaways.dedup();
    json!({
        "ok": conns > 0, "frames": frames, "bytes": frames * 16 * 1024, "connections": conns,
        "most_frames_on_one_connection": most, "goaway_codes": goaways, "errors": errors,
        "secs": started.elapsed().as_secs_f64(),
    })
}
