//! The periodic on-call syncs (PagerDuty, Opsgenie): one supervised task a source, which
//! asks the paging system who is on call, maps them to principals and replaces the source's
//! roster. A `429` is waited out as `Retry-After` says (up to a bound); a failure leaves the
//! last good roster to its grace period (`OnCall::lookup` fails closed after it).
//!
//! It must not: keep a failed source's roster standing past its grace period.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::{Change, OnCall, Roster};
use crate::clock::{now_ms, now_secs};
use crate::configuration::SyncSettings;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Failed(String),
}

/// A paging system that can say who is on call.
pub trait Source: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Everyone on call now, as principals (through `map`), every page read, with the API
    /// key `key`.
    fn fetch(
        &self,
        http: &reqwest::Client,
        key: &str,
        map: &HashMap<String, String>,
        now: u64,
        max_retry_after: Duration,
    ) -> impl Future<Output = Result<Roster, FetchError>> + Send;
}

/// How many `429`s in a row one request waits out before the round counts as failed.
const MAX_RATE_LIMITED: u32 = 5;

/// Sends a GET, waiting out `429 Too Many Requests` as its `Retry-After` says, and reads the
/// JSON answer.
pub async fn send<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    max_retry_after: Duration,
) -> Result<T, FetchError> {
    let mut limited = 0;
    loop {
        let attempt = request
            .try_clone()
            .ok_or_else(|| FetchError::Failed("request cannot be retried".into()))?;
        let res = attempt
            .send()
            .await
            .map_err(|e| FetchError::Failed(format!("unreachable: {e}")))?;
        let status = res.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            let wait = retry_after(res.headers()).unwrap_or(Duration::from_secs(1));
            if wait > max_retry_after || limited > MAX_RATE_LIMITED {
                return Err(FetchError::Failed(format!(
                    "rate limited ({limited} times; asked to wait {} s)",
                    wait.as_secs()
                )));
            }
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "paging API rate limit: waiting"
            );
            tokio::time::sleep(wait).await;
            continue;
        }
        if !status.is_success() {
            return Err(FetchError::Failed(format!("answered {status}")));
        }
        return res
            .json()
            .await
            .map_err(|e| FetchError::Failed(format!("unexpected answer: {e}")));
    }
}

/// How long a `429` asks to wait: `Retry-After` (RFC 9110 §10.2.3: seconds or an HTTP date),
/// else PagerDuty's `ratelimit-reset` (seconds), else Opsgenie's `X-RateLimit-Period-In-Sec`.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(v) = header("retry-after") {
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let at = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(v)
            .ok()?;
        let ms = at.as_millisecond() - i64::try_from(now_ms()).ok()?;
        return Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0)));
    }
    ["ratelimit-reset", "x-ratelimit-period-in-sec"]
        .iter()
        .find_map(|h| header(h)?.parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// One round: the API key (re-read each round, so a rotated key needs no restart), the
/// mapping, every page.
async fn round<S: Source>(
    source: &S,
    oncall: &Arc<OnCall>,
    http: &reqwest::Client,
    key_file: &Path,
    now: u64,
    max_retry_after: Duration,
) -> Result<Roster, String> {
    let text = tokio::fs::read_to_string(key_file)
        .await
        .map_err(|e| format!("reading the API key {}: {e}", key_file.display()))?;
    let keys = super::secrets_of(&text, key_file).map_err(|e| e.to_string())?;
    let key = String::from_utf8_lossy(&keys[0]).into_owned();
    let o = oncall.clone();
    let map = tokio::task::spawn_blocking(move || o.mapping.snapshot())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("responder mapping: {e}"))?;
    source
        .fetch(http, &key, &map, now, max_retry_after)
        .await
        .map_err(|e| e.to_string())
}

/// Syncs `source` every `interval` until shutdown (which also cuts a round short).
pub async fn run<S: Source>(
    source: S,
    key_file: PathBuf,
    oncall: Arc<OnCall>,
    settings: SyncSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.request_timeout_ms))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, source = source.name(), "no HTTP client: on-call sync off");
            return;
        }
    };
    let max_retry_after = Duration::from_secs(settings.max_retry_after_secs);
    loop {
        let now = now_secs();
        let result = tokio::select! {
            r = round(&source, &oncall, &http, &key_file, now, max_retry_after) => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(roster) => {
                let n = roster.on_call.len();
                let change = Change::Synced {
                    source: source.name().into(),
                    roster,
                };
                match oncall.apply(change, None).await {
                    Ok(_) => tracing::debug!(source = source.name(), on_call = n, "on-call synced"),
                    Err(e) => oncall.sync_failed(source.name(), now, format!("store: {e}")),
                }
            }
            Err(e) => {
                tracing::warn!(source = source.name(), error = %e, "on-call sync failed; the last good roster stands for its grace period");
                oncall.sync_failed(source.name(), now, e);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(settings.interval_ms)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
