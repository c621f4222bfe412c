//! Readiness as a set of named conditions, all of which must hold.
//!
//! Named rather than a single flag so `/healthz/ready` can say what is still missing
//! ("kernel" after a failed program load reads very differently from "config").

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Shared readiness state. Cheap to clone; every clone sees the same conditions.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    conditions: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Readiness {
    /// Starts with every named condition unmet.
    pub fn new<S: Into<String>>(conditions: impl IntoIterator<Item = S>) -> Self {
        let map = conditions.into_iter().map(|c| (c.into(), false)).collect();
        Self { conditions: Arc::new(Mutex::new(map)) }
    }

    /// Marks a condition met or unmet. An unknown name is added, so a subsystem can declare
    /// its own condition late; it then blocks readiness until met.
    pub fn set(&self, condition: &str, met: bool) {
        self.lock().insert(condition.to_owned(), met);
    }

    /// Conditions not yet met, sorted.
    pub fn pending(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, met)| !**met).map(|(name, _)| name.clone()).collect()
    }

    pub fn is_ready(&self) -> bool {
        self.lock().values().all(|met| *met)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        // The map holds plain booleans, so state left by a panicking holder is still valid.
        self.conditions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_conditions_must_hold() {
        let r = Readiness::new(["kernel", "config"]);
        assert!(!r.is_ready());
        assert_eq!(r.pending(), ["config", "kernel"]);
        r.set("config", true);
        assert_eq!(r.pending(), ["kernel"]);
        r.clone().set("kernel", true);
        assert!(r.is_ready());
        r.set("certificates", false);
        assert_eq!(r.pending(), ["certificates"]);
    }
}
