use super::*;

#[test]
fn shares_are_pro_rata_exact_and_capped() {
    // 90 kW asked of 10 + 20 + 30 = 60 kW committed: each gives everything.
    assert_eq!(
        shares(90_000, &[10_000, 20_000, 30_000]),
        vec![10_000, 20_000, 30_000]
    );
    // 30 kW of 60: half each.
    assert_eq!(
        shares(30_000, &[10_000, 20_000, 30_000]),
        vec![5_000, 10_000, 15_000]
    );
    // 10 W of 3 × 1 W... 2 W of 3 × 1 W: remainders go one each, sum exact.
    let s = shares(2, &[1, 1, 1]);
    assert_eq!(s.iter().sum::<u64>(), 2);
    assert!(s.iter().all(|&w| w <= 1));
    assert_eq!(shares(5, &[0, 0]), vec![0, 0]);
}

#[test]
fn time_of_day_parses_and_prints() {
    assert_eq!(
        TimeOfDay::try_from("17:30".to_string()).unwrap(),
        TimeOfDay(1050)
    );
    assert_eq!(String::from(TimeOfDay(1050)), "17:30");
    assert_eq!(
        TimeOfDay::try_from("24:00".to_string()).unwrap(),
        TimeOfDay(1440)
    );
    for bad in ["24:01", "7", "aa:bb", "12:60", ""] {
        assert!(TimeOfDay::try_from(bad.to_string()).is_err(), "{bad}");
    }
}

#[test]
fn windows_cover_local_days() {
    // 2026-07-01 is a Wednesday; epoch day 20635.
    let day_ms = 20_635u64 * 86_400_000;
    assert_eq!(Day::of_epoch_day(20_635), Day::Wed);
    let w = Window {
        days: vec![Day::Mon, Day::Tue, Day::Wed, Day::Thu, Day::Fri],
        from: TimeOfDay(17 * 60),
        to: TimeOfDay(21 * 60),
    };
    let h = 3_600_000;
    assert!(w.covers(day_ms + 17 * h, day_ms + 19 * h, 0));
    assert!(!w.covers(day_ms + 16 * h, day_ms + 18 * h, 0));
    assert!(!w.covers(day_ms + 20 * h, day_ms + 22 * h, 0));
    // 15:00 UTC is 17:00 at UTC+2.
    assert!(w.covers(day_ms + 15 * h, day_ms + 17 * h, 120));
    // Saturday is not in the window.
    assert!(!w.covers(
        day_ms + 3 * 24 * h + 17 * h,
        day_ms + 3 * 24 * h + 18 * h,
        0
    ));
}

#[test]
fn distance_is_haversine() {
    // One degree of latitude is about 111.2 km.
    let d = distance_km(50.0, 8.0, 51.0, 8.0);
    assert!((d - 111.19).abs() < 0.1, "{d}");
    let a = Area {
        lat: 50.0,
        lon: 8.0,
        radius_km: 120.0,
    };
    assert!(a.contains(51.0, 8.0));
    assert!(!a.contains(52.0, 8.0));
}

fn program() -> Program {
    serde_json::from_value(serde_json::json!({
        "id": "p1", "name": "Peak", "kind": "capacity", "owner": "utility-n",
        "zones": ["north"], "coverage": [], "segments": ["commercial"], "kinds": ["hvac", "battery"],
        "min_w": 5000,
        "terms": {"currency": "EUR", "capacity_per_kw": "2.00", "energy_per_kwh": "0.50",
                  "penalty_per_kw_short": "1.00", "penalty_threshold_pct": 50,
                  "max_payment_per_event": null},
        "notice_s": 3600, "max_events_per_season": 2, "max_hours_per_season": 3,
        "max_event_duration_s": 7200, "season": {"start_ms": 0, "end_ms": 10_000_000_000_000u64},
        "utc_offset_min": 0, "baseline": {"method": "x_of_y", "x": 5, "y": 10},
        "pending_terms": null, "terms_version": 1, "created_ms": 0
    }))
    .unwrap()
}

fn facts(zone: &str, segment: Segment, kinds: &[DerKind], up_w: u64) -> ResourceFacts {
    ResourceFacts {
        id: NodeId::new("r").unwrap(),
        zones: [zone.to_string()].into(),
        feeders: ["f1".to_string()].into(),
        segments: [segment].into(),
        kinds: kinds.iter().copied().collect(),
        sites: vec![NodeId::new("s").unwrap()],
        locations: vec![],
        up_w,
    }
}

fn enrollment(committed_w: u64, notice_s: u64) -> Enrollment {
    Enrollment {
        id: EnrollmentId::new("e1").unwrap(),
        program: ProgramId::new("p1").unwrap(),
        resource: NodeId::new("r").unwrap(),
        account: AccountId::new("a").unwrap(),
        committed_w,
        windows: vec![],
        notice_s,
        auto_confirm: false,
        max_opt_outs_per_season: 0,
        status: EnrollmentStatus::Active,
        created_ms: 0,
    }
}

