//! Helpers shared by the actor tests.

#![allow(dead_code)]

use std::time::Duration;

use vpp_domain::NodeId;

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Polls `f` until it returns `Some`, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
