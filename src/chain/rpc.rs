//! An async client for the stacks-node RPC the service uses: `/v2/info`, `/v2/accounts`,
//! call-read (at the node's tip or a given block), `/v3/blocks/height` and `POST /v2/transactions`.
//! Reads retry with exponential backoff on transport errors and 5xx answers, and a read at a
//! block on a 404 (the node has not got it yet); every error names the node call that failed
//! and why.
//!
//! It must not: retry a broadcast (only reads are retried), or cache an answer.

use std::time::Duration;

use serde::Deserialize;

use crate::stacks::block::{decode_block, decode_header, BlockHeader, HeaderError};
use crate::stacks::tx::DecodedTx;
use crate::stacks::{Address, Value};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{call}: cannot reach the node: {detail}")]
    Unreachable { call: String, detail: String },
    #[error("{call}: the node answered HTTP {status}: {body}")]
    Status {
        call: String,
        status: u16,
        body: String,
    },
    #[error("{call}: unexpected answer: {detail}")]
    Decode { call: String, detail: String },
    #[error("{call}: the read-only call failed: {cause}")]
    CallFailed { call: String, cause: String },
    /// A read asked at a block (`?tip=`) the node has not got: it is behind that block, or
    /// the block is of a fork the node never had.
    #[error("{call}: the node has not got block {tip} (it is behind it, or never had that fork)")]
    NoSuchTip { call: String, tip: String },
    #[error("the node rejected the transaction: {reason} {data}")]
    Rejected {
        reason: String,
        data: serde_json::Value,
    },
}

impl RpcError {
    fn retryable(&self) -> bool {
        match self {
            RpcError::Unreachable { .. } => true,
            RpcError::Status { status, .. } => *status >= 500,
            // a node behind gets the block in a moment
            RpcError::NoSuchTip { .. } => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    pub stacks_tip_height: u64,
    pub stacks_tip: String,
    pub network_id: u32,
    #[serde(default)]
    pub burn_block_height: u64,
}

/// A block as the node serves it: its header, decoded, all its bytes (the header, then its
/// transactions as they were mined), and those transactions, decoded (`None` if one is of a
/// kind the decoder does not know: a later epoch's).
#[derive(Debug, Clone)]
pub struct NodeBlock {
    pub header: BlockHeader,
    pub bytes: Vec<u8>,
    pub txs: Option<Vec<DecodedTx>>,
}

impl NodeBlock {
    /// The block in `bytes`: its header, and its transactions if they decode.
    pub fn decode(bytes: Vec<u8>) -> Result<NodeBlock, HeaderError> {
        match decode_block(&bytes) {
            Ok((header, txs)) => Ok(NodeBlock {
                header,
                bytes,
                txs: Some(txs),
            }),
            Err(e) => {
                let header = decode_header(&bytes)?;
                tracing::warn!(height = header.height, error = %e, "the node's block has transactions this service cannot decode: our transactions are found in it by their bytes, and every cached entry is read again");
                Ok(NodeBlock {
                    header,
                    bytes,
                    txs: None,
                })
            }
        }
    }

    /// Whether `tx` (a signed transaction's bytes) was mined in this block: one of its
    /// transactions has its txid. If they did not decode, whether its bytes are in the
    /// block's (they may then be a copy carried inside another transaction: `exact` is false).
    pub fn contains_tx(&self, tx: &[u8]) -> bool {
        if tx.is_empty() {
            return false;
        }
        match &self.txs {
            Some(txs) => {
                let id = hex::encode(crate::stacks::tx::txid(tx));
                txs.iter().any(|t| t.txid == id)
            }
            None => memchr::memmem::find(&self.bytes, tx).is_some(),
        }
    }

    /// Whether `contains_tx` matched whole transactions by txid, not bytes.
    pub fn exact(&self) -> bool {
        self.txs.is_some()
    }
}

#[derive(Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
    retries: u32,
}

impl NodeClient {
    pub fn new(base: &str, timeout: Duration, retries: u32) -> NodeClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .unwrap_or_default();
        NodeClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            retries,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        call: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<(u16, String), RpcError> {
        let res = req.send().await.map_err(|e| RpcError::Unreachable {
            call: call.into(),
            detail: e.to_string(),
        })?;
        let status = res.status().as_u16();
        let body = res.text().await.map_err(|e| RpcError::Unreachable {
            call: call.into(),
            detail: e.to_string(),
        })?;
        Ok((status, body))
    }

