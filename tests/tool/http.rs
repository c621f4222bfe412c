//! HTTP workloads for the waypoint tests and demo: a backend that can fail on
//! a seeded schedule or answer slowly, and a client that reports what it saw.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

pub use pillion_e2e::schedule_fails;

struct Backend {
    name: String,
    fail: Option<(u64, u64)>,
    delay: Duration,
    /// Requests whose path starts with `/slow` wait this long first.
    slow_path: Duration,
    /// Requests with a body larger than this fail (503) once the body is read.
    fail_uploads_over: Option<usize>,
    attempts: AtomicU64,
    /// Connections accepted (a pooling client opens few).
    connections: AtomicU64,
    failed: AtomicU64,
}

/// `http-backend <addr> <name> [fail=<seed>:<pct>] [delay-ms=<n>] [slow-path-ms=<n>]
/// [fail-uploads-over=<bytes>]`. Bodies are read as they come and counted (`body_bytes`,
/// `body_ok`: every byte was the upload pattern's).
pub fn backend(addr: SocketAddr, name: String, opts: &[String]) {
    let mut fail = None;
    let mut delay = Duration::ZERO;
    let mut slow_path = Duration::ZERO;
    let mut fail_uploads_over = None;
    for o in opts {
        if let Some(v) = o.strip_prefix("fail=") {
            let (seed, pct) = v.split_once(':').expect("fail=<seed>:<pct>");
            fail = Some((seed.parse().expect("seed"), pct.parse().expect("pct")));
        } else if let Some(v) = o.strip_prefix("delay-ms=") {
            delay = Duration::from_millis(v.parse().expect("delay-ms"));
        } else if let Some(v) = o.strip_prefix("slow-path-ms=") {
            slow_path = Duration::from_millis(v.parse().expect("slow-path-ms"));
        } else if let Some(v) = o.strip_prefix("fail-uploads-over=") {
            fail_uploads_over = Some(v.parse().expect("fail-uploads-over"));
        }
    }
    let backend = Arc::new(Backend {
        name,
        fail,
        delay,
        slow_path,
        fail_uploads_over,
        attempts: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("{}", json!({"event": "ready"}));
    std::io::stdout().flush().ok();
    for stream in listener.incoming().flatten() {
        let backend = backend.clone();
        std::thread::spawn(move || serve(&backend, stream));
    }
}

fn serve(b: &Backend, stream: TcpStream) {
    b.connections.fetch_add(1, Ordering::SeqCst);
    let Ok(mut w) = stream.try_clone() else { return };
    let mut r = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        let mut headers = Vec::new();
        let (mut websocket, mut key) = (false, None);
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.trim_end().split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                websocket |= k.eq_ignore_ascii_case("upgrade") && v.trim().eq_ignore_ascii_case("websocket");
                if k.eq_ignore_ascii_case("sec-websocket-key") {
                    key = Some(v.trim().to_owned());
                }
                headers.push(format!("{}={}", k.to_ascii_lowercase(), v.trim()));
            }
        }
        if let (true, Some(key)) = (websocket, &key) {
            // The client sends nothing more until it has the 101: nothing is left buffered.
            drop(w);
            return crate::ws::serve_upgraded(r.into_inner(), key);
        }
        let Some(body_ok) = read_pattern(&mut r, len) else { return };
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, text) = if path == "/__stats" {
            let s = json!({
                "attempts": b.attempts.load(Ordering::SeqCst),
                "failed": b.failed.load(Ordering::SeqCst),
                "connections": b.connections.load(Ordering::SeqCst),
            });
            (200, s.to_string())
        } else {
            let n = b.attempts.fetch_add(1, Ordering::SeqCst) + 1;
            if !b.delay.is_zero() {
                std::thread::sleep(b.delay);
            }
            if path.starts_with("/slow") && !b.slow_path.is_zero() {
                std::thread::sleep(b.slow_path);
            }
            match b.fail {
                _ if b.fail_uploads_over.is_some_and(|max| len > max) => {
                    b.failed.fetch_add(1, Ordering::SeqCst);
                    (503, format!("{} refused an upload of {len} bytes", b.name))
                }
                Some((seed, pct)) if schedule_fails(seed, pct, n) => {
                    b.failed.fetch_add(1, Ordering::SeqCst);
                    (503, format!("{} attempt {n} failed on schedule", b.name))
                }
                _ => (
                    200,
                    json!({"backend": b.name, "path": path, "headers": headers, "body_bytes": len, "body_ok": body_ok})
                        .to_string(),
                ),
            }
        };
        let reason = if status == 200 { "OK" } else { "Service Unavailable" };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nx-backend: {}\r\nContent-Type: text/plain\r\n\r\n{text}",
            text.len(),
            b.name
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// `http-requests <addr> <count> <path> [header:value ...]`: sequential
/// requests on one keep-alive connection (a new one after a close).
pub fn requests(to: SocketAddr, count: u64, path: &str, headers: &[String]) -> serde_json::Value {
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut last_body = String::new();
    let mut max_ms = 0u128;
    let mut conn: KeepAlive = None;
    let extra: String =
        headers.iter().filter_map(|h| h.split_once(':')).map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    for _ in 0..count {
        let started = Instant::now();
        let result = get(&mut conn, to, path, &extra);
        max_ms = max_ms.max(started.elapsed().as_millis());
        match result {
            Ok((status, backend, body)) => {
                *statuses.entry(status).or_default() += 1;
                if let Some(b) = backend {
                    *backends.entry(b).or_default() += 1;
                }
                last_body = body;
            }
            Err(_) => errors += 1,
        }
    }
    json!({"ok": true, "statuses": statuses, "backends": backends, "errors": errors, "last_body": last_body, "max_ms": max_ms as u64})
}

