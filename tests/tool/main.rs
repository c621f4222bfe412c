//! `pillion-pod-tool`: the workloads the e2e tests run inside pods (the
//! harness starts it inside a pod's netns and cgroup, so its sockets are the
//! pod's). Every command prints JSON lines on stdout; loops are bounded.

use std::{
    io::{BufRead, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde_json::json;

mod abuse;
mod bench;
mod capture;
mod grpc;
mod h2raw;
mod hbone_flood;
mod http;
mod ws;

fn usage() -> ! {
    eprintln!(
        "usage: pillion-pod-tool echo-server <addr> [banner]\n\
         \x20      pillion-pod-tool udp-echo <addr>\n\
         \x20      pillion-pod-tool client <addr> <bytes> [--bind <addr>] [--hold] [--timeout-ms N]\n\
         \x20      pillion-pod-tool udp-client <addr>\n\
         \x20      pillion-pod-tool loop <addr> <count> <interval-ms> <bytes>\n\
         \x20      pillion-pod-tool capture <iface> <max-seconds> <marker>\n\
         \x20      pillion-pod-tool http-get <addr> <path>\n\
         \x20      pillion-pod-tool rtt <addr> <count> <size> | http-server <addr> <size>\n\
         \x20      pillion-pod-tool http-load <addr> <rps> <conns> <secs> | conn-rate <addr> <secs> | hold <addr> <count> [--silent]\n\
         \x20      pillion-pod-tool rapid-reset <addr> <max-streams> <secs> | continuation-flood <addr> <max-frames> <secs>\n\
         \x20      pillion-pod-tool hbone-continuation-flood <addr> <ca-dir> <client-id> <server-id> <max-frames> <secs>\n\
         \x20      pillion-pod-tool slow-bodies <addr> <count> <length> <tail> <trickle-bytes-per-s> <secs>\n\
         \x20      pillion-pod-tool victim <addr> <rps> <max-secs>\n\
         \x20      pillion-pod-tool http-backend <addr> <name> [fail=<seed>:<pct>] [delay-ms=<n>] [slow-path-ms=<n>] [fail-uploads-over=<bytes>]\n\
         \x20      pillion-pod-tool http-upload <addr> <path> <bytes>\n\
         \x20      pillion-pod-tool ws-client <addr> <host> <path> <count>\n\
         \x20      pillion-pod-tool grpc-backend <addr> <name> [fail-first=<n>] | grpc-client <addr> <unary-calls> <stream-messages>\n\
         \x20      pillion-pod-tool http-requests <addr> <count> <path> [header:value ...]"
    );
    std::process::exit(2)
}

fn num(s: &str) -> usize {
    s.parse().unwrap_or_else(|_| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let addr = |i: usize| -> SocketAddr { arg(i).parse().unwrap_or_else(|_| usage()) };
    match arg(0).as_str() {
        "echo-server" => echo_server(addr(1), args.get(2).cloned()),
        "udp-echo" => udp_echo(addr(1)),
        "client" => {
            let mut opts = ClientOpts { bind: None, hold: false, timeout: Duration::from_secs(3), marker: None };
            let mut i = 3;
            while i < args.len() {
                match args[i].as_str() {
                    "--bind" => {
                        opts.bind = Some(addr(i + 1));
                        i += 1;
                    }
                    "--hold" => opts.hold = true,
                    "--marker" => {
                        opts.marker = Some(arg(i + 1));
                        i += 1;
                    }
                    "--timeout-ms" => {
                        opts.timeout = Duration::from_millis(arg(i + 1).parse().unwrap_or_else(|_| usage()));
                        i += 1;
                    }
                    _ => usage(),
                }
                i += 1;
            }
            let bytes = arg(2).parse().unwrap_or_else(|_| usage());
            println!("{}", client(addr(1), bytes, &opts));
        }
        "udp-client" => println!("{}", udp_client(addr(1))),
        "http-get" => println!("{}", http_get(addr(1), &arg(2))),
        "rtt" => println!("{}", bench::rtt(addr(1), num(&arg(2)), num(&arg(3)))),
        "http-server" => bench::http_server(addr(1), num(&arg(2))),
        "http-load" => {
            println!("{}", bench::http_load(addr(1), num(&arg(2)) as u64, num(&arg(3)) as u64, num(&arg(4)) as u64))
        }
        "conn-rate" => println!("{}", bench::conn_rate(addr(1), num(&arg(2)) as u64)),
        "hold" => bench::hold(addr(1), num(&arg(2)), args.get(3).is_some_and(|a| a == "--silent")),
        "rapid-reset" => println!("{}", abuse::rapid_reset(addr(1), num(&arg(2)) as u64, num(&arg(3)) as u64)),
        "continuation-flood" => {
            println!("{}", abuse::continuation_flood(addr(1), num(&arg(2)) as u64, num(&arg(3)) as u64))
        }
        "hbone-continuation-flood" => println!(
            "{}",
            hbone_flood::flood(
                addr(1),
                std::path::Path::new(&arg(2)),
                &arg(3),
                &arg(4),
                num(&arg(5)) as u64,
                num(&arg(6)) as u64
            )
        ),
        "slow-bodies" => println!(
            "{}",
            abuse::slow_bodies(addr(1), num(&arg(2)), num(&arg(3)), num(&arg(4)), num(&arg(5)), num(&arg(6)) as u64)
        ),
        "victim" => abuse::victim(addr(1), num(&arg(2)) as u64, num(&arg(3)) as u64),
        "http-backend" => http::backend(addr(1), arg(2), &args[3..]),
        "grpc-backend" => grpc::backend(addr(1), arg(2), &args[3..]),
        "grpc-client" => println!("{}", grpc::client(addr(1), num(&arg(2)) as u32, num(&arg(3)) as u32)),
        "ws-client" => println!("{}", ws::client(addr(1), &arg(2), &arg(3), num(&arg(4)))),
        "http-upload" => println!("{}", http::upload(addr(1), &arg(2), num(&arg(3)))),
        "http-requests" => println!("{}", http::requests(addr(1), num(&arg(2)) as u64, &arg(3), &args[4..])),
        "capture" => {
            let secs: u64 = arg(2).parse().unwrap_or_else(|_| usage());
            println!("{}", capture::capture(&arg(1), Duration::from_secs(secs), &arg(3)));
        }
        "loop" => {
            let (count, interval, bytes): (u64, u64, usize) = (
                arg(2).parse().unwrap_or_else(|_| usage()),
                arg(3).parse().unwrap_or_else(|_| usage()),
                arg(4).parse().unwrap_or_else(|_| usage()),
            );
            run_loop(addr(1), count, Duration::from_millis(interval), bytes);
        }
        _ => usage(),
    }
}

/// The byte at offset `i` of every payload: detects reordering or loss.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn echo_server(addr: SocketAddr, banner: Option<String>) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("{}", json!({"event": "ready", "addr": listener.local_addr().unwrap().to_string()}));
    std::io::stdout().flush().ok();
    for stream in listener.incoming().flatten() {
        let banner = banner.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            // Echo at once (as sockperf's server): no Nagle wait on a partial echo.
            let _ = stream.set_nodelay(true);
            // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d; print them as IPv4.
            let peer = stream
                .peer_addr()
                .map(|p| match p.ip() {
                    std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                        Some(v4) => SocketAddr::new(v4.into(), p.port()).to_string(),
                        None => p.to_string(),
                    },
                    _ => p.to_string(),
                })
                .unwrap_or_default();
            if let Some(b) = banner {
                let _ = stream.write_all(format!("{b} {peer}\n").as_bytes());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        });
    }
}

