//! Conversions between the kW/kWh of files and the API and the integer W/Wh
//! used inside.

/// Largest power accepted for one rating or request: 100 GW. Anything larger is
/// a typo (or an attack) rather than a real resource.
pub const MAX_POWER_KW: f64 = 100_000_000.0;

/// Why a kW (or kWh) figure was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UnitError {
    /// Not a finite number.
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    /// Below zero where only non-negative values make sense.
    #[error("{0} is negative")]
    Negative(f64),
    /// Above [`MAX_POWER_KW`].
    #[error("{0} is absurdly large (limit {MAX_POWER_KW})")]
    Absurd(f64),
}

/// kW (or kWh) → W (or Wh), rounded to the nearest unit. Rejects NaN,
/// infinities, negatives and absurd magnitudes.
pub fn kilo_to_unit(kilo: f64) -> Result<u64, UnitError> {
    if !kilo.is_finite() {
        return Err(UnitError::NotFinite(kilo));
    }
    if kilo < 0.0 {
        return Err(UnitError::Negative(kilo));
    }
    if kilo > MAX_POWER_KW {
        return Err(UnitError::Absurd(kilo));
    }
    Ok((kilo * 1000.0).round() as u64)
}

/// Signed kW → signed W (for net power, which may be negative = export).
pub fn kilo_to_unit_signed(kilo: f64) -> Result<i64, UnitError> {
    if !kilo.is_finite() {
        return Err(UnitError::NotFinite(kilo));
    }
    if kilo.abs() > MAX_POWER_KW {
        return Err(UnitError::Absurd(kilo));
    }
    Ok((kilo * 1000.0).round() as i64)
}

/// W (or Wh) → kW (or kWh) for display.
pub fn unit_to_kilo(unit: u64) -> f64 {
    unit as f64 / 1000.0
}

/// Signed W → kW for display.
pub fn unit_to_kilo_signed(unit: i64) -> f64 {
    unit as f64 / 1000.0
}

/// Currency per kWh → micro-currency per kWh (the integer cost unit).
pub fn cost_to_micros(per_kwh: f64) -> Result<u64, UnitError> {
    if !per_kwh.is_finite() {
        return Err(UnitError::NotFinite(per_kwh));
    }
    if per_kwh < 0.0 {
        return Err(UnitError::Negative(per_kwh));
    }
    if per_kwh > 1_000_000.0 {
        return Err(UnitError::Absurd(per_kwh));
    }
    Ok((per_kwh * 1_000_000.0).round() as u64)
}

/// Micro-currency per kWh → currency per kWh for display.
pub fn micros_to_cost(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_and_rejects() {
        assert_eq!(kilo_to_unit(5.0), Ok(5000));
        assert_eq!(kilo_to_unit(0.0015), Ok(2));
        assert!(matches!(kilo_to_unit(-1.0), Err(UnitError::Negative(_))));
        assert!(matches!(
            kilo_to_unit(f64::NAN),
            Err(UnitError::NotFinite(_))
        ));
        assert!(matches!(kilo_to_unit(1e12), Err(UnitError::Absurd(_))));
        assert_eq!(kilo_to_unit_signed(-2.5), Ok(-2500));
        assert_eq!(unit_to_kilo(1500), 1.5);
        assert_eq!(cost_to_micros(0.12), Ok(120_000));
    }
}