/// Reads a body of `len` bytes in chunks (an upload may be far larger than memory should
/// hold); whether every byte was `crate::pattern`'s. `None` if the connection broke.
fn read_pattern(r: &mut impl Read, len: usize) -> Option<bool> {
    let mut chunk = vec![0u8; 64 * 1024];
    let (mut at, mut ok) = (0usize, true);
    while at < len {
        let n = (len - at).min(chunk.len());
        r.read_exact(&mut chunk[..n]).ok()?;
        ok &= chunk[..n].iter().enumerate().all(|(i, b)| *b == pattern_byte(at + i));
        at += n;
    }
    Some(ok)
}

fn pattern_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// `http-upload <addr> <path> <bytes>`: one POST of `bytes` (with `Content-Length`, written
/// in 64 KiB pieces); its status, body and rate.
pub fn upload(to: SocketAddr, path: &str, bytes: usize) -> serde_json::Value {
    let started = Instant::now();
    let mut conn = None;
    match request_on(&mut conn, to, "POST", path, "", bytes) {
        Ok((status, _, body, _)) => {
            let secs = started.elapsed().as_secs_f64();
            json!({"ok": true, "status": status, "body": body, "secs": secs, "mib_per_s": bytes as f64 / secs / 1048576.0})
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// A keep-alive connection: the writer and a buffered reader of one socket.
pub type KeepAlive = Option<(TcpStream, BufReader<TcpStream>)>;

/// One `GET <path>` on `conn` (opened first if `None`; dropped after an error
/// or a `Connection: close`): (status, `x-backend`, body).
pub fn get(
    conn: &mut KeepAlive,
    to: SocketAddr,
    path: &str,
    extra: &str,
) -> std::io::Result<(u16, Option<String>, String)> {
    let result = request_on(conn, to, "GET", path, extra, 0);
    if matches!(result, Err(_) | Ok((.., true))) {
        *conn = None;
    }
    result.map(|(status, backend, body, _)| (status, backend, body))
}

fn request_on(
    conn: &mut KeepAlive,
    to: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    upload: usize,
) -> std::io::Result<(u16, Option<String>, String, bool)> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_nodelay(true)?;
        *conn = Some((s.try_clone()?, BufReader::new(s)));
    }
    let (w, r) = conn.as_mut().expect("connected");
    // One write: `write!` would send the pieces as separate segments.
    let length = if upload > 0 { format!("Content-Length: {upload}\r\n") } else { String::new() };
    w.write_all(format!("{method} {path} HTTP/1.1\r\nHost: {to}\r\n{length}{extra}\r\n").as_bytes())?;
    let mut chunk = Vec::with_capacity(64 * 1024);
    let mut at = 0;
    while at < upload {
        let n = (upload - at).min(64 * 1024);
        chunk.clear();
        chunk.extend((at..at + n).map(pattern_byte));
        w.write_all(&chunk)?;
        at += n;
    }
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut len, mut backend, mut close) = (0usize, None, false);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "x-backend" => backend = Some(v.trim().to_string()),
                "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((status, backend, String::from_utf8_lossy(&body).into_owned(), close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_never_fails_three_in_a_row_and_is_near_its_rate() {
        let fails: Vec<bool> = (1..=2000).map(|n| schedule_fails(42, 30, n)).collect();
        assert!(fails.windows(3).all(|w| !(w[0] && w[1] && w[2])));
        let rate = fails.iter().filter(|f| **f).count() as f64 / 2000.0;
        assert!((0.2..0.35).contains(&rate), "rate {rate}");
    }
}
