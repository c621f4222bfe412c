//! The installer beside the agent (`pillion-cni-install`, the DaemonSet's `install-cni`
//! container): puts the plugin binary and its entry in the node's CNI configuration and
//! keeps them there, and takes them out only when Pillion is uninstalled.
//!
//! Why not remove on every exit: during a rolling update the new installer starts after
//! the old one stops; a gap without our entry would let new pods start uncaptured. So
//! on SIGTERM the binary asks the API server whether the DaemonSet itself is going away
//! (gone or being deleted) and only then uninstalls.
//!
//! The JSON edits here are pure functions, tested without a node.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const PLUGIN_TYPE: &str = "pillion-cni";
pub const KUBECONFIG_NAME: &str = "pillion-cni.kubeconfig";
pub const CA_NAME: &str = "pillion-cni-ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "no CNI configuration in {0}: the node's primary CNI plugin has not written one yet (retrying), or CNI_CONF_DIR is wrong"
    )]
    NoPrimary(PathBuf),
    #[error("{path}: {problem}")]
    BadConfig { path: PathBuf, problem: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io { path: path.to_owned(), source }
}

/// Our entry in the plugin chain.
pub fn entry(agent_socket: &Path, kubeconfig: &Path) -> Value {
    json!({"type": PLUGIN_TYPE, "agentSocket": agent_socket, "kubeconfig": kubeconfig, "enrol": "by-labels"})
}

/// The primary configuration: the first `.conflist`/`.conf` in lexical order, which is
/// the one the runtime uses.
pub fn primary(names: &[String]) -> Option<&str> {
    let mut candidates: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| n.ends_with(".conflist") || n.ends_with(".conf")).collect();
    candidates.sort_unstable();
    candidates.first().copied()
}

/// A single-plugin `.conf` as a `.conflist`, so it can be chained.
pub fn as_conflist(conf: Value) -> Value {
    if conf.get("plugins").is_some() {
        return conf;
    }
    let version = conf.get("cniVersion").cloned().unwrap_or(json!("1.0.0"));
    let name = conf.get("name").cloned().unwrap_or(json!("k8s-pod-network"));
    json!({"cniVersion": version, "name": name, "plugins": [conf]})
}

/// The chain with our entry last (replacing an older one). `None` if unchanged.
pub fn with_entry(conflist: &Value, ours: &Value) -> Result<Option<Value>, String> {
    let mut out = conflist.clone();
    let plugins = out.get_mut("plugins").and_then(Value::as_array_mut).ok_or("no `plugins` list")?;
    let mine = |p: &Value| p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE);
    if plugins.last() == Some(ours) && plugins.iter().filter(|p| mine(p)).count() == 1 {
        return Ok(None);
    }
    plugins.retain(|p| !mine(p));
    plugins.push(ours.clone());
    Ok(Some(out))
}

/// The chain without our entry. `None` if it had none.
pub fn without_entry(conflist: &Value) -> Option<Value> {
    let mut out = conflist.clone();
    let plugins = out.get_mut("plugins")?.as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| p.get("type").and_then(Value::as_str) != Some(PLUGIN_TYPE));
    (plugins.len() != before).then_some(out)
}

