use vpp_domain::{DerKind, DerRating, Direction};
use vpp_protocol::{Desired, DesiredSetpoint};

use super::*;
use crate::physics::{battery::Battery, ev_charger::EvCharger, pv::Pv};

const T0: u64 = 1_763_700_000_000;

fn clock() -> SimClock {
    // Solar noon at longitude 0 at T0.
    SimClock::new(T0, 1.0, Some(12.0))
}

fn battery_rating() -> DerRating {
    let mut r = DerRating::new(DerKind::Battery, 5000, 5000);
    r.energy_wh = 10_000;
    r.soc_min_pct = 10;
    r.soc_max_pct = 90;
    r.ramp_w_per_min = 6000;
    r
}

fn battery(soc: f64) -> Device {
    let r = battery_rating();
    Device::new(&r, 0.0, SplitMix64::new(1), T0, 1000)
        .with_plant(Plant::Battery(Battery::with_soc(&r, soc)), &clock())
}

fn doc(version: u64, dir: Direction, power_w: u64, start: u64, end: u64) -> Desired {
    Desired {
        v: 1,
        version,
        setpoints: vec![DesiredSetpoint {
            dispatch: "d1".into(),
            direction: dir,
            power_w,
            target_power_w: 0,
            start_ms: start,
            end_ms: end,
            ramp_w_per_min: 0,
        }],
    }
}

#[test]
fn ignores_versions_not_newer_than_seen() {
    let c = clock();
    let mut d = battery(50.0);
    let up = doc(5, Direction::Up, 3000, T0, T0 + 3_600_000);
    assert!(matches!(d.receive(&up, &c, T0), Receipt::Accepted { .. }));
    assert_eq!(d.receive(&up, &c, T0 + 10), Receipt::Stale);
    assert_eq!(
        d.receive(&doc(4, Direction::Down, 1000, T0, T0 + 1), &c, T0 + 20),
        Receipt::Stale
    );
    assert_eq!(d.held_version(), 5);
}

#[test]
fn ramp_is_respected_and_applied_once_within_tolerance() {
    let c = clock();
    let mut d = battery(50.0);
    let r = d.receive(&doc(1, Direction::Up, 3000, T0, T0 + 3_600_000), &c, T0);
    assert_eq!(r, Receipt::Accepted { applied: false });
    // 6 kW/min: 3 kW takes 30 s. After 10 s the battery exports 1 kW.
    d.advance(&c, T0 + 10_000);
    assert!((d.power_w() + 1000.0).abs() < 1.0, "{}", d.power_w());
    assert!(!d.take_applied(&c, T0 + 10_000));
    let wait = d.ms_until_applied(&c, T0 + 10_000);
    assert!((19_000..=21_000).contains(&wait), "{wait}");
    d.advance(&c, T0 + 30_000);
    assert!((d.power_w() + 3000.0).abs() < 1.0);
    assert!(d.take_applied(&c, T0 + 30_000));
    // Only once.
    assert!(!d.take_applied(&c, T0 + 31_000));
    let t = d.telemetry(T0 + 31_000);
    assert_eq!(t.power_w, -3000);
    assert_eq!(t.seq, 1001);
    assert!(t.validate().is_ok());
    let rep = d.reported(&c, T0 + 31_000);
    assert_eq!((rep.version, rep.target_power_w), (1, Some(-3000)));
}

#[test]
fn a_slower_setpoint_ramp_wins() {
    let c = clock();
    let mut d = battery(50.0);
    let mut up = doc(1, Direction::Up, 3000, T0, T0 + 3_600_000);
    up.setpoints[0].ramp_w_per_min = 600;
    d.receive(&up, &c, T0);
    d.advance(&c, T0 + 60_000);
    assert!((d.power_w() + 600.0).abs() < 1.0, "{}", d.power_w());
}

#[test]
fn setpoint_end_returns_to_natural() {
    let c = clock();
    let mut d = battery(50.0);
    d.receive(&doc(1, Direction::Up, 3000, T0, T0 + 60_000), &c, T0);
    d.advance(&c, T0 + 59_000);
    assert!((d.power_w() + 3000.0).abs() < 1.0);
    d.advance(&c, T0 + 120_000);
    assert!(d.power_w().abs() < 1.0, "{}", d.power_w());
    assert_eq!(d.reported(&c, T0 + 120_000).target_power_w, None);
}

#[test]
fn an_instant_move_is_applied_on_receipt() {
    let c = clock();
    let mut d = battery(50.0);
    // An empty document (no command) for an idle battery: already there.
    let none = Desired {
        v: 1,
        version: 3,
        setpoints: vec![],
    };
    assert_eq!(
        d.receive(&none, &c, T0),
        Receipt::Accepted { applied: true }
    );
    assert!(!d.applied_pending());
}

