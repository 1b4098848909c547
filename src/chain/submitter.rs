//! The transaction submitter: the service's own contract calls, one per logical operation.
//!
//! An operation is kept durably from the moment it is accepted. Its transaction is signed
//! with the next local nonce and kept (bytes and txid) *before* it is broadcast, so a crash
//! at any point leads to broadcasting the same bytes again, never a second transaction. A
//! transaction not confirmed after K blocks is broadcast again. When the node says its nonce
//! is used (`BadNonce`, or `ConflictingNonceInMempool`), the operation is checked on chain:
//! done means confirmed; not done, its own transaction is looked for in the blocks since it
//! was sent: found, the contract refused it (failed, as the follower would have written it had
//! it seen that block); not found, the nonce went to something else, and it is signed
//! again with the lowest nonce from the node's that none of our other open transactions holds
//! (or the next local one), the next local one never moved back.
//! Confirmation comes from the follower, which finds the transaction's bytes in a block the
//! node serves and reads the operation's effect back from the node; a reorg that abandons the
//! confirming block reopens the operation as the same signed bytes.
//!
//! It must not: sign a second transaction for an operation whose first may still be mined, or
//! undo a confirmation the follower wrote.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secp256k1::SecretKey;

use super::contracts::{self, Contracts};
use super::rpc::{NodeBlock, NodeClient, RpcError};
use super::state::StateError;
use super::status::FollowerStatus;
use crate::clock::now_ms;
use crate::coordination::Coordinator;
use crate::stacks::tx::{self, ContractCall};
use crate::stacks::{Address, Value};
use crate::store::{Batch, Guard, Guarded, Store, StoreError, Submission, SubmissionState};

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("operation {0} exists with other arguments")]
    Conflict(String),
}

pub struct Submitter {
    pub store: Arc<dyn Store>,
    pub rpc: NodeClient,
    pub contracts: Contracts,
    pub key: SecretKey,
    pub sender: Address,
    pub mainnet: bool,
    pub fee: u64,
    pub rebroadcast_after: u64,
    pub status: Arc<FollowerStatus>,
    /// The follower's (`ChainState::apply_lock`): a confirmation it writes is never
    /// overwritten by what the submitter read before it.
    pub apply_lock: Arc<tokio::sync::Mutex<()>>,
    /// Where the submitter's lease is held: one replica at a time signs and broadcasts.
    pub coordination: Arc<Coordinator>,
    /// This replica, as the lease's holder.
    pub holder: String,
    pub lease_ms: u64,
    /// The fencing token of the lease this replica holds (0: none), carried by every write.
    fence: AtomicU64,
    /// When the lease was last taken or renewed (unix ms).
    renewed_ms: AtomicU64,
}

/// How long an operation that cannot be signed here stays pending (for a replica of a newer
/// version, during an upgrade) before it is failed.
pub const UNSIGNABLE_FOR_MS: u64 = 3_600_000;

/// The `n`th operation of an id (the first is the id itself, then `<id>:2`, `<id>:3`…): an
/// operation made again after the chain refused the one before, or for bytes recorded again.
pub fn numbered(id: &str, n: usize) -> String {
    if n == 1 {
        id.to_string()
    } else {
        format!("{id}:{n}")
    }
}

/// A new operation, not yet signed (for callers that write it with other state in one batch).
pub fn operation(id: &str, contract_name: &str, function: &str, args_hex: &[String]) -> Submission {
    Submission {
        id: id.to_string(),
        contract_name: contract_name.to_string(),
        function: function.to_string(),
        args: args_hex.to_vec(),
        state: SubmissionState::Pending,
        created_at_ms: now_ms(),
    }
}

/// Whether `read`'s change to `state` is its failure (into `Failed`): what `failure_entry`
/// logs as not cleared.
pub fn newly_failed(read: &Submission, state: &SubmissionState) -> bool {
    !is_failed(&read.state) && is_failed(state)
}

fn is_failed(state: &SubmissionState) -> bool {
    matches!(state, SubmissionState::Failed { .. })
}

/// The audit entry of `read`'s change to `state`, if the change is one the log keeps: the
/// operation failing (`Failed`), or a failure logged before that no longer holds (out of
/// `Failed`: a reorg abandoned the block that refused it). Written in the same write as the
/// change, guarded on `read` (`Guard::submissions`), so that of the replicas that find the
/// change, the one whose write lands logs it, once.
pub fn failure_entry(read: &Submission, state: &SubmissionState) -> Option<crate::audit::Record> {
    let (txid, height, result, cleared) = match (state, is_failed(&read.state)) {
        (
            SubmissionState::Failed {
                txid,
                height,
                result,
                ..
            },
            false,
        ) => (Some(txid.clone()), *height, result.clone(), false),
        (SubmissionState::Failed { .. }, true) | (_, false) => return None,
        (
            SubmissionState::Confirmed {
                txid,
                height,
                result,
                ..
            },
            true,
        ) => (txid.clone(), *height, result.clone(), true),
        (
            SubmissionState::Sent {
                txid,
                sent_at_height,
                ..
            },
            true,
        ) => (
            Some(txid.clone()),
            *sent_at_height,
            "sent again: a reorg abandoned the block that refused it".into(),
            true,
        ),
        (SubmissionState::Pending, true) => (None, 0, "to be signed again".into(), true),
    };
    // (the access an operation records or reviews is in its id: `record:<access>`,
    // `review:<access>` and its later attempts, `review:<access>:<n>`)
    let access = ["record:", "review:"]
        .iter()
        .find_map(|p| read.id.strip_prefix(p))
        .and_then(|rest| rest.split(':').next())
        .and_then(|a| a.parse().ok());
    Some(crate::audit::Record::now(
        crate::audit::Event::ChainFailure {
            operation: read.id.clone(),
            contract: read.contract_name.clone(),
            function: read.function.clone(),
            access,
            // (a failure with no transaction of its own, its nonce taken and its effect
            // unknown, names the one it was sent as)
            txid: txid
                .filter(|t| !t.is_empty())
                .or_else(|| match &read.state {
                    SubmissionState::Sent { txid, .. } => Some(txid.clone()),
                    _ => None,
                }),
            height,
            result,
            cleared,
        },
    ))
}

/// How many blocks after an operation was sent (or last broadcast: again every
/// `rebroadcast_after_blocks`, 3 by default) are looked through for its transaction when its
/// nonce is used and its effect not on chain (`Submitter::refused_in`): a transaction is mined
/// within a few blocks of its broadcast as a rule, and found there at once; one not found is
/// looked for this far (a read of the node a block, the lease renewed meanwhile), then taken
/// as another transaction's nonce.
pub const REFUSAL_SEARCH: u64 = 100;

/// Where an operation stands on chain, as the node's read-only functions tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChain {
    /// Its effect is on chain, written at this height.
    Done {
        height: u64,
    },
    NotDone,
    /// No read-only function tells (an operation of another kind).
    Unknown,
}

