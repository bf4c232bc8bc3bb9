//! The simulator's one error type.

use std::path::PathBuf;

/// Why the simulator could not start or a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("{key}: {message}")]
    Config {
        /// The key, dotted as in scenario files (`faults.refusing_share`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A scenario file could not be read or parsed.
    #[error("scenario file {}: {message}", path.display())]
    Scenario {
        /// The file.
        path: PathBuf,
        /// What is wrong (a TOML error names line, column and key).
        message: String,
    },
    /// The hierarchy file a scenario names is not valid.
    #[error(transparent)]
    Hierarchy(#[from] vpp_domain::hierarchy_file::FileError),
    /// The broker could not be reached at start.
    #[error("cannot reach the MQTT broker at {addr}: {source}")]
    Broker {
        /// `host:port`.
        addr: String,
        /// The connection error.
        #[source]
        source: std::io::Error,
    },
    /// There is nothing to simulate.
    #[error("no devices to simulate: the fleet has no DERs")]
    NoDevices,
}

impl SimError {
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        SimError::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}
