use std::collections::HashSet;
use std::path::PathBuf;

use proptest::prelude::*;

use super::export::toml_float;
use super::*;
use crate::der::{DerKind, DerRating};
use crate::dispatch::Strategy as Split;
use crate::generate::{generate, GenSpec};
use crate::hierarchy::{DerSpec, SiteSpec, VirtualDerSpec};
use crate::site::{Location, Segment};
use crate::units;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// 1-based line of the first line of `text` containing `needle`, skipping
/// whole-line comments.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle) && !l.trim_start().starts_with('#'))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

fn problems(text: &str) -> Vec<Problem> {
    parse("t.toml", text).unwrap_err().problems
}

const HEAD: &str = r#"
[[virtual_der]]
id = "vpp"

[[site]]
id = "s1"
parent = "vpp"
lat = 52.0
lon = 5.0
zone = "Z"
feeder = "F"
segment = "residential"
owner = "o"
"#;

#[test]
fn small_example_loads_and_validates() {
    let h = load(&examples().join("small.toml")).unwrap();
    let topo = h.validate().unwrap();
    assert_eq!(topo.root, Some(id("vpp")));
    assert_eq!(topo.depth, 5);
    assert_eq!(h.virtual_ders.len(), 7);
    assert_eq!(h.sites.len(), 6);
    assert_eq!(h.ders.len(), 18);
    let kinds: HashSet<DerKind> = h.ders.iter().map(|d| d.rating.kind).collect();
    assert_eq!(kinds.len(), DerKind::COUNT, "every kind appears");
    let segments: HashSet<Segment> = h.sites.iter().map(|s| s.segment).collect();
    assert_eq!(segments.len(), 3);
    // Defaults and conversions.
    let bat = h
        .ders
        .iter()
        .find(|d| d.id.as_str() == "res-ams-01-bat")
        .unwrap();
    assert_eq!(bat.name, "res-ams-01-bat");
    assert_eq!(bat.rating.energy_wh, 13_500);
    assert_eq!(bat.rating.ramp_w_per_min, 5_000);
    assert_eq!(bat.rating.cost_micros_per_kwh, 100_000);
    let homes = h
        .virtual_ders
        .iter()
        .find(|v| v.id.as_str() == "south-homes")
        .unwrap();
    assert_eq!(homes.strategy, Split::ProRata);
    let hp = h
        .ders
        .iter()
        .find(|d| d.id.as_str() == "res-grn-03-hp")
        .unwrap();
    assert_eq!(hp.rating.comfort_c, Some((19.5, 22.5)));
}

/// Every file in examples/bad fails with one problem, on the line marked
/// `# <- error here`, naming the right id; a new file there must be added.
#[test]
fn every_bad_example_is_located() {
    let expected = [
        ("absurd_rating.toml", "site-1-bat", "absurdly large"),
        (
            "cycle.toml",
            "east",
            "cycle in parents: east -> west -> east",
        ),
        ("duplicate_id.toml", "site-1-wh", "duplicate id"),
        (
            "negative_rating.toml",
            "site-1-pv",
            "max_export_kw: -4.5 is negative",
        ),
        ("syntax_error.toml", "site-1-ev", ""),
        (
            "unknown_field.toml",
            "site-1-bat",
            "unknown field `capacity_kwh`",
        ),
        (
            "unknown_parent.toml",
            "site-2",
            "parent nort does not exist",
        ),
    ];
    let dir = examples().join("bad");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let listed: Vec<String> = expected.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(on_disk, listed, "every bad example has an expectation here");

    for (file, want_id, want_message) in expected {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let line = line_of(&text, "# <- error here");
        let err = load(&path).unwrap_err();
        let shown = err.to_string();
        let p = path.display().to_string();
        assert!(
            shown.starts_with(&format!("hierarchy file {p}: 1 problem\n")),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("\n  {p}:{line}:")),
            "{file}: {shown}"
        );
        assert!(shown.contains(&format!(": {want_id}: ")), "{file}: {shown}");
        assert!(shown.contains(want_message), "{file}: {shown}");
        assert_eq!(err.problems.len(), 1, "{file}: {shown}");
        assert_eq!(err.problems[0].line, Some(line), "{file}");
        assert_eq!(err.problems[0].id, Some(id(want_id)), "{file}");
        assert!(err.io.is_none());
    }
}

