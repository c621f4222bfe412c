//! `capture <iface> <max-seconds> <marker>`: a small packet capture with an
//! AF_PACKET socket (no tcpdump needed). It stops at the deadline or when a
//! line arrives on stdin, then reports what crossed the interface: TCP ports
//! seen, whether TLS records to or from 15008 were seen, and whether the
//! plaintext `marker` appeared anywhere in any frame.

use std::{
    collections::BTreeSet,
    ffi::CString,
    io::BufRead,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;

const ETH_P_ALL: u16 = 0x0003;

struct Summary {
    frames: u64,
    tcp_ports: BTreeSet<u16>,
    hbone_segments: u64,
    tls_records: u64,
    marker_seen: bool,
}

/// TCP ports and payload of an Ethernet frame carrying IPv4 or IPv6 TCP.
fn tcp_payload(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (proto, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            (*ip.get(9)?, ip.get(ihl..)?)
        }
        0x86dd => (*ip.get(6)?, ip.get(40..)?),
        _ => return None,
    };
    if proto != 6 {
        return None;
    }
    let src = u16::from_be_bytes([*l4.first()?, *l4.get(1)?]);
    let dst = u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]);
    let offset = usize::from(l4.get(12)? >> 4) * 4;
    Some((src, dst, l4.get(offset..)?))
}

pub fn capture(iface: &str, max: Duration, marker: &str) -> serde_json::Value {
    let name = CString::new(iface).expect("interface name");
    // SAFETY: plain libc calls with valid arguments; the fd is closed below.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {iface}");
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    let rc =
        unsafe { libc::bind(fd, (&raw const sll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t) };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    println!("{}", json!({"event": "ready"}));
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().read_line(&mut String::new());
        stopper.store(true, Ordering::SeqCst);
    });
    let mut s =
        Summary { frames: 0, tcp_ports: BTreeSet::new(), hbone_segments: 0, tls_records: 0, marker_seen: false };
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + max;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let frame = &buf[..n as usize];
        s.frames += 1;
        if !marker.is_empty() && frame.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            s.marker_seen = true;
        }
        if let Some((src, dst, payload)) = tcp_payload(frame) {
            s.tcp_ports.insert(src.min(dst));
            if src == 15008 || dst == 15008 {
                s.hbone_segments += 1;
                // TLS record header: content type (handshake 22 / application data 23), version 3.x.
                if payload.len() >= 3 && (payload[0] == 22 || payload[0] == 23) && payload[1] == 3 {
                    s.tls_records += 1;
                }
            }
        }
    }
    unsafe { libc::close(fd) };
    json!({
        "ok": true,
        "frames": s.frames,
        "tcp_ports": s.tcp_ports.into_iter().collect::<Vec<_>>(),
        "hbone_segments": s.hbone_segments,
        "tls_records": s.tls_records,
        "marker_seen": s.marker_seen,
    })
}
