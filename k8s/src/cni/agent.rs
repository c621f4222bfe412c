//! A blocking client for the agent's local API: one JSON request line, one reply line.
//! Blocking on purpose: the plugin makes one or two calls and exits, and the runtime
//! waits for it anyway.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::spec::AgentRequest;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the Pillion agent is not reachable at {path} ({source}); is the pillion-agent DaemonSet pod on this node running?"
    )]
    Unreachable { path: PathBuf, source: std::io::Error },
    #[error("the Pillion agent at {path} did not answer properly: {problem}")]
    BadReply { path: PathBuf, problem: String },
    #[error("the Pillion agent refused: {0}")]
    Refused(String),
}

#[derive(Debug, Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    result: Value,
}

/// Sends one request and returns the reply's `result`.
pub fn call(path: &Path, request: &AgentRequest, timeout: Duration) -> Result<Value, AgentError> {
    let unreachable = |source| AgentError::Unreachable { path: path.to_owned(), source };
    let bad = |problem: String| AgentError::BadReply { path: path.to_owned(), problem };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    stream.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = serde_json::to_string(request).map_err(|e| bad(e.to_string()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(|e| bad(format!("reading the reply: {e}")))?;
    if answer.is_empty() {
        return Err(bad("the connection closed without a reply".into()));
    }
    let reply: Reply = serde_json::from_str(&answer).map_err(|e| bad(format!("{e} in {answer:?}")))?;
    if reply.ok { Ok(reply.result) } else { Err(AgentError::Refused(reply.error.unwrap_or_default())) }
}
