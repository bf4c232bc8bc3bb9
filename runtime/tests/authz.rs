//! Who may call what, and what bad input gets, across the whole HTTP API of
//! an in-process node (`examples/small.toml`, `programs.quorum = 2`):
//!
//! * `every_route_answers_every_caller_as_the_rules_say`: the authorisation
//!   matrix. Every route of `api::router` × every caller (the four roles, a
//!   second utility of the same zone that owns nothing, a utility outside
//!   the zone, an unverified utility; no, garbled, forged, expired and
//!   revoked tokens) gets the status the rules give. Every 401/403 carries a
//!   reason, is counted once in `vpp_api_rejected_total`, and changes
//!   nothing: the audit ledger's head and the targeted record read the same
//!   before and after.
//! * `bad_input_is_refused_with_the_field_and_nothing_is_stored`: the
//!   mutating routes of the programs API refuse malformed JSON, unknown
//!   fields, wrong types and out-of-range values with a 400 naming the field
//!   (404 for unknown ids in the path), store nothing, and count it.
//! * `the_matrix_covers_every_route_of_the_router`: a route added to
//!   `runtime/src/api.rs` without a row in the matrix fails here.
//!
//! Cells marked *disputed* assert what a real VPP needs where the code's rule
//! is, in this test's view, too permissive (each says why); they fail until
//! the rule is settled one way or the other.
//!
//! Each caller acts on records of its own (ids end in the caller's name), and
//! within a row the refused callers go first, so an allowed call never
//! changes what a later cell sees. A failure prints every failing cell as a
//! table: route, caller, expected, got, what else went wrong, the answer.
//!
//! Run: `cargo nextest run -p vpp-runtime --test authz`

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::{eventually, small_toml, TestNode};
use serde_json::{json, Value};

// ---- callers --------------------------------------------------------------

/// Who makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Operator,
    /// `grid-north`: verified, NL-north; publishes the programs.
    Utility,
    /// `grid-north-2`: verified, NL-north too, but owns no program.
    PeerUtility,
    /// `grid-south`: verified, NL-south only.
    OutsideUtility,
    /// `grid-new`: NL-north, not verified.
    UnverifiedUtility,
    /// `agg-north`: owns `north-city`.
    Aggregator,
    /// `fresh-foods`: owns `com-ams-02`.
    Participant,
    NoToken,
    /// `Bearer vpp_zzzz_…`
    GarbledId,
    /// A valid token without `Bearer `.
    NoBearer,
    RandomText,
    /// A real token id with a wrong secret.
    Forged,
    Expired,
    Revoked,
}

use Who::*;

impl Who {
    const ALL: [Who; 14] = [
        Operator,
        Utility,
        PeerUtility,
        OutsideUtility,
        UnverifiedUtility,
        Aggregator,
        Participant,
        NoToken,
        GarbledId,
        NoBearer,
        RandomText,
        Forged,
        Expired,
        Revoked,
    ];

    /// Short name: in the table and as the suffix of the caller's records.
    fn name(self) -> &'static str {
        match self {
            Operator => "op",
            Utility => "util",
            PeerUtility => "peer",
            OutsideUtility => "south",
            UnverifiedUtility => "unverified",
            Aggregator => "agg",
            Participant => "part",
            NoToken => "none",
            GarbledId => "garbled",
            NoBearer => "nobearer",
            RandomText => "random",
            Forged => "forged",
            Expired => "expired",
            Revoked => "revoked",
        }
    }

    /// The account of a signed-in caller.
    fn account(self) -> Option<&'static str> {
        Some(match self {
            Operator => "operator",
            Utility => "grid-north",
            PeerUtility => "grid-north-2",
            OutsideUtility => "grid-south",
            UnverifiedUtility => "grid-new",
            Aggregator => "agg-north",
            Participant => "fresh-foods",
            _ => return None,
        })
    }

    /// Why the node turns an anonymous caller away: the `reason` of
    /// `vpp_api_rejected_total{route="auth"}`.
    fn refusal(self) -> Option<&'static str> {
        match self {
            NoToken => Some("missing_token"),
            GarbledId | NoBearer | RandomText => Some("malformed_token"),
            Forged => Some("unknown_token"),
            Expired => Some("expired_token"),
            Revoked => Some("revoked_token"),
            _ => None,
        }
    }

    /// What the caller enrolls in `POST /api/v1/enrollments`: its own.
    fn resource(self) -> &'static str {
        match self {
            Operator => "res-grn-03",
            Aggregator => "res-ams-01",
            _ => "com-ams-02",
        }
    }
}

/// Every signed-in caller.
const ANYONE: &[Who] = &[
    Operator,
    Utility,
    PeerUtility,
    OutsideUtility,
    UnverifiedUtility,
    Aggregator,
    Participant,
];

// ---- HTTP -----------------------------------------------------------------

/// An answer: status, content type and body (JSON, else the text as a JSON
/// string; an event stream is not read).
struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

impl Reply {
    fn error_code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn error_message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

/// A keep-alive client that sends the `Authorization` header as given.
struct Http {
    agent: ureq::Agent,
    url: String,
}

impl Http {
    fn new(url: &str) -> Http {
        // A fresh connection per request: the node closes a connection
        // whose request body it refused without reading, and a pooled
        // client could pick that one up just as it closes ("Peer
        // disconnected", seen once in CI).
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .into();
        Http {
            agent,
            url: url.to_string(),
        }
    }

