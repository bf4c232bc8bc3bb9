//! Accounts and API tokens: bootstrap, sign-in, creation, verification.
//!
//! A token reads `vpp_<id>_<secret>`: `id` (12 hex digits) finds the record,
//! and only the SHA-256 of the whole text is stored, compared in constant
//! time. Tokens are shown once, when issued.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vpp_domain::account::{Account, Need, Role, TokenRecord};
use vpp_domain::{AccountId, NodeId};
use vpp_store::Store;

use super::{commit, draft, keys, now_ms, put, ProgramError, Result};
use crate::node::Node;

/// File in the data dir holding the first operator's token.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";

/// Id of the account made at first start.
pub const BOOTSTRAP_OPERATOR: &str = "operator";

/// Body of `POST /api/v1/accounts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountRequest {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// operator, utility, aggregator or participant.
    pub role: Role,
    /// Zones (utilities).
    #[serde(default)]
    pub jurisdiction: Vec<String>,
    /// Sites or virtual DERs it owns (aggregators, participants).
    #[serde(default)]
    pub resources: Vec<String>,
}

/// Body of `POST /api/v1/accounts/{id}/tokens`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime, s (default: no expiry).
    pub ttl_s: Option<u64>,
}

/// A newly issued token: the only time its text is shown.
#[derive(Debug, Serialize)]
pub struct TokenIssued {
    /// Public id (for revocation).
    pub id: String,
    /// The bearer token.
    pub token: String,
    /// Whose.
    pub account: String,
    /// Expiry, Unix ms.
    pub expires_ms: Option<u64>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_token(account: &AccountId, ttl_s: Option<u64>) -> Result<(TokenRecord, String)> {
    let mut raw = [0u8; 30];
    getrandom::fill(&mut raw)
        .map_err(|e| ProgramError::invalid(format!("no randomness for a token: {e}")))?;
    let id = hex(&raw[..6]);
    let text = format!("vpp_{id}_{}", hex(&raw[6..]));
    let now = now_ms();
    let rec = TokenRecord {
        id,
        account: account.clone(),
        hash: Sha256::digest(text.as_bytes()).into(),
        created_ms: now,
        expires_ms: ttl_s.map(|s| now.saturating_add(s.saturating_mul(1000))),
        revoked: false,
    };
    Ok((rec, text))
}

/// Makes the first operator account and writes its token to
/// `<data_dir>/operator.token` (mode 0600), when the store has no operator
/// yet. Returns the token file when it made one.
pub async fn bootstrap_operator(node: &crate::node::Node) -> Result<Option<std::path::PathBuf>> {
    let data_dir = &node.config().data_dir;
    let accounts: Vec<Account> = node.store().registry_scan("account/")?;
    if accounts.iter().any(|a| a.role == Role::Operator) {
        return Ok(None);
    }
    let id = AccountId::new(BOOTSTRAP_OPERATOR).expect("valid id");
    let account = Account {
        id: id.clone(),
        name: "Operator (made at first start)".into(),
        role: Role::Operator,
        verified: true,
        jurisdiction: vec![],
        resources: vec![],
        disabled: false,
        created_ms: now_ms(),
    };
    let (token, text) = new_token(&id, None)?;
    let path = data_dir.join(OPERATOR_TOKEN_FILE);
    write_secret(&path, &text)
        .map_err(|e| ProgramError::invalid(format!("writing {}: {e}", path.display())))?;
    commit(
        node,
        vec![
            put(keys::account(&id), &account)?,
            put(keys::token(&token.id), &token)?,
        ],
        draft(
            &account,
            "account.bootstrap",
            keys::account(&id),
            format!(
                "first operator; token {} in {OPERATOR_TOKEN_FILE}",
                token.id
            ),
        ),
    )
    .await?;
    Ok(Some(path))
}

fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// Why a token was refused: (counter reason, message).
fn refuse(reason: &'static str, message: &str) -> (&'static str, ProgramError) {
    (reason, ProgramError::Unauthorized(message.to_string()))
}

/// Finds the account of an `Authorization` header value. The error carries
/// the reason counted in `vpp_api_rejected_total`.
pub fn authenticate(
    store: &Store,
    header: Option<&str>,
) -> std::result::Result<Account, (&'static str, ProgramError)> {
    let Some(h) = header else {
        return Err(refuse(
            "missing_token",
            "this route needs a bearer token: Authorization: Bearer vpp_… (the first operator's is in <data-dir>/operator.token)",
        ));
    };
    let Some(text) = h.strip_prefix("Bearer ").map(str::trim) else {
        return Err(refuse(
            "malformed_token",
            "the Authorization header must read `Bearer <token>`",
        ));
    };
    let id = text
        .strip_prefix("vpp_")
        .and_then(|r| r.split_once('_'))
        .map(|(id, _)| id)
        .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(id) = id else {
        return Err(refuse(
            "malformed_token",
            "that is not a vpp token (vpp_<id>_<secret>)",
        ));
    };
    let rec: Option<TokenRecord> = store
        .registry_get(&keys::token(id))
        .map_err(|e| ("store", ProgramError::from(e)))?;
    let Some(rec) = rec else {
        return Err(refuse("unknown_token", "unknown token"));
    };
    let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
    // Constant time: every byte is compared whatever the first mismatch.
    if hash
        .iter()
        .zip(rec.hash.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        != 0
    {
        return Err(refuse("unknown_token", "unknown token"));
    }
    if rec.revoked {
        return Err(refuse("revoked_token", "this token has been revoked"));
    }
    if rec.expires_ms.is_some_and(|e| e <= now_ms()) {
        return Err(refuse(
            "expired_token",
            "this token has expired; ask for a new one",
        ));
    }
    let account: Option<Account> = store
        .registry_get(&keys::account(&rec.account))
        .map_err(|e| ("store", ProgramError::from(e)))?;
    match account {
        Some(a) if a.disabled => Err(refuse("disabled_account", "this account is disabled")),
        Some(a) => Ok(a),
        None => Err(refuse(
            "unknown_token",
            "the token's account no longer exists",
        )),
    }
}

fn forbid(r: std::result::Result<(), String>) -> Result<()> {
    r.map_err(ProgramError::Forbidden)
}

/// Creates an account (operators only).
pub async fn create_account(
    node: &Arc<Node>,
    caller: &Account,
    req: AccountRequest,
) -> Result<Account> {
    forbid(caller.require(Need::Roles(&[Role::Operator])))?;
    let id = AccountId::new(&req.id).map_err(|e| ProgramError::invalid(format!("id: {e}")))?;
    let mut resources = Vec::new();
    for r in &req.resources {
        resources
            .push(NodeId::new(r).map_err(|e| ProgramError::invalid(format!("resources: {e}")))?);
    }
    let account = Account {
        id: id.clone(),
        name: req.name,
        role: req.role,
        verified: req.role != Role::Utility,
        jurisdiction: req.jurisdiction,
        resources,
        disabled: false,
        created_ms: now_ms(),
    };
    account.validate().map_err(ProgramError::invalid)?;
    if !account.resources.is_empty() {
        let fleet = node.fleet().await?;
        let unknown: Vec<String> = account
            .resources
            .iter()
            .filter(|r| fleet.node(r).is_none())
            .map(|r| r.to_string())
            .collect();
        if !unknown.is_empty() {
            return Err(ProgramError::invalid(format!(
                "resources: {} not in the hierarchy",
                unknown.join(", ")
            )));
        }
    }
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    if store
        .registry_get::<Account>(&keys::account(&id))?
        .is_some()
    {
        return Err(ProgramError::Conflict(format!("account {id} exists")));
    }
    commit(
        node,
        vec![put(keys::account(&id), &account)?],
        draft(
            caller,
            "account.create",
            keys::account(&id),
            format!("{} {}", account.role, account.name),
        ),
    )
    .await?;
    Ok(account)
}

/// Marks a utility verified (operators only).
pub async fn verify_utility(node: &Arc<Node>, caller: &Account, id: &str) -> Result<Account> {
    forbid(caller.require(Need::Roles(&[Role::Operator])))?;
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    let mut a = get_account(store, id)?;
    if a.role != Role::Utility {
        return Err(ProgramError::invalid(format!(
            "{id} is a {}; only utilities are verified",
            a.role
        )));
    }
    if a.verified {
        return Ok(a);
    }
    a.verified = true;
    commit(
        node,
        vec![put(keys::account(&a.id), &a)?],
        draft(
            caller,
            "account.verify",
            keys::account(&a.id),
            String::new(),
        ),
    )
    .await?;
    Ok(a)
}

/// Loads an account or 404.
pub(crate) fn get_account(store: &Store, id: &str) -> Result<Account> {
    store
        .registry_get(&keys::account(id))?
        .ok_or_else(|| ProgramError::NotFound(format!("no account {id}")))
}

/// Issues a token for `id`: operators for anyone, others for themselves.
pub async fn issue_token(
    node: &Arc<Node>,
    caller: &Account,
    id: &str,
    req: TokenRequest,
) -> Result<TokenIssued> {
    if caller.role != Role::Operator && caller.id.as_str() != id {
        return Err(ProgramError::Forbidden(format!(
            "{} may issue tokens only for itself",
            caller.id
        )));
    }
    forbid(caller.require(Need::Any))?;
    if req
        .ttl_s
        .is_some_and(|t| t == 0 || t > 10 * 365 * 24 * 3600)
    {
        return Err(ProgramError::invalid("ttl_s: 1 s to 10 years"));
    }
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    let account = get_account(store, id)?;
    let (rec, text) = new_token(&account.id, req.ttl_s)?;
    commit(
        node,
        vec![put(keys::token(&rec.id), &rec)?],
        draft(
            caller,
            "token.issue",
            keys::token(&rec.id),
            format!("for {}", account.id),
        ),
    )
    .await?;
    Ok(TokenIssued {
        id: rec.id,
        token: text,
        account: account.id.to_string(),
        expires_ms: rec.expires_ms,
    })
}

/// Revokes a token: operators any, others their own.
pub async fn revoke_token(node: &Arc<Node>, caller: &Account, token_id: &str) -> Result<()> {
    let store = node.store();
    let _g = node.programs().lock.lock().await;
    let rec: Option<TokenRecord> = store.registry_get(&keys::token(token_id))?;
    // Others learn nothing of tokens that are not theirs, not even whether
    // they exist.
    let mut rec = match rec {
        Some(r) if caller.role == Role::Operator || caller.id == r.account => r,
        _ if caller.role != Role::Operator => {
            return Err(ProgramError::Forbidden(format!(
                "token {token_id} is not {}'s",
                caller.id
            )))
        }
        _ => return Err(ProgramError::NotFound(format!("no token {token_id}"))),
    };
    if rec.revoked {
        return Ok(());
    }
    rec.revoked = true;
    commit(
        node,
        vec![put(keys::token(token_id), &rec)?],
        draft(caller, "token.revoke", keys::token(token_id), String::new()),
    )
    .await?;
    Ok(())
}

/// Every account (operators only).
pub fn list_accounts(node: &Node, caller: &Account) -> Result<Vec<Account>> {
    forbid(caller.require(Need::Roles(&[Role::Operator])))?;
    Ok(node.store().registry_scan("account/")?)
}

/// Whether `account` owns `resource` (it or an ancestor is among its
/// resources). Operators own everything.
pub(crate) fn owns(account: &Account, resource: &NodeId, ancestors: &[NodeId]) -> bool {
    account.role == Role::Operator
        || account
            .resources
            .iter()
            .any(|r| r == resource || ancestors.contains(r))
}