#[test]
fn duplicate_names_the_first_line_too() {
    let path = examples().join("bad/duplicate_id.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let first = line_of(&text, r#"id = "site-1-wh""#);
    let err = load(&path).unwrap_err();
    assert!(err.problems[0]
        .message
        .ends_with(&format!("(first defined on line {first})")));
}

#[test]
fn report_format() {
    let err = parse(
        "fleet.toml",
        &format!("{HEAD}  [[site.der]]\n  id = \"d\"\n  kind = \"pv\"\n  max_export_kw = nan\n"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "hierarchy file fleet.toml: 1 problem\n  fleet.toml:17: d: max_export_kw: NaN is not a finite number"
    );
    let json = serde_json::to_value(&err.problems).unwrap();
    assert_eq!(json[0]["line"], 17);
    assert_eq!(json[0]["id"], "d");
}

#[test]
fn unknown_key_names_key_line_and_table() {
    let text = HEAD.replace("lon = 5.0", "lon = 5.0\nlattitude = 52.0");
    let p = problems(&text);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, Some(line_of(&text, "lattitude")));
    assert_eq!(p[0].column, Some(1));
    assert_eq!(p[0].id, Some(id("s1")));
    assert!(p[0].message.contains("unknown field `lattitude`"), "{p:?}");
}

#[test]
fn bad_enum_value_names_line() {
    let text = format!("{HEAD}\n  [[site.der]]\n  id = \"reactor\"\n  kind = \"nuclear\"\n");
    let err = parse("t.toml", &text).unwrap_err();
    let p = &err.problems[0];
    assert_eq!(p.line, Some(line_of(&text, "nuclear")));
    assert_eq!(p.column, Some(10));
    assert_eq!(p.id, Some(id("reactor")));
    assert!(p.message.contains("unknown variant `nuclear`"), "{p:?}");
    let line = p.line.unwrap();
    assert!(err
        .to_string()
        .contains(&format!("t.toml:{line}:10: reactor: unknown variant")));

    let strategy = HEAD.replace("owner = \"o\"", "owner = \"o\"\nstrategy = \"cheapest\"");
    let p = problems(&strategy);
    assert_eq!(p[0].line, Some(line_of(&strategy, "cheapest")));
}

#[test]
fn missing_and_mistyped_keys() {
    let text = HEAD.replace("zone = \"Z\"\n", "");
    let p = problems(&text);
    assert!(p[0].message.contains("missing field `zone`"), "{p:?}");
    assert_eq!(p[0].line, Some(line_of(&text, "[[site]]")));
    assert_eq!(p[0].id, Some(id("s1")));

    let text = HEAD.replace("lat = 52.0", "lat = \"52.0\"");
    let p = problems(&text);
    assert_eq!(p[0].line, Some(line_of(&text, "lat =")));
    assert!(p[0].message.contains("expected f64"), "{p:?}");
}

#[test]
fn empty_file_has_no_root() {
    for text in ["", "# nothing yet\n"] {
        let err = parse("empty.toml", text).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert_eq!(err.problems[0].line, None);
        assert_eq!(
            err.to_string(),
            "hierarchy file empty.toml: 1 problem\n  empty.toml: no root: exactly one virtual DER \
             must have no parent (the file has no [[virtual_der]] table)"
        );
    }
}

#[test]
fn figures_are_checked_each_at_its_line() {
    let text = format!(
        "{HEAD}
  [[site.der]]
  id = \"bat\"
  kind = \"battery\"
  max_import_kw = 5.0
  max_export_kw = inf          # L1
  energy_kwh = 10.0
  soc_max_pct = 150            # L2
  min_on_s = -1                # L3
  cost_per_kwh = -0.1          # L4

  [[site.der]]
  id = \"hp\"
  kind = \"hvac\"
  max_import_kw = 3.0
  comfort_min_c = 20.0         # L5
  cost_per_kwh = 2e6           # L6

  [[site.der]]
  id = \"pv\"
  kind = \"pv\"
  max_import_kw = 1.0          # L7
  max_export_kw = 4.0

  [[site.der]]
  id = \"ev\"
  kind = \"ev_charger\"
  max_import_kw = 7.4          # L8
  soc_min_pct = 90
  soc_max_pct = 80
"
    );
    let p = problems(&text);
    let got: Vec<(usize, &str)> = p
        .iter()
        .map(|p| (p.line.unwrap(), p.id.as_ref().unwrap().as_str()))
        .collect();
    let at = |m: &str| line_of(&text, m);
    assert_eq!(
        got,
        vec![
            (at("# L1"), "bat"),
            (at("# L2"), "bat"),
            (at("# L3"), "bat"),
            (at("# L4"), "bat"),
            (at("# L5"), "hp"),
            (at("# L6"), "hp"),
            (at("# L7"), "pv"),
            (at("soc_min_pct = 90"), "ev"),
        ],
        "{p:#?}"
    );
    let messages: Vec<&str> = p.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages[0], "max_export_kw: inf is not a finite number");
    assert_eq!(messages[1], "soc_max_pct: 150 must be between 0 and 100");
    assert_eq!(messages[2], "min_on_s: -1 must be between 0 and 4294967295");
    assert_eq!(messages[3], "cost_per_kwh: -0.1 is negative");
    assert_eq!(
        messages[4],
        "comfort_min_c and comfort_max_c must be given together"
    );
    assert!(messages[5].starts_with("cost_per_kwh: 2000000 is absurdly large"));
    assert_eq!(messages[6], "a pv cannot have max_import_kw above zero");
    assert!(messages[7].starts_with("soc limits 90..80"));
}

