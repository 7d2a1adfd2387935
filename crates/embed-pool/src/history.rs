//! The pool's recent history: a bounded ring of what happened to its models (loaded, failed
//! to load, offloaded, restored, released, and why), so an operator can see why a request had
//! to wait.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::EvictionCause;

/// What happened to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolAction {
    /// It was loaded (the event's duration is the load's).
    Loaded,
    /// Its load failed or timed out.
    LoadFailed,
    /// It was released: evicted for a reason, or unloaded on request (the duration is the
    /// release's, from the decision until its memory was given back).
    Unloaded,
    /// Its weights went to host memory (the warm tier); the bytes are the host copy's.
    Offloaded,
    /// Its weights came back to the device from the warm tier.
    Restored,
    /// A restore failed (it stayed warm, or was released if its service died).
    RestoreFailed,
}

impl PoolAction {
    /// A short lowercase name (`loaded`, `load_failed`, `unloaded`, `offloaded`, `restored`,
    /// `restore_failed`), for logs and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolAction::Loaded => "loaded",
            PoolAction::LoadFailed => "load_failed",
            PoolAction::Unloaded => "unloaded",
            PoolAction::Offloaded => "offloaded",
            PoolAction::Restored => "restored",
            PoolAction::RestoreFailed => "restore_failed",
        }
    }
}

/// One entry of [`crate::Pool::history`].
#[derive(Debug, Clone, PartialEq)]
pub struct PoolEvent {
    /// The pool's name for the model.
    pub model: String,
    /// What happened.
    pub action: PoolAction,
    /// Why a model was released (`None` for loads, and for releases of a load that finished
    /// after the pool closed).
    pub cause: Option<EvictionCause>,
    /// The model's weight bytes (0 for a failed load).
    pub weight_bytes: u64,
    /// When it finished (wall clock).
    pub at: SystemTime,
    /// How long it took.
    pub duration: Duration,
}

/// The ring: the newest `capacity` events, oldest first.
pub(crate) struct History {
    capacity: usize,
    events: Mutex<VecDeque<PoolEvent>>,
}

impl History {
    pub(crate) fn new(capacity: usize) -> Self {
        History { capacity, events: Mutex::new(VecDeque::with_capacity(capacity.min(1024))) }
    }

    pub(crate) fn record(&self, event: PoolEvent) {
        if self.capacity == 0 {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.len() == self.capacity {
            events.pop_front();
        }
        events.push_back(event);
    }

    pub(crate) fn snapshot(&self) -> Vec<PoolEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(model: &str) -> PoolEvent {
        PoolEvent { model: model.into(), action: PoolAction::Loaded, cause: None, weight_bytes: 1, at: SystemTime::now(), duration: Duration::ZERO }
    }

    #[test]
    fn keeps_the_newest_events_in_order() {
        let h = History::new(3);
        for m in ["a", "b", "c", "d", "e"] {
            h.record(event(m));
        }
        let names: Vec<String> = h.snapshot().into_iter().map(|e| e.model).collect();
        assert_eq!(names, ["c", "d", "e"]);
        let off = History::new(0);
        off.record(event("a"));
        assert!(off.snapshot().is_empty(), "capacity 0 keeps nothing");
    }
}
