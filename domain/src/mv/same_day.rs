//! Same-day baselines (formula on [`compute`](super::compute)).

use super::calendar::format_time_of_day;
use super::report::{SameDayBasis, Window};
use super::{div_round, BaselineReport, EventWindow, MvError, SameDaySpec, HOUR_MS};
use crate::meter::MeterSeries;

/// The flat same-day baseline per event interval; fills `report.same_day`.
pub(super) fn baseline(
    spec: &SameDaySpec,
    series: &MeterSeries,
    event: &EventWindow,
    report: &mut BaselineReport,
) -> Result<Vec<(u64, i64)>, MvError> {
    let mut windows = Vec::new();
    if spec.before_hours > 0 {
        let end = event
            .start_ms
            .saturating_sub(u64::from(spec.gap_before_hours) * HOUR_MS);
        windows.push(Window {
            start_ms: end.saturating_sub(u64::from(spec.before_hours) * HOUR_MS),
            end_ms: end,
        });
    }
    if spec.after_hours > 0 {
        let start = event
            .end_ms
            .saturating_add(u64::from(spec.gap_after_hours) * HOUR_MS);
        windows.push(Window {
            start_ms: start,
            end_ms: start.saturating_add(u64::from(spec.after_hours) * HOUR_MS),
        });
    }
    let (mut sum, mut readings, mut missing) = (0i128, 0u32, 0u32);
    for w in &windows {
        for t in series.starts(w.start_ms, w.end_ms) {
            match series.get(t) {
                Some(v) => {
                    sum += i128::from(v);
                    readings += 1;
                }
                None => missing += 1,
            }
        }
    }
    if readings == 0 {
        let shown: Vec<String> = windows
            .iter()
            .map(|w| {
                format!(
                    "{}–{}",
                    format_time_of_day(w.start_ms, event.utc_offset_min),
                    format_time_of_day(w.end_ms, event.utc_offset_min)
                )
            })
            .collect();
        return Err(MvError::NoReadings(format!(
            "in the same-day window(s) {}",
            shown.join(" and ")
        )));
    }
    let avg_w = div_round(sum, i128::from(readings)) as i64;
    report.same_day = Some(SameDayBasis {
        windows,
        readings,
        missing_intervals: missing,
        avg_w,
    });
    Ok(series
        .starts(event.start_ms, event.end_ms)
        .map(|t| (t, avg_w))
        .collect())
}
