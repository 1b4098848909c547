//! An async client for the stacks-node RPC the service uses: `/v2/info`, `/v2/accounts`,
//! call-read, `/v3/blocks/height` and `POST /v2/transactions`. Reads retry with exponential backoff on transport
//! errors and 5xx answers; every error names the node call that failed and why.
//!
//! It must not: retry a broadcast (only reads are retried), or cache an answer.

use std::time::Duration;

use serde::Deserialize;

use crate::stacks::block::{decode_header, BlockHeader};
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

/// A block as the node serves it: its header, decoded, and all its bytes (the header, then
/// its transactions as they were mined).
#[derive(Debug, Clone)]
pub struct NodeBlock {
    pub header: BlockHeader,
    pub bytes: Vec<u8>,
}

impl NodeBlock {
    /// Whether `tx` (a signed transaction's bytes) was mined in this block. A transaction
    /// carries its signature, so its bytes appear in a block only when it is in there.
    pub fn contains_tx(&self, tx: &[u8]) -> bool {
        !tx.is_empty() && memchr::memmem::find(&self.bytes, tx).is_some()
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
        self.retrying(|| async {
            match self.send(call, make()).await? {
                (200, body) => serde_json::from_str(&body).map_err(|e| RpcError::Decode {
                    call: call.into(),
                    detail: e.to_string(),
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
                200 => decode_header(&body)
                    .map(|header| {
                        Some(NodeBlock {
                            header,
                            bytes: Vec::from(body),
                        })
                    })
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

    /// Calls a read-only function; `contract` is `address.name`.
    pub async fn call_read(
        &self,
        contract: &str,
        function: &str,
        args: &[Value],
        sender: &Address,
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
        let url = format!(
            "{}/v2/contracts/call-read/{address}/{name}/{function}",
            self.base
        );
        let body = serde_json::json!({ "sender": sender.to_string(), "arguments": args.iter().map(Value::to_hex).collect::<Vec<_>>() });
        let a: Answer = self
            .read(&call, || self.http.post(&url).json(&body))
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