fn udp_echo(addr: SocketAddr) {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    println!("{}", json!({"event": "ready", "addr": sock.local_addr().unwrap().to_string()}));
    std::io::stdout().flush().ok();
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(&buf[..n], from);
    }
}

struct ClientOpts {
    bind: Option<SocketAddr>,
    hold: bool,
    timeout: Duration,
    /// Fill the payload with this text instead of the byte pattern (for
    /// captures that look for plaintext on the wire).
    marker: Option<String>,
}

fn error_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused",
        std::io::ErrorKind::ConnectionReset => "reset",
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout",
        std::io::ErrorKind::PermissionDenied => "denied",
        _ => "other",
    }
}

fn fail(stage: &str, e: &std::io::Error) -> serde_json::Value {
    json!({"ok": false, "stage": stage, "error_kind": error_kind(e), "error": e.to_string()})
}

fn connect(to: SocketAddr, opts: &ClientOpts) -> std::io::Result<TcpStream> {
    let Some(bind) = opts.bind else {
        return TcpStream::connect_timeout(&to, opts.timeout);
    };
    let socket = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&bind.into())?;
    socket.connect_timeout(&to.into(), opts.timeout)?;
    Ok(socket.into())
}

/// Connects, optionally reads a banner line, sends `bytes` of pattern,
/// half-closes, and checks the echo is exactly what was sent.
fn client(to: SocketAddr, bytes: usize, opts: &ClientOpts) -> serde_json::Value {
    let started = Instant::now();
    let mut stream = match connect(to, opts) {
        Ok(s) => s,
        Err(e) => return fail("connect", &e),
    };
    let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // What getpeername(2) says: the address dialled, also when the mesh captured the socket.
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = stream.set_read_timeout(Some(opts.timeout.max(Duration::from_secs(10))));
    if opts.hold {
        println!("{}", json!({"event": "connected", "local": local}));
        std::io::stdout().flush().ok();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
    }
    let payload = match &opts.marker {
        Some(m) => m.bytes().cycle().take(bytes).collect(),
        None => pattern(bytes),
    };
    let writer = {
        let mut w = match stream.try_clone() {
            Ok(w) => w,
            Err(e) => return fail("clone", &e),
        };
        let payload = payload.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            w.write_all(&payload)?;
            w.shutdown(Shutdown::Write)
        })
    };
    let mut received = Vec::new();
    let read = stream.read_to_end(&mut received);
    let wrote = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")));
    if let Err(e) = read.and(wrote.map(|_| 0)) {
        return fail("transfer", &e);
    }
    // An optional banner line precedes the echo.
    let (banner, echo) = if received.len() > bytes {
        let split = received.len() - bytes;
        (String::from_utf8_lossy(&received[..split]).trim_end().to_string(), &received[split..])
    } else {
        (String::new(), &received[..])
    };
    json!({
        "ok": echo == payload.as_slice(),
        "local": local,
        "peer": peer,
        "sent": bytes,
        "received": echo.len(),
        "banner": banner,
        "echo_matches": echo == payload.as_slice(),
        "ms": started.elapsed().as_millis() as u64,
    })
}