#[test]
fn several_problems_in_one_round_without_follow_ons() {
    let text = r#"
[[virtual_der]]
id = "vpp"

[[virtual_der]]
id = "north east"
parent = "vpp"

[[virtual_der]]
id = "second-root"

[[site]]
id = "s1"
parent = "north"
lat = 95.0
lon = 5.0
zone = "Z"
feeder = "F"
segment = "commercial"
owner = "o"

  [[site.der]]
  id = "s1"
  kind = "curtailable_load"
  max_import_kw = 10.0
"#;
    let p = problems(text);
    let got: Vec<(Option<usize>, Option<&str>)> = p
        .iter()
        .map(|p| (p.line, p.id.as_ref().map(NodeId::as_str)))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(line_of(text, "north east")), None),
            (Some(line_of(text, "second-root")), Some("second-root")),
            (Some(line_of(text, "\"north\"")), Some("s1")),
            (Some(line_of(text, "lat = 95")), Some("s1")),
            (Some(line_of(text, "curtailable_load") - 1), Some("s1")),
        ],
        "{p:#?}"
    );
    assert!(p[0].message.contains("has the character ' '"));
    assert!(p[1]
        .message
        .starts_with("more than one root (vpp, second-root)"));
    assert_eq!(p[2].message, "parent north does not exist");
    assert_eq!(p[3].message, "location: lat 95 is outside -90..=90");
    assert!(p[4].message.starts_with("duplicate id s1"));
}

