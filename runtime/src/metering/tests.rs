use super::*;

/// 10-second intervals: `T + n * S` is `n` seconds into the interval at `T`.
const S: u64 = 1000;
const T: u64 = 1_700_000_000_000;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn metering(sites: MeteredSites) -> Metering {
    Metering::new(&MeteringConfig {
        interval_s: 10,
        sites,
    })
}

fn watching(sites: &[&str]) -> Metering {
    let m = metering(MeteredSites::Enrolled);
    m.watch(sites.iter().map(|s| id(s)).collect());
    m
}

#[test]
fn the_average_is_weighted_by_how_long_each_value_held() {
    let m = watching(&["s1"]);
    m.sample("s1", "d1", 1000, T);
    m.sample("s1", "d1", 4000, T + 8 * S);
    assert!(m.close_due(T + 9 * S).is_empty(), "interval still open");
    // 8 s at 1000 W, 2 s at 4000 W.
    assert_eq!(m.close_due(T + 10 * S), [(id("s1"), T, 1600)]);
    assert_eq!(m.samples(), 2);
}

#[test]
fn the_site_is_the_sum_of_its_ders_last_values() {
    let m = watching(&["s1"]);
    m.sample("s1", "pv", -3000, T);
    m.sample("s1", "load", 5000, T);
    // 5 s at 2000 W; then the battery adds 1000 W for 5 s: 3000 W.
    m.sample("s1", "battery", 1000, T + 5 * S);
    assert_eq!(m.close_due(T + 10 * S), [(id("s1"), T, 2500)]);
}

#[test]
fn a_value_holds_across_the_interval_end() {
    let m = watching(&["s1"]);
    m.sample("s1", "d1", 1000, T + 5 * S);
    // The first interval averages over what it saw: 5 s at 1000 W.
    m.sample("s1", "d1", 3000, T + 15 * S);
    // A sample after the end closes the interval by itself.
    assert_eq!(m.close_due(T + 15 * S), [(id("s1"), T, 1000)]);
    // The next one: 5 s of the held 1000 W, 5 s at 3000 W.
    assert_eq!(m.close_due(T + 20 * S), [(id("s1"), T + 10 * S, 2000)]);
}

#[test]
fn a_silent_interval_is_not_written_and_stale_values_are_dropped() {
    let m = watching(&["s1"]);
    m.sample("s1", "d1", 1000, T);
    m.sample("s1", "d2", 500, T);
    assert_eq!(m.close_due(T + 10 * S), [(id("s1"), T, 1500)]);
    // Nothing from T+10 to T+20: no reading for that interval.
    assert!(m.close_due(T + 20 * S).is_empty());
    // d1 speaks again: d2's old value is gone, and the average covers
    // only the time after the sample.
    m.sample("s1", "d1", 200, T + 25 * S);
    assert_eq!(m.close_due(T + 30 * S), [(id("s1"), T + 20 * S, 200)]);
}

#[test]
fn several_intervals_at_once_give_one_reading_each_interval_with_samples() {
    let m = watching(&["s1", "s2"]);
    m.sample("s1", "d1", 100, T);
    m.sample("s2", "d1", -100, T + 3 * S);
    m.sample("s1", "d1", 300, T + 10 * S);
    let mut got = m.close_due(T + 35 * S);
    got.sort();
    assert_eq!(
        got,
        [
            (id("s1"), T, 100),
            (id("s1"), T + 10 * S, 300),
            (id("s2"), T, -100),
        ]
    );
    assert!(m.close_due(T + 40 * S).is_empty());
}

#[test]
fn unwatched_sites_are_ignored() {
    let m = metering(MeteredSites::Enrolled);
    m.sample("s1", "d1", 1000, T);
    assert!(!m.is_active());
    m.watch([id("s2")].into());
    m.sample("s1", "d1", 1000, T);
    m.sample("s2", "d1", 7, T);
    assert_eq!(m.samples(), 1);
    assert_eq!(m.close_due(T + 10 * S), [(id("s2"), T, 7)]);
    // Dropped from the set: no more readings; an empty set meters nothing.
    m.watch(HashSet::new());
    assert!(!m.is_active());
    m.sample("s2", "d1", 7, T + 10 * S);
    assert!(m.close_due(T + 20 * S).is_empty());
    assert_eq!(m.sites(), 0);
}

#[test]
fn a_site_that_stays_watched_keeps_its_interval() {
    let m = watching(&["s1"]);
    m.sample("s1", "d1", 1000, T);
    m.watch([id("s1"), id("s2")].into());
    assert_eq!(m.close_due(T + 10 * S), [(id("s1"), T, 1000)]);
}

#[test]
fn all_meters_every_site_that_reports() {
    let m = metering(MeteredSites::All);
    assert!(m.is_active());
    m.watch(HashSet::new());
    m.sample("s9", "d1", 42, T);
    assert_eq!(m.close_due(T + 10 * S), [(id("s9"), T, 42)]);
}

#[test]
fn a_clock_stepping_back_does_not_rewind_the_interval() {
    let m = watching(&["s1"]);
    m.sample("s1", "d1", 1000, T + 5 * S);
    m.sample("s1", "d1", 2000, T + 2 * S);
    // The late sample counts from T+5: 5 s at 2000 W.
    assert_eq!(m.close_due(T + 10 * S), [(id("s1"), T, 2000)]);
}

#[test]
fn averages_round_to_the_nearest_watt() {
    assert_eq!(round_div(5, 2), 3);
    assert_eq!(round_div(-5, 2), -3);
    assert_eq!(round_div(4, 3), 1);
    assert_eq!(round_div(-4, 3), -1);
    let m = watching(&["s1"]);
    m.sample("s1", "d1", -1, T);
    m.sample("s1", "d1", 0, T + 5 * S);
    // -0.5 W on average.
    assert_eq!(m.close_due(T + 10 * S), [(id("s1"), T, -1)]);
}

#[tokio::test]
async fn due_readings_are_written_to_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = vpp_store::Store::open(dir.path()).unwrap();
    let m = watching(&["s1"]);
    m.sample("s1", "d1", 1000, T);
    assert_eq!(
        write_due(&m, &crate::cluster::Writer::Local(store.clone()), T + 5 * S).await,
        0
    );
    assert_eq!(
        write_due(
            &m,
            &crate::cluster::Writer::Local(store.clone()),
            T + 10 * S
        )
        .await,
        1
    );
    assert_eq!(m.readings_written(), 1);
    let got = store.meter_range(&id("s1"), T, T + 10 * S).unwrap();
    assert_eq!(got.into_iter().collect::<Vec<_>>(), [(T, 1000)]);
}