    fn send(&self, auth: Option<&str>, method: &str, path: &str, body: Body) -> Reply {
        fn with<B>(r: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
            match auth {
                Some(a) => r.header("Authorization", a),
                None => r,
            }
        }
        let (url, a) = (format!("{}{path}", self.url), &self.agent);
        let sent = match (method, body) {
            ("GET", _) => with(a.get(&url), auth).call(),
            ("DELETE", _) => with(a.delete(&url), auth).call(),
            ("POST", Some((ct, b))) => with(a.post(&url), auth).content_type(ct).send(b),
            ("POST", None) => with(a.post(&url), auth).send_empty(),
            ("PUT", Some((ct, b))) => with(a.put(&url), auth).content_type(ct).send(b),
            ("PUT", None) => with(a.put(&url), auth).send_empty(),
            _ => panic!("method {method}"),
        };
        let mut resp = sent.unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
        let header = resp.headers().get("content-type");
        let content_type = header
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // An event stream never ends: take the headers and hang up.
        let body = if content_type.starts_with("text/event-stream") {
            Value::Null
        } else {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status: resp.status().as_u16(),
            content_type,
            body,
        }
    }
}

/// A request body: (content type, text).
type Body<'a> = Option<(&'a str, &'a str)>;

// ---- records --------------------------------------------------------------

fn terms(capacity_per_kw: &str) -> Value {
    json!({
        "currency": "EUR",
        "capacity_per_kw": capacity_per_kw,
        "energy_per_kwh": "0.50",
        "penalty_per_kw_short": "1.00",
        "penalty_threshold_pct": 50,
        "max_payment_per_event": null
    })
}

/// A program of `grid-north` in NL-north, with room for many events.
fn program(id: &str, kind: &str) -> Value {
    json!({
        "id": id,
        "name": format!("Program {id}"),
        "kind": kind,
        "zones": ["NL-north"],
        "min_kw": 1.0,
        "terms": terms("2.00"),
        "notice_s": 0,
        "max_events_per_season": 500,
        "max_hours_per_season": 10000,
        "max_event_duration_s": 3600,
        "baseline": {"method": "x_of_y", "x": 5, "y": 10}
    })
}

fn enrollment(id: &str, program: &str, resource: &str, kw: f64) -> Value {
    json!({"id": id, "program": program, "resource": resource, "committed_kw": kw})
}

/// An event an hour ahead: it stays notified (or a draft) for the test.
fn event(id: &str, program: &str, notify: bool) -> Value {
    json!({
        "id": id,
        "program": program,
        "zones": ["NL-north"],
        "start_in_s": 3600,
        "duration_s": 600,
        "requested_kw": 5.0,
        "notify": notify
    })
}

/// `fresh-foods` confirms 5 kW of `ff-north`.
fn confirmation() -> Value {
    let c = json!({"enrollment": "ff-north", "answer": "confirm", "committed_kw": 5.0});
    with(&c, "confidence_pct", json!(90))
}

/// A 0.1 kW order an hour ahead.
fn dispatch(id: &str, target: &str) -> Value {
    json!({
        "id": id, "target": target, "direction": "up", "power_kw": 0.1,
        "start_in_s": 3600, "duration_s": 60
    })
}

/// An empty virtual DER, as a hierarchy fragment.
fn vder(id: &str, parent: &str) -> String {
    format!("[[virtual_der]]\nid = \"{id}\"\nname = \"{id}\"\nparent = \"{parent}\"\n\n")
}

/// One old meter reading (an hour boundary fits any interval).
fn meter_csv(site: &str) -> String {
    format!("site,start,kw\n{site},1699999200000,42\n")
}

/// DERs brought online so their sites can be enrolled: an in-process node
/// has no devices, so every DER starts offline with no flexibility.
const ONLINE_DERS: &[&str] = &[
    "com-ams-02-hvac",
    "com-ams-02-cold",
    "com-ams-02-ev",
    "res-ams-01-bat",
    "res-grn-03-boiler",
    "res-grn-03-ev",
];

// ---- the node -------------------------------------------------------------

/// A node with the accounts, tokens and records the tests act on.
struct Ctx {
    http: Http,
    /// The `Authorization` header of each caller.
    auth: HashMap<Who, Option<String>>,
    /// Spare tokens of `fresh-foods` (id, text), one per caller, for the
    /// revoke row.
    spare: HashMap<Who, (String, String)>,
    /// The hierarchy as TOML, for the `PUT /api/v1/hierarchy` row.
    hierarchy_toml: String,
    node: TestNode,
}

impl Ctx {
    fn call(&self, who: Who, method: &str, path: &str, body: Body) -> Reply {
        self.http
            .send(self.auth[&who].as_deref(), method, path, body)
    }

    /// A setup call as `who` that must answer `want`.
    fn must(&self, who: Who, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
        let text = body.map(|b| b.to_string());
        let r = self.call(
            who,
            method,
            path,
            text.as_deref().map(|t| ("application/json", t)),
        );
        assert_eq!(r.status, want, "setup {method} {path}: {}", r.body);
        r.body
    }

    /// A setup upload of TOML or CSV as the operator.
    fn upload(&self, method: &str, path: &str, content_type: &str, text: &str, want: u16) {
        let r = self.call(Operator, method, path, Some((content_type, text)));
        assert_eq!(r.status, want, "setup {method} {path}: {}", r.body);
    }

    /// The ledger's length and head hash.
    fn head(&self) -> Value {
        let v = self.must(Operator, "GET", "/api/v1/audit/verify", None, 200);
        json!([v["entries"], v["head"]])
    }

    /// `vpp_api_rejected_total` by (route, reason).
    fn rejections(&self) -> BTreeMap<(String, String), u64> {
        let r = self.http.send(None, "GET", "/metrics", None);
        let mut out = BTreeMap::new();
        for line in r.body.as_str().unwrap_or_default().lines() {
            let Some(rest) = line.strip_prefix("vpp_api_rejected_total{route=\"") else {
                continue;
            };
            let (route, rest) = rest.split_once("\",reason=\"").expect("route and reason");
            let (reason, n) = rest.split_once("\"} ").expect("a value");
            out.insert((route.to_string(), reason.to_string()), n.parse().unwrap());
        }
        out
    }

    /// Fills a template: `{c}` the caller's name, `{me}` its account, `{tok}`
    /// its spare token's id, `{res}` its resource, `{hierarchy}` the TOML.
    fn fill(&self, template: &str, who: Who) -> String {
        let tok = self.spare.get(&who).map_or("", |(id, _)| id.as_str());
        template
            .replace("{c}", who.name())
            .replace("{me}", who.account().unwrap_or("operator"))
            .replace("{tok}", tok)
            .replace("{res}", who.resource())
            .replace("{hierarchy}", &self.hierarchy_toml)
    }

    /// What a probe reads now.
    fn probe(&self, p: &Probe, who: Who) -> Value {
        match p {
            Probe::Get(template) => {
                let path = self.fill(template, who);
                let (path, pointer) = path.split_once('#').unwrap_or((&path, ""));
                let r = self.call(Operator, "GET", path, None);
                json!([r.status, r.body.pointer(pointer)])
            }
            Probe::SpareToken => {
                let auth = format!("Bearer {}", self.spare[&who].1);
                json!(
                    self.http
                        .send(Some(&auth), "GET", "/api/v1/accounts/me", None)
                        .status
                )
            }
        }
    }

    fn account(&self, id: &str, role: &str, extra: Value) {
        let mut body = json!({"id": id, "name": id, "role": role});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.must(Operator, "POST", "/api/v1/accounts", Some(body), 201);
    }

