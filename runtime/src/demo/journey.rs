//! The demo's demand-response journey, after its dispatch: a utility
//! publishes a program, an aggregator enrolls a region, the utility calls an
//! event, the runtime dispatches the (auto-confirmed) commitment through the
//! hierarchy, meters the region's telemetry, computes baseline, delivery and
//! a settlement statement, a second party approves it, and the audit ledger
//! verifies. Everything goes through the same functions the HTTP API calls.
//!
//! The baseline needs earlier days of meter data, which a fresh demo does
//! not have: the demo imports five "prior days" at the event's hours at
//! the level each site was metered at just before the event (as a utility
//! would import a meter history CSV).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use vpp_domain::account::{Account, Role};
use vpp_domain::ledger::LedgerDraft;
use vpp_domain::program::{EventStatus, GridContext, ProgramKind};
use vpp_domain::{Hierarchy, NodeId};

use crate::node::Node;
use crate::programs::{
    self as pg, AccountRequest, EnrollRequest, EventRequest, ProgramRequest, TokenRequest,
};

/// Length of the demo's event.
const EVENT_S: u64 = 30;
/// Prior days of meter history the demo imports.
const HISTORY_DAYS: u64 = 5;

fn err(e: pg::ProgramError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Runs the journey on `region` (a child of the root).
pub(super) async fn run(node: &Arc<Node>, h: &Hierarchy, root: &NodeId, api: &str) -> Result<()> {
    let store = node.store();
    let op: Account = store
        .registry_get("account/operator")?
        .context("the node has no first operator account")?;
    let region = h
        .virtual_ders
        .iter()
        .find(|v| v.parent.as_ref() == Some(root))
        .map(|v| v.id.clone())
        .context("the demo hierarchy has no region under the root")?;
    let zones: Vec<String> = {
        let mut z: Vec<String> = h
            .sites
            .iter()
            .filter(|s| site_in(h, &s.parent, &region))
            .map(|s| s.location.zone.clone())
            .collect();
        z.sort();
        z.dedup();
        z
    };
    println!(
        "6/6 demand response: a utility's program, {region} enrolled, an event, M&V and settlement"
    );

    // Accounts: a utility (verified by the operator) and an aggregator.
    pg::accounts::create_account(
        node,
        &op,
        AccountRequest {
            id: "grid-co".into(),
            name: "Grid Co (utility)".into(),
            role: Role::Utility,
            jurisdiction: zones.clone(),
            resources: vec![],
        },
    )
    .await
    .map_err(err)?;
    let utility = pg::accounts::verify_utility(node, &op, "grid-co")
        .await
        .map_err(err)?;
    let agg = pg::accounts::create_account(
        node,
        &op,
        AccountRequest {
            id: "flex-agg".into(),
            name: "Flex aggregator".into(),
            role: Role::Aggregator,
            jurisdiction: vec![],
            resources: vec![region.to_string()],
        },
    )
    .await
    .map_err(err)?;
    let token = pg::accounts::issue_token(node, &op, "flex-agg", TokenRequest::default())
        .await
        .map_err(err)?;

    // The program, found by the aggregator by zone.
    let terms = serde_json::from_value(serde_json::json!({
        "currency": "EUR",
        "capacity_per_kw": "4.00",
        "energy_per_kwh": "0.40",
        "penalty_per_kw_short": "2.00",
        "penalty_threshold_pct": 50,
        "max_payment_per_event": null
    }))?;
    let baseline = serde_json::from_value(serde_json::json!({
        "method": "x_of_y", "x": 3, "y": 5, "same_day_type": false
    }))?;
    let program = pg::catalog::create_program(
        node,
        &utility,
        ProgramRequest {
            id: "demo-peak".into(),
            name: "Evening peak (demo)".into(),
            kind: ProgramKind::Capacity,
            zones: zones.clone(),
            coverage: vec![],
            segments: vec![],
            kinds: vec![],
            min_kw: 1.0,
            terms,
            notice_s: 0,
            max_events_per_season: 20,
            max_hours_per_season: 40,
            max_event_duration_s: 3600,
            season: None,
            utc_offset_min: 0,
            baseline,
        },
    )
    .await
    .map_err(err)?;
    let found = pg::catalog::search(
        node,
        &agg,
        pg::SearchRequest {
            resource: Some(region.to_string()),
            ..pg::SearchRequest::default()
        },
    )
    .await
    .map_err(err)?;
    let raw = pg::enrollments::resource_facts(node, region.as_str(), None)
        .await
        .map_err(err)?;
    let up_w = pg::enrollments::facts_for(&raw, &program).up_w;
    let committed_kw = ((up_w as f64 / 1000.0) * 0.3).floor().max(1.0);
    let en = pg::enrollments::enroll(
        node,
        &agg,
        EnrollRequest {
            id: Some("flex-agg.demo".into()),
            program: "demo-peak".into(),
            resource: region.to_string(),
            committed_kw,
            windows: vec![],
            notice_s: None,
            auto_confirm: true,
            max_opt_outs_per_season: 0,
        },
    )
    .await
    .map_err(err)?;
    println!(
        "    program demo-peak (Grid Co, zones {}) found by a search for {region} ({} match); enrolled {committed_kw:.0} kW of {:.0} kW, auto-confirm",
        zones.join(","),
        found.len(),
        up_w as f64 / 1000.0
    );

    // Meter the region for a few intervals, then import its history.
    let interval_s = node.metering().interval_s() as u64;
    let sites = raw_sites(node, &region).await?;
    let levels = metered_levels(node, &sites, interval_s).await?;
    let start_ms = (vpp_actors::now_ms() / 1000 + 8).div_ceil(interval_s) * interval_s * 1000;
    let mut history = Vec::new();
    for d in 1..=HISTORY_DAYS {
        for k in 0..EVENT_S.div_ceil(interval_s) {
            let t = start_ms - d * 86_400_000 + k * interval_s * 1000;
            for (site, w) in &levels {
                history.push((site.clone(), t, *w));
            }
        }
    }
    let n = history.len();
    let s2 = store.clone();
    tokio::task::spawn_blocking(move || {
        s2.import_meter(
            &history,
            LedgerDraft {
                actor: "operator".into(),
                action: "meter.import".into(),
                subject: "meter".into(),
                before: None,
                after: None,
                detail: format!("demo history: {n} readings"),
            },
        )
    })
    .await??;
    println!(
        "    metered {} sites of {region} every {interval_s} s; imported {HISTORY_DAYS} prior days at the event's hours ({n} readings)",
        sites.len()
    );

    // The event.
    let requested_kw = committed_kw;
    pg::events::create_event(
        node,
        &utility,
        EventRequest {
            id: Some("demo-event".into()),
            program: "demo-peak".into(),
            zones: zones.clone(),
            feeders: vec![],
            start_ms: Some(start_ms),
            start_in_s: None,
            duration_s: EVENT_S,
            ramp_kw_per_min: None,
            requested_kw,
            price_per_kwh: Some("0.40".into()),
            grid: GridContext {
                reason: "evening peak, transformer at 96 %".into(),
                frequency_hz: Some(49.92),
                loading_pct: Some(96.0),
            },
            notify: None,
        },
    )
    .await
    .map_err(err)?;
    println!(
        "    event demo-event: {requested_kw:.0} kW in {} for {EVENT_S} s, notified; {en} confirmed automatically; participants get notices on MQTT vpp-programs/v1/flex-agg/events/demo-event and GET /api/v1/notices",
        zones.join(","),
        en = en.id
    );
    let pb = super::bar(
        EVENT_S + 8,
        "s of the event (it starts, dispatches, completes)",
    );
    let t0 = Instant::now();
    loop {
        let e = pg::events::get(node, &op, "demo-event").map_err(err)?;
        pb.set_position(t0.elapsed().as_secs().min(EVENT_S + 8));
        if e.status == EventStatus::Completed {
            break;
        }
        if t0.elapsed() > Duration::from_secs(EVENT_S + 60) {
            pb.abandon();
            bail!("the event did not complete in time (status {:?})", e.status);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pb.finish_and_clear();
    // The last interval is written one closing tick after the end.
    tokio::time::sleep(Duration::from_millis(interval_s * 1000 + 600)).await;

    // M&V and settlement, approved by a second party (the operator).
    let perf = pg::settle::performance(node, &utility, "demo-event")
        .await
        .map_err(err)?;
    let statements = pg::settle::settle_event(node, &utility, "demo-event")
        .await
        .map_err(err)?;
    let approved = pg::settle::approve(node, &op, "demo-event")
        .await
        .map_err(err)?;
    println!(
        "    {:<12} {:>10} {:>10} {:>10} {:>10} {:>8} {:>7} {:>12}",
        "resource", "committed", "baseline", "actual", "delivered", "kWh", "perf", "payment"
    );
    for (p, st) in perf.iter().zip(approved.iter()) {
        let r = p
            .report
            .as_ref()
            .map_err(|e| anyhow!("M&V of {}: {e}", p.resource))?;
        let actual: Vec<i64> = r.intervals.iter().filter_map(|i| i.actual_w).collect();
        let actual_avg = if actual.is_empty() {
            0
        } else {
            actual.iter().sum::<i64>() / actual.len() as i64
        };
        println!(
            "    {:<12} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.2} {:>6.0}% {:>8} {}",
            p.resource,
            p.committed_kw,
            r.avg_baseline_w as f64 / 1000.0,
            actual_avg as f64 / 1000.0,
            r.avg_delivered_w.unwrap_or(0) as f64 / 1000.0,
            r.delivered_wh as f64 / 1000.0,
            st.statement.performance_pct,
            st.statement.total,
            st.statement.currency
        );
    }
    let report = store.verify_ledger()?;
    println!(
        "    statements: {} computed by grid-co, approved by operator ({:?}); audit ledger: {} entries, {}",
        statements.len(),
        approved.first().map(|s| s.status),
        report.entries,
        match &report.first_bad {
            None => "chain verifies".to_string(),
            Some(b) => format!("BROKEN at entry {}", b.seq),
        }
    );
    println!(
        "    try it as the aggregator: curl -H 'Authorization: Bearer {}' http://{api}/api/v1/settlements",
        token.token
    );
    Ok(())
}

/// Whether a virtual DER `id` is `region` or under it.
fn site_in(h: &Hierarchy, id: &NodeId, region: &NodeId) -> bool {
    let parents: HashMap<&NodeId, &NodeId> = h
        .virtual_ders
        .iter()
        .filter_map(|v| v.parent.as_ref().map(|p| (&v.id, p)))
        .collect();
    let mut cur = id;
    loop {
        if cur == region {
            return true;
        }
        match parents.get(cur) {
            Some(p) => cur = p,
            None => return false,
        }
    }
}

async fn raw_sites(node: &Arc<Node>, region: &NodeId) -> Result<Vec<NodeId>> {
    let index = pg::enrollments::SiteIndex::load(node).await.map_err(err)?;
    Ok(index.sites_under(region))
}

/// Waits until every site has a few metered intervals and returns each
/// site's average over them.
async fn metered_levels(
    node: &Arc<Node>,
    sites: &[NodeId],
    interval_s: u64,
) -> Result<Vec<(NodeId, i64)>> {
    let want = 3usize;
    let since = vpp_actors::now_ms();
    let pb = super::bar(sites.len() as u64, "sites metered");
    let deadline = Instant::now() + Duration::from_secs(interval_s * (want as u64 + 10));
    loop {
        let now = vpp_actors::now_ms();
        let mut ready = Vec::new();
        for s in sites {
            let r = node.store().meter_range(s, since, now)?;
            if r.len() >= want {
                let avg = r.values().sum::<i64>() / r.len() as i64;
                ready.push((s.clone(), avg));
            }
        }
        pb.set_position(ready.len() as u64);
        if ready.len() == sites.len() {
            pb.finish_and_clear();
            return Ok(ready);
        }
        if Instant::now() > deadline {
            pb.abandon();
            bail!(
                "only {} of {} sites were metered in time",
                ready.len(),
                sites.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