/// Whether operation `s`'s effect is on chain: `get-emergency-access` for a record (with its
/// `recorded-at`), the anchors for an anchor.
pub async fn on_chain(
    rpc: &NodeClient,
    contracts: &Contracts,
    s: &Submission,
) -> Result<OnChain, RpcError> {
    let contract = contracts.access_control();
    let sender = &contracts.address;
    let first = s.args.first().and_then(|a| Value::from_hex(a).ok());
    match (s.function.as_str(), first) {
        ("record-emergency-access", Some(access_id)) => {
            let v = rpc
                .call_read(&contract, "get-emergency-access", &[access_id], sender)
                .await?;
            // ours only if recorded by the principal that signed it: another responder may
            // record the same id first (ours is then refused, u212)
            let signer = signed_by(s);
            let ours = |record: &Value| {
                signer.as_ref().is_none_or(|signer| {
                    contracts::principal(record.as_tuple().and_then(|m| m.get("responder")))
                        .is_some_and(|by| by.to_string() == *signer)
                })
            };
            Ok(match v {
                Value::Some(record) if !ours(&record) => {
                    tracing::error!(operation = %s.id, "the access's id is recorded on chain by another responder: ours is not");
                    OnChain::NotDone
                }
                Value::Some(record) => OnChain::Done {
                    height: contracts::uint(record.as_tuple().and_then(|m| m.get("recorded-at")))
                        .and_then(|h| u64::try_from(h).ok())
                        .unwrap_or(0),
                },
                _ => OnChain::NotDone,
            })
        }
        ("review-emergency-access", Some(access_id)) => {
            let v = rpc
                .call_read(
                    &contract,
                    "get-emergency-review",
                    std::slice::from_ref(&access_id),
                    sender,
                )
                .await?;
            // ours only if it carries our verdict and note hash, by our reviewer (the signer of
            // the review we relay): another reviewer's verdict on the same access leaves ours
            // refused (u215), even one with the same verdict and note (an empty note's hash is
            // everyone's)
            let arg = |i: usize| s.args.get(i).and_then(|a| Value::from_hex(a).ok());
            let (verdict, note_hash) = (arg(1), arg(2));
            let Value::Some(review) = v else {
                return Ok(OnChain::NotDone);
            };
            let ours = match (review.as_tuple(), &verdict, &note_hash) {
                (Some(m), Some(verdict), Some(note_hash))
                    if m.get("note-hash") == Some(note_hash)
                        && m.get("verdict") == Some(verdict) =>
                {
                    match arg(3) {
                        Some(Value::Some(signature)) => {
                            let signer = relayed_reviewer(
                                rpc,
                                contracts,
                                [access_id, verdict.clone(), note_hash.clone()],
                                &signature,
                            )
                            .await?;
                            signer.is_some() && contracts::principal(m.get("reviewer")) == signer
                        }
                        _ => true,
                    }
                }
                _ => false,
            };
            Ok(if ours {
                OnChain::Done {
                    height: contracts::uint(review.as_tuple().and_then(|m| m.get("block")))
                        .and_then(|h| u64::try_from(h).ok())
                        .unwrap_or(0),
                }
            } else {
                OnChain::NotDone
            })
        }
        ("set-summary-hash", Some(patient)) => {
            let v = rpc
                .call_read(&contract, "get-summary-hash", &[patient], sender)
                .await?;
            let hash = s.args.get(1).and_then(|a| Value::from_hex(a).ok());
            Ok(match v {
                // ours if the chain holds our hash (a later import's hash replaces it: then
                // this one was done too, and superseded)
                Value::Some(h) if h.as_tuple().and_then(|m| m.get("hash")) == hash.as_ref() => {
                    OnChain::Done {
                        height: contracts::uint(h.as_tuple().and_then(|m| m.get("block")))
                            .and_then(|b| u64::try_from(b).ok())
                            .unwrap_or(0),
                    }
                }
                _ => OnChain::NotDone,
            })
        }
        ("anchor-audit", Some(head)) => {
            // ours only if by the principal that signed it (another responder may anchor the
            // same head, copied from our event): from the signed transaction, when kept. Our
            // latest anchor first (anchors are made one at a time, in order), then the last
            // fifty of every responder
            let signer = signed_by(s);
            if let Some(signer) = &signer {
                if let Some(by) = contracts::principal_value(signer) {
                    let latest = rpc
                        .call_read(&contract, "get-latest-anchor-of", &[by], sender)
                        .await?;
                    if let Value::Some(t) = &latest {
                        let m = t.as_tuple();
                        if m.and_then(|m| m.get("head")) == Some(&head) {
                            let height = contracts::uint(m.and_then(|m| m.get("block")))
                                .and_then(|h| u64::try_from(h).ok())
                                .unwrap_or(0);
                            return Ok(OnChain::Done { height });
                        }
                    }
                }
            }
            let count = rpc
                .call_read(&contract, "get-anchor-count", &[], sender)
                .await?;
            let n = contracts::uint(Some(&count)).unwrap_or(0);
            for i in (n.saturating_sub(50)..n).rev() {
                let a = rpc
                    .call_read(&contract, "get-anchor", &[Value::UInt(i)], sender)
                    .await?;
                if let Value::Some(t) = &a {
                    let m = t.as_tuple();
                    let by = contracts::principal(m.and_then(|m| m.get("responder")));
                    if m.and_then(|m| m.get("head")) == Some(&head)
                        && signer
                            .as_ref()
                            .is_none_or(|signer| by.is_some_and(|by| by.to_string() == *signer))
                    {
                        let height = contracts::uint(m.and_then(|m| m.get("block")))
                            .and_then(|h| u64::try_from(h).ok())
                            .unwrap_or(0);
                        return Ok(OnChain::Done { height });
                    }
                }
            }
            Ok(OnChain::NotDone)
        }
        _ => Ok(OnChain::Unknown),
    }
}

/// The principal whose key signed operation `s`'s transaction, if it is kept (`raw`).
fn signed_by(s: &Submission) -> Option<String> {
    let raw = match &s.state {
        SubmissionState::Sent { raw, .. } => Some(raw),
        SubmissionState::Confirmed { raw, .. } | SubmissionState::Failed { raw, .. } => {
            raw.as_ref()
        }
        _ => None,
    }?;
    crate::stacks::tx::decode(&hex::decode(raw).ok()?)
        .ok()
        .map(|tx| tx.origin)
}

/// The reviewer whose `signature` (a `buff 65`) over a review (`args`: access id, verdict,
/// note hash) a relayed review names: the principal the contract recovers from it, over the
/// hash the contract itself gives (`get-review-message-hash`); `None` if none recovers.
async fn relayed_reviewer(
    rpc: &NodeClient,
    contracts: &Contracts,
    args: [Value; 3],
    signature: &Value,
) -> Result<Option<crate::stacks::Address>, RpcError> {
    let Value::Buffer(signature) = signature else {
        return Ok(None);
    };
    let hash = rpc
        .call_read(
            &contracts.access_control(),
            "get-review-message-hash",
            &args,
            &contracts.address,
        )
        .await?;
    let Some(hash) = contracts::buff32(Some(&hash)) else {
        return Ok(None);
    };
    Ok(crate::stacks::sip018::recover(&hash, signature)
        .ok()
        .map(|key| {
            let (testnet, mainnet) = crate::stacks::sip018::principals(&key);
            if contracts.address.is_mainnet() {
                mainnet
            } else {
                testnet
            }
        }))
}

/// A confirmation of `s`, sent as `txid` (nonce `nonce`, bytes `raw`), found on chain at `height`.
fn confirmed(txid: &str, nonce: u64, raw: &str, height: u64, result: String) -> SubmissionState {
    SubmissionState::Confirmed {
        txid: Some(txid.to_string()),
        height,
        result,
        nonce: Some(nonce),
        raw: Some(raw.to_string()),
    }
}

/// Whether `s` records a patient's summary hash that is not the hash of the summary stored
/// now: the vault holds another (later) summary, so `s`'s hash is no longer wanted on chain,
/// whatever the chain holds now. Signed again with a new nonce, it would run after the later
/// one and put back a hash the stored summary no longer has (every read of it then refused,
/// `summary-integrity`); mined beside the later one, it was not refused.
///
/// Which summary is stored is its digest, written with it (`Store::summary_digest`), not the
/// operations' times: those are each importing replica's clock, and two replicas' clocks may
/// order two imports the other way round from the store. A summary stored without one (before
/// digests were kept, or by such a version during a rolling upgrade: the digest beside it is
/// then another summary's, found so by its sealed bytes) falls back to those times: a later
/// operation of the same patient supersedes.
fn superseded(store: &dyn Store, s: &Submission) -> Result<bool, StoreError> {
    if let Some(stored_says) = replaced_by_the_stored(store, s)? {
        return Ok(stored_says);
    }
    if s.function != "set-summary-hash" {
        return Ok(false);
    }
    let prefix = s.id.split(':').take(2).collect::<Vec<_>>().join(":") + ":";
    Ok(store.submissions_prefixed(&prefix)?.iter().any(|later| {
        later.function == s.function
            && later.args.first() == s.args.first()
            && later.created_at_ms > s.created_at_ms
    }))
}