    /// A new token for `account`: (id, text).
    fn token(&self, account: &str, ttl_s: Option<u64>) -> (String, String) {
        let path = format!("/api/v1/accounts/{account}/tokens");
        let t = self.must(
            Operator,
            "POST",
            &path,
            ttl_s.map(|t| json!({"ttl_s": t})),
            201,
        );
        (
            t["id"].as_str().unwrap().into(),
            t["token"].as_str().unwrap().into(),
        )
    }
}

/// A node with the hierarchy, the seven accounts and their tokens, the
/// programs `north-peak` and `north-extra` of `grid-north`, `fresh-foods`'s
/// enrollment `ff-north` in north-peak, and the event `ev-main` calling it.
fn start() -> Ctx {
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), |c| {
        c.programs.quorum = 2;
        c.programs.tick_ms = 100;
    });
    let op = format!("Bearer {}", node.token);
    let mut ctx = Ctx {
        http: Http::new(&node.url),
        auth: HashMap::from([(Operator, Some(op))]),
        spare: HashMap::new(),
        hierarchy_toml: String::new(),
        node,
    };
    ctx.upload(
        "PUT",
        "/api/v1/hierarchy",
        "application/toml",
        &small_toml(),
        200,
    );
    for der in ONLINE_DERS {
        let path = format!("/api/v1/nodes/{der}/state");
        ctx.must(Operator, "PUT", &path, Some(json!({"online": true})), 200);
    }
    let north = json!({"jurisdiction": ["NL-north"]});
    ctx.account("grid-north", "utility", north.clone());
    ctx.account("grid-north-2", "utility", north.clone());
    ctx.account(
        "grid-south",
        "utility",
        json!({"jurisdiction": ["NL-south"]}),
    );
    ctx.account("grid-new", "utility", north);
    ctx.account(
        "agg-north",
        "aggregator",
        json!({"resources": ["north-city"]}),
    );
    ctx.account(
        "fresh-foods",
        "participant",
        json!({"resources": ["com-ams-02"]}),
    );
    for id in ["grid-north", "grid-north-2", "grid-south"] {
        ctx.must(
            Operator,
            "POST",
            &format!("/api/v1/accounts/{id}/verify"),
            None,
            200,
        );
    }
    for who in &ANYONE[1..] {
        let (_, text) = ctx.token(who.account().unwrap(), None);
        ctx.auth.insert(*who, Some(format!("Bearer {text}")));
    }
    for id in ["north-peak", "north-extra"] {
        ctx.must(
            Utility,
            "POST",
            "/api/v1/programs",
            Some(program(id, "capacity")),
            201,
        );
    }
    let ff = enrollment("ff-north", "north-peak", "com-ams-02", 10.0);
    ctx.must(Participant, "POST", "/api/v1/enrollments", Some(ff), 201);
    let ev = event("ev-main", "north-peak", true);
    let ev = ctx.must(Utility, "POST", "/api/v1/events", Some(ev), 201);
    assert_eq!(ev["status"], "notified", "{ev}");
    assert_eq!(ev["participants"][0]["enrollment"], "ff-north", "{ev}");
    ctx
}

/// The rest of what the matrix acts on. Per caller `{c}`: programs with
/// terms to change (`t-{c}`) and with a change waiting (`ta-{c}`), an
/// enrollment to cancel (`xc-{c}`), events to notify (`dr-{c}`), approve
/// (`em-{c}`, emergency), cancel (`ec-{c}`) and confirm (`cf-{c}`), orders
/// to cancel, nodes to remove, a utility to verify (`vt-{c}`) and a spare
/// token; then the bad tokens.
fn matrix_fixtures(ctx: &mut Ctx) {
    // Issued first so that it has run out by the end of the setup.
    let (_, expired) = ctx.token("operator", Some(1));
    let (revoked_id, revoked) = ctx.token("operator", None);
    ctx.must(
        Operator,
        "POST",
        &format!("/api/v1/tokens/{revoked_id}/revoke"),
        None,
        200,
    );
    let emergency = program("north-emergency", "emergency");
    ctx.must(Utility, "POST", "/api/v1/programs", Some(emergency), 201);
    let mut fragment = String::new();
    for who in Who::ALL {
        let c = who.name();
        ctx.spare.insert(who, ctx.token("fresh-foods", None));
        ctx.account(
            &format!("vt-{c}"),
            "utility",
            json!({"jurisdiction": ["NL-north"]}),
        );
        for id in [format!("t-{c}"), format!("ta-{c}")] {
            ctx.must(
                Utility,
                "POST",
                "/api/v1/programs",
                Some(program(&id, "capacity")),
                201,
            );
        }
        let path = format!("/api/v1/programs/ta-{c}/terms");
        let p = ctx.must(
            Utility,
            "PUT",
            &path,
            Some(json!({"terms": terms("3.00")})),
            200,
        );
        assert!(p["pending_terms"].is_object(), "{p}");
        let xc = enrollment(&format!("xc-{c}"), &format!("t-{c}"), "com-ams-02", 1.0);
        ctx.must(Participant, "POST", "/api/v1/enrollments", Some(xc), 201);
        for (id, program, notify) in [
            (format!("dr-{c}"), "north-peak", false),
            (format!("em-{c}"), "north-emergency", true),
            (format!("ec-{c}"), "north-peak", true),
            (format!("cf-{c}"), "north-peak", true),
        ] {
            let ev = event(&id, program, notify);
            ctx.must(Utility, "POST", "/api/v1/events", Some(ev), 201);
        }
        for (id, target) in [
            (format!("cx-in-{c}"), "north-city"),
            (format!("cx-out-{c}"), "south"),
        ] {
            ctx.must(
                Operator,
                "POST",
                "/api/v1/dispatches",
                Some(dispatch(&id, target)),
                202,
            );
        }
        fragment += &vder(&format!("rm-in-{c}"), "north-city");
        fragment += &vder(&format!("rm-out-{c}"), "south");
    }
    for (id, target) in [("fx-in", "north-city"), ("fx-out", "south")] {
        ctx.must(
            Operator,
            "POST",
            "/api/v1/dispatches",
            Some(dispatch(id, target)),
            202,
        );
    }
    ctx.upload(
        "POST",
        "/api/v1/hierarchy/nodes",
        "application/toml",
        &fragment,
        201,
    );
    for site in ["com-ams-02", "ind-mst-06"] {
        ctx.upload("POST", "/api/v1/meter", "text/csv", &meter_csv(site), 200);
    }
    let r = ctx.call(Operator, "GET", "/api/v1/hierarchy?format=toml", None);
    ctx.hierarchy_toml = r.body.as_str().expect("TOML text").to_string();

    let op = ctx.node.token.clone();
    let (id, secret) = op.strip_prefix("vpp_").unwrap().split_once('_').unwrap();
    let mut forged = secret.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    ctx.auth.extend([
        (NoToken, None),
        (GarbledId, Some("Bearer vpp_zzzz_0123456789abcdef".into())),
        (NoBearer, Some(op.clone())),
        (
            RandomText,
            Some("Bearer correct horse battery staple".into()),
        ),
        (Forged, Some(format!("Bearer vpp_{id}_{forged}"))),
        (Expired, Some(format!("Bearer {expired}"))),
        (Revoked, Some(format!("Bearer {revoked}"))),
    ]);
    // Poll, not sleep, until the 1 s token has run out.
    let me = |who| ctx.call(who, "GET", "/api/v1/accounts/me", None).status;
    eventually(10, || (me(Expired) == 401).then_some(()));
}

