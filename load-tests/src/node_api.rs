//! A small blocking client of a node's HTTP API, for benchmark programs:
//! the few calls `vpp-loadgen --api` makes (health, node capacity,
//! dispatches). Errors carry the API's own message.

use anyhow::{anyhow, Result};
use serde_json::Value;
use vpp_runtime::client::Client;

/// Talks to one node, through the CLI's client (`vpp_runtime::client`).
pub struct NodeApi {
    client: Client,
}

impl NodeApi {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:8080`),
    /// signed in with `token` (an operator's or aggregator's).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Self {
            client: Client::new(base).with_token(token),
        }
    }

    /// `GET path`, answer as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.client.get(path)
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.client.post_json(path, body)
    }

    /// The root of the node's hierarchy (`GET /api/v1/health`).
    pub fn root(&self) -> Result<String> {
        let h = self.get("/api/v1/health")?;
        h["root"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the node at {} has no hierarchy loaded", self.client.base()))
    }

    /// Devices online under `node`, as the node sees them
    /// (`GET /api/v1/nodes/{id}`: `capacity.envelope.total.online`).
    pub fn online(&self, node: &str) -> Result<u64> {
        let v = self.get(&format!("/api/v1/nodes/{node}"))?;
        v["capacity"]["envelope"]["total"]["online"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET /api/v1/nodes/{node}: no capacity.envelope.total.online"))
    }

    /// Device messages the node has accepted so far, and the site batches
    /// that carried some of them (`vpp_mqtt_accepted_total` and
    /// `vpp_mqtt_site_batches_total` in `GET /metrics`).
    pub fn accepted(&self) -> Result<(u64, u64)> {
        let text = self.client.get_text("/metrics")?;
        let accepted = metric(&text, "vpp_mqtt_accepted_total")
            .ok_or_else(|| anyhow!("GET /metrics: no vpp_mqtt_accepted_total"))?;
        Ok((
            accepted,
            metric(&text, "vpp_mqtt_site_batches_total").unwrap_or(0),
        ))
    }

    /// How far the node's ingest runs behind the devices, ms
    /// (`vpp_mqtt_telemetry_lag_ms` in `GET /metrics`).
    pub fn ingest_lag_ms(&self) -> Result<u64> {
        let text = self.client.get_text("/metrics")?;
        metric(&text, "vpp_mqtt_telemetry_lag_ms")
            .ok_or_else(|| anyhow!("GET /metrics: no vpp_mqtt_telemetry_lag_ms"))
    }

    /// How far `node`'s roll-up lags the devices, ms: the age of the newest
    /// telemetry its envelope reflects (`GET /api/v1/nodes/{id}/capacity`:
    /// `staleness_ms`); `None` before any telemetry.
    pub fn staleness_ms(&self, node: &str) -> Result<Option<u64>> {
        let v = self.get(&format!("/api/v1/nodes/{node}/capacity?children=0"))?;
        Ok(v["staleness_ms"].as_u64())
    }

    /// The sequence number of a DER's last state (`GET /api/v1/nodes/{id}`:
    /// `capacity.state.seq`); 0 until telemetry arrived.
    pub fn der_seq(&self, der: &str) -> Result<u64> {
        let v = self.get(&format!("/api/v1/nodes/{der}"))?;
        v["capacity"]["state"]["seq"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET /api/v1/nodes/{der}: no capacity.state.seq (not a DER?)"))
    }
}

/// The value of an unlabelled counter in Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_an_unlabelled_counter_and_nothing_else() {
        let text = "# HELP vpp_mqtt_accepted_total x\n# TYPE vpp_mqtt_accepted_total counter\n\
                    vpp_mqtt_accepted_total_other 5\nvpp_mqtt_accepted_total 42\n";
        assert_eq!(super::metric(text, "vpp_mqtt_accepted_total"), Some(42));
        assert_eq!(super::metric(text, "vpp_mqtt_missing"), None);
    }
}
