//! The local API: newline-delimited JSON over a Unix socket (mode 0600, root
//! only). One request per line, one reply per line; a malformed line gets an
//! error reply and the connection stays usable.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
};

use crate::{
    drain::Drain,
    enrol::{PodStatus, Registry},
    error::ApiError,
    kernel::{Kernel, Origin},
    pod::PodSpec,
    stats::{CounterSnapshot, Counters},
};

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Enrol {
        pod: PodSpec,
    },
    Unenrol {
        namespace: String,
        name: String,
        /// Only if enrolled with this netns (the CNI plugin's DEL names its sandbox's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<std::path::PathBuf>,
    },
    List {},
    Status {},
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
}

/// The agent's `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub node: String,
    pub ready: bool,
    pub origin: String,
    pub pods: Vec<PodStatus>,
    pub counters: CounterSnapshot,
    pub kernel: BTreeMap<String, u64>,
    pub links: BTreeMap<String, u32>,
}

pub struct ApiState {
    pub node: String,
    pub registry: Arc<Registry>,
    pub kernel: Arc<Kernel>,
    pub counters: Arc<Counters>,
}

impl ApiState {
    fn status(&self) -> Status {
        Status {
            pid: std::process::id(),
            node: self.node.clone(),
            ready: true,
            origin: match self.kernel.origin() {
                Origin::Adopted => "adopted".into(),
                Origin::Installed => "installed".into(),
            },
            pods: self.registry.list(),
            counters: self.counters.snapshot(),
            kernel: self.kernel.stats().into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            links: self.kernel.link_ids(),
        }
    }

    async fn handle(self: &Arc<Self>, line: &str) -> Reply {
        let request: Request = match serde_json::from_str(line) {
            Ok(r) => r,
            Err(e) => return refuse(format!("malformed request: {e}")),
        };
        let this = self.clone();
        // Enrolment binds sockets from a helper thread: keep it off the
        // async workers.
        let outcome = tokio::task::spawn_blocking(move || match request {
            Request::Enrol { pod } => this.registry.enrol(pod).map(|s| to_value(&s)).map_err(|e| e.to_string()),
            Request::Unenrol { namespace, name, netns } => this
                .registry
                .unenrol_sandbox(&namespace, &name, netns.as_deref())
                .map(|()| serde_json::Value::Null)
                .map_err(|e| e.to_string()),
            Request::List {} => Ok(to_value(&this.registry.list())),
            Request::Status {} => Ok(to_value(&this.status())),
        })
        .await;
        match outcome {
            Ok(Ok(result)) => Reply { ok: true, error: None, result },
            Ok(Err(e)) => refuse(e),
            Err(e) => refuse(format!("internal error: {e}")),
        }
    }
}

fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn refuse(error: String) -> Reply {
    Reply { ok: false, error: Some(error), result: serde_json::Value::Null }
}

/// Binds the API socket, replacing a stale one (a predecessor agent's path is
/// taken over; its open connections keep working).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    // Atomic replace: clients never see a missing socket during a handoff.
    std::fs::rename(&tmp, path)?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, state: Arc<ApiState>, mut drain: Drain) {
    let mut backoff = mesh::limits::AcceptBackoff::new("api");
    loop {
        tokio::select! {
            _ = drain.stopped() => return,
            (stream, _) = backoff.retry(|| listener.accept()) => {
                let state = state.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut reader = tokio::io::BufReader::new(read);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        let mut limited = (&mut reader).take(MAX_LINE as u64);
                        match limited.read_line(&mut line).await {
                            Ok(0) => return,
                            Ok(_) if !line.ends_with('\n') && line.len() >= MAX_LINE => {
                                let reply = refuse(format!("request longer than {MAX_LINE} bytes"));
                                let _ = write_reply(&mut write, &reply).await;
                                return;
                            }
                            Ok(_) => {
                                let reply = state.handle(line.trim_end()).await;
                                if write_reply(&mut write, &reply).await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                });
            }
        }
    }
}

async fn write_reply(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(reply)?;
    bytes.push(b'\n');
    write.write_all(&bytes).await
}

/// A blocking client for the CLI and the tests.
pub struct Client {
    path: PathBuf,
}

impl Client {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Sends one raw line and returns the raw reply (tests use it for
    /// malformed input).
    pub fn call_raw(&self, line: &str) -> Result<Reply, ApiError> {
        let stream =
            UnixStream::connect(&self.path).map_err(|source| ApiError::Connect { path: self.path.clone(), source })?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(serde_json::from_str(&reply)?)
    }

    pub fn call(&self, request: &Request) -> Result<serde_json::Value, ApiError> {
        let reply = self.call_raw(&serde_json::to_string(request)?)?;
        if reply.ok { Ok(reply.result) } else { Err(ApiError::Refused(reply.error.unwrap_or_default())) }
    }

    pub fn status(&self) -> Result<Status, ApiError> {
        Ok(serde_json::from_value(self.call(&Request::Status {})?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r: Request = serde_json::from_str(r#"{"op":"unenrol","namespace":"a","name":"b"}"#).unwrap();
        assert_eq!(r, Request::Unenrol { namespace: "a".into(), name: "b".into(), netns: None });
        assert!(serde_json::from_str::<Request>(r#"{"op":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"list","extra":1}"#).is_err());
    }
}
