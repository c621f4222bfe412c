//! Load generators and servers for `cargo xtask bench`: round-trip latency,
//! HTTP at a fixed rate (latency measured from the scheduled send time, so a
//! stalled server cannot hide its queueing: no coordinated omission),
//! connection rate, and held idle connections. Every loop is bounded.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde_json::json;

/// p50/p90/p99/max of microsecond samples.
pub fn percentiles(mut us: Vec<u64>) -> serde_json::Value {
    if us.is_empty() {
        return json!({"count": 0});
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    json!({"count": us.len(), "p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99), "max_us": us[us.len() - 1]})
}

/// Percentiles of nanosecond samples, in microseconds with their fractions (round trips
/// here are tens of µs: whole µs would hide the differences being measured).
pub fn percentiles_ns(mut ns: Vec<u64>) -> serde_json::Value {
    if ns.is_empty() {
        return json!({"count": 0});
    }
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    json!({"count": ns.len(), "p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99), "p999_us": at(0.999),
           "max_us": ns[ns.len() - 1] as f64 / 1000.0})
}

/// Raises the open-file limit to its hard maximum (held-connection runs).
pub fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// One connection, `count` ping-pongs of `size` bytes against an echo server.
pub fn rtt(to: SocketAddr, count: usize, size: usize) -> serde_json::Value {
    let run = || -> std::io::Result<Vec<u64>> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let msg = vec![7u8; size];
        let mut buf = vec![0u8; size];
        let mut samples = Vec::with_capacity(count);
        // A few warm-up rounds: first-use costs are not round-trip latency.
        for i in 0..count + 50 {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut buf)?;
            if i >= 50 {
                samples.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(samples)
    };
    match run() {
        Ok(samples) => json!({"ok": true, "rtt": percentiles_ns(samples)}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}

/// A keep-alive HTTP/1.1 server answering every request with `size` bytes.
pub fn http_server(addr: SocketAddr, size: usize) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("{}", json!({"event": "ready"}));
    std::io::stdout().flush().ok();
    let response = {
        let mut r =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: text/plain\r\n\r\n").into_bytes();
        r.extend(std::iter::repeat_n(b'x', size));
        std::sync::Arc::new(r)
    };
    for stream in listener.incoming().flatten() {
        let response = response.clone();
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let mut w = match stream.try_clone() {
                Ok(w) => w,
                Err(_) => return,
            };
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            loop {
                // Request line and headers up to the blank line; a body (uploads) is read
                // and dropped as it comes.
                let (mut headers_done, mut body) = (false, 0u64);
                while !headers_done {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => headers_done = line == "\r\n",
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        body = v.trim().parse().unwrap_or(0);
                    }
                }
                match std::io::copy(&mut (&mut r).take(body), &mut std::io::sink()) {
                    Ok(n) if n == body => {}
                    _ => return,
                }
                if w.write_all(&response).is_err() {
                    return;
                }
            }
        });
    }
}

/// `rps` requests per second spread over `conns` keep-alive connections for
/// `secs` seconds; latency from each request's scheduled time.
pub fn http_load(to: SocketAddr, rps: u64, conns: u64, secs: u64) -> serde_json::Value {
    let per_conn = Duration::from_secs_f64(conns as f64 / rps as f64);
    let total = rps * secs / conns;
    let start = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || -> std::io::Result<(Vec<u64>, u64)> {
                let s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut w = s.try_clone()?;
                let mut r = BufReader::new(s);
                let request = format!("GET / HTTP/1.1\r\nHost: {to}\r\n\r\n");
                let mut lats = Vec::with_capacity(total as usize);
                let mut errors = 0;
                // Stagger connections across the interval.
                let offset = per_conn.mul_f64(c as f64 / conns as f64);
                let mut line = String::new();
                for i in 0..total {
                    let scheduled = start + offset + per_conn * i as u32;
                    if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let ok = (|| -> std::io::Result<()> {
                        w.write_all(request.as_bytes())?;
                        let mut len = 0usize;
                        loop {
                            line.clear();
                            if r.read_line(&mut line)? == 0 {
                                return Err(std::io::ErrorKind::UnexpectedEof.into());
                            }
                            if let Some(v) = line.strip_prefix("Content-Length: ") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut body = vec![0u8; len];
                        r.read_exact(&mut body)
                    })();
                    match ok {
                        Ok(()) => lats.push(scheduled.elapsed().as_micros() as u64),
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                Ok((lats, errors))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        match w.join() {
            Ok(Ok((l, e))) => {
                all.extend(l);
                errors += e;
            }
            _ => errors += 1,
        }
    }
    let achieved = all.len() as f64 / secs as f64;
    json!({"ok": errors == 0, "errors": errors, "achieved_rps": achieved, "latency": percentiles(all)})
}

/// New connections per second for `secs`: connect, one byte echoed, close.
pub fn conn_rate(to: SocketAddr, secs: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let (mut done, mut errors) = (0u64, 0u64);
    while Instant::now() < deadline && errors < 100 {
        let ok = (|| -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        })();
        match ok {
            Ok(()) => done += 1,
            Err(_) => errors += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    json!({"ok": errors == 0, "connections": done, "errors": errors, "per_second": done as f64 / secs})
}

/// Opens `count` connections (each echoes one byte; with `silent`, nothing
/// is sent: a peer that never speaks), reports, holds them until a line
/// arrives on stdin, then reports how many the server has not closed.
pub fn hold(to: SocketAddr, count: usize, silent: bool) {
    raise_nofile();
    let mut held = Vec::with_capacity(count);
    let (mut errors, mut first_error) = (0, None);
    let started = Instant::now();
    for _ in 0..count {
        let ok = (|| -> std::io::Result<TcpStream> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            if !silent {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)?;
            }
            Ok(s)
        })();
        match ok {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
        if errors > 10 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"event": "held", "held": held.len(), "errors": errors, "first_error": first_error, "secs": secs})
    );
    std::io::stdout().flush().ok();
    let _ = std::io::stdin().lock().read_line(&mut String::new());
    // Closed by the server: a read returns end-of-file or an error at once.
    let open = held
        .iter()
        .filter(|s| {
            s.set_nonblocking(true).is_ok()
                && matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    println!("{}", json!({"event": "released", "held": held.len(), "still_open": open}));
    std::io::stdout().flush().ok();
    drop(held);
}
