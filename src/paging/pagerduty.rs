//! PagerDuty: Webhooks v3 (`incident.triggered`, `.acknowledged`, `.reassigned` page the
//! incident's assignees; `.resolved` releases them) and `GET /oncalls` for the sync.
//!
//! `incident.reopened`, `.escalated`, `.delegated` and `.unacknowledged` page the assignees
//! they name too. A v3 delivery is `{"event": {id, event_type, resource_type, occurred_at, data}}`, signed in
//! `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the raw body>[,v1=...]` (one per active
//! secret while a secret rotates). The event id names the delivery (replays), `occurred_at`
//! dates it.
//!
//! It must not: trust an unsigned delivery.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use super::sync::{FetchError, Source};
use super::webhook::{self, WebhookError};
use super::{Change, Mapping, Roster};
use crate::configuration::PagerDutySettings;
use crate::domain::OnCall as Fact;

#[derive(Deserialize)]
struct Delivery {
    event: Event,
}

#[derive(Deserialize)]
struct Event {
    id: String,
    event_type: String,
    occurred_at: String,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Deserialize)]
struct IncidentData {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    service: Option<Reference>,
    #[serde(default)]
    assignees: Vec<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    id: String,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// Checks `X-PagerDuty-Signature` (nothing else is read before it passes).
pub fn verify(
    signature: Option<&str>,
    body: &[u8],
    secrets: &[Vec<u8>],
) -> Result<(), WebhookError> {
    const NAME: &str = "X-PagerDuty-Signature";
    if !webhook::verify_v1(webhook::required(signature, NAME)?, &[body], secrets) {
        return Err(webhook::unmatched(NAME));
    }
    Ok(())
}

/// Reads a delivery `verify` passed. `map` turns user ids into principals.
pub fn parse(
    body: &[u8],
    map: &HashMap<String, String>,
) -> Result<webhook::Delivery, WebhookError> {
    let d: Delivery = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("not a PagerDuty v3 webhook: {e}")))?;
    let e = d.event;
    let occurred_at = webhook::rfc3339(&e.occurred_at)?;
    let delivery = format!("pagerduty:{}", e.id);
    let incident = || -> Result<IncidentData, WebhookError> {
        serde_json::from_value(e.data.clone())
            .map_err(|err| WebhookError::Malformed(format!("{}: data: {err}", e.event_type)))
    };
    let mut unmapped = Vec::new();
    let change = match e.event_type.as_str() {
        "incident.triggered"
        | "incident.acknowledged"
        | "incident.reassigned"
        | "incident.escalated"
        | "incident.delegated"
        | "incident.reopened"
        | "incident.unacknowledged" => {
            let i = incident()?;
            let mut responders = Vec::new();
            for a in &i.assignees {
                let ids: Vec<&str> = [Some(a.id.as_str()), a.email.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                match Mapping::resolve(map, &ids) {
                    Some(p) if !responders.contains(&p) => responders.push(p),
                    Some(_) => {}
                    None => unmapped.push(a.id.clone()),
                }
            }
            Some(Change::Page {
                source: "pagerduty".into(),
                id: i.id,
                service: i.service.and_then(|s| s.summary.or(Some(s.id))),
                responders,
                replace: true,
                acknowledged: Some(
                    e.event_type == "incident.acknowledged"
                        || i.status.as_deref() == Some("acknowledged"),
                ),
                at: u64::try_from(occurred_at).unwrap_or(0),
            })
        }
        "incident.resolved" => Some(Change::Resolved {
            source: "pagerduty".into(),
            id: incident()?.id,
            at: u64::try_from(occurred_at).unwrap_or(0),
        }),
        _ => None,
    };
    Ok(webhook::Delivery {
        id: delivery,
        at: occurred_at,
        change,
        unmapped,
    })
}

/// The `GET /oncalls` sync.
pub struct OnCalls {
    pub url: String,
    pub schedule_ids: Vec<String>,
    pub escalation_policy_ids: Vec<String>,
}

#[derive(Deserialize)]
struct Page {
    oncalls: Vec<Entry>,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    limit: Option<u64>,
}

#[derive(Deserialize)]
struct Entry {
    user: Reference,
    #[serde(default)]
    schedule: Option<Reference>,
    #[serde(default)]
    escalation_policy: Option<Reference>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    end: Option<String>,
}