// ---- the matrix -----------------------------------------------------------

/// A read that must not change when a call is refused.
enum Probe {
    /// `GET path[#json-pointer]` as the operator (a template, see
    /// [`Ctx::fill`]).
    Get(String),
    /// The caller's spare `fresh-foods` token still signs in.
    SpareToken,
}

/// One route called one way, and what each caller gets.
struct Row {
    method: &'static str,
    /// As the router names it (the coverage check compares these).
    route: &'static str,
    /// The path called, a template (default: `route`).
    path: &'static str,
    body: Option<(&'static str, String)>,
    /// Health and metrics: everyone gets 200.
    public: bool,
    /// Signed-in callers that get something other than 403.
    allowed: Vec<(Who, u16)>,
    /// Cells that assert 403 where the code allows: (caller, why).
    disputed: Vec<(Who, &'static str)>,
    probe: Option<Probe>,
}

fn row(method: &'static str, route: &'static str) -> Row {
    Row {
        method,
        route,
        path: route,
        body: None,
        public: false,
        allowed: Vec::new(),
        disputed: Vec::new(),
        probe: None,
    }
}

impl Row {
    fn at(mut self, path: &'static str) -> Row {
        self.path = path;
        self
    }

    fn public(mut self) -> Row {
        self.public = true;
        self
    }

    fn allow(mut self, who: &[Who], status: u16) -> Row {
        self.allowed.extend(who.iter().map(|w| (*w, status)));
        self
    }

    fn dispute(mut self, who: Who, why: &'static str) -> Row {
        self.disputed.push((who, why));
        self
    }

    fn json(mut self, body: Value) -> Row {
        self.body = Some(("application/json", body.to_string()));
        self
    }

    fn text(mut self, content_type: &'static str, body: String) -> Row {
        self.body = Some((content_type, body));
        self
    }

    fn probe(mut self, path: &'static str) -> Row {
        self.probe = Some(Probe::Get(path.into()));
        self
    }

    fn probe_owned(mut self, path: String) -> Row {
        self.probe = Some(Probe::Get(path));
        self
    }

    fn probe_spare_token(mut self) -> Row {
        self.probe = Some(Probe::SpareToken);
        self
    }

    /// The status `who` must get, and the note of a disputed cell.
    fn expect(&self, who: Who) -> (u16, Option<&'static str>) {
        if self.public {
            return (200, None);
        }
        if who.account().is_none() {
            return (401, None);
        }
        if let Some((_, why)) = self.disputed.iter().find(|(w, _)| *w == who) {
            return (403, Some(why));
        }
        let allowed = self.allowed.iter().find(|(w, _)| *w == who);
        (allowed.map_or(403, |(_, s)| *s), None)
    }
}

const AGG_SCOPE: &str = "an aggregator acts on and sees its own subtree (north-city) only";
const AGG_STATE: &str = "DER state comes from devices or operators; an aggregator \
     could inflate the flexibility its enrollments are checked against";
const AGG_METER: &str = "meter data are the evidence M&V pays on; the party paid \
     (aggregator) must not write its own";
const AGG_HIERARCHY: &str = "replacing the whole hierarchy drops every other party's nodes";
const OP_EVENTS: &str = "DOMAIN.md 8: only verified utilities start events (the utility pays)";
const PEER: &str = "the second approver of grid-north's critical action must not be \
     another utility that merely shares the zone";

/// Every route of `api::router`, with the rules of `api/auth.rs` and
/// `crate::programs`. (A table: one row per line where it fits.)
#[rustfmt::skip]
fn rows() -> Vec<Row> {
    let fleet = &[Operator, Aggregator];
    let (program_owner, payee) = (&[Operator, Utility], &[Operator, Participant]);
    let event_parties = &[Operator, Utility, Participant];
    let old_readings = "?from_ms=1699999200000&to_ms=1700000000000";
    vec![
        row("GET", "/api/v1/health").public(),
        row("GET", "/api/v1/health/live").public(),
        row("GET", "/api/v1/health/ready").public(),
        row("GET", "/api/v1/cluster").allow(&[Operator], 200),
        row("GET", "/metrics").public(),
        // accounts and tokens
        row("POST", "/api/v1/accounts").allow(&[Operator], 201)
            .json(json!({"id": "acct-{c}", "name": "New", "role": "participant"}))
            .probe("/api/v1/accounts"),
        row("GET", "/api/v1/accounts").allow(&[Operator], 200),
        row("GET", "/api/v1/accounts/me").allow(ANYONE, 200),
        row("POST", "/api/v1/accounts/{id}/verify").at("/api/v1/accounts/vt-{c}/verify")
            .allow(&[Operator], 200).probe("/api/v1/accounts"),
        row("POST", "/api/v1/accounts/{id}/tokens").at("/api/v1/accounts/fresh-foods/tokens")
            .allow(payee, 201),
        row("POST", "/api/v1/accounts/{id}/tokens").at("/api/v1/accounts/{me}/tokens")
            .json(json!({"ttl_s": 3600})).allow(ANYONE, 201),
        row("POST", "/api/v1/tokens/{id}/revoke").at("/api/v1/tokens/{tok}/revoke")
            .allow(payee, 200).probe_spare_token(),
        // programs
        row("POST", "/api/v1/programs").allow(&[Utility, PeerUtility], 201)
            .json(program("np-{c}", "capacity")).probe("/api/v1/programs/np-{c}"),
        row("GET", "/api/v1/programs").at("/api/v1/programs?zone=NL-north").allow(ANYONE, 200),
        row("GET", "/api/v1/programs/{id}").at("/api/v1/programs/north-peak").allow(ANYONE, 200),
        row("PUT", "/api/v1/programs/{id}/terms").at("/api/v1/programs/t-{c}/terms")
            .json(json!({"terms": terms("2.50")})).allow(program_owner, 200)
            .probe("/api/v1/programs/t-{c}"),
        // grid-north proposed ta-{c}'s change: it may not approve it too.
        row("POST", "/api/v1/programs/{id}/terms/approve")
            .at("/api/v1/programs/ta-{c}/terms/approve")
            .allow(&[Operator], 200).dispute(PeerUtility, PEER).probe("/api/v1/programs/ta-{c}"),
        // enrollments
        row("POST", "/api/v1/enrollments").allow(&[Operator, Aggregator, Participant], 201)
            .json(enrollment("en-{c}", "north-extra", "{res}", 1.0))
            .probe("/api/v1/enrollments/en-{c}"),
        row("GET", "/api/v1/enrollments").allow(ANYONE, 200),
        row("GET", "/api/v1/enrollments/{id}").at("/api/v1/enrollments/ff-north")
            .allow(event_parties, 200),
        row("POST", "/api/v1/enrollments/{id}/cancel").at("/api/v1/enrollments/xc-{c}/cancel")
            .allow(payee, 200).probe("/api/v1/enrollments/xc-{c}"),
        // events
        row("POST", "/api/v1/events").allow(&[Utility], 201).dispute(Operator, OP_EVENTS)
            .json(event("ev-{c}", "north-peak", true)).probe("/api/v1/events/ev-{c}"),
        row("GET", "/api/v1/events").allow(ANYONE, 200),
        row("GET", "/api/v1/events/{id}").at("/api/v1/events/ev-main").allow(event_parties, 200),
        row("POST", "/api/v1/events/{id}/notify").at("/api/v1/events/dr-{c}/notify")
            .allow(&[Utility], 200).dispute(Operator, OP_EVENTS).probe("/api/v1/events/dr-{c}"),
        // grid-north called em-{c}: it may not approve it too.
        row("POST", "/api/v1/events/{id}/approve").at("/api/v1/events/em-{c}/approve")
            .allow(&[Operator], 200).dispute(PeerUtility, PEER).probe("/api/v1/events/em-{c}"),
        row("POST", "/api/v1/events/{id}/cancel").at("/api/v1/events/ec-{c}/cancel")
            .allow(program_owner, 200).probe("/api/v1/events/ec-{c}"),
        row("POST", "/api/v1/events/{id}/confirmations").at("/api/v1/events/cf-{c}/confirmations")
            .json(confirmation()).allow(payee, 200).probe("/api/v1/events/cf-{c}"),
        row("GET", "/api/v1/events/{id}/performance").at("/api/v1/events/ev-main/performance")
            .allow(event_parties, 200),
        // Authorised callers get 409: ev-main has not even started.
        row("POST", "/api/v1/events/{id}/settlement").at("/api/v1/events/ev-main/settlement")
            .allow(program_owner, 409).probe("/api/v1/settlements?event=ev-main"),
        row("POST", "/api/v1/events/{id}/settlement/approve")
            .at("/api/v1/events/ev-main/settlement/approve")
            .allow(program_owner, 409).dispute(PeerUtility, PEER)
            .probe("/api/v1/settlements?event=ev-main"),
        row("GET", "/api/v1/settlements").allow(ANYONE, 200),
        // A utility reads the metrics of participants with statements in its
        // programs; fresh-foods has none yet.
        row("GET", "/api/v1/participants/{id}/metrics")
            .at("/api/v1/participants/fresh-foods/metrics").allow(payee, 200),
        row("GET", "/api/v1/notices").allow(ANYONE, 200),
        row("GET", "/api/v1/notices/stream").allow(ANYONE, 200),
        row("GET", "/api/v1/audit").at("/api/v1/audit?limit=5").allow(&[Operator], 200),
        row("GET", "/api/v1/audit/verify").allow(&[Operator], 200),
        // fleet reads (the whole-fleet lists: see the report)
        row("GET", "/api/v1/hierarchy").allow(fleet, 200),
        row("GET", "/api/v1/nodes/{id}").at("/api/v1/nodes/com-ams-02").allow(fleet, 200),
        row("GET", "/api/v1/nodes/{id}").at("/api/v1/nodes/ind-mst-06")
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE),
        row("GET", "/api/v1/nodes/{id}/capacity").at("/api/v1/nodes/north-city/capacity")
            .allow(fleet, 200),
        row("GET", "/api/v1/nodes/{id}/capacity").at("/api/v1/nodes/ind-mst-06/capacity")
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE),
        row("GET", "/api/v1/dispatches").allow(fleet, 200),
        row("GET", "/api/v1/dispatches/{id}").at("/api/v1/dispatches/fx-in").allow(fleet, 200),
        row("GET", "/api/v1/dispatches/{id}").at("/api/v1/dispatches/fx-out")
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE),
        row("GET", "/api/v1/meter/{site}").at("/api/v1/meter/com-ams-02").allow(fleet, 200),
        row("GET", "/api/v1/meter/{site}").at("/api/v1/meter/ind-mst-06")
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE),
        // fleet writes, last: most of them restart the fleet
        row("POST", "/api/v1/meter").text("text/csv", meter_csv("com-ams-02"))
            .allow(&[Operator], 200).dispute(Aggregator, AGG_METER)
            .probe_owned(format!("/api/v1/meter/com-ams-02{old_readings}")),
        row("POST", "/api/v1/meter").text("text/csv", meter_csv("ind-mst-06"))
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE)
            .probe_owned(format!("/api/v1/meter/ind-mst-06{old_readings}")),
        row("PUT", "/api/v1/nodes/{id}/state").at("/api/v1/nodes/com-ams-02-hvac/state")
            .json(json!({"online": true})).allow(&[Operator], 200).dispute(Aggregator, AGG_STATE)
            .probe("/api/v1/nodes/com-ams-02-hvac#/capacity/state"),
        row("POST", "/api/v1/dispatches").json(dispatch("d-in-{c}", "north-city"))
            .allow(fleet, 202).probe("/api/v1/dispatches/d-in-{c}#/dispatch"),
        row("POST", "/api/v1/dispatches").json(dispatch("d-out-{c}", "south"))
            .allow(&[Operator], 202).dispute(Aggregator, AGG_SCOPE)
            .probe("/api/v1/dispatches/d-out-{c}#/dispatch"),
        row("POST", "/api/v1/dispatches/{id}/cancel").at("/api/v1/dispatches/cx-in-{c}/cancel")
            .allow(fleet, 200).probe("/api/v1/dispatches/cx-in-{c}#/dispatch/status"),
        row("POST", "/api/v1/dispatches/{id}/cancel").at("/api/v1/dispatches/cx-out-{c}/cancel")
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE)
            .probe("/api/v1/dispatches/cx-out-{c}#/dispatch/status"),
        row("PUT", "/api/v1/hierarchy").text("application/toml", "{hierarchy}".into())
            .allow(&[Operator], 200).dispute(Aggregator, AGG_HIERARCHY)
            .probe("/api/v1/hierarchy"),
        row("POST", "/api/v1/hierarchy/nodes")
            .text("application/toml", vder("vd-in-{c}", "north-city"))
            .allow(fleet, 201).probe("/api/v1/hierarchy"),
        row("POST", "/api/v1/hierarchy/nodes")
            .text("application/toml", vder("vd-out-{c}", "south"))
            .allow(&[Operator], 201).dispute(Aggregator, AGG_SCOPE).probe("/api/v1/hierarchy"),
        row("DELETE", "/api/v1/hierarchy/nodes/{id}").at("/api/v1/hierarchy/nodes/rm-in-{c}")
            .allow(fleet, 200).probe("/api/v1/hierarchy"),
        row("DELETE", "/api/v1/hierarchy/nodes/{id}").at("/api/v1/hierarchy/nodes/rm-out-{c}")
            .allow(&[Operator], 200).dispute(Aggregator, AGG_SCOPE).probe("/api/v1/hierarchy"),
    ]
}

