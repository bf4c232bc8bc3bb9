//! A small blocking client of a node's HTTP API, for benchmark programs:
//! the few calls `vpp-loadgen --api` makes (health, node capacity,
//! dispatches). Errors carry the API's own message.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// Largest answer read.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// Talks to one node.
pub struct NodeApi {
    base: String,
    agent: ureq::Agent,
}

impl NodeApi {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn finish(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value> {
        let mut resp = r.map_err(|e| anyhow!("cannot reach the node at {}: {e}", self.base))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .with_context(|| format!("reading the answer to {what}"))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let msg = v["error"]["message"].as_str().unwrap_or(text.trim());
        Err(anyhow!("{what}: {} {msg}", status.as_u16()))
    }

    /// `GET path`, answer as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.finish(&format!("GET {path}"), self.agent.get(&url).call())
    }

    /// `POST path` with a JSON body, answer as JSON.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.finish(
            &format!("POST {path}"),
            self.agent.post(&url).send_json(body),
        )
    }

    /// The root of the node's hierarchy (`GET /api/v1/health`).
    pub fn root(&self) -> Result<String> {
        let h = self.get("/api/v1/health")?;
        h["root"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the node at {} has no hierarchy loaded", self.base))
    }

    /// Devices online under `node`, as the node sees them
    /// (`GET /api/v1/nodes/{id}`: `capacity.envelope.total.online`).
    pub fn online(&self, node: &str) -> Result<u64> {
        let v = self.get(&format!("/api/v1/nodes/{node}"))?;
        v["capacity"]["envelope"]["total"]["online"]
            .as_u64()
            .ok_or_else(|| anyhow!("GET /api/v1/nodes/{node}: no capacity.envelope.total.online"))
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
