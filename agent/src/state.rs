//! Persisted enrolments: one JSON file per pod in `<state-dir>/pods/`, written
//! atomically (temp file + rename) so a crash never leaves a torn record.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::pod::PodSpec;

/// What is persisted for an enrolled pod: its spec plus the netns identity
/// seen at enrolment, so a restarted agent can tell that a netns path now
/// names a different namespace (the pod was replaced) and not adopt it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub spec: PodSpec,
    pub netns_cookie: u64,
    pub netns_inode: u64,
}

/// A record file that could not be read, with the reason.
pub type Unreadable = (PathBuf, String);

#[derive(Debug, Clone)]
pub struct StateDir {
    pods: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> io::Result<Self> {
        let pods = dir.join("pods");
        std::fs::create_dir_all(&pods)?;
        Ok(Self { pods })
    }

    fn path(&self, spec: &PodSpec) -> PathBuf {
        self.pods.join(format!("{}.json", spec.file_name()))
    }

    pub fn save(&self, record: &PodRecord) -> io::Result<()> {
        let path = self.path(&record.spec);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(record)?)?;
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(&self, spec: &PodSpec) -> io::Result<()> {
        match std::fs::remove_file(self.path(spec)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable record; unreadable files are reported, not fatal, so
    /// one corrupt record cannot keep the other pods from being adopted.
    pub fn load(&self) -> io::Result<(Vec<PodRecord>, Vec<Unreadable>)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.pods)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<PodRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(record) => good.push(record),
                Err(e) => bad.push((path, e)),
            }
        }
        Ok((good, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> PodRecord {
        PodRecord {
            spec: PodSpec {
                name: name.into(),
                namespace: "ns".into(),
                netns: "/var/run/netns/p".into(),
                ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                cgroup: None,
                uid: None,
            },
            netns_cookie: 42,
            netns_inode: 7,
        }
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path()).unwrap();
        state.save(&record("a")).unwrap();
        state.save(&record("b")).unwrap();
        std::fs::write(dir.path().join("pods/broken.json"), b"{not json").unwrap();
        let (good, bad) = state.load().unwrap();
        assert_eq!(good, vec![record("a"), record("b")]);
        assert_eq!(bad.len(), 1);
        state.remove(&record("a").spec).unwrap();
        state.remove(&record("a").spec).unwrap();
        assert_eq!(state.load().unwrap().0, vec![record("b")]);
    }
}