/// One cell's outcome.
struct Cell {
    call: String,
    who: Who,
    want: u16,
    got: u16,
    disputed: Option<&'static str>,
    problems: Vec<String>,
    body: String,
}

impl Cell {
    fn failed(&self) -> bool {
        self.got != self.want || !self.problems.is_empty()
    }
}

fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Runs one cell: the status, the shape of a refusal, and that a refusal
/// left the ledger (`head`, updated) and the targeted record alone.
fn run_cell(ctx: &Ctx, row: &Row, who: Who, head: &mut Value) -> Cell {
    let (want, disputed) = row.expect(who);
    let path = ctx.fill(row.path, who);
    let body = row.body.as_ref().map(|(ct, b)| (*ct, ctx.fill(b, who)));
    let refusal = |s| s == 401 || s == 403;
    let probe = row.probe.as_ref().filter(|_| refusal(want));
    let before = probe.map(|p| ctx.probe(p, who));
    let r = ctx.call(
        who,
        row.method,
        &path,
        body.as_ref().map(|(ct, b)| (*ct, b.as_str())),
    );
    let after = ctx.head();
    let mut problems = Vec::new();
    if refusal(r.status) {
        let code = if r.status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        };
        if r.error_code() != code || r.error_message().trim().is_empty() {
            problems.push(format!("refusal without code {code:?} and a message"));
        }
    }
    if refusal(want) || refusal(r.status) {
        if after != *head {
            problems.push(format!("ledger moved: {head} → {after}"));
        }
        if let (Some(p), Some(before)) = (probe, before) {
            let now = ctx.probe(p, who);
            if now != before {
                problems.push(format!(
                    "record changed: {} → {}",
                    excerpt(&before),
                    excerpt(&now)
                ));
            }
        }
    }
    let stream = row.route.ends_with("/stream") && r.status == 200;
    if stream && !r.content_type.starts_with("text/event-stream") {
        problems.push(format!("content type {:?}", r.content_type));
    }
    *head = after;
    Cell {
        call: format!("{} {path}", row.method),
        who,
        want,
        got: r.status,
        disputed,
        problems,
        body: excerpt(&r.body),
    }
}

