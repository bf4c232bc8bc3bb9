//! `vpp account …`: accounts and API tokens on a running node (as the
//! operator, by default with the token in `<data-dir>/operator.token`).
//!
//! ```sh
//! vpp account create grid-north --role utility --name "Grid North" --zone NL-north
//! vpp account verify grid-north
//! vpp account token grid-north --ttl-s 86400     # prints the token once
//! vpp account create shop --role participant --name Shop --resource com-ams-02
//! vpp account list
//! vpp account revoke 3f2a9c01b7de
//! ```

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::client::Client;

/// `vpp account`
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account (operators only).
    Create {
        /// Account id (A-Z a-z 0-9 - _ . :).
        id: String,
        /// What it is.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Display name.
        #[arg(long)]
        name: String,
        /// A zone of a utility's jurisdiction (repeat for several).
        #[arg(long = "zone")]
        zones: Vec<String>,
        /// A site or virtual DER the account owns and may enroll (repeat).
        #[arg(long = "resource")]
        resources: Vec<String>,
    },
    /// Mark a utility verified, so it may publish programs and call events.
    Verify {
        /// The utility's account id.
        id: String,
    },
    /// Issue an API token for an account; it is printed once, keep it.
    Token {
        /// Account id.
        id: String,
        /// Lifetime, seconds [default: no expiry].
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    /// Revoke a token by its id (the part after `vpp_`).
    Revoke {
        /// Token id.
        token_id: String,
    },
    /// Every account (operators only).
    List {
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Who the token in use belongs to.
    Me,
}

/// Roles, as the API names them.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// Runs the VPP.
    Operator,
    /// Publishes programs and calls events in its zones.
    Utility,
    /// Builds virtual DERs and dispatches them.
    Aggregator,
    /// A site owner taking part in programs.
    Participant,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            RoleArg::Operator => "operator",
            RoleArg::Utility => "utility",
            RoleArg::Aggregator => "aggregator",
            RoleArg::Participant => "participant",
        }
    }
}

fn line(a: &Value) -> String {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    format!(
        "{:<20} {:<12} {:<9} zones [{}] resources [{}]  {}",
        a["id"].as_str().unwrap_or("?"),
        a["role"].as_str().unwrap_or("?"),
        if a["verified"] == true {
            "verified"
        } else {
            "UNVERIFIED"
        },
        list(&a["jurisdiction"]),
        list(&a["resources"]),
        a["name"].as_str().unwrap_or("")
    )
}

/// Runs an `account` command against the node.
pub(crate) fn run(c: &Client, cmd: AccountCmd) -> Result<()> {
    match cmd {
        AccountCmd::Create {
            id,
            role,
            name,
            zones,
            resources,
        } => {
            let a = c.post_json(
                "/api/v1/accounts",
                &json!({"id": id, "name": name, "role": role.as_str(),
                        "jurisdiction": zones, "resources": resources}),
            )?;
            println!("created {}", line(&a));
            if a["verified"] == false {
                println!("a utility acts once verified: vpp account verify {id}");
            }
        }
        AccountCmd::Verify { id } => {
            let a = c.post_json(&format!("/api/v1/accounts/{id}/verify"), &json!({}))?;
            println!("verified {}", line(&a));
        }
        AccountCmd::Token { id, ttl_s } => {
            let body = match ttl_s {
                Some(t) => json!({ "ttl_s": t }),
                None => json!({}),
            };
            let t = c.post_json(&format!("/api/v1/accounts/{id}/tokens"), &body)?;
            eprintln!(
                "token {} for {} (shown once; send it as Authorization: Bearer …){}",
                t["id"].as_str().unwrap_or("?"),
                id,
                t["expires_ms"]
                    .as_u64()
                    .map(|e| format!(", expires at {e} ms"))
                    .unwrap_or_default()
            );
            println!("{}", t["token"].as_str().unwrap_or(""));
        }
        AccountCmd::Revoke { token_id } => {
            c.post_json(&format!("/api/v1/tokens/{token_id}/revoke"), &json!({}))?;
            println!("revoked {token_id}");
        }
        AccountCmd::List { json } => {
            let v = c.get("/api/v1/accounts")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for a in v.as_array().into_iter().flatten() {
                    println!("{}", line(a));
                }
            }
        }
        AccountCmd::Me => println!("{}", line(&c.get("/api/v1/accounts/me")?)),
    }
    Ok(())
}
