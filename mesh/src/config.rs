//! The local configuration source: one YAML file of Kubernetes-shaped objects (Pillion's
//! Workload, Service and MeshConfig; Kubernetes Namespace; Istio AuthorizationPolicy and
//! PeerAuthentication), parsed with serde-saphyr into a [`crate::model::Model`] and, through
//! [`ConfigWatcher`], reloaded whenever the file changes.
//!
//! The schema is documented in `docs/config.md`. Every error names the file and the line.

mod assemble;
mod document;
mod pillion;
#[cfg(test)]
mod tests;
mod watcher;

use std::path::Path;
use std::sync::Arc;

use serde_saphyr::Spanned;

pub use document::{WAYPOINT_KINDS, is_waypoint_kind};
pub use watcher::{ConfigMetrics, ConfigWatcher, ReloadStatus, WatchOptions};

use crate::model::Model;

/// Why a configuration file was rejected. The last good configuration stays in force.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}; check that it exists and is readable")]
    Read { file: String, source: Arc<std::io::Error> },
    #[error("{file}:{line}:{column}: {problem}")]
    Invalid { file: String, line: u64, column: u64, problem: String },
    #[error("{file}: {problem}")]
    Unlocated { file: String, problem: String },
}

impl ConfigError {
    /// The 1-based line the problem is on, when known.
    pub fn line(&self) -> Option<u64> {
        match self {
            Self::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// A problem found while reading objects, located in the file where possible.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    at: Option<(u64, u64)>,
    msg: String,
}

impl Problem {
    pub(crate) fn at<T>(s: &Spanned<T>, msg: String) -> Self {
        Self { at: Some((s.referenced.line(), s.referenced.column())), msg }
    }

    pub(crate) fn unlocated(msg: &str) -> Self {
        Self { at: None, msg: msg.to_owned() }
    }

    /// Points an unlocated problem at `s`.
    pub(crate) fn or_at<T>(mut self, s: &Spanned<T>) -> Self {
        self.at = self.at.or(Some((s.referenced.line(), s.referenced.column())));
        self
    }

    fn into_error(self, file: &str) -> ConfigError {
        match self.at {
            Some((line, column)) => ConfigError::Invalid { file: file.to_owned(), line, column, problem: self.msg },
            None => ConfigError::Unlocated { file: file.to_owned(), problem: self.msg },
        }
    }
}

impl From<crate::istio::SpecError> for Problem {
    fn from(e: crate::istio::SpecError) -> Self {
        Self { at: e.location(), msg: e.message().to_owned() }
    }
}

/// Kubernetes object names: DNS-1123 subdomains (lower-case alphanumerics, `-`, `.`).
pub(crate) fn check_name(s: &Spanned<String>, what: &str) -> Result<(), Problem> {
    let v = &s.value;
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Problem::at(s, format!("{what} {v:?} is not a valid name: use lower-case letters, digits, `-` and `.`")))
    }
}

/// Parses `text` (the contents of `file`, named in errors) into a model with `version`.
pub fn parse(text: &str, file: &str, version: u64) -> Result<Model, ConfigError> {
    assemble::parse(text, version).map_err(|p| p.into_error(file))
}

/// Reads and parses a config file.
pub fn load_file(path: &Path, version: u64) -> Result<Model, ConfigError> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read { file: file.clone(), source: Arc::new(e) })?;
    parse(&text, &file, version)
}
