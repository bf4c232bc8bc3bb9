//! # vpp-runtime: the `vpp` node and CLI
//!
//! ```text
//!   vpp (main.rs) ── cli.rs ──┬── serve.rs ── Node (node.rs) ── api.rs (axum)
//!                             │                 ├── vpp_store::Store (sled)
//!                             │                 └── vpp_actors::Fleet (ractor)
//!                             ├── broker (cli/broker.rs) ── mqtt::EmbeddedBroker (rumqttd)
//!                             └── commands on a running node: client.rs (HTTP)
//!                                 or, when none runs, on the data dir directly
//! ```
//!
//! The binary only parses arguments, sets up tracing and calls into here.

#![deny(missing_docs, unreachable_pub, unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod devices;
pub mod metering;
pub mod mqtt;
pub mod node;
pub mod otel;
pub mod programs;
pub mod serve;