#[test]
fn future_setpoints_are_not_applied_before_they_start() {
    let c = clock();
    let mut d = battery(50.0);
    let later = doc(1, Direction::Up, 2000, T0 + 60_000, T0 + 600_000);
    assert_eq!(
        d.receive(&later, &c, T0),
        Receipt::Accepted { applied: false }
    );
    d.advance(&c, T0 + 30_000);
    assert!(!d.take_applied(&c, T0 + 30_000));
    assert!(d.power_w().abs() < 1.0);
    // 30 s to the start plus 20 s of ramp.
    let wait = d.ms_until_applied(&c, T0 + 30_000);
    assert!((49_000..=51_000).contains(&wait), "{wait}");
    d.advance(&c, T0 + 81_000);
    assert!(d.take_applied(&c, T0 + 81_000));
}

#[test]
fn physics_rejections_keep_the_held_document() {
    let c = clock();
    let mut d = battery(10.0);
    let r = d.receive(&doc(7, Direction::Up, 2000, T0, T0 + 600_000), &c, T0);
    match r {
        Receipt::Rejected(reason) => assert!(reason.contains("cannot discharge"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.held_version(), 0);
    // The same version again is stale; a newer feasible one is accepted.
    assert_eq!(
        d.receive(&doc(7, Direction::Up, 2000, T0, T0 + 600_000), &c, T0),
        Receipt::Stale
    );
    assert!(matches!(
        d.receive(&doc(8, Direction::Down, 2000, T0, T0 + 600_000), &c, T0),
        Receipt::Accepted { .. }
    ));
}

#[test]
fn a_refusing_device_rejects_with_the_fault_reason() {
    let c = clock();
    let mut d = battery(50.0);
    d.refusing = true;
    assert_eq!(
        d.receive(&doc(1, Direction::Up, 100, T0, T0 + 1000), &c, T0),
        Receipt::Rejected(REFUSING_REASON.into())
    );
}

#[test]
fn unplugged_ev_rejects_with_reason() {
    let c = clock();
    let mut r = DerRating::new(DerKind::EvCharger, 7400, 0);
    r.energy_wh = 60_000;
    r.soc_max_pct = 90;
    let mut d = Device::new(&r, 0.0, SplitMix64::new(1), T0, 1)
        .with_plant(Plant::EvCharger(EvCharger::with_car(&r, None)), &c);
    assert_eq!(
        d.receive(&doc(1, Direction::Down, 3000, T0, T0 + 1000), &c, T0),
        Receipt::Rejected("no vehicle plugged in".into())
    );
    assert!(!d.telemetry(T0).available);
}

#[test]
fn pv_curtailment_moves_telemetry_towards_zero() {
    let c = clock();
    let r = DerRating::new(DerKind::Pv, 0, 6000);
    let mut d = Device::new(&r, 0.0, SplitMix64::new(1), T0, 1)
        .with_plant(Plant::Pv(Pv::with_clouds(&r, 1.0)), &c);
    d.advance(&c, T0 + 1000);
    let before = d.telemetry(T0 + 1000).power_w;
    assert!(before < -5000, "{before}");
    let r = d.receive(
        &doc(1, Direction::Down, 2000, T0, T0 + 3_600_000),
        &c,
        T0 + 1000,
    );
    assert!(matches!(r, Receipt::Accepted { .. }), "{r:?}");
    d.advance(&c, T0 + 60_000);
    let after = d.telemetry(T0 + 60_000).power_w;
    assert!((after - before - 2000).abs() < 300, "{before} → {after}");
    assert!(d.take_applied(&c, T0 + 60_000));
    // More than it produces is refused.
    let r = d.receive(
        &doc(2, Direction::Down, 9000, T0, T0 + 3_600_000),
        &c,
        T0 + 60_000,
    );
    assert!(matches!(r, Receipt::Rejected(_)), "{r:?}");
}

#[test]
fn speed_multiplies_physics_time() {
    let fast = SimClock::new(T0, 60.0, Some(12.0));
    let mut d = battery(50.0);
    d.receive(&doc(1, Direction::Up, 3000, T0, T0 + 3_600_000), &fast, T0);
    // 30 simulated s of ramp take half a wall second at speed 60.
    assert!(d.ms_until_applied(&fast, T0) <= 500);
    d.advance(&fast, T0 + 500);
    assert!(d.take_applied(&fast, T0 + 500));
}
