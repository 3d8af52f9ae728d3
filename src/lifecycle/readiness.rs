//! Readiness: the daemon is ready when every component says so. Components
//! are named (`feed:system_config`, `mirror`, `engine`, `cache_writes`) and
//! report either ready or why not; `/readyz` lists the reasons.
//!
//! Unlike a one-way latch, readiness goes back to false during an outage
//! (a feed that cannot reach CouchDB), so load balancers steer away.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::watch;

/// Shared readiness state.
pub struct Readiness {
    components: Mutex<BTreeMap<String, Option<String>>>,
    ready: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            components: Mutex::default(),
            ready: watch::channel(false).0,
        }
    }
}

impl Readiness {
    /// Registers a component as not ready yet.
    pub fn register(&self, component: &str, why: &str) {
        self.set(component, Err(why.to_string()));
    }

    /// Reports a component's state: `Ok(())` ready, `Err(why)` not.
    pub fn set(&self, component: &str, state: Result<(), String>) {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components.insert(component.to_string(), state.err());
        let ready = components.values().all(Option::is_none);
        drop(components);
        self.ready
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }

    /// Forgets a component (a feed that is no longer followed).
    pub fn remove(&self, component: &str) {
        let mut components = self
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components.remove(component);
        let ready = components.values().all(Option::is_none);
        drop(components);
        self.ready
            .send_if_modified(|current| std::mem::replace(current, ready) != ready);
    }

    /// Whether `component` is ready (`None`: not registered), for a part
    /// of the daemon that waits for another before it starts.
    pub fn component_ready(&self, component: &str) -> Option<bool> {
        let components = self
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components.get(component).map(Option::is_none)
    }

    /// Whether one component has reported ready (false when unknown).
    pub fn is_component_ready(&self, component: &str) -> bool {
        self.component_ready(component) == Some(true)
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// `component: reason` for each component that is not ready.
    pub fn reasons(&self) -> Vec<String> {
        let components = self
            .components
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        components
            .iter()
            .filter_map(|(name, why)| why.as_ref().map(|why| format!("{name}: {why}")))
            .collect()
    }

    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_component_is() {
        let readiness = Readiness::default();
        readiness.register("feed:a", "loading");
        readiness.register("mirror", "loading");
        readiness.set("feed:a", Ok(()));
        assert!(readiness.is_component_ready("feed:a"));
        assert!(!readiness.is_component_ready("mirror"));
        assert!(!readiness.is_component_ready("unknown"));
        assert!(!readiness.is_ready());
        assert_eq!(readiness.reasons(), ["mirror: loading"]);
        readiness.set("mirror", Ok(()));
        assert!(readiness.is_ready());
        readiness.set("feed:a", Err("CouchDB unreachable".into()));
        assert!(!readiness.is_ready(), "readiness follows outages");
        readiness.set("feed:a", Ok(()));
        readiness.register("amqp", "connecting");
        assert!(!readiness.is_ready());
        assert_eq!(readiness.component_ready("mirror"), Some(true));
        assert_eq!(readiness.component_ready("amqp"), Some(false));
        assert_eq!(readiness.component_ready("engine"), None);
    }
}
