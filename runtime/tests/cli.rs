//! The `vpp` CLI end to end: offline on a data dir, and against a running node
//! found through the data dir.
//!
//! Run: `cargo nextest run -p vpp-runtime --test cli`

mod common;

use common::process::{serve_refused, vpp, NodeProcess};
use common::repo;
use vpp_store::Store;

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn offline_import_rejects_bad_files_and_keeps_what_was_stored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let small = repo().join("examples/small.toml");
    let out = vpp(&[
        "--data-dir",
        d,
        "hierarchy",
        "import",
        small.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(s(&out.stdout).contains("18 DERs"), "{}", s(&out.stdout));

    let bad = repo().join("examples/bad/cycle.toml");
    let out = vpp(&[
        "--data-dir",
        d,
        "hierarchy",
        "import",
        bad.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = s(&out.stderr);
    assert!(
        err.contains("cycle.toml:") && err.contains("cycle"),
        "{err}"
    );

    let out = vpp(&["--data-dir", d, "hierarchy", "import", "/no/such/file.toml"]);
    assert!(!out.status.success());
    assert!(
        s(&out.stderr).contains("/no/such/file.toml"),
        "{}",
        s(&out.stderr)
    );

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.load_hierarchy().unwrap().ders.len(), 18);
    drop(store);

    let out = vpp(&["--data-dir", d, "hierarchy", "show", "--depth", "2"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let shown = s(&out.stdout);
    assert!(shown.starts_with("vpp  [virtual_der]  18 DERs"), "{shown}");

    let out = vpp(&["--data-dir", d, "hierarchy", "export"]);
    assert!(out.status.success());
    let back = vpp_domain::hierarchy_file::parse("export", &s(&out.stdout)).unwrap();
    assert_eq!(back.ders.len(), 18);
}

#[test]
fn commands_find_the_running_node_through_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let _node = NodeProcess::start(dir.path());
    let small = repo().join("examples/small.toml");
    // The node holds the store's lock; the CLI goes through its API.
    let out = vpp(&[
        "--data-dir",
        d,
        "hierarchy",
        "import",
        small.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(
        s(&out.stdout).contains("into the node at http://"),
        "{}",
        s(&out.stdout)
    );

    let out = vpp(&["--data-dir", d, "capacity"]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    assert!(
        s(&out.stdout).starts_with("vpp [virtual_der, pro_rata]"),
        "{}",
        s(&out.stdout)
    );

    let out = vpp(&[
        "--data-dir",
        d,
        "dispatch",
        "create",
        "--target",
        "south",
        "--kw",
        "20",
        "--duration",
        "30m",
        "--id",
        "cli-1",
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let text = s(&out.stdout);
    assert!(
        text.contains("cli-1: up 20.0 kW at south") && text.contains("allocated"),
        "{text}"
    );

    let out = vpp(&["--data-dir", d, "dispatch", "list"]);
    assert!(s(&out.stdout).contains("cli-1"), "{}", s(&out.stdout));
    let out = vpp(&["--data-dir", d, "dispatch", "cancel", "cli-1"]);
    assert!(s(&out.stdout).contains("cancelled"), "{}", s(&out.stdout));

    let out = vpp(&[
        "--data-dir",
        d,
        "der",
        "set-state",
        "res-ein-04-boiler",
        "--online",
        "false",
    ]);
    assert!(out.status.success(), "{}", s(&out.stderr));
    let out = vpp(&[
        "--data-dir",
        d,
        "dispatch",
        "create",
        "--target",
        "nope",
        "--kw",
        "1",
    ]);
    assert!(!out.status.success());
    assert!(
        s(&out.stderr).contains("404") && s(&out.stderr).contains("nope"),
        "{}",
        s(&out.stderr)
    );
    let out = vpp(&[
        "--data-dir",
        d,
        "dispatch",
        "create",
        "--target",
        "vpp",
        "--kw",
        "1",
        "--duration",
        "soon",
    ]);
    assert!(!out.status.success());
    assert!(s(&out.stderr).contains("soon"), "{}", s(&out.stderr));
}

#[test]
fn shipped_examples_validate() {
    for (file, ders) in [("small.toml", "18 DERs"), ("large.toml", "4000 DERs")] {
        let path = repo().join("examples").join(file);
        let out = vpp(&["hierarchy", "validate", path.to_str().unwrap()]);
        assert!(out.status.success(), "{file}: {}", s(&out.stderr));
        assert!(s(&out.stdout).contains(ders), "{file}: {}", s(&out.stdout));
    }
}

/// `vpp serve` reads `VPP_MQTT_SITE_DOCUMENTS` (a bad value is named
/// before anything starts; a node that ignored it would keep serving).
#[test]
fn serve_reads_the_mqtt_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let err = serve_refused(dir.path(), &[("VPP_MQTT_SITE_DOCUMENTS", "maybe")]);
    assert!(err.contains("VPP_MQTT_SITE_DOCUMENTS"), "{err}");
}

/// A log filter that is not one is named, not silently replaced.
#[test]
fn a_bad_log_filter_is_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vpp"))
        .args(["config", "default"])
        .env("VPP_LOG", "vpp_runtime=loud")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = s(&out.stderr);
    assert!(err.contains("VPP_LOG") && err.contains("loud"), "{err}");
}

#[test]
fn config_default_prints_a_valid_config() {
    let out = vpp(&["config", "default"]);
    assert!(out.status.success());
    let text = s(&out.stdout);
    vpp_runtime::config::NodeConfig::parse("stdout", &text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "listen = 5\n").unwrap();
    let out = vpp(&["config", "check", f.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(s(&out.stderr).contains("bad.toml"), "{}", s(&out.stderr));
}

#[test]
fn accounts_and_tokens_from_the_cli_against_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let _node = NodeProcess::start(dir.path());
    let ok = |args: &[&str]| {
        let mut all = vec!["--data-dir", d];
        all.extend_from_slice(args);
        let out = vpp(&all);
        assert!(out.status.success(), "{args:?}: {}", s(&out.stderr));
        s(&out.stdout)
    };
    // The operator's token comes from the data dir without any flag.
    assert!(ok(&["account", "me"]).contains("operator"));
    let made = ok(&[
        "account",
        "create",
        "grid-north",
        "--role",
        "utility",
        "--name",
        "Grid North",
        "--zone",
        "NL-north",
    ]);
    assert!(made.contains("UNVERIFIED"), "{made}");
    assert!(ok(&["account", "verify", "grid-north"]).contains("verified"));
    let token = ok(&["account", "token", "grid-north", "--ttl-s", "3600"]);
    let token = token.trim();
    assert!(token.starts_with("vpp_"), "{token}");
    // The utility's own token: it is who it says, and may not list accounts.
    let me = vpp(&["--data-dir", d, "--token", token, "account", "me"]);
    assert!(s(&me.stdout).contains("grid-north"), "{}", s(&me.stderr));
    let list = vpp(&["--data-dir", d, "--token", token, "account", "list"]);
    assert!(!list.status.success());
    assert!(s(&list.stderr).contains("403"), "{}", s(&list.stderr));
    // Revoked, it is refused.
    let id = token.split('_').nth(1).unwrap();
    ok(&["account", "revoke", id]);
    let me = vpp(&["--data-dir", d, "--token", token, "account", "me"]);
    assert!(!me.status.success());
    assert!(s(&me.stderr).contains("revoked"), "{}", s(&me.stderr));
    // A bad role is a clear usage error.
    let bad = vpp(&[
        "--data-dir",
        d,
        "account",
        "create",
        "x",
        "--role",
        "king",
        "--name",
        "X",
    ]);
    assert!(!bad.status.success());
    assert!(s(&bad.stderr).contains("king"), "{}", s(&bad.stderr));
    assert!(ok(&["account", "list"]).contains("grid-north"));
}