#[test]
fn program_validation_names_the_field() {
    assert!(program().validate().is_ok());
    let mut p = program();
    p.zones.clear();
    assert!(p.validate().unwrap_err().starts_with("zones"));
    let mut p = program();
    p.max_event_duration_s = 0;
    assert!(p
        .validate()
        .unwrap_err()
        .starts_with("max_event_duration_s"));
    let mut p = program();
    p.season.end_ms = 0;
    assert!(p.validate().unwrap_err().starts_with("season"));
}

#[test]
fn enrollment_is_checked_against_program_and_hierarchy() {
    let p = program();
    let ok = facts("north", Segment::Commercial, &[DerKind::Hvac], 50_000);
    assert!(enrollment(20_000, 600).check(&p, &ok).is_ok());
    // Every problem is listed: wrong zone, wrong segment, no eligible kind,
    // below the minimum, more notice than the program gives.
    let bad = facts("south", Segment::Residential, &[DerKind::Pv], 50_000);
    let problems = enrollment(1_000, 7_200).check(&p, &bad).unwrap_err();
    assert_eq!(problems.len(), 5, "{problems:?}");
    // More than the resource can do.
    let small = facts("north", Segment::Commercial, &[DerKind::Hvac], 10_000);
    let p2 = enrollment(20_000, 0).check(&p, &small).unwrap_err();
    assert!(p2[0].contains("more than r can do"), "{p2:?}");
}

#[test]
fn events_respect_notice_duration_zones_and_season_limits() {
    let p = program();
    let now = 1_000_000_000;
    let ev = |start_ms: u64, duration_s: u64, zones: &[&str]| Event {
        id: EventId::new("ev").unwrap(),
        program: p.id.clone(),
        zones: zones.iter().map(|z| z.to_string()).collect(),
        feeders: vec![],
        start_ms,
        duration_s,
        ramp_w_per_min: None,
        requested_w: 10_000,
        price_per_kwh: Some("0.30".into()),
        grid: GridContext::default(),
        status: EventStatus::Draft,
        created_by: AccountId::new("u").unwrap(),
        created_ms: now,
        times: EventTimes::default(),
        approvals: None,
        participants: vec![],
    };
    let hour = 3_600_000;
    assert!(ev(now + hour, 3600, &["north"])
        .check(&p, now, SeasonUse::default())
        .is_ok());
    // Less than the notice, too long, a zone outside the program.
    let e = ev(now + 60_000, 3600, &["north"])
        .check(&p, now, SeasonUse::default())
        .unwrap_err();
    assert!(e[0].contains("notice"), "{e:?}");
    let e = ev(now + hour, 7201, &["north"])
        .check(&p, now, SeasonUse::default())
        .unwrap_err();
    assert!(e[0].contains("duration_s"), "{e:?}");
    let e = ev(now + hour, 3600, &["south"])
        .check(&p, now, SeasonUse::default())
        .unwrap_err();
    assert!(e[0].contains("south"), "{e:?}");
    // Season: 2 events and 3 h at most. Two called already → refused; 2.5 h
    // used + 1 h → refused.
    let used = SeasonUse {
        events: 2,
        seconds: 0,
    };
    assert!(ev(now + hour, 600, &["north"])
        .check(&p, now, used)
        .is_err());
    let used = SeasonUse {
        events: 1,
        seconds: 9_000,
    };
    let e = ev(now + hour, 3600, &["north"])
        .check(&p, now, used)
        .unwrap_err();
    assert!(e[0].contains("event hours"), "{e:?}");
}

#[test]
fn an_event_calls_resources_in_its_zones_and_feeders() {
    let p = program();
    let r = facts("north", Segment::Commercial, &[DerKind::Hvac], 1);
    let mut e = Event {
        id: EventId::new("ev").unwrap(),
        program: p.id.clone(),
        zones: vec!["north".into()],
        feeders: vec![],
        start_ms: 0,
        duration_s: 1,
        ramp_w_per_min: None,
        requested_w: 1,
        price_per_kwh: None,
        grid: GridContext::default(),
        status: EventStatus::Draft,
        created_by: AccountId::new("u").unwrap(),
        created_ms: 0,
        times: EventTimes::default(),
        approvals: None,
        participants: vec![],
    };
    assert!(e.calls(&r));
    e.feeders = vec!["f2".into()];
    assert!(!e.calls(&r));
    e.feeders = vec!["f1".into()];
    assert!(e.calls(&r));
    e.zones = vec!["south".into()];
    assert!(!e.calls(&r));
}