/// A kubeconfig for the plugin (it runs in the host's context, outside any pod); `ca_file`
/// is a host path.
pub fn kubeconfig(server: &str, ca_file: &Path, token: &str) -> String {
    let v = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "pillion",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": "pillion-cni", "user": {"token": token}}],
        "contexts": [{"name": "pillion", "context": {"cluster": "local", "user": "pillion-cni"}}]
    });
    // JSON is YAML: kubeconfig readers accept it.
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Writes `bytes` to `path` atomically (temp file and rename), so the runtime never reads
/// a half-written configuration.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("pillion-tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Ensures the primary configuration chains our plugin; returns the file it edited.
/// A `.conf` is replaced by a `.conflist` of the same name.
pub fn ensure_chained(conf_dir: &Path, ours: &Value) -> Result<PathBuf, InstallError> {
    let names: Vec<String> = std::fs::read_dir(conf_dir)
        .map_err(io(conf_dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let name = primary(&names).ok_or_else(|| InstallError::NoPrimary(conf_dir.to_owned()))?;
    let path = conf_dir.join(name);
    let bad = |problem: String| InstallError::BadConfig { path: path.clone(), problem };
    let text = std::fs::read(&path).map_err(io(&path))?;
    let conf: Value = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let list = as_conflist(conf);
    let target = if name.ends_with(".conf") { path.with_extension("conflist") } else { path.clone() };
    match with_entry(&list, ours).map_err(bad)? {
        None if target == path => {}
        updated => {
            let v = updated.unwrap_or(list);
            write_atomic(&target, serde_json::to_string_pretty(&v).unwrap_or_default().as_bytes(), 0o644)?;
            if target != path {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
    }
    Ok(target)
}

/// Removes our entry from every configuration in `conf_dir` (uninstall).
pub fn unchain(conf_dir: &Path) -> Result<(), InstallError> {
    for e in std::fs::read_dir(conf_dir).map_err(io(conf_dir))?.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "conflist") {
            continue;
        }
        let Ok(text) = std::fs::read(&path) else { continue };
        let Ok(v) = serde_json::from_slice::<Value>(&text) else { continue };
        if let Some(clean) = without_entry(&v) {
            write_atomic(&path, serde_json::to_string_pretty(&clean).unwrap_or_default().as_bytes(), 0o644)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kindnet() -> Value {
        json!({"cniVersion": "0.3.1", "name": "kindnet", "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local"}}, {"type": "portmap"}]})
    }

    #[test]
    fn chaining_is_idempotent_and_reversible() {
        let ours = entry(Path::new("/var/run/pillion/n1/agent.sock"), Path::new("/etc/cni/net.d/k"));
        let once = with_entry(&kindnet(), &ours).unwrap().expect("added");
        assert_eq!(once["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(once["plugins"][2]["type"], PLUGIN_TYPE);
        assert_eq!(with_entry(&once, &ours).unwrap(), None, "already there: no rewrite");
        // A new agent socket (node renamed, new image) replaces the old entry.
        let moved = entry(Path::new("/elsewhere.sock"), Path::new("/etc/cni/net.d/k"));
        let twice = with_entry(&once, &moved).unwrap().unwrap();
        assert_eq!(twice["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(without_entry(&twice).unwrap(), kindnet());
        assert_eq!(without_entry(&kindnet()), None);
        assert!(with_entry(&json!({"type": "bridge"}), &ours).is_err());
    }

    #[test]
    fn single_plugin_conf_becomes_a_list_and_the_first_file_wins() {
        let l = as_conflist(json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge"}));
        assert_eq!(l["plugins"][0]["type"], "bridge");
        assert_eq!(l["name"], "net");
        let names = ["99-x.conflist", "10-kindnet.conflist", "README", "05-a.conf"].map(String::from);
        assert_eq!(primary(&names), Some("05-a.conf"));
        assert_eq!(primary(&["README".to_owned()]), None);
    }

    #[test]
    fn ensure_and_unchain_on_a_directory() {
        let dir = std::env::temp_dir().join(format!("pillion-cni-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(ensure_chained(&dir, &json!({})), Err(InstallError::NoPrimary(_))));
        std::fs::write(dir.join("10-net.conf"), r#"{"cniVersion":"1.0.0","name":"net","type":"bridge"}"#).unwrap();
        let ours = entry(Path::new("/s.sock"), Path::new("/k"));
        let edited = ensure_chained(&dir, &ours).unwrap();
        assert_eq!(edited, dir.join("10-net.conflist"));
        assert!(!dir.join("10-net.conf").exists());
        let v: Value = serde_json::from_slice(&std::fs::read(&edited).unwrap()).unwrap();
        assert_eq!(v["plugins"][1]["agentSocket"], "/s.sock");
        unchain(&dir).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&edited).unwrap()).unwrap();
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