fn table(cells: &[&Cell]) -> String {
    let mut out = format!(
        "{:<52} {:<10} want  got  problem | answer\n",
        "call", "caller"
    );
    for c in cells {
        let mut why = c.problems.join("; ");
        if let Some(d) = c.disputed {
            why = format!("[disputed: {d}] {why}");
        }
        let (call, who) = (&c.call, c.who.name());
        let _ = writeln!(
            out,
            "{call:<52} {who:<10} {:>4} {:>4}  {why} | {}",
            c.want, c.got, c.body
        );
    }
    out
}

/// Every 401 is counted under route `auth` by its reason, every 403 as
/// reason `forbidden` under the route that refused: once each.
fn check_counts(
    cells: &[Cell],
    before: &BTreeMap<(String, String), u64>,
    after: &BTreeMap<(String, String), u64>,
) -> Vec<String> {
    let grown = |f: &dyn Fn(&str, &str) -> bool| -> u64 {
        let changed = after.iter().filter(|((route, reason), _)| f(route, reason));
        changed
            .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
            .sum()
    };
    let mut problems = Vec::new();
    let reasons = [
        "missing_token",
        "malformed_token",
        "unknown_token",
        "expired_token",
    ];
    for reason in reasons.into_iter().chain(["revoked_token"]) {
        let seen = cells
            .iter()
            .filter(|c| c.got == 401 && c.who.refusal() == Some(reason));
        let (seen, counted) = (
            seen.count() as u64,
            grown(&|rt, r| rt == "auth" && r == reason),
        );
        if seen != counted {
            problems.push(format!("auth/{reason}: {seen} answers, {counted} counted"));
        }
    }
    let seen = cells.iter().filter(|c| c.got == 403).count() as u64;
    let counted = grown(&|_, r| r == "forbidden");
    if seen != counted {
        problems.push(format!("forbidden: {seen} answers, {counted} counted"));
    }
    problems
}

#[test]
fn every_route_answers_every_caller_as_the_rules_say() {
    let t0 = Instant::now();
    let mut ctx = start();
    matrix_fixtures(&mut ctx);
    let setup = t0.elapsed();
    let counts = ctx.rejections();
    let mut head = ctx.head();
    let mut cells = Vec::new();
    let rows = rows();
    for row in &rows {
        // Refusals first: an allowed call may change what a later cell sees.
        let mut order = Who::ALL.to_vec();
        order.sort_by_key(|w| row.expect(*w).0 < 400);
        for who in order {
            cells.push(run_cell(&ctx, row, who, &mut head));
        }
    }
    let count_problems = check_counts(&cells, &counts, &ctx.rejections());
    let mut failed: Vec<&Cell> = cells.iter().filter(|c| c.failed()).collect();
    failed.sort_by_key(|c| c.disputed.is_none());
    let disputed = failed.iter().filter(|c| c.disputed.is_some()).count();
    println!(
        "{} cells ({} rows × {} callers): {} failed, {disputed} of them disputed; \
         setup {:.1} s, all {:.1} s",
        cells.len(),
        rows.len(),
        Who::ALL.len(),
        failed.len(),
        setup.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty() && count_problems.is_empty(),
        "{} of {} cells failed ({disputed} disputed):\n{}\nrejection counters: {count_problems:?}",
        failed.len(),
        cells.len(),
        table(&failed)
    );
}

// ---- bad input ------------------------------------------------------------

/// `base` with `key` (dotted for nested objects) set to `v`, or removed when
/// `v` is null.
fn with(base: &Value, key: &str, v: Value) -> Value {
    let mut b = base.clone();
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let obj = parts.into_iter().fold(&mut b, |o, p| &mut o[p]);
    let map = obj.as_object_mut().expect("an object");
    if v.is_null() {
        map.remove(last);
    } else {
        map.insert(last.to_string(), v);
    }
    b
}

/// A request that must be refused with `want`, its message naming `field`.
struct Bad {
    who: Who,
    method: &'static str,
    path: String,
    body: Option<String>,
    want: u16,
    field: &'static str,
}