    /// `attempt`, again with backoff while its failure may pass.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T, RpcError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match attempt().await {
                Err(e) if e.retryable() && tries < self.retries => {
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }

    /// A JSON read, retried with backoff while the failure may pass.
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        call: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, RpcError> {
        self.read_at(call, None, make).await
    }

    /// `read` of a request asked at block `tip` (hex), whose 404 says the node has not got it.
    async fn read_at<T: for<'de> Deserialize<'de>>(
        &self,
        call: &str,
        tip: Option<&str>,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<T, RpcError> {
        self.retrying(|| async {
            match self.send(call, make()).await? {
                (200, body) => serde_json::from_str(&body).map_err(|e| RpcError::Decode {
                    call: call.into(),
                    detail: e.to_string(),
                }),
                (404, _) if tip.is_some() => Err(RpcError::NoSuchTip {
                    call: call.into(),
                    tip: tip.unwrap_or_default().into(),
                }),
                (status, body) => Err(RpcError::Status {
                    call: call.into(),
                    status,
                    body: truncate(&body),
                }),
            }
        })
        .await
    }

    pub async fn info(&self) -> Result<NodeInfo, RpcError> {
        let url = format!("{}/v2/info", self.base);
        self.read("GET /v2/info", || self.http.get(&url)).await
    }

    /// The canonical block at `height` on the node's tip (`GET /v3/blocks/height/{h}`), its
    /// with its header decoded; `None` when the node has no block there.
    pub async fn block_at(&self, height: u64) -> Result<Option<NodeBlock>, RpcError> {
        let call = "GET /v3/blocks/height";
        let url = format!("{}/v3/blocks/height/{height}", self.base);
        let unreachable = |e: reqwest::Error| RpcError::Unreachable {
            call: call.into(),
            detail: e.to_string(),
        };
        self.retrying(|| async {
            let res = self.http.get(&url).send().await.map_err(unreachable)?;
            let status = res.status().as_u16();
            let body = res.bytes().await.map_err(unreachable)?;
            match status {
                404 => Ok(None),
                200 => NodeBlock::decode(Vec::from(body))
                    .map(Some)
                    .map_err(|e| RpcError::Decode {
                        call: call.into(),
                        detail: e.to_string(),
                    }),
                _ => Err(RpcError::Status {
                    call: call.into(),
                    status,
                    body: truncate(&String::from_utf8_lossy(&body)),
                }),
            }
        })
        .await
    }

    /// The account's next nonce as the chain has it (mempool not counted).
    pub async fn account_nonce(&self, principal: &Address) -> Result<u64, RpcError> {
        #[derive(Deserialize)]
        struct Account {
            nonce: u64,
        }
        let url = format!("{}/v2/accounts/{principal}?proof=0", self.base);
        let a: Account = self
            .read("GET /v2/accounts", || self.http.get(&url))
            .await?;
        Ok(a.nonce)
    }

    /// Calls a read-only function on the node's tip; `contract` is `address.name`.
    pub async fn call_read(
        &self,
        contract: &str,
        function: &str,
        args: &[Value],
        sender: &Address,
    ) -> Result<Value, RpcError> {
        self.call_read_at(contract, function, args, sender, None)
            .await
    }

    /// Calls a read-only function as of the end of block `tip` (its index block hash: `?tip=`),
    /// or on the node's tip (`None`). A node that has not got that block answers 404
    /// (`RpcError::NoSuchTip`), retried as a server error is: a node behind gets it soon.
    pub async fn call_read_at(
        &self,
        contract: &str,
        function: &str,
        args: &[Value],
        sender: &Address,
        tip: Option<&[u8; 32]>,
    ) -> Result<Value, RpcError> {
        #[derive(Deserialize)]
        struct Answer {
            okay: bool,
            result: Option<String>,
            cause: Option<String>,
        }
        let call = format!("call-read {contract}::{function}");
        let (address, name) = contract.split_once('.').ok_or_else(|| RpcError::Decode {
            call: call.clone(),
            detail: "contract id without a name".into(),
        })?;
        let tip = tip.map(hex::encode);
        let url = format!(
            "{}/v2/contracts/call-read/{address}/{name}/{function}{}",
            self.base,
            tip.as_ref()
                .map(|t| format!("?tip={t}"))
                .unwrap_or_default()
        );
        let body = serde_json::json!({ "sender": sender.to_string(), "arguments": args.iter().map(Value::to_hex).collect::<Vec<_>>() });
        let a: Answer = self
            .read_at(&call, tip.as_deref(), || self.http.post(&url).json(&body))
            .await?;
        if !a.okay {
            return Err(RpcError::CallFailed {
                call,
                cause: a.cause.unwrap_or_default(),
            });
        }
        let hex = a.result.ok_or_else(|| RpcError::Decode {
            call: call.clone(),
            detail: "okay without a result".into(),
        })?;
        Value::from_hex(&hex).map_err(|e| RpcError::Decode {
            call,
            detail: e.to_string(),
        })
    }

    /// Posts a signed transaction. Not retried here: the submitter decides what a failure means.
    pub async fn broadcast(&self, raw: &[u8]) -> Result<String, RpcError> {
        let call = "POST /v2/transactions";
        let url = format!("{}/v2/transactions", self.base);
        let req = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(raw.to_vec());
        let (status, body) = self.send(call, req).await?;
        if status == 200 {
            let txid: String = serde_json::from_str(&body).map_err(|e| RpcError::Decode {
                call: call.into(),
                detail: e.to_string(),
            })?;
            return Ok(txid.trim_start_matches("0x").to_string());
        }
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) if v.get("reason").is_some() => Err(RpcError::Rejected {
                reason: v["reason"].as_str().unwrap_or_default().to_string(),
                data: v
                    .get("reason_data")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
            }),
            _ => Err(RpcError::Status {
                call: call.into(),
                status,
                body: truncate(&body),
            }),
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block of `tests/data/block-vectors.json` (made by @stacks/transactions), and its
    /// transactions' bytes.
    fn vector_block() -> (Vec<u8>, Vec<Vec<u8>>) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/block-vectors.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let txs = v["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| hex::decode(t["tx_hex"].as_str().unwrap()).unwrap())
            .collect();
        (
            hex::decode(v["block"]["hex"].as_str().unwrap()).unwrap(),
            txs,
        )
    }

    #[test]
    fn a_blocks_transactions_are_matched_whole_by_txid() {
        let (bytes, txs) = vector_block();
        let block = NodeBlock::decode(bytes).unwrap();
        assert!(block.exact());
        assert!(txs.iter().all(|tx| block.contains_tx(tx)));
        // bytes inside the block that are not one of its transactions: not mined there
        let call = txs.last().unwrap();
        assert!(!block.contains_tx(&call[..call.len() - 1]));
        assert!(!block.contains_tx(&call[1..]));
        assert!(!block.contains_tx(&[]));
    }

    #[test]
    fn a_block_with_a_transaction_of_an_unknown_kind_is_searched_by_bytes() {
        let (bytes, txs) = vector_block();
        let header = decode_header(&bytes).unwrap();
        // one more transaction, of a payload kind no epoch has yet
        let count_at = bytes.len() - txs.iter().map(Vec::len).sum::<usize>() - 4;
        let mut later = bytes.clone();
        later[count_at..count_at + 4].copy_from_slice(&(txs.len() as u32 + 1).to_be_bytes());
        let mut unknown = txs[0].clone();
        let payload_at = unknown.len() - (1 + 20 * 3 + 32 + 4 + 1 + 20);
        assert_eq!(unknown[payload_at], 0x07, "a tenure change's payload");
        unknown[payload_at] = 0x09;
        later.extend(unknown);
        let block = NodeBlock::decode(later).unwrap();
        assert_eq!(block.header, header);
        assert!(!block.exact());
        assert!(txs.iter().all(|tx| block.contains_tx(tx)));
        // a byte search cannot tell a copy from the transaction
        let call = txs.last().unwrap();
        assert!(block.contains_tx(&call[1..]));
    }
}