#[test]
fn children_of_a_malformed_id_are_not_reported_again() {
    let text = r#"
[[virtual_der]]
id = "vpp"

[[virtual_der]]
id = "bad id"
parent = "vpp"

[[virtual_der]]
id = "below"
parent = "bad id"
"#;
    let p = problems(text);
    // The id itself, and the parent that repeats it; no "does not exist".
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p.iter().all(|p| !p.message.contains("does not exist")));
    assert_eq!(p[1].id, Some(id("below")));
    assert!(p[1].message.starts_with("parent: id \"bad id\""));
}

#[test]
fn problems_are_capped() {
    let mut text = HEAD.to_string();
    for i in 0..200 {
        text.push_str(&format!(
            "\n  [[site.der]]\n  id = \"d{i}\"\n  kind = \"pv\"\n  max_export_kw = -1\n"
        ));
    }
    let p = problems(&text);
    assert_eq!(p.len(), MAX_REPORTED_ERRORS + 1);
    assert!(p.last().unwrap().message.contains("more problems"));
}

#[test]
fn io_errors_name_the_file() {
    let missing = examples().join("no-such-file.toml");
    let err = load(&missing).unwrap_err();
    assert!(err.io.is_some());
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("hierarchy file {}: 1 problem", missing.display())));
    assert!(shown.contains("cannot read"), "{shown}");

    let dir = std::env::temp_dir().join(format!("vpp-hierarchy-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("binary.toml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let err = load(&binary).unwrap_err();
    assert!(err.to_string().contains("not UTF-8"), "{err}");

    // Sparse: no disk is used, the size check refuses it before reading.
    let huge = dir.join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(MAX_FILE_BYTES + 1)
        .unwrap();
    let err = load(&huge).unwrap_err();
    assert!(err.io.is_none());
    assert!(err.to_string().contains("limited to 512 MiB"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generated_hierarchy_round_trips() {
    let h = generate(&GenSpec {
        sites: 400,
        ders_per_site: 3,
        levels: 6,
        fanout: None,
        seed: 9,
    });
    let text = to_toml(&h);
    assert_eq!(parse("gen.toml", &text).unwrap(), h);
}

#[test]
fn small_example_round_trips() {
    let h = load(&examples().join("small.toml")).unwrap();
    assert_eq!(parse("again.toml", &to_toml(&h)).unwrap(), h);
}

#[test]
fn export_leaves_out_defaults_and_keeps_orphans_visible() {
    let mut h = parse(
        "t.toml",
        &format!("{HEAD}  [[site.der]]\n  id = \"d\"\n  kind = \"pv\"\n  max_export_kw = 4\n"),
    )
    .unwrap();
    let text = to_toml(&h);
    assert!(
        text.contains("  [[site.der]]\n  id = \"d\"\n  kind = \"pv\"\n  max_export_kw = 4.0\n"),
        "{text}"
    );
    assert!(!text.contains("soc_max_pct"));
    h.ders[0].site = id("elsewhere");
    assert!(to_toml(&h).contains("#   d (site elsewhere)"));
}

#[derive(serde::Deserialize)]
struct One {
    v: f64,
}

fn through_toml(v: f64) -> f64 {
    toml::from_str::<One>(&format!("v = {}", toml_float(v)))
        .unwrap()
        .v
}

proptest! {
    /// W → kW text → W is exact over the whole accepted range.
    #[test]
    fn kilo_text_round_trips(w in 0u64..=100_000_000_000, micros in 0u64..=1_000_000_000_000) {
        prop_assert_eq!(units::kilo_to_unit(through_toml(units::unit_to_kilo(w))), Ok(w));
        prop_assert_eq!(units::cost_to_micros(through_toml(units::micros_to_cost(micros))), Ok(micros));
    }

    #[test]
    fn any_valid_hierarchy_round_trips(h in arb_hierarchy()) {
        prop_assume!(h.validate().is_ok());
        let text = to_toml(&h);
        prop_assert_eq!(parse("p.toml", &text).map_err(|e| e.to_string()), Ok(h));
    }
}

fn arb_name() -> impl Strategy<Value = String> {
    prop::string::string_regex("[a-zA-Z0-9 \"'\\\\é€#=\\[\\]{}-]{0,20}").unwrap()
}

const MAX_W: u64 = 100_000_000_000;

fn arb_rating() -> impl Strategy<Value = DerRating> {
    (
        0..DerKind::COUNT,
        (1..=MAX_W, 1..=MAX_W, 1..=MAX_W, 0..=MAX_W),
        (0u8..100, 1u8..=100),
        prop::option::of((-50.0f32..79.0, 0.001f32..30.0)),
        (any::<u32>(), any::<u32>(), any::<u32>()),
        (0u64..=1_000_000_000_000, any::<bool>()),
    )
        .prop_map(
            |(k, (imp, exp, energy, ramp), (lo, hi), comfort, secs, (cost, default_ramp))| {
                let kind = DerKind::ALL[k];
                let (imp, exp) = match kind {
                    DerKind::Battery => (imp, exp),
                    DerKind::Pv => (0, exp),
                    _ => (imp, 0),
                };
                let mut r = DerRating::new(kind, imp, exp);
                r.energy_wh = energy;
                r.soc_min_pct = lo.min(hi - 1);
                r.soc_max_pct = hi;
                if !default_ramp {
                    r.ramp_w_per_min = ramp;
                }
                r.comfort_c = comfort.map(|(lo, width)| (lo, (lo + width).min(80.0)));
                (r.min_on_s, r.min_off_s, r.max_hold_s) = secs;
                r.cost_micros_per_kwh = cost;
                r
            },
        )
}

fn arb_strategy() -> impl Strategy<Value = Split> {
    prop_oneof![
        Just(Split::ProRata),
        Just(Split::MeritOrder),
        Just(Split::FairRotation)
    ]
}

/// Root, up to 3 more virtual DERs (each under an earlier one), up to 4 sites
/// with up to 3 DERs each.
fn arb_hierarchy() -> impl Strategy<Value = Hierarchy> {
    let vders = prop::collection::vec(
        (any::<prop::sample::Index>(), arb_name(), arb_strategy()),
        1..4,
    );
    let der = (arb_name(), arb_rating());
    let site = (
        any::<prop::sample::Index>(),
        (arb_name(), arb_name(), arb_name(), arb_name()),
        (-90.0f64..=90.0, -180.0f64..=180.0),
        arb_strategy(),
        prop::collection::vec(der, 0..3),
    );
    (vders, prop::collection::vec(site, 0..4)).prop_map(|(vders, sites)| {
        let mut h = Hierarchy::default();
        for (i, (parent, name, strategy)) in vders.into_iter().enumerate() {
            h.virtual_ders.push(VirtualDerSpec {
                id: id(&format!("v{i}")),
                // Names equal to the id must also survive (they are left out).
                name: if name.is_empty() {
                    format!("v{i}")
                } else {
                    name
                },
                parent: (i > 0).then(|| id(&format!("v{}", parent.index(i)))),
                strategy,
            });
        }
        let n_v = h.virtual_ders.len();
        for (i, (parent, (name, zone, feeder, owner), (lat, lon), strategy, ders)) in
            sites.into_iter().enumerate()
        {
            let site_id = id(&format!("s{i}"));
            for (j, (name, rating)) in ders.into_iter().enumerate() {
                h.ders.push(DerSpec {
                    id: id(&format!("s{i}:d{j}")),
                    name,
                    site: site_id.clone(),
                    rating,
                });
            }
            h.sites.push(SiteSpec {
                id: site_id,
                name,
                parent: id(&format!("v{}", parent.index(n_v))),
                location: Location {
                    lat,
                    lon,
                    zone,
                    feeder,
                },
                segment: [
                    Segment::Residential,
                    Segment::Commercial,
                    Segment::Industrial,
                ][i % 3],
                owner,
                strategy,
            });
        }
        h
    })
}