const PAGE: u64 = 100;

impl OnCalls {
    pub fn new(s: &PagerDutySettings) -> OnCalls {
        OnCalls {
            url: s.api_url.trim_end_matches('/').to_string(),
            schedule_ids: s.schedule_ids.clone(),
            escalation_policy_ids: s.escalation_policy_ids.clone(),
        }
    }
}

impl Source for OnCalls {
    fn name(&self) -> &'static str {
        "pagerduty"
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        key: &str,
        map: &HashMap<String, String>,
        now: u64,
        max_retry_after: Duration,
    ) -> Result<Roster, FetchError> {
        let mut roster = Roster {
            synced_at: now,
            ..Roster::default()
        };
        let mut offset = 0u64;
        loop {
            let mut query: Vec<(&str, String)> = vec![
                ("limit", PAGE.to_string()),
                ("offset", offset.to_string()),
                ("include[]", "users".into()),
                ("time_zone", "UTC".into()),
            ];
            query.extend(
                self.schedule_ids
                    .iter()
                    .map(|s| ("schedule_ids[]", s.clone())),
            );
            query.extend(
                self.escalation_policy_ids
                    .iter()
                    .map(|s| ("escalation_policy_ids[]", s.clone())),
            );
            let request = http
                .get(format!("{}/oncalls", self.url))
                .query(&query)
                .header("Authorization", format!("Token token={key}"))
                .header("Accept", "application/vnd.pagerduty+json;version=2");
            let page: Page = super::sync::send(request, max_retry_after).await?;
            for e in &page.oncalls {
                let since = e.start.as_deref().map(webhook::rfc3339).transpose();
                let until = e.end.as_deref().map(webhook::rfc3339).transpose();
                let (Ok(since), Ok(until)) = (since, until) else {
                    return Err(FetchError::Failed(format!(
                        "on-call entry of {} has a bad start or end",
                        e.user.id
                    )));
                };
                let since = since.map(|t| u64::try_from(t).unwrap_or(0));
                let until = until.map(|t| u64::try_from(t).unwrap_or(0));
                if since.is_some_and(|s| s > now) || until.is_some_and(|u| u <= now) {
                    continue;
                }
                let ids: Vec<&str> = [Some(e.user.id.as_str()), e.user.email.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
                let Some(principal) = Mapping::resolve(map, &ids) else {
                    continue;
                };
                let service = e
                    .schedule
                    .as_ref()
                    .or(e.escalation_policy.as_ref())
                    .and_then(|r| r.summary.clone().or(Some(r.id.clone())));
                keep_longest(
                    &mut roster.on_call,
                    principal,
                    Fact::scheduled("pagerduty", service, since, until),
                );
            }
            if !page.more || page.oncalls.is_empty() {
                return Ok(roster);
            }
            offset += page.limit.unwrap_or(PAGE).max(page.oncalls.len() as u64);
        }
    }
}

/// Adds `fact` to `on_call` for `principal`, unless they are there on call for longer already:
/// a user on call through several entries (an escalation until 10:05, a schedule until 18:00)
/// is on call until the last of them ends (an entry without an end, for good).
fn keep_longest(
    on_call: &mut std::collections::HashMap<String, Fact>,
    principal: String,
    fact: Fact,
) {
    let end = |f: &Fact| f.until.unwrap_or(u64::MAX);
    match on_call.get(&principal) {
        Some(held) if end(held) >= end(&fact) => {}
        _ => {
            on_call.insert(principal, fact);
        }
    }
}

#[cfg(test)]
mod longest_tests {
    use super::*;

    #[test]
    fn a_user_on_call_through_several_entries_is_on_call_until_the_last_ends() {
        let mut on_call = std::collections::HashMap::new();
        let until = |u: Option<u64>| Fact::scheduled("pagerduty", None, Some(100), u);
        for (fact, expected) in [
            (until(Some(105)), Some(105)),
            (until(Some(1_800)), Some(1_800)),
            (until(Some(900)), Some(1_800)),
            (until(None), None),
            (until(Some(5_000)), None),
        ] {
            keep_longest(&mut on_call, "ST1".into(), fact);
            assert_eq!(on_call["ST1"].until, expected);
        }
    }
}
