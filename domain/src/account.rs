//! Accounts, roles and the rules of who may do what.
//!
//! Four roles, as in the demand-flexibility journey (DOMAIN.md):
//!
//! | role          | may                                                               |
//! |---------------|-------------------------------------------------------------------|
//! | `operator`    | everything: accounts, hierarchy, dispatch, any program or event    |
//! | `utility`     | once verified by an operator, and only in its jurisdiction (zones): publish programs, call events, approve critical actions, read settlements of its programs |
//! | `aggregator`  | change the hierarchy and dispatch; enroll the resources it owns   |
//! | `participant` | enroll the resources it owns, confirm or decline events, read its own notices and statements |
//!
//! The checks that need nothing but the account are here ([`Account::require`]);
//! those that need a program or a resource (jurisdiction, ownership) are in
//! [`crate::program`] and the runtime. Every denial carries the reason that
//! the API returns with its 403.

use serde::{Deserialize, Serialize};

use crate::id::{AccountId, NodeId};

/// What an account is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the VPP: administers accounts, verifies utilities.
    Operator,
    /// A utility or grid operator: publishes programs, calls events.
    Utility,
    /// Groups resources into virtual DERs and dispatches them.
    Aggregator,
    /// A site owner taking part in programs.
    Participant,
}

impl Role {
    /// Every role, for matrices and docs.
    pub const ALL: [Role; 4] = [
        Role::Operator,
        Role::Utility,
        Role::Aggregator,
        Role::Participant,
    ];

    /// The role's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Utility => "utility",
            Role::Aggregator => "aggregator",
            Role::Participant => "participant",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// Unique id.
    pub id: AccountId,
    /// Display name.
    pub name: String,
    /// What it is.
    pub role: Role,
    /// Utilities act only once an operator has verified them; other roles are
    /// verified when created.
    pub verified: bool,
    /// Grid zones a utility may publish programs and call events in.
    pub jurisdiction: Vec<String>,
    /// Hierarchy nodes (sites or virtual DERs) the account owns and may
    /// enroll; an aggregator or participant owns their subtrees too.
    pub resources: Vec<NodeId>,
    /// A disabled account's tokens are refused.
    pub disabled: bool,
    /// When created, Unix ms.
    pub created_ms: u64,
}

/// What the API needs of the caller, beyond being signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any account.
    Any,
    /// One of these roles.
    Roles(&'static [Role]),
    /// A utility verified by an operator, or an operator.
    VerifiedUtility,
}

impl Account {
    /// Checks that the account may make a call that needs `need`; the error
    /// is the reason a 403 gives.
    pub fn require(&self, need: Need) -> Result<(), String> {
        if self.disabled {
            return Err(format!("account {} is disabled", self.id));
        }
        match need {
            Need::Any => Ok(()),
            Need::Roles(roles) if roles.contains(&self.role) => Ok(()),
            Need::Roles(roles) => Err(format!(
                "account {} is a {}; this needs {}",
                self.id,
                self.role,
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )),
            Need::VerifiedUtility => match self.role {
                Role::Operator => Ok(()),
                Role::Utility if self.verified => Ok(()),
                Role::Utility => Err(format!(
                    "utility {} has not been verified by an operator yet",
                    self.id
                )),
                r => Err(format!(
                    "account {} is a {r}; this needs a verified utility",
                    self.id
                )),
            },
        }
    }

    /// Checks that a utility's jurisdiction covers every zone in `zones`
    /// (operators cover everything).
    pub fn covers_zones<'a>(
        &self,
        zones: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), String> {
        if self.role == Role::Operator {
            return Ok(());
        }
        let outside: Vec<&String> = zones
            .into_iter()
            .filter(|z| !self.jurisdiction.contains(z))
            .collect();
        if outside.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "zone(s) {} are outside the jurisdiction of {} ({})",
                outside
                    .iter()
                    .map(|z| z.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.id,
                self.jurisdiction.join(", ")
            ))
        }
    }

    /// Checks the fields of a new account.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 200 {
            return Err("name: must be 1 to 200 characters".into());
        }
        if self.name.chars().any(char::is_control) {
            return Err("name: must not hold control characters".into());
        }
        if self.role == Role::Utility && self.jurisdiction.is_empty() {
            return Err("jurisdiction: a utility needs at least one zone".into());
        }
        if self.role != Role::Utility && !self.jurisdiction.is_empty() {
            return Err(format!(
                "jurisdiction: only utilities have one, not a {}",
                self.role
            ));
        }
        for z in &self.jurisdiction {
            check_label("jurisdiction", z)?;
        }
        if self.jurisdiction.len() > 1000 || self.resources.len() > 100_000 {
            return Err("too many zones or resources".into());
        }
        Ok(())
    }
}

