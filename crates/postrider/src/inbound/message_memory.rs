//! The memory budget for complete messages. A message arrives into an [`Incoming`] (a small
//! buffer, then a file); only when its last octet is in does the relay need it whole in
//! memory — for DKIM/DMARC, the data stage, signing and the spool write, which make a few
//! copies of it. Those steps wait here for their share of `[limits] message_memory`, so a
//! thousand clients finishing 25 MiB messages at once take turns instead of taking 75 GiB.
//!
//! [`Incoming`]: postrider_queue::Incoming

use tokio::sync::{Semaphore, SemaphorePermit};

/// How many copies of a message are alive at once at most while it is checked and stored
/// (received, with a header added, signed, encoded for the spool), and so how much of the
/// budget one message takes.
pub const COPIES: u64 = 4;

/// A message arriving stays in memory up to this size; a larger one goes to a file.
pub const IN_MEMORY: usize = 32 * 1024;

/// A budget of bytes, counted in KiB permits.
pub struct MessageMemory {
    permits: Semaphore,
    total_kib: u32,
}

impl MessageMemory {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> MessageMemory {
        let total_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        MessageMemory {
            permits: Semaphore::new(total_kib as usize),
            total_kib,
        }
    }

    /// Waits until a message of `size` octets may be held in memory; the share is given
    /// back when the permit drops. A message larger than the whole budget takes all of it.
    pub async fn reserve(&self, size: u64) -> Option<SemaphorePermit<'_>> {
        let kib = (size.saturating_mul(COPIES) / 1024).max(1);
        let kib = u32::try_from(kib).unwrap_or(u32::MAX).min(self.total_kib);
        // The semaphore is never closed, so this only fails if it were.
        self.permits.acquire_many(kib).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_take_turns_within_the_budget() {
        let budget = MessageMemory::new(100 * 1024 * 1024);
        let a = budget.reserve(20 * 1024 * 1024).await.unwrap();
        // 80 MiB taken: a second 20 MiB message must wait, a small one need not.
        let small = budget.reserve(1000).await.unwrap();
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(50),
                budget.reserve(20 * 1024 * 1024)
            )
            .await
            .is_err()
        );
        drop((a, small));
        assert!(budget.reserve(20 * 1024 * 1024).await.is_some());
        // Larger than the budget: takes all of it rather than waiting for ever.
        assert!(budget.reserve(u64::MAX).await.is_some());
    }
}
