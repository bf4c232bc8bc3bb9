//! Sites: a place behind one grid connection that holds DERs.

use serde::{Deserialize, Serialize};

/// Customer segment of a site (programs are often limited to some).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Homes.
    Residential,
    /// Shops, offices, public buildings.
    Commercial,
    /// Factories and large process loads.
    Industrial,
}

/// Where a site is, geographically and on the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    /// Latitude, degrees (-90..=90).
    pub lat: f64,
    /// Longitude, degrees (-180..=180).
    pub lon: f64,
    /// Grid zone (utility's pricing or balancing zone).
    pub zone: String,
    /// Distribution feeder within the zone.
    pub feeder: String,
}

impl Location {
    /// Checks coordinates and label lengths.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err(format!("lat {} is outside -90..=90", self.lat));
        }
        if !(self.lon.is_finite() && (-180.0..=180.0).contains(&self.lon)) {
            return Err(format!("lon {} is outside -180..=180", self.lon));
        }
        for (name, v) in [("zone", &self.zone), ("feeder", &self.feeder)] {
            if v.len() > 64 || v.chars().any(char::is_control) {
                return Err(format!("{name} must be at most 64 printable characters"));
            }
        }
        Ok(())
    }
}