fn udp_client(to: SocketAddr) -> serde_json::Value {
    let bind: SocketAddr = if to.is_ipv6() { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
    let run = || -> std::io::Result<bool> {
        let sock = UdpSocket::bind(bind)?;
        sock.connect(to)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.send(b"pillion-dns-like-query")?;
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf)?;
        Ok(&buf[..n] == b"pillion-dns-like-query")
    };
    match run() {
        Ok(matched) => json!({"ok": matched}),
        Err(e) => fail("udp", &e),
    }
}

/// `count` sequential connections, `interval` apart; prints progress after
/// each and a summary at the end.
fn run_loop(to: SocketAddr, count: u64, interval: Duration, bytes: usize) {
    let opts = ClientOpts { bind: None, hold: false, timeout: Duration::from_secs(3), marker: None };
    let mut failures = 0u64;
    let mut errors = Vec::new();
    for i in 1..=count {
        let result = client(to, bytes, &opts);
        if result["ok"] != json!(true) {
            failures += 1;
            if errors.len() < 5 {
                errors.push(result);
            }
        }
        println!("{}", json!({"event": "progress", "done": i, "failures": failures}));
        std::io::stdout().flush().ok();
        std::thread::sleep(interval);
    }
    println!("{}", json!({"event": "summary", "count": count, "failures": failures, "errors": errors}));
}

/// A minimal HTTP/1.0 GET (metrics, readiness, admin endpoints).
fn http_get(to: SocketAddr, path: &str) -> serde_json::Value {
    let run = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {to}\r\n\r\n").as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    };
    match run() {
        Ok((status, body)) => json!({"ok": true, "status": status, "body": body}),
        Err(e) => fail("http", &e),
    }
}
