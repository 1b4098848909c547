//! The on-call section (`oncall`): the roster, PagerDuty, Opsgenie, the generic webhook and
//! their syncs.
//!
//! It must not: hold a webhook secret (secrets files are named here, read by `paging`).

use super::*;

/// Who is on call (`paging`): sources combine, and a clinician is on call when any of them
/// says so. With no source configured, on-call is not checked. Secrets (webhook secrets, API
/// tokens) are read from files, one secret a line, never from this file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnCallSettings {
    /// A TOML file with `on_call = ["ST...", ...]`: always on call.
    pub roster: Option<PathBuf>,
    /// A TOML file mapping paging user ids and emails to principals, `[responders]
    /// "PXPGF42" = "ST..."`; the provider directory's paging ids map too.
    pub mapping: Option<PathBuf>,
    /// A webhook whose own timestamp is further than this from now is refused; a delivery
    /// seen before within twice this is a replay.
    pub webhook_window_secs: u64,
    /// An incident pages no one this long after it first paged, resolved or not (so that a
    /// lost `resolved` cannot leave anyone on call for ever).
    pub incident_max_secs: u64,
    pub pagerduty: PagerDutySettings,
    pub opsgenie: OpsgenieSettings,
    pub webhook: GenericWebhookSettings,
}

impl OnCallSettings {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.webhook_window_secs == 0 || self.incident_max_secs == 0 {
            return Err(
                "oncall.webhook_window_secs and oncall.incident_max_secs must be positive".into(),
            );
        }
        for (name, sync) in [
            ("pagerduty", &self.pagerduty.sync),
            ("opsgenie", &self.opsgenie.sync),
        ] {
            if sync.interval_ms < 100 || sync.request_timeout_ms == 0 {
                return Err(format!(
                    "oncall.{name}.sync.interval_ms must be at least 100 and request_timeout_ms positive"
                ));
            }
            // a grace shorter than two rounds would fail closed between good syncs
            if sync.grace_secs.saturating_mul(1000) < sync.interval_ms.saturating_mul(2) {
                return Err(format!(
                    "oncall.{name}.sync.grace_secs must cover at least two sync intervals"
                ));
            }
        }
        Ok(())
    }
}

/// PagerDuty: Webhooks v3 (incidents page responders) and the REST API's `GET /oncalls`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySettings {
    /// The webhook subscriptions' signing secrets, one a line (two while rotating); unset,
    /// `POST /v1/paging/pagerduty` is off.
    pub webhook_secrets_file: Option<PathBuf>,
    /// A REST API key; unset, there is no on-call sync.
    pub api_token_file: Option<PathBuf>,
    pub api_url: String,
    /// Only these schedules / escalation policies (all, when both are empty).
    pub schedule_ids: Vec<String>,
    pub escalation_policy_ids: Vec<String>,
    pub sync: SyncSettings,
}

/// Opsgenie: alert webhooks and the schedules' on-call API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsgenieSettings {
    /// The secrets the webhook integration sends in its `X-Breakglass-Token` custom header,
    /// one a line; unset, `POST /v1/paging/opsgenie` is off.
    pub webhook_secrets_file: Option<PathBuf>,
    /// An API key (GenieKey); unset, there is no on-call sync.
    pub api_key_file: Option<PathBuf>,
    pub api_url: String,
    /// The schedules (by name) whose on-call participants are on call.
    pub schedules: Vec<String>,
    pub sync: SyncSettings,
}

/// Any other paging system: `POST /v1/paging/webhook` with `{responder, on_call_until,
/// incident}`, signed with HMAC-SHA256 over `timestamp.body`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericWebhookSettings {
    /// The signing secrets, one a line (two while rotating); unset, the endpoint is off.
    pub secrets_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    pub interval_ms: u64,
    /// After a failed sync the last good roster stands this long, then the source fails
    /// closed (no one is on call through it) until a sync succeeds.
    pub grace_secs: u64,
    /// The longest `Retry-After` honoured; a longer one counts as a failure.
    pub max_retry_after_secs: u64,
    pub request_timeout_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            interval_ms: 60_000,
            grace_secs: 900,
            max_retry_after_secs: 120,
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for OnCallSettings {
    fn default() -> Self {
        OnCallSettings {
            roster: None,
            mapping: None,
            webhook_window_secs: 600,
            incident_max_secs: 12 * 3600,
            pagerduty: PagerDutySettings {
                webhook_secrets_file: None,
                api_token_file: None,
                api_url: "https://api.pagerduty.com".into(),
                schedule_ids: Vec::new(),
                escalation_policy_ids: Vec::new(),
                sync: SyncSettings::default(),
            },
            opsgenie: OpsgenieSettings {
                webhook_secrets_file: None,
                api_key_file: None,
                api_url: "https://api.opsgenie.com".into(),
                schedules: Vec::new(),
                sync: SyncSettings::default(),
            },
            webhook: GenericWebhookSettings::default(),
        }
    }
}
