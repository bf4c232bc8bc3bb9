//! A small blocking client of the node's HTTP API, used by the CLI.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

/// Talks to one node.
pub struct Client {
    base: String,
    agent: ureq::Agent,
    /// Bearer token sent with every request.
    token: Option<String>,
}

/// Largest answer read (a full hierarchy export of a big fleet).
const MAX_BODY: u64 = 2 * 1024 * 1024 * 1024;

impl Client {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent,
            token: None,
        }
    }

    /// Sends `token` (`vpp_…`) as `Authorization: Bearer` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        self
    }

    fn auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => r.header("Authorization", format!("Bearer {t}")),
            None => r,
        }
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish(
        &self,
        what: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String> {
        let mut resp = r.map_err(|e| {
            anyhow!(
                "cannot reach the node at {}: {e}\n(is `vpp serve` running? point at it with --node URL)",
                self.base
            )
        })?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .with_context(|| format!("reading the answer to {what}"))?;
        if status.is_success() {
            return Ok(text);
        }
        // Show the API's error message (and located problems) as they are.
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let msg = v["error"]["message"].as_str().unwrap_or(text.trim());
        Err(anyhow!("{what}: {} {}", status.as_u16(), msg))
    }

    /// GET, answer as text.
    pub fn get_text(&self, path: &str) -> Result<String> {
        self.finish(
            &format!("GET {path}"),
            self.auth(self.agent.get(&self.url(path))).call(),
        )
    }

    /// GET, answer as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        Ok(serde_json::from_str(&self.get_text(path)?)?)
    }

    /// POST a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let t = self.finish(
            &format!("POST {path}"),
            self.auth(self.agent.post(&self.url(path))).send_json(body),
        )?;
        Ok(serde_json::from_str(&t)?)
    }

    /// PUT a JSON body.
    pub fn put_json(&self, path: &str, body: &Value) -> Result<Value> {
        let t = self.finish(
            &format!("PUT {path}"),
            self.auth(self.agent.put(&self.url(path))).send_json(body),
        )?;
        Ok(serde_json::from_str(&t)?)
    }

    /// PUT a text body (hierarchy files).
    pub fn put_text(&self, path: &str, body: String) -> Result<Value> {
        let t = self.finish(
            &format!("PUT {path}"),
            self.auth(self.agent.put(&self.url(path)))
                .content_type("application/toml")
                .send(body),
        )?;
        Ok(serde_json::from_str(&t)?)
    }
}
