//! WebSocket ends for the waypoint tests: the backend's side of an upgrade (echo) and a client
//! that sends numbered messages of growing size and checks each echo, then closes cleanly.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use tungstenite::protocol::Role;
use tungstenite::{Message, WebSocket};

/// Answers a WebSocket handshake whose request head (`key` from `Sec-WebSocket-Key`) was
/// already read, then echoes every message until the client closes.
pub fn serve_upgraded(mut stream: TcpStream, key: &str) {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut ws = WebSocket::from_raw_socket(stream, Role::Server, None);
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            // A clean close is answered by tungstenite itself; anything else ends the echo.
            Err(_) => return,
        }
    }
}

/// `ws-client <addr> <host> <path> <count>`: one WebSocket over `addr`, `count` binary
/// messages (n × 100 bytes for message n), each echo checked.
pub fn client(to: SocketAddr, host: &str, path: &str, count: usize) -> serde_json::Value {
    let started = Instant::now();
    let run = || -> Result<(u16, usize, u64, bool), String> {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let url = format!("ws://{host}{path}");
        let (mut ws, response) = tungstenite::client(url.as_str(), stream).map_err(|e| format!("handshake: {e}"))?;
        let (mut echoed, mut bytes) = (0, 0u64);
        for n in 1..=count {
            let payload: Vec<u8> = (0..n * 100).map(|i| (i % 251) as u8).collect();
            ws.send(Message::Binary(payload.clone().into())).map_err(|e| format!("send {n}: {e}"))?;
            match ws.read().map_err(|e| format!("read {n}: {e}"))? {
                Message::Binary(b) if b[..] == payload[..] => {
                    echoed += 1;
                    bytes += payload.len() as u64;
                }
                other => return Err(format!("message {n} came back as {other:?}")),
            }
        }
        ws.close(None).map_err(|e| format!("close: {e}"))?;
        // Read until the server's close frame and the end of the stream.
        let clean = loop {
            match ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => break true,
                Err(_) => break false,
            }
        };
        Ok((response.status().as_u16(), echoed, bytes, clean))
    };
    match run() {
        Ok((status, echoed, bytes, clean_close)) => json!({
            "ok": true, "status": status, "echoed": echoed, "bytes": bytes, "clean_close": clean_close,
            "secs": started.elapsed().as_secs_f64(),
        }),
        Err(e) => json!({"ok": false, "error": e}),
    }
}
