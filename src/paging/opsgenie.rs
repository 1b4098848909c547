//! Opsgenie: the alert webhooks of a Webhook integration, and the schedules' on-call API.
//!
//! Opsgenie does not sign its webhooks; its Webhook integration sends the custom headers it is
//! given, so the integration is set up with `X-Breakglass-Token: <secret>`, compared in
//! constant time against the configured secrets. A delivery is named by its alert, action
//! and `updatedAt`, so the same one twice is a replay (against whoever lacks the token: one
//! who has it can send anything), and dated by `updatedAt`.
//! `Acknowledge`, `TakeOwnership` and `AssignOwnership` put the user who answers the alert on
//! call for it; `Close` and `Delete` end it.
//!
//! It must not: trust an unsigned delivery.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::sync::{FetchError, Source};
use super::webhook::{self, WebhookError};
use super::{Change, Mapping, Roster};
use crate::configuration::OpsgenieSettings;
use crate::domain::OnCall as Fact;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    action: String,
    alert: Alert,
    #[serde(default)]
    integration_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Alert {
    alert_id: String,
    #[serde(default)]
    updated_at: Option<u64>,
    #[serde(default)]
    created_at: Option<u64>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    entity: Option<String>,
    #[serde(default)]
    teams: Vec<String>,
}