/// Checks a zone, feeder or similar label: 1 to 64 printable characters.
pub fn check_label(field: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
        return Err(format!(
            "{field}: {v:?} must be 1 to 64 printable characters"
        ));
    }
    Ok(())
}

/// A stored API token: only its SHA-256 is kept, so a copy of the store does
/// not hand out working tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public part of the token (`vpp_<id>_<secret>`), the lookup key.
    pub id: String,
    /// Whose token.
    pub account: AccountId,
    /// SHA-256 of the whole token text.
    pub hash: [u8; 32],
    /// When created, Unix ms.
    pub created_ms: u64,
    /// After this, Unix ms, the token is refused (`None` = never).
    pub expires_ms: Option<u64>,
    /// Revoked tokens are refused.
    pub revoked: bool,
}

/// Approvals gathered for a critical action (emergency events, program term
/// changes, settlement approval): distinct accounts, the proposer first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Approvals {
    /// How many distinct accounts must approve.
    pub needed: u32,
    /// Who approved, in order.
    pub by: Vec<AccountId>,
}

impl Approvals {
    /// A fresh set needing `needed`, proposed by `by`.
    pub fn proposed(needed: u32, by: AccountId) -> Approvals {
        Approvals {
            needed: needed.max(1),
            by: vec![by],
        }
    }

    /// Adds an approval; an account approves once.
    pub fn add(&mut self, by: AccountId) -> Result<(), String> {
        if self.by.contains(&by) {
            return Err(format!(
                "{by} has already approved; a second approver must be another account"
            ));
        }
        self.by.push(by);
        Ok(())
    }

    /// Whether the quorum is reached.
    pub fn complete(&self) -> bool {
        self.by.len() as u32 >= self.needed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(role: Role, verified: bool) -> Account {
        Account {
            id: AccountId::new("a").unwrap(),
            name: "A".into(),
            role,
            verified,
            jurisdiction: if role == Role::Utility {
                vec!["north".into()]
            } else {
                vec![]
            },
            resources: vec![],
            disabled: false,
            created_ms: 0,
        }
    }

    #[test]
    fn roles_and_verification() {
        let u = acct(Role::Utility, false);
        assert!(u
            .require(Need::VerifiedUtility)
            .unwrap_err()
            .contains("not been verified"));
        assert!(acct(Role::Utility, true)
            .require(Need::VerifiedUtility)
            .is_ok());
        assert!(acct(Role::Operator, true)
            .require(Need::VerifiedUtility)
            .is_ok());
        let p = acct(Role::Participant, true);
        assert!(p
            .require(Need::Roles(&[Role::Operator]))
            .unwrap_err()
            .contains("participant"));
        assert!(p.require(Need::Any).is_ok());
        let mut d = acct(Role::Operator, true);
        d.disabled = true;
        assert!(d.require(Need::Any).is_err());
    }

    #[test]
    fn jurisdiction() {
        let u = acct(Role::Utility, true);
        assert!(u.covers_zones(&["north".to_string()]).is_ok());
        let e = u
            .covers_zones(&["north".to_string(), "south".to_string()])
            .unwrap_err();
        assert!(e.contains("south"), "{e}");
        assert!(acct(Role::Operator, true)
            .covers_zones(&["x".to_string()])
            .is_ok());
    }

    #[test]
    fn approvals_need_distinct_accounts() {
        let a = AccountId::new("a").unwrap();
        let b = AccountId::new("b").unwrap();
        let mut ap = Approvals::proposed(2, a.clone());
        assert!(!ap.complete());
        assert!(ap.add(a).is_err());
        ap.add(b).unwrap();
        assert!(ap.complete());
    }
}
