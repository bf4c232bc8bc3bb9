//! Child reports to a parent on the same member, without a message each.
//!
//! A wave of telemetry makes every site report; a message per report would
//! cost the parent a mailbox round trip per child (a quarter of a million at
//! 1M DERs), and tokio runs a woken parent at once, so reports would not
//! batch by themselves. Instead a child puts its latest envelope (shared,
//! not copied: the parent keeps it as the child's) into the parent's inbox and sends a message only to the parent that is not yet
//! armed:
//!
//! ```text
//!   child:  put(idx, env) ── inbox was not armed? ──► cast ReportsWaiting
//!   parent: ReportsWaiting → arm the flush timer (the root drains at once)
//!           Flush          → disarm, drain, fold into the sum, report up
//!           any other msg  → drain first, so views and splits see the sum
//!                            as of every report made so far
//! ```
//!
//! So a parent handles one message per window however many children
//! reported, and still reports up once per window, T after the first report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vpp_domain::FlexEnvelope;

/// The latest reports of a parent's local children, in arrival order.
#[derive(Default)]
pub(crate) struct Inbox {
    reports: Mutex<Vec<(u32, Arc<FlexEnvelope>)>>,
    /// A `ReportsWaiting` is on its way or the parent's flush is pending.
    armed: AtomicBool,
}

impl Inbox {
    /// Queues child `idx`'s envelope. True if the parent must be told
    /// (it was not armed; now it is).
    pub(crate) fn put(&self, idx: u32, env: Arc<FlexEnvelope>) -> bool {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((idx, env));
        !self.armed.swap(true, Ordering::AcqRel)
    }

    /// Lets the next report tell the parent again. Call before draining,
    /// so that a report put after the drain is never left unannounced.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
    }

    /// Moves every queued report into `out` (which it clears first).
    pub(crate) fn drain(&self, out: &mut Vec<(u32, Arc<FlexEnvelope>)>) {
        out.clear();
        let mut r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if !r.is_empty() {
            std::mem::swap(&mut *r, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_report_after_disarm_asks_for_a_message() {
        let inbox = Inbox::default();
        let env = Arc::new(FlexEnvelope::zero());
        assert!(inbox.put(0, env.clone()));
        assert!(!inbox.put(1, env.clone()));
        assert!(!inbox.put(0, env.clone()));
        let mut out = Vec::new();
        inbox.drain(&mut out);
        assert_eq!(out.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 0]);
        // Drained but still armed: the flush that disarms is still to come.
        assert!(!inbox.put(2, env.clone()));
        inbox.disarm();
        assert!(inbox.put(3, env.clone()));
        inbox.drain(&mut out);
        assert_eq!(out.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3]);
        inbox.drain(&mut out);
        assert!(out.is_empty());
    }
}
