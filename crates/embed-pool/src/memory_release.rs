//! Waiting for a released model's memory to show up as free, so the next load under a memory
//! budget does not count bytes that are still held.

use std::time::Duration;

use embed_core::memory::{cuda_memory, live_weight_bytes};
use tokio::time::Instant;

use crate::state::Slot;

/// Memory figures before a release, to see it take effect.
pub(crate) struct MemoryMark {
    live: u64,
    cuda: Option<(usize, u64)>,
}

impl MemoryMark {
    pub(crate) fn take(slot: &Slot) -> Self {
        MemoryMark {
            live: live_weight_bytes(),
            cuda: slot.cuda_index().and_then(|i| cuda_memory(i).ok().map(|m| (i, m.allocated))),
        }
    }

    /// Polls until the process-wide figures dropped by `bytes` (bounded by `timeout`).
    pub(crate) async fn wait_released(&self, name: &str, bytes: u64, timeout: Duration) {
        // A model embed-core does not track (a custom loader's) leaves nothing to wait for.
        if bytes == 0 || self.live < bytes {
            return;
        }
        let live_target = self.live - bytes;
        let cuda_target = self.cuda.map(|(i, allocated)| (i, allocated.saturating_sub(bytes)));
        let deadline = Instant::now() + timeout;
        loop {
            let live_ok = live_weight_bytes() <= live_target;
            let cuda_ok = cuda_target.is_none_or(|(i, t)| cuda_memory(i).map_or(true, |m| m.allocated <= t));
            if live_ok && cuda_ok {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(model = %name, ?timeout, "released memory did not show up in time; going on anyway");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
