//! Hand-written HTTP/2 frames for the hostile-peer workloads (`cargo xtask
//! abuse`): a real client library would refuse to send what these send
//! (a header block that never ends, streams reset as soon as opened).

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// RST_STREAM code CANCEL, what a browser sends when the user navigates away.
pub const CANCEL: u32 = 0x8;

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The HPACK block of `GET http://<authority>/` (static-table indices for
/// `:method GET`, `:scheme http`, `:path /`; `:authority` as a literal).
pub fn get_block(authority: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01];
    literal_value(&mut b, authority.as_bytes());
    b
}

/// A 16 KiB CONTINUATION frame on stream 1, full of 1000-byte literal
/// headers: what a flood sends after a HEADERS frame without END_HEADERS.
pub fn flood_frame() -> Vec<u8> {
    let mut block = Vec::new();
    while block.len() < 16 * 1024 - 1100 {
        literal_header(&mut block, b"x-flood", &[b'a'; 1000]);
    }
    let mut out = Vec::new();
    frame(&mut out, CONTINUATION, 0, 1, &block);
    out
}

/// Reads one frame into `payload`: (type, flags).
pub fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> std::io::Result<(u8, u8)> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    payload.resize(u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize, 0);
    r.read_exact(payload)?;
    Ok((head[3], head[4]))
}

/// The error code of a GOAWAY frame's payload.
pub fn goaway_code(payload: &[u8]) -> Option<u32> {
    payload.get(4..8).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
}

/// One literal header `name: value` (new name, not indexed).
pub fn literal_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    literal_value(out, name);
    literal_value(out, value);
}

/// An HPACK string (no Huffman coding), length in a 7-bit prefix integer.
fn literal_value(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// What the server told one connection, read by [`Conn`]'s reader thread.
#[derive(Debug, Default)]
pub struct Seen {
    pub closed: AtomicBool,
    /// GOAWAY error code + 1 (0: none seen).
    pub goaway: AtomicU64,
    pub headers: AtomicU64,
    pub resets: AtomicU64,
    /// PING acknowledgements: the server has processed everything sent before the PING.
    pub pings: AtomicU64,
}

/// A client connection that has sent the preface; a thread reads the
/// server's frames, acknowledges its SETTINGS and records what it sees.
pub struct Conn {
    pub writer: Arc<Mutex<TcpStream>>,
    pub seen: Arc<Seen>,
}

impl Conn {
    pub fn open(stream: TcpStream) -> std::io::Result<Conn> {
        stream.set_nodelay(true)?;
        let mut start = PREFACE.to_vec();
        frame(&mut start, SETTINGS, 0, 0, &[]);
        let mut w = stream.try_clone()?;
        w.write_all(&start)?;
        let writer = Arc::new(Mutex::new(w));
        let seen = Arc::new(Seen::default());
        let (ack_to, seen_by) = (writer.clone(), seen.clone());
        std::thread::spawn(move || read_frames(stream, &ack_to, &seen_by));
        Ok(Conn { writer, seen })
    }

    pub fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).write_all(bytes)
    }

    /// Sends a PING and waits (at most `limit`) for its acknowledgement:
    /// the server has then processed every frame sent before it.
    pub fn ping(&self, limit: std::time::Duration) -> bool {
        let before = self.seen.pings.load(Ordering::SeqCst);
        let mut ping = Vec::new();
        frame(&mut ping, PING, 0, 0, &[0; 8]);
        if self.send(&ping).is_err() {
            return false;
        }
        let deadline = std::time::Instant::now() + limit;
        while self.seen.pings.load(Ordering::SeqCst) == before {
            if self.seen.closed.load(Ordering::SeqCst) || std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        true
    }

    /// Waits (at most `limit`) for the server to answer what was sent with
    /// a GOAWAY or a close, so the cost is measured while it is paid.
    pub fn settle(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.goaway().is_none()
            && !self.seen.closed.load(Ordering::SeqCst)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The GOAWAY code the server sent, if any.
    pub fn goaway(&self) -> Option<u64> {
        self.seen.goaway.load(Ordering::SeqCst).checked_sub(1)
    }
}

fn read_frames(mut r: TcpStream, ack_to: &Mutex<TcpStream>, seen: &Seen) {
    let mut payload = Vec::new();
    while let Ok((kind, flags)) = read_frame(&mut r, &mut payload) {
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                let _ = ack_to.lock().unwrap_or_else(|e| e.into_inner()).write_all(&ack);
            }
            PING if flags & ACK != 0 => {
                seen.pings.fetch_add(1, Ordering::SeqCst);
            }
            GOAWAY => {
                if let Some(code) = goaway_code(&payload) {
                    seen.goaway.store(u64::from(code) + 1, Ordering::SeqCst);
                }
            }
            HEADERS => {
                seen.headers.fetch_add(1, Ordering::SeqCst);
            }
            RST_STREAM => {
                seen.resets.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
    seen.closed.store(true, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_header_carries_length_type_flags_and_stream() {
        let mut out = Vec::new();
        frame(&mut out, RST_STREAM, 0, 5, &CANCEL.to_be_bytes());
        assert_eq!(out, [0, 0, 4, 3, 0, 0, 0, 0, 5, 0, 0, 0, 8]);
    }

    #[test]
    fn long_hpack_strings_use_continuation_bytes() {
        let mut out = Vec::new();
        literal_value(&mut out, &[b'a'; 300]);
        // 300 = 127 + 173; 173 = 0x2d + 128 → [0x7f, 0xad, 0x01].
        assert_eq!(&out[..3], &[0x7f, 0xad, 0x01]);
        assert_eq!(out.len(), 303);
    }
}
