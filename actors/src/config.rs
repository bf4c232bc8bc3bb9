//! Tunables of the actor hierarchy.

use std::time::Duration;

/// How the live hierarchy behaves. Defaults suit a fleet of a million DERs on
/// two cores.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// An aggregate reports its envelope upward at most this often. Lower means
    /// fresher roll-ups and more messages.
    pub rollup_interval: Duration,
    /// How long a dispatch may take from the node it was sent to down to every
    /// DER. Children that have not answered by then count as failed and their
    /// share is re-split.
    pub dispatch_timeout: Duration,
    /// Re-split rounds after refusals before the rest is reported as shortfall.
    pub max_resplits: u32,
    /// Concurrent spawns while building the tree.
    pub spawn_parallelism: usize,
    /// A DER whose device has sent no telemetry for this long goes offline
    /// and leaves the envelope (only DERs that report telemetry age out).
    pub offline_after: Duration,
    /// A site writes its DERs' state when only telemetry changed it at most
    /// this often (and when it stops, and at its next sweep for silent
    /// devices); a change of setpoints, a state set through the API or a
    /// DER going offline is written at once. Zero: after every message.
    /// At 100k readings a second, writing every one took a fifth of the
    /// node's CPU.
    pub telemetry_persist_every: Duration,
    /// In a cluster, an aggregate whose parent runs on another member checks
    /// this often whether the link lost anything since its last report
    /// (`RemoteLink::losses`: a peer reconnected), and if so sends it again.
    pub remote_report_interval: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            rollup_interval: Duration::from_millis(100),
            dispatch_timeout: Duration::from_secs(30),
            max_resplits: 3,
            spawn_parallelism: 4,
            offline_after: Duration::from_secs(60),
            telemetry_persist_every: Duration::from_secs(30),
            remote_report_interval: Duration::from_secs(5),
        }
    }
}