/// Opsgenie times come in milliseconds (`createdAt`) or nanoseconds (`updatedAt`).
fn unix_seconds(t: u64) -> i64 {
    let secs = if t >= 100_000_000_000_000 {
        t / 1_000_000_000
    } else if t >= 100_000_000_000 {
        t / 1000
    } else {
        t
    };
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// Checks the `X-Breakglass-Token` custom header.
pub fn verify(token: Option<&str>, secrets: &[Vec<u8>]) -> Result<(), WebhookError> {
    const NAME: &str = "X-Breakglass-Token";
    if !webhook::verify_token(webhook::required(token, NAME)?, secrets) {
        return Err(webhook::unmatched(NAME));
    }
    Ok(())
}

/// Reads a delivery `verify` passed.
pub fn parse(
    body: &[u8],
    map: &HashMap<String, String>,
) -> Result<webhook::Delivery, WebhookError> {
    let d: Delivery = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not an Opsgenie alert webhook: {e}")))?;
    let a = d.alert;
    let stamp = a.updated_at.or(a.created_at).ok_or_else(|| {
        WebhookError::Malformed("the alert has neither updatedAt nor createdAt".into())
    })?;
    let at = unix_seconds(stamp);
    let delivery = format!("opsgenie:{}:{}:{stamp}", a.alert_id, d.action);
    let mut unmapped = Vec::new();
    let at_secs = u64::try_from(at).unwrap_or(0);
    let change = match d.action.as_str() {
        "Create" | "Acknowledge" | "TakeOwnership" | "AssignOwnership" | "UnAcknowledge" => {
            // who answers: the new owner (never the user who assigned it: without an owner,
            // no one), or the user who acted
            let who = match d.action.as_str() {
                "AssignOwnership" => a.owner.clone(),
                "Create" | "UnAcknowledge" => None,
                _ => a.username.clone(),
            };
            let mut responders = Vec::new();
            if let Some(who) = who {
                match Mapping::resolve(map, &[who.as_str()]) {
                    Some(p) => responders.push(p),
                    None => unmapped.push(who),
                }
            }
            Some(Change::Page {
                source: "opsgenie".into(),
                id: a.alert_id,
                service: a
                    .teams
                    .first()
                    .cloned()
                    .or(a.entity.filter(|e| !e.is_empty()))
                    .or(d.integration_name),
                responders,
                // the users answering an alert accumulate
                replace: false,
                acknowledged: match d.action.as_str() {
                    "Acknowledge" => Some(true),
                    "UnAcknowledge" => Some(false),
                    _ => None,
                },
                at: at_secs,
            })
        }
        "Close" | "Delete" => Some(Change::Resolved {
            source: "opsgenie".into(),
            id: a.alert_id,
            at: at_secs,
        }),
        _ => None,
    };
    Ok(webhook::Delivery {
        id: delivery,
        at,
        change,
        unmapped,
    })
}

/// The schedules' on-call sync: `GET /v2/schedules/{name}/on-calls?flat=true` for each
/// configured schedule (every enabled schedule, from `GET /v2/schedules`, when none is).
pub struct OnCalls {
    pub url: String,
    pub schedules: Vec<String>,
}

#[derive(Deserialize)]
struct Schedules {
    data: Vec<Schedule>,
}

#[derive(Deserialize)]
struct Schedule {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct OnCallsAnswer {
    data: OnCallsData,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnCallsData {
    #[serde(rename = "_parent")]
    parent: Option<Parent>,
    #[serde(default)]
    on_call_recipients: Vec<String>,
}

#[derive(Deserialize)]
struct Parent {
    name: String,
}

impl OnCalls {
    pub fn new(s: &OpsgenieSettings) -> OnCalls {
        OnCalls {
            url: s.api_url.trim_end_matches('/').to_string(),
            schedules: s.schedules.clone(),
        }
    }

    /// A GET of the API path `segments` (each escaped as one path segment).
    fn get(
        &self,
        http: &reqwest::Client,
        key: &str,
        segments: &[&str],
    ) -> Result<reqwest::RequestBuilder, FetchError> {
        let mut url = reqwest::Url::parse(&self.url)
            .map_err(|e| FetchError::Failed(format!("opsgenie.api_url: {e}")))?;
        url.path_segments_mut()
            .map_err(|_| FetchError::Failed("opsgenie.api_url cannot be a base".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(http
            .get(url)
            .header("Authorization", format!("GenieKey {key}")))
    }
}

impl Source for OnCalls {
    fn name(&self) -> &'static str {
        "opsgenie"
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        key: &str,
        map: &HashMap<String, String>,
        now: u64,
        max_retry_after: Duration,
    ) -> Result<Roster, FetchError> {
        let schedules = if self.schedules.is_empty() {
            let all: Schedules =
                super::sync::send(self.get(http, key, &["v2", "schedules"])?, max_retry_after)
                    .await?;
            all.data
                .into_iter()
                .filter(|s| s.enabled)
                .map(|s| s.name)
                .collect()
        } else {
            self.schedules.clone()
        };
        let mut roster = Roster {
            synced_at: now,
            ..Roster::default()
        };
        for schedule in &schedules {
            let request = self
                .get(http, key, &["v2", "schedules", schedule, "on-calls"])?
                .query(&[("scheduleIdentifierType", "name"), ("flat", "true")]);
            let answer: OnCallsAnswer = super::sync::send(request, max_retry_after).await?;
            let service = answer
                .data
                .parent
                .map(|p| p.name)
                .unwrap_or_else(|| schedule.clone());
            for who in &answer.data.on_call_recipients {
                let Some(principal) = Mapping::resolve(map, &[who.as_str()]) else {
                    continue;
                };
                roster.on_call.entry(principal).or_insert(Fact::scheduled(
                    "opsgenie",
                    Some(service.clone()),
                    None,
                    None,
                ));
            }
        }
        Ok(roster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responders(action: &str, owner: Option<&str>) -> Vec<String> {
        let map: HashMap<String, String> = [("ana@h.example", "ST1ANA"), ("bo@h.example", "ST1BO")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = serde_json::json!({ "action": action, "alert": { "alertId": "a1",
            "updatedAt": 1_700_000_000_000_000_000u64, "username": "ana@h.example", "owner": owner } });
        match parse(&serde_json::to_vec(&body).unwrap(), &map)
            .unwrap()
            .change
        {
            Some(Change::Page { responders, .. }) => responders,
            _ => panic!("not a page"),
        }
    }

    #[test]
    fn an_assigned_alert_pages_its_new_owner_never_the_user_who_assigned_it() {
        assert_eq!(
            responders("AssignOwnership", Some("bo@h.example")),
            ["ST1BO"]
        );
        assert!(responders("AssignOwnership", None).is_empty());
        assert_eq!(responders("TakeOwnership", None), ["ST1ANA"]);
    }
}