/// Refusals of `base` with each change `(key, value, field the message must
/// name)`.
fn spoiled(
    out: &mut Vec<Bad>,
    (who, method, path): (Who, &'static str, &str),
    base: &Value,
    changes: &[(&str, Value, &'static str)],
) {
    for (key, v, field) in changes {
        let body = Some(with(base, key, v.clone()).to_string());
        out.push(Bad {
            who,
            method,
            path: path.into(),
            body,
            want: 400,
            field,
        });
    }
}

/// Every refusal, by route (a table). Records they would create are all
/// called `bad`.
#[rustfmt::skip]
fn bad_inputs() -> Vec<Bad> {
    let mut v = Vec::new();
    let account = json!({"id": "bad", "name": "Bad", "role": "participant"});
    spoiled(&mut v, (Operator, "POST", "/api/v1/accounts"), &account, &[
        ("colour", json!("red"), "colour"),
        ("name", json!(5), "name"),
        ("role", json!("king"), "role"),
        ("id", json!("a/b"), "id"),
        ("name", json!(""), "name"),
        ("resources", json!(["nowhere"]), "resources"),
        ("resources", json!(["a/b"]), "resources"),
        ("jurisdiction", json!(["NL-north"]), "jurisdiction"),
    ]);
    let utility = with(&account, "role", json!("utility"));
    spoiled(&mut v, (Operator, "POST", "/api/v1/accounts"), &utility, &[
        ("jurisdiction", json!([]), "jurisdiction"),
        ("jurisdiction", json!([""]), "jurisdiction"),
    ]);
    let tokens = (Participant, "POST", "/api/v1/accounts/fresh-foods/tokens");
    spoiled(&mut v, tokens, &json!({"ttl_s": 60}), &[
        ("ttl", json!(60), "ttl"),
        ("ttl_s", json!("60"), "ttl_s"),
        ("ttl_s", json!(0), "ttl_s"),
        ("ttl_s", json!(-1), "ttl_s"),
        ("ttl_s", json!(1e300), "ttl_s"),
        ("ttl_s", json!(1_000_000_000_000u64), "ttl_s"),
    ]);
    spoiled(&mut v, (Utility, "POST", "/api/v1/programs"), &program("bad", "capacity"), &[
        ("colour", json!("red"), "colour"),
        ("notice_s", json!("soon"), "notice_s"),
        ("kind", json!("mega"), "kind"),
        ("terms", Value::Null, "terms"),
        ("id", json!("a/b"), "id"),
        ("min_kw", json!(-5.0), "min_kw"),
        ("min_kw", json!(1e300), "min_kw"),
        ("zones", json!([]), "zones"),
        ("max_event_duration_s", json!(0), "max_event_duration_s"),
        ("max_events_per_season", json!(0), "max_events_per_season"),
        ("coverage", json!([{"lat": 52.0, "lon": 4.0, "radius_km": -1.0}]), "coverage"),
        ("season", json!({"start_ms": 2000, "end_ms": 1000}), "season"),
        ("utc_offset_min", json!(100_000), "utc_offset_min"),
        ("terms.capacity_per_kw", json!("-1"), "capacity_per_kw"),
        ("terms.currency", json!("euro"), "currency"),
        ("baseline", json!({"method": "guess"}), "baseline"),
    ]);
    let terms_route = (Utility, "PUT", "/api/v1/programs/north-peak/terms");
    spoiled(&mut v, terms_route, &json!({"terms": terms("2.50")}), &[
        ("why", json!("more"), "why"),
        ("terms", json!(5), "terms"),
        ("terms.energy_per_kwh", json!("-0.5"), "energy_per_kwh"),
        ("terms.penalty_threshold_pct", json!(101), "penalty_threshold_pct"),
    ]);
    let en = enrollment("bad", "north-extra", "com-ams-02", 1.0);
    spoiled(&mut v, (Participant, "POST", "/api/v1/enrollments"), &en, &[
        ("colour", json!("red"), "colour"),
        ("committed_kw", json!("lots"), "committed_kw"),
        ("committed_kw", json!(-5.0), "committed_kw"),
        ("committed_kw", json!(1e300), "committed_kw"),
        ("committed_kw", json!(0.0), "committed_kw"),
        ("committed_kw", json!(5000.0), "committed_kw"),
        ("program", json!("nope"), "program"),
        ("resource", json!("nowhere"), "resource"),
        ("resource", json!("a/b"), "resource"),
        ("resource", json!("com-ams-02-hvac"), "resource"),
        ("id", json!("a/b"), "id"),
        ("notice_s", json!(999_999), "notice_s"),
        ("windows", json!([{"days": ["mon"], "from": "25:00", "to": "26:00"}]), "windows"),
        ("windows", json!([{"days": [], "from": "10:00", "to": "09:00"}]), "window"),
    ]);
    let ev = event("bad", "north-peak", true);
    spoiled(&mut v, (Utility, "POST", "/api/v1/events"), &ev, &[
        ("colour", json!("red"), "colour"),
        ("duration_s", json!("long"), "duration_s"),
        ("duration_s", json!(0), "duration_s"),
        ("duration_s", json!(7200), "duration_s"),
        ("requested_kw", json!(-1.0), "requested_kw"),
        ("requested_kw", json!(1e300), "requested_kw"),
        ("requested_kw", json!(0.0), "requested_kw"),
        ("start_in_s", json!(400 * 86_400), "start_in_s"),
        ("start_ms", json!(4_000_000_000_000u64), "start_ms"), // and start_in_s
        ("zones", json!([]), "zones"),
        ("program", json!("nope"), "program"),
        ("id", json!("a/b"), "id"),
        ("price_per_kwh", json!("cheap"), "price_per_kwh"),
        ("ramp_kw_per_min", json!(-1.0), "ramp_kw_per_min"),
        ("grid", json!({"reason": "peak", "frequency_hz": -5.0}), "grid"),
    ]);
    let in_the_past = with(&ev, "start_in_s", Value::Null);
    spoiled(&mut v, (Utility, "POST", "/api/v1/events"), &in_the_past, &[
        ("start_ms", json!(1000), "start"),
    ]);
    let confirmations = (Participant, "POST", "/api/v1/events/ev-main/confirmations");
    spoiled(&mut v, confirmations, &confirmation(), &[
        ("colour", json!("red"), "colour"),
        ("committed_kw", json!("x"), "committed_kw"),
        ("answer", json!("maybe"), "answer"),
        ("confidence_pct", json!(101), "confidence_pct"),
        ("confidence_pct", json!(300), "confidence_pct"),
        ("committed_kw", json!(-1.0), "committed_kw"),
        ("committed_kw", json!(1e300), "committed_kw"),
        ("committed_kw", json!(50.0), "committed_kw"),
        ("enrollment", json!("nope"), "enrollment"),
    ]);
    // Malformed JSON: the message names what the body is.
    let malformed = "{\"id\": \"bad\", ";
    for (who, method, path, what) in [
        (Operator, "POST", "/api/v1/accounts", "account"),
        (Participant, "POST", "/api/v1/accounts/fresh-foods/tokens", "token request"),
        (Utility, "POST", "/api/v1/programs", "program"),
        (Utility, "PUT", "/api/v1/programs/north-peak/terms", "terms"),
        (Participant, "POST", "/api/v1/enrollments", "enrollment"),
        (Utility, "POST", "/api/v1/events", "event"),
        (Participant, "POST", "/api/v1/events/ev-main/confirmations", "confirmation"),
    ] {
        let (path, body) = (path.into(), Some(malformed.into()));
        v.push(Bad { who, method, path, body, want: 400, field: what });
    }
    // Unknown ids in the path (`a%2Fb` arrives as `a/b`): 404.
    let terms_body = json!({"terms": terms("2.50")}).to_string();
    let confirm_body = confirmation().to_string();
    for (who, method, path, body, field) in [
        (Operator, "POST", "/api/v1/accounts/nobody/verify", None, "nobody"),
        (Operator, "POST", "/api/v1/accounts/nobody/tokens", None, "nobody"),
        (Operator, "POST", "/api/v1/accounts/a%2Fb/tokens", None, "a/b"),
        (Operator, "POST", "/api/v1/tokens/0123456789ab/revoke", None, "0123456789ab"),
        (Utility, "PUT", "/api/v1/programs/nope/terms", Some(&terms_body), "nope"),
        (Utility, "POST", "/api/v1/programs/nope/terms/approve", None, "nope"),
        (Participant, "POST", "/api/v1/enrollments/nope/cancel", None, "nope"),
        (Utility, "POST", "/api/v1/events/nope/notify", None, "nope"),
        (Utility, "POST", "/api/v1/events/nope/approve", None, "nope"),
        (Utility, "POST", "/api/v1/events/nope/cancel", None, "nope"),
        (Participant, "POST", "/api/v1/events/nope/confirmations", Some(&confirm_body), "nope"),
        (Utility, "POST", "/api/v1/events/nope/settlement", None, "nope"),
        (Utility, "POST", "/api/v1/events/a%2Fb/settlement", None, "a/b"),
        (Utility, "POST", "/api/v1/events/nope/settlement/approve", None, "nope"),
    ] {
        v.push(Bad { who, method, path: path.into(), body: body.cloned(), want: 404, field });
    }
    v
}

#[test]
fn bad_input_is_refused_with_the_field_and_nothing_is_stored() {
    let t0 = Instant::now();
    let ctx = start();
    let counts = ctx.rejections();
    let mut head = ctx.head();
    let cases = bad_inputs();
    let mut failed = Vec::new();
    for b in &cases {
        let r = ctx.call(
            b.who,
            b.method,
            &b.path,
            b.body.as_deref().map(|t| ("application/json", t)),
        );
        let after = ctx.head();
        let code = if b.want == 404 {
            "not_found"
        } else {
            "bad_request"
        };
        let mut problems = Vec::new();
        if r.status != b.want || r.error_code() != code {
            problems.push(format!("want {} {code}", b.want));
        }
        if !r.error_message().contains(b.field) {
            problems.push(format!("the message does not name {:?}", b.field));
        }
        if after != head {
            problems.push(format!("ledger moved: {head} → {after}"));
        }
        if !problems.is_empty() {
            let (who, body) = (b.who.name(), b.body.as_deref().unwrap_or(""));
            let got = format!("{} {}", r.status, excerpt(&r.body));
            let problems = problems.join("; ");
            failed.push(format!(
                "{} {} as {who} {body}\n  → {got}\n  {problems}",
                b.method, b.path
            ));
        }
        head = after;
    }
    // Each refusal counted once (before the reads below, which count 404s).
    let grown: u64 = ctx
        .rejections()
        .iter()
        .map(|(k, v)| v - counts.get(k).unwrap_or(&0))
        .sum();
    if grown != cases.len() as u64 {
        failed.push(format!(
            "vpp_api_rejected_total grew by {grown} for {} refusals",
            cases.len()
        ));
    }
    // Nothing called `bad` was stored.
    for path in [
        "/api/v1/programs/bad",
        "/api/v1/enrollments/bad",
        "/api/v1/events/bad",
    ] {
        let r = ctx.call(Operator, "GET", path, None);
        if r.status != 404 {
            failed.push(format!("GET {path}: {} {}", r.status, excerpt(&r.body)));
        }
    }
    let accounts = ctx.must(Operator, "GET", "/api/v1/accounts", None, 200);
    if accounts
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == "bad")
    {
        failed.push("account `bad` was stored".into());
    }
    // The bodies the cases spoil are good as they are, so each refusal is
    // down to the one change.
    let good = [
        (
            Operator,
            "/api/v1/accounts",
            json!({"id": "good", "name": "G", "role": "participant"}),
        ),
        (Utility, "/api/v1/programs", program("good", "capacity")),
        (
            Participant,
            "/api/v1/enrollments",
            enrollment("good", "north-extra", "com-ams-02", 1.0),
        ),
        (Utility, "/api/v1/events", event("good", "north-peak", true)),
        (
            Participant,
            "/api/v1/events/ev-main/confirmations",
            confirmation(),
        ),
    ];
    for (who, path, body) in good {
        let r = ctx.call(
            who,
            "POST",
            path,
            Some(("application/json", &body.to_string())),
        );
        if !(200..300).contains(&r.status) {
            failed.push(format!(
                "control POST {path}: {} {}",
                r.status,
                excerpt(&r.body)
            ));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{} bad inputs: {} failed; {secs:.1} s",
        cases.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} problems:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ---- coverage -------------------------------------------------------------

#[test]
fn the_matrix_covers_every_route_of_the_router() {
    let src = std::fs::read_to_string(common::repo().join("runtime/src/api.rs")).unwrap();
    let start = src.find("pub fn router").expect("api::router");
    let end = start + src[start..].find("\n}\n").expect("the end of api::router");
    let quoted = src[start..end].split('"').skip(1).step_by(2);
    let routed: BTreeSet<&str> = quoted.filter(|s| s.starts_with('/')).collect();
    let tested: BTreeSet<&str> = rows().iter().map(|r| r.route).collect();
    let missing: Vec<_> = routed.difference(&tested).collect();
    let unknown: Vec<_> = tested.difference(&routed).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "routes without a row in the matrix: {missing:?}; rows for no route: {unknown:?}"
    );
}