/// Whether `s`, a patient's summary operation, records a hash other than that of the summary
/// stored, as the stored summary's digest says; `None` when no digest describes the stored
/// summary (`superseded` then goes by times), or `s` is not a summary's operation.
fn replaced_by_the_stored(store: &dyn Store, s: &Submission) -> Result<Option<bool>, StoreError> {
    if s.function != "set-summary-hash" {
        return Ok(None);
    }
    let buffer = |i: usize| match s.args.get(i).map(|a| Value::from_hex(a)) {
        Some(Ok(Value::Buffer(b))) => Some(b),
        _ => None,
    };
    let (Some(patient), Some(hash)) = (buffer(0), buffer(1)) else {
        return Ok(None);
    };
    let Ok(patient) = <[u8; 32]>::try_from(patient).map(crate::domain::PatientId) else {
        return Ok(None);
    };
    // (a digest this version cannot read, one from before its sealed bytes' hash was kept,
    // describes nothing)
    let digest = match store.summary_digest(&patient) {
        Err(StoreError::Corrupt(..)) => None,
        read => read?,
    };
    if let Some(digest) = digest {
        if store
            .summary(&patient)?
            .is_some_and(|sealed| digest.describes(&sealed))
        {
            return Ok(Some(digest.plain != hex::encode(hash)));
        }
    }
    Ok(None)
}

/// Whether an operation in `state` recorded nothing on chain, nor will: refused by the chain
/// (`Failed`), or closed without its effect (`replaced`).
pub fn records_nothing(state: &SubmissionState) -> bool {
    matches!(state, SubmissionState::Failed { .. }) || replaced(state)
}

/// Whether `state` is an operation's closing without its effect on chain: a patient's summary
/// operation a later summary replaced (`superseded`), closed unsent, or its nonce used by
/// another transaction and not signed again. Height 0: not a block it was mined in.
pub fn replaced(state: &SubmissionState) -> bool {
    matches!(
        state,
        SubmissionState::Confirmed {
            txid: None,
            height: 0,
            ..
        }
    )
}

/// Whether the nonce of our signed transaction `raw` is used on chain (by it, or by another
/// transaction of the account): its bytes found in a block prove no more than that they are
/// there, since another transaction may carry a copy of them. A transaction that cannot be
/// decoded counts as used (as before this check).
async fn nonce_used(rpc: &NodeClient, raw: &[u8]) -> Result<bool, StateError> {
    let Ok(tx) = crate::stacks::tx::decode(raw) else {
        return Ok(true);
    };
    let Ok(origin) = tx.origin.parse::<crate::stacks::Address>() else {
        return Ok(true);
    };
    Ok(rpc.account_nonce(&origin).await? > tx.nonce)
}

/// Confirms the operations whose signed transactions are in `block`, a block the node served
/// at its height: one of its transactions has our transaction's txid (what a pushed payload
/// lists is not believed). One whose effect reads back on chain is confirmed; one without its
/// effect failed (the contract refused it). A block whose transactions did not decode is
/// searched for our bytes instead, which may be a copy inside another transaction (a `buff`
/// argument, say): one found so without its effect failed only once its nonce is used, else
/// it stays sent. The changes go to `changes`, written with the block (`Follower::write_with_changes`).
pub async fn confirmations(
    block: &NodeBlock,
    rpc: &NodeClient,
    contracts: &Contracts,
    store: &dyn Store,
    changes: &mut Vec<Change>,
) -> Result<(), StateError> {
    let height = block.header.height;
    for s in store.open_submissions()? {
        let SubmissionState::Sent {
            txid, nonce, raw, ..
        } = &s.state
        else {
            continue;
        };
        let bytes = match hex::decode(raw) {
            Ok(bytes) if block.contains_tx(&bytes) => bytes,
            _ => continue,
        };
        let state = match on_chain(rpc, contracts, &s)
            .await
            .map_err(StateError::from)?
        {
            OnChain::Done { height: at } => {
                let at = if at == 0 { height } else { at };
                tracing::info!(operation = %s.id, txid, height = at, "operation confirmed");
                confirmed(
                    txid,
                    *nonce,
                    raw,
                    at,
                    "its effect reads back on chain".into(),
                )
            }
            OnChain::Unknown => {
                tracing::info!(operation = %s.id, txid, height, "operation mined");
                confirmed(
                    txid,
                    *nonce,
                    raw,
                    height,
                    "mined (no read-only function tells its effect)".into(),
                )
            }
            OnChain::NotDone if !block.exact() && !nonce_used(rpc, &bytes).await? => {
                // its bytes are in the block, but not as our transaction: another one carries
                // a copy of them (in a `buff` argument, say); ours is still on its way
                tracing::warn!(operation = %s.id, txid, height, "the block holds a copy of this operation's transaction, but its nonce is not used yet: still in flight");
                continue;
            }
            OnChain::NotDone if superseded(store, &s)? => {
                tracing::info!(operation = %s.id, txid, height, "operation mined; a later summary of the patient has replaced its hash");
                confirmed(
                    txid,
                    *nonce,
                    raw,
                    height,
                    "mined; a later summary of the patient has replaced its hash".into(),
                )
            }
            OnChain::NotDone => {
                tracing::error!(operation = %s.id, txid, height, "transaction mined without its effect: the contract refused it");
                SubmissionState::Failed {
                    txid: txid.clone(),
                    height,
                    result: "mined, but its effect is not on chain: the contract refused the call"
                        .into(),
                    nonce: Some(*nonce),
                    raw: Some(raw.clone()),
                }
            }
        };
        changes.push(Change { read: s, state });
    }
    Ok(())
}

/// After a reorg from `from` (blocks at that height and above abandoned): every operation
/// confirmed there, or mined there and refused by the contract, is read back; one whose effect
/// is not on chain is reopened as the same signed bytes (broadcast again at once: a refused
/// one's nonce is unused on the new branch, and every later transaction of the service waits
/// for it; one whose nonce is used stays refused), one whose effect is on chain (mined again
/// elsewhere) is confirmed at its new height. The changes go to `changes`, written with the block
/// (`Follower::write_with_changes`).
pub async fn reopen_abandoned(
    from: u64,
    rpc: &NodeClient,
    contracts: &Contracts,
    store: &dyn Store,
    changes: &mut Vec<Change>,
) -> Result<(), StateError> {
    for s in store.submissions()? {
        let (txid, height, result, nonce, raw, refused) = match &s.state {
            SubmissionState::Confirmed {
                txid: Some(txid),
                height,
                result,
                nonce: Some(nonce),
                raw: Some(raw),
            } => (txid, height, result, nonce, raw, false),
            SubmissionState::Failed {
                txid,
                height,
                result,
                nonce: Some(nonce),
                raw: Some(raw),
            } => (txid, height, result, nonce, raw, true),
            _ => continue,
        };
        if *height < from {
            continue;
        }
        let state = match on_chain(rpc, contracts, &s)
            .await
            .map_err(StateError::from)?
        {
            OnChain::Done { height: now } if now == *height && !refused => continue,
            OnChain::Done { height: now } => {
                let result = if refused {
                    "its effect reads back on chain".into()
                } else {
                    result.clone()
                };
                confirmed(txid, *nonce, raw, now, result)
            }
            // a refused one whose nonce the node's chain has used was not abandoned (its block
            // survived: the fork point is below it, or not known after a restart), or was mined
            // again: it stays as it is. Reopened, its broadcast would be refused for its nonce,
            // and the operation signed again under a new one: a second transaction for it
            OnChain::NotDone | OnChain::Unknown
                if refused && nonce_used(rpc, &hex::decode(raw).unwrap_or_default()).await? =>
            {
                continue;
            }
            OnChain::NotDone | OnChain::Unknown => {
                tracing::warn!(operation = %s.id, txid, height, "a reorg abandoned the block that mined this operation: reopened");
                SubmissionState::Sent {
                    txid: txid.clone(),
                    nonce: *nonce,
                    raw: raw.clone(),
                    sent_at_height: from,
                    broadcasts: 0,
                }
            }
        };
        changes.push(Change { read: s, state });
    }
    Ok(())
}

