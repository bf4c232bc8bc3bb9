//! Counters of the live hierarchy. Plain atomics, read by the runtime's
//! `/metrics` route.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by every actor of a fleet.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Envelope reports sent from a child to its parent.
    pub reports_sent: AtomicU64,
    /// Child reports folded into a pending flush instead of being forwarded.
    pub reports_coalesced: AtomicU64,
    /// DER state updates applied.
    pub states_applied: AtomicU64,
    /// DER state updates rejected (older sequence number).
    pub states_rejected_stale: AtomicU64,
    /// Dispatch shares placed on a node (one per node per order per round).
    pub dispatch_shares: AtomicU64,
    /// Shares a child refused in whole or part.
    pub dispatch_refusals: AtomicU64,
    /// Children that failed or did not answer a dispatch in time.
    pub dispatch_child_failures: AtomicU64,
    /// Re-split rounds after refusals.
    pub resplits: AtomicU64,
    /// Child actors that stopped or panicked.
    pub actor_failures: AtomicU64,
    /// DER actors restarted after a failure.
    pub actor_restarts: AtomicU64,
    /// Telemetry dropped: sequence number not newer than the last applied.
    pub telemetry_replayed: AtomicU64,
    /// Desired documents handed to the device link.
    pub desired_published: AtomicU64,
    /// Device acks: accepted.
    pub acks_accepted: AtomicU64,
    /// Device acks: rejected (their setpoints are re-split).
    pub acks_rejected: AtomicU64,
    /// Device acks: applied.
    pub acks_applied: AtomicU64,
    /// Acks or reports for a desired version never published.
    pub acks_unknown_version: AtomicU64,
    /// Shares re-split after a device rejected its setpoint.
    pub late_refusals: AtomicU64,
    /// DERs taken offline because their device fell silent.
    pub devices_timed_out: AtomicU64,
    /// DERs taken offline by their gateway's last will.
    pub gateways_offline: AtomicU64,
}

impl Metrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// `(name, help, value)` for every counter, for exposition.
    pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "vpp_telemetry_replayed_total",
                "telemetry dropped for a sequence number not newer than the last",
                g(&self.telemetry_replayed),
            ),
            (
                "vpp_desired_published_total",
                "desired documents handed to the device link",
                g(&self.desired_published),
            ),
            (
                "vpp_device_acks_accepted_total",
                "device acks: accepted",
                g(&self.acks_accepted),
            ),
            (
                "vpp_device_acks_rejected_total",
                "device acks: rejected (setpoints re-split)",
                g(&self.acks_rejected),
            ),
            (
                "vpp_device_acks_applied_total",
                "device acks: applied",
                g(&self.acks_applied),
            ),
            (
                "vpp_device_acks_unknown_version_total",
                "acks or reports for a desired version never published",
                g(&self.acks_unknown_version),
            ),
            (
                "vpp_dispatch_late_refusals_total",
                "shares re-split after a device rejected its setpoint",
                g(&self.late_refusals),
            ),
            (
                "vpp_devices_timed_out_total",
                "DERs taken offline because their device fell silent",
                g(&self.devices_timed_out),
            ),
            (
                "vpp_gateways_offline_total",
                "DERs taken offline by their gateway's last will",
                g(&self.gateways_offline),
            ),
            (
                "vpp_rollup_reports_sent_total",
                "envelope reports sent from a child to its parent",
                g(&self.reports_sent),
            ),
            (
                "vpp_rollup_reports_coalesced_total",
                "child reports folded into a pending flush",
                g(&self.reports_coalesced),
            ),
            (
                "vpp_der_states_applied_total",
                "DER state updates applied",
                g(&self.states_applied),
            ),
            (
                "vpp_der_states_rejected_total",
                "DER state updates rejected as stale",
                g(&self.states_rejected_stale),
            ),
            (
                "vpp_dispatch_shares_total",
                "dispatch shares placed on a node",
                g(&self.dispatch_shares),
            ),
            (
                "vpp_dispatch_refusals_total",
                "dispatch shares refused in whole or part",
                g(&self.dispatch_refusals),
            ),
            (
                "vpp_dispatch_child_failures_total",
                "children that failed or timed out during a dispatch",
                g(&self.dispatch_child_failures),
            ),
            (
                "vpp_dispatch_resplits_total",
                "re-split rounds after refusals",
                g(&self.resplits),
            ),
            (
                "vpp_actor_failures_total",
                "child actors that stopped or panicked",
                g(&self.actor_failures),
            ),
            (
                "vpp_actor_restarts_total",
                "DER actors restarted after a failure",
                g(&self.actor_restarts),
            ),
        ]
    }
}