/// A change the follower found for an operation (mined: confirmed or failed; its block
/// abandoned by a reorg: reopened), and the operation as it read it.
#[derive(Debug, Clone)]
pub struct Change {
    pub read: Submission,
    pub state: SubmissionState,
}

/// How many times the follower finds its changes to operations again when another replica
/// changed one meanwhile (`Follower::write_with_changes`).
pub const CHANGE_ATTEMPTS: usize = 3;

/// Puts the follower's `changes` into `batch`, each guarded on the operation as it read it
/// (`Guard::submissions`): the batch is written only if none changed since; with the audit
/// entry of each that fails, or whose failure no longer holds (`failure_entry`).
pub fn with_changes(batch: &mut Batch, changes: Vec<Change>) {
    for Change { read, state } in changes {
        batch.audit.extend(failure_entry(&read, &state));
        batch.submissions.push(Submission {
            state,
            ..read.clone()
        });
        batch
            .guard
            .get_or_insert_with(Guard::default)
            .submissions
            .push(read);
    }
}

impl Submitter {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        rpc: NodeClient,
        contracts: Contracts,
        key: SecretKey,
        sender: Address,
        mainnet: bool,
        settings: &crate::configuration::SubmitterSettings,
        status: Arc<FollowerStatus>,
        apply_lock: Arc<tokio::sync::Mutex<()>>,
        coordination: Arc<Coordinator>,
        lease_ms: u64,
    ) -> Submitter {
        Submitter {
            store,
            rpc,
            contracts,
            key,
            sender,
            mainnet,
            fee: settings.fee,
            rebroadcast_after: settings.rebroadcast_after_blocks,
            status,
            apply_lock,
            coordination,
            holder: crate::coordination::replica_id(),
            lease_ms,
            fence: AtomicU64::new(0),
            renewed_ms: AtomicU64::new(0),
        }
    }

    /// The lease's name: one per service key.
    fn lease(&self) -> String {
        format!("submitter:{}", self.sender)
    }

    /// Takes or renews the lease: whether this replica holds it now.
    async fn hold_lease(&self) -> Result<bool, SubmitError> {
        // the lease runs from when the server took it, after this: counted from here, it is
        // never thought held longer than it is (a slow answer shortens it, never lengthens it)
        let asked = now_ms();
        let token = self
            .coordination
            .lease(&self.lease(), &self.holder, self.lease_ms)
            .await?;
        self.renewed_ms.store(asked, Ordering::SeqCst);
        let before = self.fence.swap(token.unwrap_or(0), Ordering::SeqCst);
        match token {
            Some(t) if t != before => {
                tracing::info!(holder = %self.holder, fence = t, "this replica now submits the service's transactions")
            }
            None if before != 0 => {
                tracing::info!(holder = %self.holder, "another replica submits the service's transactions now")
            }
            _ => {}
        }
        Ok(token.is_some())
    }

    /// Whether this replica holds the lease now, as it last took or renewed it (for operators:
    /// one replica of a deployment at a time).
    pub fn holds_lease(&self) -> bool {
        self.fence.load(Ordering::SeqCst) != 0
            && now_ms().saturating_sub(self.renewed_ms.load(Ordering::SeqCst)) < self.lease_ms
    }

    /// Renews the lease when a third of it has passed (a long round of signing or
    /// broadcasting must not outlive it); an error once another replica has it.
    async fn keep_lease(&self) -> Result<(), SubmitError> {
        // (renewed lately and held: a lease asked for and found another's is not kept)
        if self.fence.load(Ordering::SeqCst) != 0
            && now_ms().saturating_sub(self.renewed_ms.load(Ordering::SeqCst)) < self.lease_ms / 3
        {
            return Ok(());
        }
        if self.hold_lease().await? {
            Ok(())
        } else {
            Err(SubmitError::Store(StoreError::Guarded(Guarded::Fenced)))
        }
    }

    async fn write(&self, batch: Batch) -> Result<(), StoreError> {
        crate::store::apply_async(&self.store, batch).await
    }

    /// Moves operation `read` (as read before a call to the node) to `state`, unless the
    /// store's copy changed meanwhile (the follower confirmed it while it was broadcast):
    /// whether it was written.
    pub async fn update(
        &self,
        read: &Submission,
        state: SubmissionState,
    ) -> Result<bool, StoreError> {
        self.update_with_nonce(read, state, None).await
    }

    /// `update`, keeping `next_nonce` as the local nonce in the same write.
    async fn update_with_nonce(
        &self,
        read: &Submission,
        state: SubmissionState,
        next_nonce: Option<u64>,
    ) -> Result<bool, StoreError> {
        let _guard = self.apply_lock.lock().await;
        let now = self.store.submission(&read.id)?.map(|s| s.state);
        let changed = || {
            tracing::info!(operation = %read.id, "the operation changed meanwhile: kept as it is now");
            Ok(false)
        };
        if now.as_ref() != Some(&read.state) {
            return changed();
        }
        let fence = self.fence.load(Ordering::SeqCst);
        let audit: Vec<_> = failure_entry(read, &state).into_iter().collect();
        let fails = newly_failed(read, &state);
        let written = self
            .write(Batch {
                audit,
                submissions: vec![Submission {
                    state,
                    ..read.clone()
                }],
                nonce: next_nonce,
                // checked again in the write where other replicas write too (Redis)
                guard: Some(Guard {
                    fence: (fence != 0).then(|| crate::store::Fence {
                        lease: self.lease(),
                        holder: self.holder.clone(),
                        token: fence,
                    }),
                    submissions: vec![read.clone()],
                    ..Guard::default()
                }),
                ..Batch::default()
            })
            .await;
        match written {
            Ok(()) => {
                if fails {
                    self.status.operations_failed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(true)
            }
            Err(StoreError::Guarded(Guarded::Changed)) => changed(),
            Err(e) => Err(e),
        }
    }

    /// Accepts an operation, durably; the same id again returns what is known of it.
    pub async fn submit(
        &self,
        id: &str,
        contract_name: &str,
        function: &str,
        args: &[Value],
    ) -> Result<Submission, SubmitError> {
        let args: Vec<String> = args.iter().map(Value::to_hex).collect();
        if let Some(existing) = self.store.submission(id)? {
            if existing.args != args
                || existing.function != function
                || existing.contract_name != contract_name
            {
                return Err(SubmitError::Conflict(id.to_string()));
            }
            return Ok(existing);
        }
        let s = operation(id, contract_name, function, &args);
        self.write(Batch {
            submissions: vec![s.clone()],
            ..Batch::default()
        })
        .await?;
        Ok(s)
    }

    async fn next_nonce(&self) -> Result<u64, SubmitError> {
        match self.store.nonce()? {
            Some(n) => Ok(n),
            None => Ok(self.rpc.account_nonce(&self.sender).await?),
        }
    }

    fn sign(&self, s: &Submission, nonce: u64) -> Result<tx::SignedTx, SubmitError> {
        let args = s
            .args
            .iter()
            .map(|a| Value::from_hex(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SubmitError::Sign(e.to_string()))?;
        let call = ContractCall {
            contract: self.contracts.address,
            contract_name: s.contract_name.clone(),
            function: s.function.clone(),
            args,
            nonce,
            fee: self.fee,
            mainnet: self.mainnet,
        };
        tx::sign_contract_call(&call, &self.key).map_err(|e| SubmitError::Sign(e.to_string()))
    }

    /// The nonce for operation `s` signed again because its own went to something else: the
    /// lowest from the chain's next one up that none of this service's other open transactions
    /// holds (so that a nonce left unused is filled, and none of ours in the mempool is signed
    /// over), or the next local one past them all. Signed over the chain's nonce alone, it met
    /// our own first transaction in flight, and the next nonce went back under the others.
    async fn free_nonce(&self, s: &Submission) -> Result<u64, SubmitError> {
        let chain = self.rpc.account_nonce(&self.sender).await?;
        let held: std::collections::BTreeSet<u64> = self
            .store
            .open_submissions()?
            .into_iter()
            .filter(|o| o.id != s.id)
            .filter_map(|o| match o.state {
                SubmissionState::Sent { nonce, .. } => Some(nonce),
                _ => None,
            })
            .collect();
        let next = self.next_nonce().await?.max(chain);
        Ok((chain..next).find(|n| !held.contains(n)).unwrap_or(next))
    }

    /// Signs the operation's transaction with `nonce` and keeps it, with the next nonce (never
    /// back), in one durable write: from here on only these bytes are broadcast for it. Returns
    /// the txid, or `None` if the operation changed since `s` was read (then nothing is written).
    async fn sign_and_keep(
        &self,
        s: &Submission,
        nonce: u64,
    ) -> Result<Option<String>, SubmitError> {
        let signed = self.sign(s, nonce)?;
        let state = SubmissionState::Sent {
            txid: signed.txid_hex(),
            nonce,
            raw: hex::encode(&signed.bytes),
            sent_at_height: self.status.node_tip.load(Ordering::SeqCst),
            broadcasts: 0,
        };
        let next = self.store.nonce()?.unwrap_or(0).max(nonce + 1);
        let kept = self.update_with_nonce(s, state, Some(next)).await?;
        Ok(kept.then(|| signed.txid_hex()))
    }

    /// Signs every pending operation and keeps its transaction durably; nothing is broadcast.
    pub async fn prepare(&self) -> Result<usize, SubmitError> {
        let pending: Vec<Submission> = self
            .store
            .open_submissions()?
            .into_iter()
            .filter(|s| s.state == SubmissionState::Pending)
            .collect();
        for s in &pending {
            self.keep_lease().await?;
            if replaced_by_the_stored(self.store.as_ref(), s)? == Some(true) {
                // a patient's summary operation whose summary is no longer the one stored (two
                // imports on two replicas at once: the one whose write landed last is stored,
                // whatever order their clocks gave the operations): not signed, so that the
                // chain ends with the stored summary's hash, not another's after it. Only when
                // the stored summary's digest says so (by times, a summary stored without one
                // would close its own operation after an earlier one made by a faster clock).
                // Height 0: never taken for the patient's latest hash mined (`replaced`)
                let state = SubmissionState::Confirmed {
                    txid: None,
                    height: 0,
                    result: "a later summary of the patient replaced its hash before it was signed: not sent".into(),
                    nonce: None,
                    raw: None,
                };
                if self.update(s, state).await? {
                    tracing::info!(operation = %s.id, "a later summary of the patient replaced this one before it was signed: not sent");
                }
                continue;
            }
            let nonce = self.next_nonce().await?;
            match self.sign_and_keep(s, nonce).await {
                Ok(Some(txid)) => {
                    tracing::info!(operation = %s.id, nonce, txid, "transaction signed")
                }
                Ok(None) => {}
                // an operation this replica cannot make a transaction of (its arguments do not
                // decode: written by a newer version during an upgrade, say) is left pending,
                // for a replica that can, and the operations after it are signed (it stopped
                // every one, every tick); past `UNSIGNABLE_FOR_MS` it is failed, with why, so
                // that what waits on it (a notice, the next anchor, a verdict) goes on. No
                // nonce was taken for it
                Err(SubmitError::Sign(why))
                    if now_ms().saturating_sub(s.created_at_ms) < UNSIGNABLE_FOR_MS =>
                {
                    tracing::error!(operation = %s.id, %why, "an operation cannot be signed here: left pending, the others signed");
                }
                Err(SubmitError::Sign(why)) => {
                    tracing::error!(operation = %s.id, %why, "an operation could not be signed for an hour: failed");
                    let failed = SubmissionState::Failed {
                        txid: String::new(),
                        height: 0,
                        result: format!("not signed: {why}"),
                        nonce: None,
                        raw: None,
                    };
                    self.update(s, failed).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pending.len())
    }

    /// Broadcasts what was never broadcast, and again what has waited K blocks.
    pub async fn broadcast_due(&self) -> Result<(), SubmitError> {
        let tip = self.status.node_tip.load(Ordering::SeqCst);
        let mut open = self.store.open_submissions()?;
        // lowest nonce first: the node takes a chain of an account's transactions in order
        open.sort_by_key(|s| match s.state {
            SubmissionState::Sent { nonce, .. } => nonce,
            _ => u64::MAX,
        });
        for s in open {
            self.keep_lease().await?;
            let SubmissionState::Sent {
                txid,
                nonce,
                raw,
                sent_at_height,
                broadcasts,
            } = &s.state
            else {
                continue;
            };
            if *broadcasts > 0 && tip < sent_at_height + self.rebroadcast_after {
                continue;
            }
            let bytes = hex::decode(raw).map_err(|e| SubmitError::Sign(e.to_string()))?;
            match self.rpc.broadcast(&bytes).await {
                Ok(_) => {
                    let state = SubmissionState::Sent {
                        txid: txid.clone(),
                        nonce: *nonce,
                        raw: raw.clone(),
                        sent_at_height: tip,
                        broadcasts: broadcasts + 1,
                    };
                    if self.update(&s, state).await? {
                        tracing::info!(operation = %s.id, txid, broadcasts = broadcasts + 1, "transaction broadcast");
                    }
                }
                Err(RpcError::Rejected { reason, .. })
                    if reason == "BadNonce" || reason == "ConflictingNonceInMempool" =>
                {
                    self.nonce_taken(&s, &reason).await?;
                }
                Err(RpcError::Rejected { reason, .. }) if reason == "TooMuchChaining" => {
                    // the node holds as many of our transactions as it takes: the later nonces
                    // wait for blocks to mine the earlier ones
                    tracing::debug!(operation = %s.id, "the node's mempool holds enough of ours; the rest wait");
                    break;
                }
                Err(e) => {
                    tracing::warn!(operation = %s.id, error = %e, "broadcast failed; will retry")
                }
            }
        }
        Ok(())
    }

    /// The node says our nonce is used: by this operation (done), or by something else.
    async fn nonce_taken(&self, s: &Submission, reason: &str) -> Result<(), SubmitError> {
        match on_chain(&self.rpc, &self.contracts, s).await? {
            OnChain::Done { height } => {
                // the chain used our nonce and has the effect: the transaction kept for this
                // operation is the one mined (one signed before it had its nonce taken by
                // something else was never minable), so the proof names it
                let state = match &s.state {
                    SubmissionState::Sent {
                        txid, nonce, raw, ..
                    } => confirmed(txid, *nonce, raw, height, "already on chain".into()),
                    _ => SubmissionState::Confirmed {
                        txid: None,
                        height,
                        result: "already on chain".into(),
                        nonce: None,
                        raw: None,
                    },
                };
                if self.update(s, state).await? {
                    tracing::info!(operation = %s.id, height, "operation found on chain");
                }
            }
            OnChain::NotDone if superseded(self.store.as_ref(), s)? => {
                // not signed again: its hash is no longer wanted (the nonce it had is used).
                // Height 0: never taken for the patient's latest hash mined (`replaced`)
                let state = SubmissionState::Confirmed {
                    txid: None,
                    height: 0,
                    result: format!("{reason}; a later summary of the patient has replaced its hash: not sent again"),
                    nonce: None,
                    raw: None,
                };
                if self.update(s, state).await? {
                    tracing::info!(operation = %s.id, reason, "a later summary of the patient replaced this one: not sent again");
                }
            }
            OnChain::NotDone => {
                // its effect is not on chain: the contract refused our own transaction (mined
                // in a block the follower did not see), or another one took the nonce
                if let Some((height, refused)) = self.refused_in(s, reason).await? {
                    if self.update(s, refused).await? {
                        tracing::error!(operation = %s.id, reason, height, "transaction mined without its effect: the contract refused it");
                    }
                    return Ok(());
                }
                let nonce = self.free_nonce(s).await?;
                if self.sign_and_keep(s, nonce).await?.is_some() {
                    tracing::warn!(operation = %s.id, reason, nonce, "nonce was taken by another transaction; signed again");
                }
            }
            OnChain::Unknown => {
                // cannot prove it did not run: resending could do it twice
                let state = SubmissionState::Failed {
                    txid: String::new(),
                    height: self.status.node_tip.load(Ordering::SeqCst),
                    result: format!("{reason}; cannot tell whether it ran"),
                    nonce: None,
                    raw: None,
                };
                if !self.update(s, state).await? {
                    return Ok(());
                }
                tracing::error!(operation = %s.id, reason, "nonce conflict on an operation that cannot be checked");
            }
        }
        Ok(())
    }

    /// For sent operation `s` whose nonce is used (`reason`) and whose effect is not on chain:
    /// the block that mined its own transaction (the contract refused it) and the state that
    /// says so, if one of the blocks from when it was sent to the node's tip has it
    /// (`REFUSAL_SEARCH` at most). Signed again instead, it would be a second transaction for
    /// the operation, refused again, and the first refusal never in the audit log. Not found:
    /// another transaction took the nonce. Looked for only where an effect, once on chain,
    /// stays there (a record, a review, an anchor: not a summary's hash, which a later one
    /// replaces, so that "not on chain" does not tell a refusal), and only for a nonce used on
    /// chain (not one a transaction in the node's mempool holds).
    async fn refused_in(
        &self,
        s: &Submission,
        reason: &str,
    ) -> Result<Option<(u64, SubmissionState)>, SubmitError> {
        let lasting = matches!(
            s.function.as_str(),
            "record-emergency-access" | "review-emergency-access" | "anchor-audit"
        );
        if !lasting || reason == "ConflictingNonceInMempool" {
            return Ok(None);
        }
        let SubmissionState::Sent {
            txid,
            nonce,
            raw,
            sent_at_height,
            ..
        } = &s.state
        else {
            return Ok(None);
        };
        let Ok(bytes) = hex::decode(raw) else {
            return Ok(None);
        };
        let tip = self.rpc.info().await?.stacks_tip_height;
        let last = tip.min(sent_at_height.saturating_add(REFUSAL_SEARCH));
        if last < tip {
            tracing::warn!(operation = %s.id, from = sent_at_height, to = last, tip, "its transaction looked for in the first blocks after it was sent only");
        }
        for height in *sent_at_height..=last {
            // (a read of the node a block: the lease kept while they take)
            self.keep_lease().await?;
            match self.rpc.block_at(height).await? {
                Some(block) if block.contains_tx(&bytes) => return Ok(Some((
                    height,
                    SubmissionState::Failed {
                        txid: txid.clone(),
                        height,
                        result:
                            "mined, but its effect is not on chain: the contract refused the call"
                                .into(),
                        nonce: Some(*nonce),
                        raw: Some(raw.clone()),
                    },
                ))),
                _ => {}
            }
        }
        Ok(None)
    }

    /// After the follower skipped blocks, an operation mined in them was never seen: any sent
    /// transaction whose nonce the chain has used is checked on chain now. Until every one is
    /// checked (a read of the store or the node, or a write, that fails), the next tick checks
    /// again.
    pub async fn reconcile(&self) -> Result<(), SubmitError> {
        if !self.status.skipped_blocks.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let checked = self.reconcile_sent().await;
        if checked.is_err() {
            self.status.skipped_blocks.store(true, Ordering::SeqCst);
        }
        checked
    }

    /// `reconcile`'s check of the sent operations.
    async fn reconcile_sent(&self) -> Result<(), SubmitError> {
        let sent: Vec<Submission> = self
            .store
            .open_submissions()?
            .into_iter()
            .filter(|s| matches!(s.state, SubmissionState::Sent { .. }))
            .collect();
        if sent.is_empty() {
            return Ok(());
        }
        let used = self.rpc.account_nonce(&self.sender).await?;
        for s in sent {
            if let SubmissionState::Sent { nonce, .. } = s.state {
                if nonce < used {
                    self.nonce_taken(&s, "mined in blocks the follower skipped")
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// One round, if this replica holds the lease (else another replica does the work).
    pub async fn tick(&self) -> Result<(), SubmitError> {
        if !self.hold_lease().await? {
            return Ok(());
        }
        // a check that cannot finish now is made again at the next tick; the rest of this one
        // goes on (one operation's check failing for good would hold every other back)
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "the check of operations mined in skipped blocks did not finish: again at the next tick");
        }
        self.prepare().await?;
        self.broadcast_due().await
    }

    pub async fn run(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "submitter tick failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => break,
            }
        }
        self.let_go().await;
    }

    /// Lets the lease go, if this replica holds it (stopping, between rounds): another replica
    /// submits at once, not once it lapses (a rolling restart held the chain records back a
    /// lease each).
    async fn let_go(&self) {
        if self.fence.swap(0, Ordering::SeqCst) == 0 {
            return;
        }
        if let Err(e) = self.coordination.release(&self.lease(), &self.holder).await {
            tracing::warn!(error = %e, "the submitter's lease could not be let go; it lapses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    const SENDER: &str = "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB";

    fn submitter(dir: &std::path::Path) -> Submitter {
        let address: Address = SENDER.parse().unwrap();
        Submitter {
            store: Arc::new(RedbStore::open(&dir.join("store.redb")).unwrap()),
            // the node is never asked here
            rpc: NodeClient::new("http://127.0.0.1:9", Duration::from_millis(10), 0),
            contracts: Contracts { address },
            key: SecretKey::from_slice(&[7; 32]).unwrap(),
            sender: address,
            mainnet: false,
            fee: 1_000,
            rebroadcast_after: 3,
            status: Arc::default(),
            apply_lock: Arc::default(),
            coordination: Arc::new(Coordinator::local(10)),
            holder: "test".into(),
            lease_ms: 10_000,
            fence: AtomicU64::new(0),
            renewed_ms: AtomicU64::new(0),
        }
    }

    fn sent(broadcasts: u32) -> SubmissionState {
        SubmissionState::Sent {
            txid: "ab".repeat(32),
            nonce: 4,
            raw: "00".into(),
            sent_at_height: 10,
            broadcasts,
        }
    }

    /// A submitter (`submitter`) whose lease is kept on `redis`, and that coordinator.
    fn submitter_on_redis(
        redis: &crate::dev::TestRedis,
        dir: &std::path::Path,
    ) -> (Submitter, Arc<Coordinator>) {
        let coordination = Arc::new(Coordinator::redis(&redis.url, "t:", 10).unwrap());
        let mut sub = submitter(dir);
        sub.coordination = coordination.clone();
        (sub, coordination)
    }

    /// A replica that stops lets the submitter's lease go: another submits at once, not once
    /// it lapses.
    #[tokio::test]
    async fn a_submitter_that_stops_lets_its_lease_go() {
        let redis = crate::dev::test_redis().await;
        let dir = tempfile::tempdir().unwrap();
        let (mut sub, coordination) = submitter_on_redis(&redis, dir.path());
        sub.lease_ms = 60_000;
        let sub = Arc::new(sub);
        assert!(sub.hold_lease().await.unwrap());
        let name = format!("submitter:{SENDER}");
        let other = || coordination.lease(&name, "other", 60_000);
        assert_eq!(other().await.unwrap(), None, "held");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(sub.clone().run(Duration::from_secs(3600), shutdown));
        stop.send(true).unwrap();
        running.await.unwrap();
        assert!(other().await.unwrap().is_some(), "let go");
        assert!(!sub.holds_lease());
    }

    /// A lease found another's (by a renewal in the middle of a tick: the check of what skipped
    /// blocks mined) is not kept for the rest of the tick: the next step asks again and stops.
    /// Before, the renewal's time counted as kept, and the steps after it wrote with no fence.
    #[tokio::test]
    async fn a_lease_found_lost_is_not_taken_for_kept() {
        let redis = crate::dev::test_redis().await;
        let dir = tempfile::tempdir().unwrap();
        let (mut sub, coordination) = submitter_on_redis(&redis, dir.path());
        sub.lease_ms = 600;
        assert!(sub.hold_lease().await.unwrap());
        sub.keep_lease().await.unwrap();
        // lapsed, and taken by another replica
        tokio::time::sleep(Duration::from_millis(700)).await;
        let name = format!("submitter:{SENDER}");
        assert!(coordination
            .lease(&name, "other", 60_000)
            .await
            .unwrap()
            .is_some());
        assert!(!sub.hold_lease().await.unwrap(), "another's");
        assert!(
            matches!(
                sub.keep_lease().await,
                Err(SubmitError::Store(StoreError::Guarded(Guarded::Fenced)))
            ),
            "not kept"
        );
    }

    #[tokio::test]
    async fn a_broadcast_never_undoes_a_confirmation_written_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let sub = submitter(dir.path());
        let read = Submission {
            state: sent(1),
            ..operation(
                "record:01",
                "access-control",
                "record-emergency-access",
                &[],
            )
        };
        sub.store
            .apply(Batch {
                submissions: vec![read.clone()],
                ..Batch::default()
            })
            .unwrap();
        // while the transaction was broadcast again, the follower saw it mined
        let confirmed = confirmed(&"ab".repeat(32), 4, "00", 12, "(ok u0)".into());
        sub.store
            .apply(Batch {
                submissions: vec![Submission {
                    state: confirmed.clone(),
                    ..read.clone()
                }],
                ..Batch::default()
            })
            .unwrap();
        assert!(!sub.update(&read, sent(2)).await.unwrap());
        assert_eq!(
            sub.store.submission("record:01").unwrap().unwrap().state,
            confirmed
        );

        // unchanged since it was read: written
        let now = sub.store.submission("record:01").unwrap().unwrap();
        let failed = SubmissionState::Failed {
            txid: "ab".repeat(32),
            height: 13,
            result: "(err u205)".into(),
            nonce: None,
            raw: None,
        };
        assert!(sub.update(&now, failed.clone()).await.unwrap());
        assert_eq!(
            sub.store.submission("record:01").unwrap().unwrap().state,
            failed
        );
    }

    /// A patient's summary operation is superseded when the summary stored is another: its
    /// digest decides, not the operations' times, which are each importing replica's clock.
    /// Here the first import's replica ran a minute ahead, so by times the second summary's
    /// operation (the summary stored) looked replaced and the first's did not: the first's
    /// hash would have been signed again over the stored summary's. A summary stored without
    /// a digest (before they were kept, or by such a version during a rolling upgrade: the
    /// digest beside it is then another summary's) still goes by times.
    #[test]
    fn a_summary_operation_is_superseded_by_the_summary_stored_not_by_clocks() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        let patient = crate::domain::PatientId([3; 32]);
        let (first_plain, second_plain) = (b"first summary".to_vec(), b"second summary".to_vec());
        let (first_sealed, second_sealed) = (vec![1u8; 40], vec![2u8; 40]);
        let hash = |plain: &[u8]| <[u8; 32]>::from(sha2::Sha256::digest(plain));
        let mut first = crate::vault::operation(&patient, &hash(&first_plain));
        let mut second = crate::vault::operation(&patient, &hash(&second_plain));
        second.created_at_ms = 1_000_000;
        first.created_at_ms = second.created_at_ms + 60_000;
        store
            .apply(Batch {
                submissions: vec![first.clone(), second.clone()],
                ..Batch::default()
            })
            .unwrap();
        // no digest stored: by times (which a pending operation is not closed by: the
        // stored summary's own may be the earlier by a slower clock)
        assert!(superseded(&store, &second).unwrap());
        assert!(!superseded(&store, &first).unwrap());
        assert_eq!(replaced_by_the_stored(&store, &second).unwrap(), None);
        // the second summary stored (after the first, whatever the clocks said)
        let stored = |sealed: &Vec<u8>, digest: Option<crate::store::SummaryDigest>| {
            store
                .apply(Batch {
                    summaries: vec![(patient, Some(sealed.clone()))],
                    summary_digests: digest.map(|d| (patient, Some(d))).into_iter().collect(),
                    ..Batch::default()
                })
                .unwrap()
        };
        let second_digest = crate::store::SummaryDigest::of(&second_plain, &second_sealed);
        stored(&second_sealed, Some(second_digest));
        assert!(superseded(&store, &first).unwrap());
        assert!(!superseded(&store, &second).unwrap());
        assert_eq!(replaced_by_the_stored(&store, &first).unwrap(), Some(true));
        assert_eq!(
            replaced_by_the_stored(&store, &second).unwrap(),
            Some(false)
        );
        // another patient's summary decides nothing for this one's operations
        let other = crate::domain::PatientId([4; 32]);
        store
            .apply(Batch {
                summary_digests: vec![(
                    other,
                    Some(crate::store::SummaryDigest::of(&first_plain, &first_sealed)),
                )],
                ..Batch::default()
            })
            .unwrap();
        assert!(superseded(&store, &first).unwrap());
        // the first stored again by a version without digests: the second's digest is not
        // the stored summary's, and times decide again (here, rightly: the first is stored)
        stored(&first_sealed, None);
        assert!(superseded(&store, &second).unwrap());
        assert!(!superseded(&store, &first).unwrap());
        assert_eq!(replaced_by_the_stored(&store, &second).unwrap(), None);
        // an operation of another kind never is
        let record = operation(
            "record:01",
            "access-control",
            "record-emergency-access",
            &[],
        );
        assert!(!superseded(&store, &record).unwrap());
    }

    /// Replicas sharing Redis: this replica's follower read two operations as sent (one
    /// mined and refused, one mined with its effect), and before its block's write landed
    /// another replica's submitter signed the first again with a new nonce (the node had said
    /// its nonce was used). The block's write, with the follower's changes (`with_changes`), is
    /// refused whole: neither change nor the block's tip lands over the new transaction, whose
    /// nonce the service's later transactions wait behind. Before, the changes were written
    /// unguarded, and the new nonce was never broadcast. Found again over the operations as
    /// they are now (the follower's next attempt), they are written with the block.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_followers_changes_never_put_back_a_transaction_signed_again_meanwhile() {
        let redis = crate::dev::test_redis().await;
        let open = || -> Arc<dyn Store> {
            Arc::new(crate::store::RedisStore::open(redis.url.as_str(), "r:").unwrap())
        };
        let (follower, other) = (open(), open());
        let op = |id: &str, txid: &str, nonce: u64| Submission {
            state: SubmissionState::Sent {
                txid: txid.repeat(32),
                nonce,
                raw: "00".into(),
                sent_at_height: 10,
                broadcasts: 1,
            },
            ..operation(id, "access-control", "record-emergency-access", &[])
        };
        let (refused, mined) = (op("record:01", "ab", 4), op("record:02", "cd", 5));
        let write = |store: &Arc<dyn Store>, submissions: Vec<Submission>| {
            store
                .apply(Batch {
                    submissions,
                    ..Batch::default()
                })
                .unwrap()
        };
        write(&follower, vec![refused.clone(), mined.clone()]);
        let block = |changes: Vec<Change>| {
            let mut batch = Batch {
                tip: Some(crate::store::Tip::applied(12, [12; 32])),
                ..Batch::default()
            };
            with_changes(&mut batch, changes);
            batch
        };
        let failed = SubmissionState::Failed {
            txid: "ab".repeat(32),
            height: 12,
            result: "mined, but its effect is not on chain".into(),
            nonce: None,
            raw: None,
        };
        let done = confirmed(&"cd".repeat(32), 5, "00", 12, "(ok true)".into());
        let both = |first: &Submission, second: &Submission| {
            vec![
                Change {
                    read: first.clone(),
                    state: failed.clone(),
                },
                Change {
                    read: second.clone(),
                    state: done.clone(),
                },
            ]
        };
        let refused_whole = |changes: Vec<Change>, first: &Submission, second: &Submission| {
            assert!(matches!(
                follower.apply(block(changes)),
                Err(StoreError::Guarded(Guarded::Changed))
            ));
            assert_eq!(
                follower.submission("record:01").unwrap().as_ref(),
                Some(first)
            );
            assert_eq!(
                follower.submission("record:02").unwrap().as_ref(),
                Some(second)
            );
            assert_eq!(follower.tip().unwrap(), None, "nor the block");
            assert_eq!(
                follower.audit_head().unwrap(),
                None,
                "nor its failure's entry"
            );
        };
        // the other replica broadcasts the second again (the last row guarded)
        let mut broadcast = mined.clone();
        if let SubmissionState::Sent { broadcasts, .. } = &mut broadcast.state {
            *broadcasts = 2;
        }
        write(&other, vec![broadcast.clone()]);
        refused_whole(both(&refused, &mined), &refused, &broadcast);
        // found again; meanwhile the other replica signs the first again, with nonce 9
        let again = op("record:01", "ef", 9);
        write(&other, vec![again.clone()]);
        refused_whole(both(&refused, &broadcast), &again, &broadcast);
        // found again: the first is in flight as its new transaction, not in this block
        let changes = vec![Change {
            read: broadcast,
            state: done.clone(),
        }];
        follower.apply(block(changes)).unwrap();
        assert_eq!(
            follower.submission("record:01").unwrap(),
            Some(again.clone())
        );
        assert_eq!(
            follower.submission("record:02").unwrap().unwrap().state,
            done
        );
        assert_eq!(follower.tip().unwrap().map(|t| t.height), Some(12));
        assert_eq!(
            follower.audit_head().unwrap(),
            None,
            "a confirmation is not logged"
        );

        // the first's new transaction mined and refused: both replicas' followers find it
        // in the next block, over the operation as they read it; one write lands, with the
        // failure's entry, and the other is refused whole: one entry
        let next = |store: &Arc<dyn Store>| {
            let mut batch = Batch {
                tip: Some(crate::store::Tip::applied(13, [13; 32])),
                ..Batch::default()
            };
            with_changes(
                &mut batch,
                vec![Change {
                    read: again.clone(),
                    state: failed.clone(),
                }],
            );
            store.apply(batch)
        };
        next(&other).unwrap();
        assert!(matches!(
            next(&follower),
            Err(StoreError::Guarded(Guarded::Changed))
        ));
        let entries = follower.audit_entries(1, 10).unwrap();
        assert_eq!(entries.len(), 1, "one entry");
        match entries[0].parsed().unwrap() {
            crate::audit::Event::ChainFailure {
                operation,
                access,
                txid,
                height,
                cleared,
                ..
            } => {
                assert_eq!(operation, "record:01");
                assert_eq!(access, None, "01 is no access's id");
                assert_eq!((txid, height, cleared), (Some("ab".repeat(32)), 12, false));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Which changes of an operation's state are logged, and as what: into `Failed`, with
    /// why; out of it (a reorg), cleared; none else. The access is read from the id of a
    /// chain record's or a verdict's operation (a later attempt's too).
    #[test]
    fn an_operation_failing_or_no_longer_failed_is_logged() {
        let access = "7f".repeat(32);
        let sent = |id: &str| Submission {
            state: SubmissionState::Sent {
                txid: "ab".repeat(32),
                nonce: 4,
                raw: "00".into(),
                sent_at_height: 10,
                broadcasts: 1,
            },
            ..operation(id, "access-control", "review-emergency-access", &[])
        };
        let failed = SubmissionState::Failed {
            txid: "ab".repeat(32),
            height: 12,
            result: "refused".into(),
            nonce: Some(4),
            raw: Some("00".into()),
        };
        let done = confirmed(&"ab".repeat(32), 4, "00", 13, "(ok true)".into());
        let entry = |read: &Submission, state: &SubmissionState| {
            failure_entry(read, state).map(|r| match r.event {
                crate::audit::Event::ChainFailure {
                    operation,
                    access,
                    txid,
                    height,
                    result,
                    cleared,
                    ..
                } => (
                    operation,
                    access.map(|a| a.to_string()),
                    txid,
                    height,
                    result,
                    cleared,
                ),
                other => panic!("{other:?}"),
            })
        };
        for id in [format!("record:{access}"), format!("review:{access}:2")] {
            let read = sent(&id);
            assert_eq!(
                entry(&read, &failed),
                Some((
                    id.clone(),
                    Some(access.clone()),
                    Some("ab".repeat(32)),
                    12,
                    "refused".into(),
                    false
                ))
            );
            assert_eq!(entry(&read, &done), None, "confirmed");
            assert_eq!(entry(&read, &SubmissionState::Pending), None);
            let was_failed = Submission {
                state: failed.clone(),
                ..read.clone()
            };
            assert_eq!(entry(&was_failed, &failed), None, "failed already");
            let (_, _, _, height, _, cleared) = entry(&was_failed, &done).unwrap();
            assert_eq!(
                (height, cleared),
                (13, true),
                "its effect on chain after a reorg"
            );
            let (_, _, txid, height, _, cleared) = entry(&was_failed, &read.state).unwrap();
            assert_eq!(
                (txid, height, cleared),
                (Some("ab".repeat(32)), 10, true),
                "sent again"
            );
        }
        // one whose nonce another transaction took, its effect unknown, names the transaction
        // it was sent as
        let unknown = SubmissionState::Failed {
            txid: String::new(),
            height: 14,
            result: "BadNonce; cannot tell whether it ran".into(),
            nonce: None,
            raw: None,
        };
        let (_, _, txid, _, _, _) = entry(&sent("record:x"), &unknown).unwrap();
        assert_eq!(txid, Some("ab".repeat(32)));
        // an anchor names no access; a failure with no transaction names none
        let anchor = operation("anchor:9", "access-control", "anchor-audit", &[]);
        let unsigned = SubmissionState::Failed {
            txid: String::new(),
            height: 0,
            result: "not signed: bad argument".into(),
            nonce: None,
            raw: None,
        };
        assert_eq!(
            entry(&anchor, &unsigned),
            Some((
                "anchor:9".into(),
                None,
                None,
                0,
                "not signed: bad argument".into(),
                false
            ))
        );
    }
}
