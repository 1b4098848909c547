//! Paging integrations end to end: PagerDuty, Opsgenie and generic webhooks put clinicians on
//! call and take them off (and anything forged, stale, replayed or malformed changes nothing),
//! and the on-call syncs against a local **stand-in** for the PagerDuty and Opsgenie REST
//! APIs. The stand-in is not PagerDuty or Opsgenie (they cannot be reached from here): it
//! replays the request/response shapes recorded from their public API documentation
//! (`tests/fixtures/paging/`, sources in its README), with the on-call times moved to now.
//!
//! Webhook signatures are computed here with the RustCrypto `hmac` crate, independently of the
//! service's own verification (ring), and checked against vectors computed outside this
//! project (the fixtures' README).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use breakglass::paging::{pagerduty, Change};
use hmac::{Hmac, Mac};
use serde_json::{json, Value as Json};

fn fixture_path(name: &str) -> PathBuf {
    repo().join("tests/fixtures/paging").join(name)
}

fn fixture(name: &str) -> Json {
    serde_json::from_slice(&std::fs::read(fixture_path(name)).unwrap()).unwrap()
}

/// HMAC-SHA256, hex, as the PagerDuty docs define the v1 signature.
fn hmac_hex(secret: &str, parts: &[&[u8]]) -> String {
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

fn rfc3339(unix: u64) -> String {
    jiff::Timestamp::from_second(unix as i64)
        .unwrap()
        .to_string()
}

async fn deliver(
    app: &breakglass::startup::Application,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Json) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}{path}", app.api_addr))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Json::Null))
}

/// A PagerDuty delivery of a recorded fixture, dated `at`, signed with `secret`.
fn pagerduty_body(name: &str, at: u64) -> Vec<u8> {
    let mut v = fixture(name);
    v["event"]["occurred_at"] = json!(rfc3339(at));
    serde_json::to_vec_pretty(&v).unwrap()
}

fn pd_sig(secrets: &[&str], body: &[u8]) -> Vec<(&'static str, String)> {
    let sig = secrets
        .iter()
        .map(|s| format!("v1={}", hmac_hex(s, &[body])))
        .collect::<Vec<_>>()
        .join(",");
    vec![("x-pagerduty-signature", sig)]
}

/// A refused delivery: what, its headers and body, the status and code expected.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [u8], u16, &'a str);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn principal_of(demo: &Json, role: &str) -> String {
    provider(demo, role)["principal"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A break-glass request by the demo clinician of `role`; the answer.
async fn break_glass(env: &Env, role: &str, nonce: u64) -> (u16, Json) {
    break_glass_at(&env.app, &env.demo, role, nonce).await
}

async fn break_glass_at(
    app: &breakglass::startup::Application,
    demo: &Json,
    role: &str,
    nonce: u64,
) -> (u16, Json) {
    let key = provider(demo, role)["private_key"]
        .as_str()
        .unwrap()
        .to_string();
    let body = signed(&key, patient(demo, true), &["allergies"], nonce, now());
    post(app, &body).await
}

#[test]
fn pagerduty_signatures_agree_with_independent_vectors_and_rotation() {
    // computed outside this project (the fixtures' README): HMAC-SHA256 of the file bytes
    let vectors = [
        (
            "pagerduty-incident.triggered.json",
            "64ad51ab56f47f45d1884ae311795c7ad3aa360372d627521f1d472f4b038a10",
            "979283bcfe1396ec712a312232530bacf5ab58309d824b24cc4a93fc8ec583ab",
        ),
        (
            "pagerduty-incident.resolved.json",
            "bd292bb672b140f79609fee81bd782a4824b307e158831bf9f4eeb77fe3ff930",
            "3ac10c2760a3f1162b00f76a8f52d22bc3e8458de04d170ebf56341d4352e6e1",
        ),
    ];
    let map: HashMap<String, String> = [(
        "pxpgf42".to_string(),
        "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM".to_string(),
    )]
    .into();
    let new = b"fixture-secret-new".to_vec();
    let old = b"fixture-secret-old".to_vec();
    for (file, sig_new, sig_old) in vectors {
        let body = std::fs::read(fixture_path(file)).unwrap();
        assert_eq!(
            hmac_hex("fixture-secret-new", &[&body]),
            sig_new,
            "{file}: the test HMAC agrees"
        );
        // one secret configured, the other's signature alone: refused
        let only_old = pagerduty::verify(
            Some(&format!("v1={sig_old}")),
            &body,
            std::slice::from_ref(&new),
        );
        assert!(only_old.is_err(), "{file}");
        // rotation: both signatures sent, either secret configured
        let both = format!("v1={sig_new},v1={sig_old}");
        for secrets in [
            vec![new.clone()],
            vec![old.clone()],
            vec![old.clone(), new.clone()],
        ] {
            pagerduty::verify(Some(&both), &body, &secrets).unwrap();
            let p = pagerduty::parse(&body, &map).unwrap();
            match (file, p.change) {
                (
                    f,
                    Some(Change::Page {
                        id,
                        responders,
                        acknowledged,
                        replace,
                        ..
                    }),
                ) if f.contains("triggered") => {
                    assert_eq!(id, "PGR0VU2");
                    assert_eq!(
                        responders,
                        vec!["ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM"]
                    );
                    assert_eq!(acknowledged, Some(false));
                    assert!(replace, "PagerDuty's assignees are the whole set");
                }
                (f, Some(Change::Resolved { id, .. })) if f.contains("resolved") => {
                    assert_eq!(id, "PGR0VU2")
                }
                (f, other) => panic!("{f}: {other:?}"),
            }
        }
        // one byte changed: refused
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert!(pagerduty::verify(Some(&both), &tampered, std::slice::from_ref(&new)).is_err());
    }
}

/// A service whose on-call comes only from paging (no roster file), with an empty mapping
/// file the test fills once the demo identities are known.
async fn paging_env(
    configure: impl FnOnce(&mut breakglass::configuration::Settings, &Path),
) -> (Env, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let env = setup(|s| {
        s.oncall.roster = None;
        s.oncall.mapping = Some(write(&d, "responders.toml", "[responders]\n"));
        configure(s, &d);
    })
    .await;
    (env, dir)
}

fn map_responders(dir: &Path, env: &Env, pairs: &[(&str, &str)]) {
    let mut text = String::from("[responders]\n");
    for (id, role) in pairs {
        text.push_str(&format!("{:?} = {:?}\n", id, principal_of(&env.demo, role)));
    }
    write(dir, "responders.toml", &text);
}

async fn access_view(env: &Env, body: &Json) -> Json {
    let (status, view) = access_with_token(
        &env.app,
        body["access_id"].as_str().unwrap(),
        body["access_token"].as_str().unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pagerduty_incident_puts_its_assignee_on_call_until_it_is_resolved() {
    let (env, dir) = paging_env(|s, d| {
        s.oncall.pagerduty.webhook_secrets_file =
            Some(write(d, "pd-secrets", "old-secret\nnew-secret\n"));
    })
    .await;
    map_responders(
        dir.path(),
        &env,
        &[("PXPGF42", "physician"), ("PAM4FGS", "nurse")],
    );
    let app = &env.app;
    let pd = "/v1/paging/pagerduty";

    // no incident yet: no one is on call
    let (status, body) = break_glass(&env, "physician", 1).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );

    // triggered, signed with both secrets (PagerDuty during a rotation)
    let t = now();
    let triggered = pagerduty_body("pagerduty-incident.triggered.json", t);
    let (status, body) = deliver(
        app,
        pd,
        &pd_sig(&["old-secret", "new-secret"], &triggered),
        &triggered,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["change"], "on-call");
    let (status, body) = break_glass(&env, "physician", 2).await;
    assert_eq!(status, 201, "{body}");
    let view = access_view(&env, &body).await;
    assert_eq!(view["on_call"]["source"], "pagerduty", "{view}");
    assert_eq!(
        view["on_call"]["incident"], "PGR0VU2",
        "the incident is kept with the access"
    );
    assert_eq!(view["on_call"]["service"], "API Service");
    assert_eq!(view["on_call"]["acknowledged"], false);

    // acknowledged, signed with the new secret alone
    let acked = pagerduty_body("pagerduty-incident.acknowledged.json", t + 1);
    let (status, body) = deliver(app, pd, &pd_sig(&["new-secret"], &acked), &acked).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = break_glass(&env, "physician", 3).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        access_view(&env, &body).await["on_call"]["acknowledged"],
        true
    );

    // reassigned to the nurse: the physician is off call, the nurse on
    let reassigned = pagerduty_body("pagerduty-incident.reassigned.json", t + 2);
    let (status, body) = deliver(app, pd, &pd_sig(&["new-secret"], &reassigned), &reassigned).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = break_glass(&env, "physician", 4).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "nurse", 5).await;
    assert_eq!(status, 201, "{body}");

    // resolved: no one is on call through it
    let resolved = pagerduty_body("pagerduty-incident.resolved.json", t + 3);
    let (status, body) = deliver(app, pd, &pd_sig(&["old-secret"], &resolved), &resolved).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("off-call")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "nurse", 6).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );

    // forged, stale, replayed, malformed: 4xx, and no one is put on call
    let fresh = pagerduty_body("pagerduty-incident.acknowledged.json", now());
    let mut other_event = fixture("pagerduty-incident.triggered.json");
    other_event["event"]["id"] = json!("01DX3MC2K7V9Q3M6X1D8R4GXXX");
    other_event["event"]["occurred_at"] = json!(rfc3339(now() - 3600));
    let stale = serde_json::to_vec(&other_event).unwrap();
    let mut future_event = other_event.clone();
    future_event["event"]["occurred_at"] = json!(rfc3339(now() + 3600));
    let future = serde_json::to_vec(&future_event).unwrap();
    let malformed = br#"{"event": {"id": "x", "event_type": "incident.triggered""#.to_vec();
    let oversized = vec![b' '; 256 * 1024 + 1];
    let no_data = serde_json::to_vec(&json!({"event": {"id": "y", "event_type": "incident.triggered", "occurred_at": rfc3339(now()), "data": {"assignees": "PXPGF42"}}})).unwrap();
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            pd_sig(&["not-the-secret"], &fresh),
            &fresh,
            401,
            "bad-webhook-signature",
        ),
        ("no signature", vec![], &fresh, 401, "bad-webhook-signature"),
        (
            "signature of other bytes",
            pd_sig(&["new-secret"], &triggered),
            &fresh,
            401,
            "bad-webhook-signature",
        ),
        (
            "an hour old",
            pd_sig(&["new-secret"], &stale),
            &stale,
            401,
            "stale-webhook",
        ),
        (
            "an hour ahead",
            pd_sig(&["new-secret"], &future),
            &future,
            401,
            "stale-webhook",
        ),
        (
            "replayed",
            pd_sig(&["new-secret"], &triggered),
            &triggered,
            409,
            "replayed-webhook",
        ),
        (
            "replayed reassignment",
            pd_sig(&["new-secret"], &reassigned),
            &reassigned,
            409,
            "replayed-webhook",
        ),
        (
            "malformed JSON",
            pd_sig(&["new-secret"], &malformed),
            &malformed,
            400,
            "malformed-webhook",
        ),
        (
            "not an incident",
            pd_sig(&["new-secret"], &no_data),
            &no_data,
            400,
            "malformed-webhook",
        ),
        (
            "over 256 KiB",
            pd_sig(&["new-secret"], &oversized),
            &oversized,
            413,
            "webhook-too-large",
        ),
    ];
    for (what, headers, body, status, code) in &cases {
        let (s, b) = deliver(app, pd, headers, body).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (*status, Some(*code)),
            "{what}: {b}"
        );
        assert!(
            b["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: a human sentence"
        );
    }
    for (i, role) in ["physician", "nurse"].iter().enumerate() {
        let (status, body) = break_glass(&env, role, 10 + i as u64).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("not-on-call")),
            "{role} after the refused webhooks: {body}"
        );
    }
    let m = text(app, "/metrics").await;
    assert_eq!(
        crate::support::metric(
            &m,
            r#"breakglass_paging_webhooks_total{source="pagerduty",outcome="accepted"}"#
        ),
        Some(4.0),
        "{m}"
    );
    assert_eq!(
        crate::support::metric(
            &m,
            r#"breakglass_paging_webhooks_total{source="pagerduty",outcome="replayed-webhook"}"#
        ),
        Some(2.0)
    );
    assert!(
        crate::support::metric(&m, r#"breakglass_refusals_total{code="not-on-call"}"#)
            .is_some_and(|n| n >= 5.0)
    );

    // a delivery dated before the resolve (late, or out of order) does not bring it back
    let mut late = fixture("pagerduty-incident.acknowledged.json");
    late["event"]["id"] = json!("01DX3MC2K7V9Q3M6X1D8R4LATE");
    late["event"]["occurred_at"] = json!(rfc3339(t + 2));
    let late = serde_json::to_vec(&late).unwrap();
    let (status, body) = deliver(app, pd, &pd_sig(&["new-secret"], &late), &late).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("superseded")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "physician", 12).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    // nor one from the resolve's own second (times are whole seconds: it may have come first)
    let mut tie = fixture("pagerduty-incident.acknowledged.json");
    tie["event"]["id"] = json!("01DX3MC2K7V9Q3M6X1D8R4TIE0");
    tie["event"]["occurred_at"] = json!(rfc3339(t + 3));
    let tie = serde_json::to_vec(&tie).unwrap();
    let (status, body) = deliver(app, pd, &pd_sig(&["new-secret"], &tie), &tie).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("superseded")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "physician", 13).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );

    // a restart forgets nothing: an open incident still counts, a replay is still one
    let mut second = fixture("pagerduty-incident.triggered.json");
    second["event"]["id"] = json!("01DX3MC2K7V9Q3M6X1D8R4SEC0");
    second["event"]["occurred_at"] = json!(rfc3339(now()));
    second["event"]["data"]["id"] = json!("PSECOND");
    let second = serde_json::to_vec(&second).unwrap();
    let (status, body) = deliver(app, pd, &pd_sig(&["new-secret"], &second), &second).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("on-call")),
        "{body}"
    );
    let Env {
        app,
        devnet,
        demo,
        dir: env_dir,
    } = env;
    app.stop().await;
    let app = crate::support::app(&devnet.rpc, &env_dir.path().join("service"), |s| {
        s.oncall.roster = None;
        s.oncall.mapping = Some(dir.path().join("responders.toml"));
        s.oncall.pagerduty.webhook_secrets_file = Some(dir.path().join("pd-secrets"));
    })
    .await;
    devnet.observe(app.observer_addr).await;
    eventually("ready after the restart", SECS, async || {
        ready(&app).await.then_some(())
    })
    .await;
    let (status, body) = break_glass_at(&app, &demo, "physician", 13).await;
    assert_eq!(
        status, 201,
        "the open incident survived the restart: {body}"
    );
    let (status, body) = break_glass_at(&app, &demo, "nurse", 14).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    for replay in [&triggered, &second] {
        let (s, b) = deliver(&app, pd, &pd_sig(&["new-secret"], replay), replay).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (409, Some("replayed-webhook")),
            "after a restart: {b}"
        );
    }
    app.stop().await;
}

/// An Opsgenie delivery of a recorded fixture, updated at `at` (Opsgenie's nanoseconds).
fn opsgenie_body(name: &str, at: u64, username: &str) -> Vec<u8> {
    let mut v = fixture(name);
    v["alert"]["updatedAt"] = json!(at * 1_000_000_000 + 123);
    v["alert"]["username"] = json!(username);
    serde_json::to_vec(&v).unwrap()
}

fn generic_headers(secret: &str, ts: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    vec![
        ("x-breakglass-timestamp", ts.clone()),
        (
            "x-breakglass-signature",
            format!("v1={}", hmac_hex(secret, &[ts.as_bytes(), b".", body])),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opsgenie_and_generic_webhooks_put_responders_on_call_and_refuse_forgeries() {
    let (env, dir) = paging_env(|s, d| {
        s.oncall.opsgenie.webhook_secrets_file =
            Some(write(d, "og-secrets", "og-token-1\nog-token-2\n"));
        s.oncall.webhook.secrets_file = Some(write(d, "hook-secrets", "hook-secret\n"));
        s.oncall.webhook_window_secs = 300;
    })
    .await;
    map_responders(
        dir.path(),
        &env,
        &[
            ("fili@ifountain.com", "physician"),
            ("pager-77", "paramedic"),
        ],
    );
    let app = &env.app;
    let og = "/v1/paging/opsgenie";
    let hook = "/v1/paging/webhook";
    let token = |t: &str| vec![("x-breakglass-token", t.to_string())];

    // Opsgenie: created (no one answers yet), then acknowledged by the physician
    let t = now();
    let created = opsgenie_body("opsgenie-create.json", t - 291, "System");
    let (status, body) = deliver(app, og, &token("og-token-2"), &created).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("no-responder")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "physician", 1).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    // (dated near the window's far end: the close below, dated after it, comes late)
    let acked = opsgenie_body("opsgenie-acknowledge.json", t - 290, "fili@ifountain.com");
    let (status, body) = deliver(app, og, &token("og-token-1"), &acked).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("on-call")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "physician", 2).await;
    assert_eq!(status, 201, "{body}");
    let view = access_view(&env, &body).await;
    assert_eq!(view["on_call"]["source"], "opsgenie", "{view}");
    assert_eq!(
        view["on_call"]["incident"],
        "052652ac-5d1c-464a-812a-7dd18bbfba8c"
    );
    assert_eq!(view["on_call"]["acknowledged"], true);

    // Opsgenie forgeries and replays change nothing
    // a page an hour old is refused; a close an hour ahead too
    let stale = opsgenie_body("opsgenie-acknowledge.json", t - 3600, "fili@ifountain.com");
    let ahead = opsgenie_body("opsgenie-close.json", t + 3600, "fili@ifountain.com");
    let close = opsgenie_body("opsgenie-close.json", t - 289, "fili@ifountain.com");
    let cases: Vec<Case> = vec![
        ("no token", vec![], &close, 401, "bad-webhook-signature"),
        (
            "wrong token",
            token("og-token-3"),
            &close,
            401,
            "bad-webhook-signature",
        ),
        (
            "an hour old",
            token("og-token-1"),
            &stale,
            401,
            "stale-webhook",
        ),
        (
            "an hour ahead",
            token("og-token-1"),
            &ahead,
            401,
            "stale-webhook",
        ),
        (
            "replayed",
            token("og-token-1"),
            &acked,
            409,
            "replayed-webhook",
        ),
        (
            "malformed",
            token("og-token-1"),
            b"{\"action\": ",
            400,
            "malformed-webhook",
        ),
        (
            "no alert id",
            token("og-token-1"),
            br#"{"action": "Close", "alert": {"updatedAt": 1}}"#,
            400,
            "malformed-webhook",
        ),
    ];
    for (what, headers, body, status, code) in &cases {
        let (s, b) = deliver(app, og, headers, body).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (*status, Some(*code)),
            "opsgenie {what}: {b}"
        );
    }
    // credentials carried in headers are checked before any of the body is read: a post
    // without them whose body never comes is answered at once (before, up to 256 KiB was read
    // first, for anyone)
    for path in [og, hook] {
        let mut stalled = stalled_post(app.api_addr, path, 1 << 10, b"{").await;
        assert_eq!(
            answered(&mut stalled, std::time::Duration::from_secs(2)).await,
            Some(401),
            "{path}"
        );
    }
    // and one that carries a signature (anyone can write one) whose body never comes is let go
    // after ten seconds (before, it held its connection and its buffer for good)
    let mut stalled = stalled_post_with(
        app.api_addr,
        hook,
        &[
            ("Content-Type", "application/json"),
            ("X-Breakglass-Timestamp", "1"),
            ("X-Breakglass-Signature", "v1=00"),
        ],
        1 << 10,
        b"{",
    )
    .await;
    let waited = std::time::Instant::now();
    assert_eq!(
        answered(&mut stalled, std::time::Duration::from_secs(20)).await,
        Some(408)
    );
    assert!(
        waited.elapsed() >= std::time::Duration::from_secs(8),
        "{:?}",
        waited.elapsed()
    );
    let (status, body) = break_glass(&env, "physician", 3).await;
    assert_eq!(
        status, 201,
        "the refused closes left the physician on call: {body}"
    );
    // closed: off call, though the close comes after the window (its sender retrying through
    // an outage of ours, say): refused, the physician stayed on call until the alert aged out
    while now() <= t + 12 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, body) = deliver(app, og, &token("og-token-1"), &close).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("off-call")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "physician", 4).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );

    // the generic webhook: on call until a time, for an incident, by paging id
    let shift = serde_json::to_vec(&json!({
        "responder": "pager-77",
        "on_call_until": rfc3339(now() + 3600),
        "incident": "INC-2041",
        "service": "ambulance-dispatch",
    }))
    .unwrap();
    let ts = now();
    let good = generic_headers("hook-secret", ts, &shift);
    let unknown =
        serde_json::to_vec(&json!({"responder": "nobody", "on_call_until": rfc3339(now() + 60)}))
            .unwrap();
    let bad_until =
        serde_json::to_vec(&json!({"responder": "pager-77", "on_call_until": "tomorrow"})).unwrap();
    // on call for good through one delivery (a mistaken or stolen one)
    let for_good = serde_json::to_vec(
        &json!({"responder": "pager-77", "on_call_until": rfc3339(now() + 8 * 86_400)}),
    )
    .unwrap();
    let cases: Vec<Case> = vec![
        ("no signature", vec![], &shift, 401, "bad-webhook-signature"),
        (
            "wrong secret",
            generic_headers("other", ts, &shift),
            &shift,
            401,
            "bad-webhook-signature",
        ),
        (
            "re-dated (signature of another time)",
            vec![
                good[0].clone(),
                (
                    "x-breakglass-signature",
                    generic_headers("hook-secret", ts - 1, &shift)[1].1.clone(),
                ),
            ],
            &shift,
            401,
            "bad-webhook-signature",
        ),
        (
            "old",
            generic_headers("hook-secret", ts - 301, &shift),
            &shift,
            401,
            "stale-webhook",
        ),
        (
            "malformed",
            generic_headers("hook-secret", ts, b"[1,"),
            b"[1,",
            400,
            "malformed-webhook",
        ),
        (
            "unknown responder",
            generic_headers("hook-secret", ts, &unknown),
            &unknown,
            422,
            "unknown-responder",
        ),
        (
            "bad time",
            generic_headers("hook-secret", ts, &bad_until),
            &bad_until,
            400,
            "malformed-webhook",
        ),
        (
            "a shift of eight days",
            generic_headers("hook-secret", ts, &for_good),
            &for_good,
            422,
            "shift-too-long",
        ),
    ];
    for (what, headers, body, status, code) in &cases {
        let (s, b) = deliver(app, hook, headers, body).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (*status, Some(*code)),
            "generic {what}: {b}"
        );
    }
    let (status, body) = break_glass(&env, "paramedic", 5).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "nothing refused counted: {body}"
    );
    let (status, body) = deliver(app, hook, &good, &shift).await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("on-call")),
        "{body}"
    );
    let (status, body) = deliver(app, hook, &good, &shift).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("replayed-webhook")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "paramedic", 6).await;
    assert_eq!(status, 201, "{body}");
    let view = access_view(&env, &body).await;
    assert_eq!(view["on_call"]["source"], "webhook", "{view}");
    assert_eq!(view["on_call"]["incident"], "INC-2041");
    assert_eq!(view["on_call"]["service"], "ambulance-dispatch");
    // a shift that ended takes them off
    let ended =
        serde_json::to_vec(&json!({"responder": "pager-77", "on_call_until": rfc3339(now() - 1)}))
            .unwrap();
    let ended_at = now();
    let (status, body) = deliver(
        app,
        hook,
        &generic_headers("hook-secret", ended_at, &ended),
        &ended,
    )
    .await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("off-call")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "paramedic", 7).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    // a shift sent before the one that ended it, arriving late, does not bring it back
    let late = serde_json::to_vec(&json!({"responder": "pager-77", "on_call_until": rfc3339(now() + 3600), "incident": "INC-2041"})).unwrap();
    let (status, body) = deliver(
        app,
        hook,
        &generic_headers("hook-secret", ts - 10, &late),
        &late,
    )
    .await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("superseded")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "paramedic", 8).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    // nor one sent in the same second as the end: of the two, the one that ends first stands
    let tie = serde_json::to_vec(&json!({"responder": "pager-77", "on_call_until": rfc3339(now() + 3600), "incident": "INC-2042"})).unwrap();
    let (status, body) = deliver(
        app,
        hook,
        &generic_headers("hook-secret", ended_at, &tie),
        &tie,
    )
    .await;
    assert_eq!(
        (status, body["change"].as_str()),
        (202, Some("superseded")),
        "{body}"
    );
    let (status, body) = break_glass(&env, "paramedic", 9).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not-on-call")),
        "{body}"
    );
    // a source that is not configured is a clear 404, before any of the body is read (one
    // that never comes is answered at once; before, up to 256 KiB was read first, for anyone)
    let (status, body) = deliver(app, "/v1/paging/pagerduty", &[], b"{}").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("paging-source-not-configured")),
        "{body}"
    );
    let mut stalled = stalled_post(app.api_addr, "/v1/paging/pagerduty", 1 << 10, b"{").await;
    assert_eq!(
        answered(&mut stalled, std::time::Duration::from_secs(2)).await,
        Some(404)
    );
    // the secrets cannot be read: 503, the page not applied (the sender tries again); and
    // operators see both, as every other outcome
    let secrets = dir.path().join("hook-secrets");
    std::fs::remove_file(&secrets).unwrap();
    let (status, body) = deliver(
        app,
        hook,
        &generic_headers("hook-secret", now(), &tie),
        &tie,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("paging-unavailable")),
        "{body}"
    );
    let m = text(app, "/metrics").await;
    for (source, outcome, n) in [
        ("pagerduty", "paging-source-not-configured", 2.0),
        ("webhook", "paging-unavailable", 1.0),
    ] {
        let line =
            format!(r#"breakglass_paging_webhooks_total{{source="{source}",outcome="{outcome}"}}"#);
        assert_eq!(crate::support::metric(&m, &line), Some(n), "{line}\n{m}");
    }
}

// --- the stand-in for the PagerDuty and Opsgenie REST APIs (not the real services) ---

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Up,
    /// The next request gets `429` with `Retry-After: 1`, then up again.
    RateLimitOnce,
    /// Every request gets `503`.
    Down,
}

struct StandIn {
    pagerduty: Mode,
    opsgenie: Mode,
    /// (source, path and query, when, status)
    log: Vec<(&'static str, String, Instant, u16)>,
}

type Shared = web::Data<Mutex<StandIn>>;

/// The mode's answer, unless it is the recorded page.
fn gate(
    st: &Shared,
    source: &'static str,
    req: &HttpRequest,
    authorized: bool,
) -> Option<HttpResponse> {
    let mut s = st.lock().unwrap();
    let mode = if source == "pagerduty" {
        s.pagerduty
    } else {
        s.opsgenie
    };
    let (status, answer) =
        if !authorized {
            (
                401,
                Some(
                    HttpResponse::Unauthorized()
                        .json(json!({"error": {"message": "Unauthorized", "code": 2006}})),
                ),
            )
        } else {
            match mode {
                Mode::Up => (200, None),
                Mode::Down => (503, Some(HttpResponse::ServiceUnavailable().finish())),
                Mode::RateLimitOnce => {
                    if source == "pagerduty" {
                        s.pagerduty = Mode::Up
                    } else {
                        s.opsgenie = Mode::Up
                    }
                    // PagerDuty documents ratelimit-reset; Retry-After is the standard header
                    (429, Some(HttpResponse::TooManyRequests()
                    .insert_header(("Retry-After", "1"))
                    .insert_header(("ratelimit-reset", "1"))
                    .json(json!({"error": {"message": "Rate Limit Exceeded", "code": 2020}}))))
                }
            }
        };
    s.log
        .push((source, req.uri().to_string(), Instant::now(), status));
    answer
}

/// `GET /oncalls`: the recorded pages (limit 2), by offset, on call from an hour ago to an
/// hour from now.
async fn pd_oncalls(req: HttpRequest, st: Shared) -> HttpResponse {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let ok = h("authorization") == "Token token=pd-api-token"
        && h("accept") == "application/vnd.pagerduty+json;version=2";
    if let Some(answer) = gate(&st, "pagerduty", &req, ok) {
        return answer;
    }
    let q = web::Query::<HashMap<String, String>>::from_query(req.query_string()).unwrap();
    let mut page = match q.get("offset").map(String::as_str) {
        None | Some("0") => fixture("pagerduty-oncalls.page1.json"),
        Some("2") => fixture("pagerduty-oncalls.page2.json"),
        Some(other) => panic!("offset {other} was never recorded"),
    };
    for o in page["oncalls"].as_array_mut().unwrap() {
        o["start"] = json!(rfc3339(now() - 3600));
        o["end"] = json!(rfc3339(now() + 3600));
    }
    HttpResponse::Ok().json(page)
}

fn genie(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some("GenieKey og-api-key")
}

async fn og_schedules(req: HttpRequest, st: Shared) -> HttpResponse {
    if let Some(answer) = gate(&st, "opsgenie", &req, genie(&req)) {
        return answer;
    }
    HttpResponse::Ok().json(fixture("opsgenie-schedules.json"))
}

async fn og_oncalls(req: HttpRequest, st: Shared, name: web::Path<String>) -> HttpResponse {
    if let Some(answer) = gate(&st, "opsgenie", &req, genie(&req)) {
        return answer;
    }
    assert_eq!(
        name.as_str(),
        "ScheduleName",
        "only the enabled schedule is asked"
    );
    HttpResponse::Ok().json(fixture("opsgenie-oncalls.json"))
}

async fn stand_in() -> (String, Shared, actix_web::dev::ServerHandle) {
    let state = web::Data::new(Mutex::new(StandIn {
        pagerduty: Mode::Up,
        opsgenie: Mode::Up,
        log: Vec::new(),
    }));
    let s = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(s.clone())
            .route("/oncalls", web::get().to(pd_oncalls))
            .route("/v2/schedules", web::get().to(og_schedules))
            .route("/v2/schedules/{name}/on-calls", web::get().to(og_oncalls))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (url, state, handle)
}

async fn readyz(app: &breakglass::startup::Application) -> (u16, Json) {
    let res = reqwest::get(format!("http://{}/readyz", app.api_addr))
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_syncs_page_wait_out_rate_limits_and_fail_closed_after_the_grace_period() {
    let (url, standin, server) = stand_in().await;
    let grace = 8;
    let (env, dir) = paging_env(|s, d| {
        let pd = &mut s.oncall.pagerduty;
        pd.api_url = url.clone();
        pd.api_token_file = Some(write(d, "pd-api", "pd-api-token\n"));
        pd.sync.interval_ms = 300;
        pd.sync.grace_secs = grace;
        pd.sync.max_retry_after_secs = 5;
        let og = &mut s.oncall.opsgenie;
        og.api_url = url.clone();
        og.api_key_file = Some(write(d, "og-api", "og-api-key\n"));
        og.sync.interval_ms = 300;
        og.sync.grace_secs = grace;
    })
    .await;
    // PZ0ZZ01 is on the second page only
    map_responders(
        dir.path(),
        &env,
        &[
            ("PZ0ZZ01", "physician"),
            ("PXPGF42", "nurse"),
            ("alice@hospital.example", "paramedic"),
        ],
    );
    let app = &env.app;
    let on_call = |m: &str, source: &str| {
        crate::support::metric(
            m,
            &format!("breakglass_paging_on_call{{source=\"{source}\"}}"),
        )
    };
    eventually("both syncs mapped", SECS, async || {
        let m = text(app, "/metrics").await;
        (on_call(&m, "pagerduty-sync") == Some(2.0) && on_call(&m, "opsgenie-sync") == Some(1.0))
            .then_some(())
    })
    .await;
    assert!(
        standin
            .lock()
            .unwrap()
            .log
            .iter()
            .any(|(s, q, _, st)| *s == "pagerduty" && q.contains("offset=2") && *st == 200),
        "the second page was read"
    );
    let (status, body) = break_glass(&env, "physician", 1).await;
    assert_eq!(status, 201, "on call from page two: {body}");
    let view = access_view(&env, &body).await;
    assert_eq!(view["on_call"]["source"], "pagerduty", "{view}");
    assert!(
        view["on_call"]["service"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{view}"
    );
    assert!(
        view["on_call"]["until"].as_u64().is_some_and(|u| u > now()),
        "{view}"
    );
    let (status, body) = break_glass(&env, "paramedic", 2).await;
    assert_eq!(status, 201, "{body}");
    let view = access_view(&env, &body).await;
    assert_eq!(
        (
            view["on_call"]["source"].as_str(),
            view["on_call"]["service"].as_str()
        ),
        (Some("opsgenie"), Some("ScheduleName")),
        "{view}"
    );
    let (status, ready) = readyz(app).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["checks"]["paging"]["pagerduty"]["state"], "ok",
        "{ready}"
    );
    assert_eq!(
        ready["checks"]["paging"]["opsgenie"]["state"], "ok",
        "{ready}"
    );

    // 429: the sync waits as Retry-After says, then goes on; the round does not fail
    let mark = standin.lock().unwrap().log.len();
    standin.lock().unwrap().pagerduty = Mode::RateLimitOnce;
    let (limited_at, next_at) = eventually("a 429 then the retry", SECS, async || {
        let s = standin.lock().unwrap();
        let pd: Vec<_> = s.log[mark..]
            .iter()
            .filter(|e| e.0 == "pagerduty")
            .collect();
        let i = pd.iter().position(|e| e.3 == 429)?;
        let next = pd.get(i + 1)?;
        assert_eq!(next.1, pd[i].1, "the same page is asked again");
        assert_eq!(next.3, 200);
        Some((pd[i].2, next.2))
    })
    .await;
    assert!(
        next_at - limited_at >= Duration::from_millis(950),
        "Retry-After: 1 honoured, waited {:?}",
        next_at - limited_at
    );
    // the round that met the 429 ends well: a success after it, no failure counted
    let limited_unix = now();
    eventually("the rate-limited round to succeed", SECS, async || {
        let (_, r) = readyz(app).await;
        let p = &r["checks"]["paging"]["pagerduty"];
        (p["last_success"].as_u64() >= Some(limited_unix)).then_some(())
    })
    .await;
    let (_, ready) = readyz(app).await;
    assert_eq!(
        ready["checks"]["paging"]["pagerduty"]["consecutive_failures"], 0,
        "{ready}"
    );
    assert_eq!(
        ready["checks"]["paging"]["pagerduty"]["last_error"],
        Json::Null,
        "{ready}"
    );

    // outage: the last good roster stands for the grace period ... (the request is signed
    // beforehand: the grace period is short)
    let within_grace = {
        let key = provider(&env.demo, "physician")["private_key"]
            .as_str()
            .unwrap()
            .to_string();
        signed(&key, patient(&env.demo, true), &["allergies"], 3, now() + 5)
    };
    {
        let mut s = standin.lock().unwrap();
        s.pagerduty = Mode::Down;
        s.opsgenie = Mode::Down;
    }
    eventually("both syncs failing", SECS, async || {
        let (_, r) = readyz(app).await;
        let p = &r["checks"]["paging"];
        (p["pagerduty"]["consecutive_failures"].as_u64() >= Some(1)
            && p["opsgenie"]["consecutive_failures"].as_u64() >= Some(1))
        .then_some(())
    })
    .await;
    let (status, ready) = readyz(app).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready["checks"]["paging"]["pagerduty"]["ok"], false,
        "{ready}"
    );
    assert!(
        ready["checks"]["paging"]["pagerduty"]["state"]
            .as_str()
            .unwrap()
            .starts_with("degraded"),
        "{ready}"
    );
    assert!(
        ready["checks"]["paging"]["pagerduty"]["last_error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{ready}"
    );
    let m = text(app, "/metrics").await;
    assert_eq!(
        crate::support::metric(&m, r#"breakglass_paging_sync_up{source="pagerduty"}"#),
        Some(1.0),
        "{m}"
    );
    assert!(
        crate::support::metric(
            &m,
            r#"breakglass_paging_sync_consecutive_failures{source="pagerduty"}"#
        ) >= Some(1.0),
        "{m}"
    );
    let (status, body) = post(app, &within_grace).await;
    assert_eq!(status, 201, "within the grace period: {body}");

    // ... then fails closed, visibly
    eventually(
        "the grace period over",
        Duration::from_secs(grace + 10),
        async || {
            let (_, r) = readyz(app).await;
            (r["checks"]["paging"]["pagerduty"]["state"] == "failed closed: grace period over"
                && r["checks"]["paging"]["opsgenie"]["state"] == "failed closed: grace period over")
                .then_some(())
        },
    )
    .await;
    let m = text(app, "/metrics").await;
    assert_eq!(
        crate::support::metric(&m, r#"breakglass_paging_sync_up{source="pagerduty"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        crate::support::metric(&m, r#"breakglass_paging_sync_up{source="opsgenie"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(on_call(&m, "pagerduty-sync"), None, "{m}");
    for (i, role) in ["physician", "nurse", "paramedic"].iter().enumerate() {
        let (status, body) = break_glass(&env, role, 10 + i as u64).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (403, Some("not-on-call")),
            "{role} after the grace period: {body}"
        );
    }

    // back up: on call again
    standin.lock().unwrap().pagerduty = Mode::Up;
    eventually("pagerduty synced again", SECS, async || {
        let (_, r) = readyz(app).await;
        (r["checks"]["paging"]["pagerduty"]["state"] == "ok").then_some(())
    })
    .await;
    let (status, body) = break_glass(&env, "physician", 20).await;
    assert_eq!(status, 201, "{body}");
    server.stop(false).await;
}

#[test]
fn responders_map_through_the_mapping_file_and_the_provider_directory() {
    use breakglass::domain::ProviderEntry;
    use breakglass::paging::Mapping;
    use breakglass::store::{Batch, RedbStore, Store};
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
    let (a, b) = (
        "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
        "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG",
    );
    let entry = |principal: &str, ids: &[&str]| ProviderEntry {
        principal: principal.parse().unwrap(),
        display_name: "Dr. A".into(),
        role: breakglass::domain::Role::Physician,
        department: None,
        organization: None,
        paging_ids: ids.iter().map(|s| s.to_string()).collect(),
    };
    store
        .apply(Batch {
            directory: vec![(
                a.parse().unwrap(),
                Some(entry(a, &["PXPGF42", "Alice@Hospital.example"])),
            )],
            ..Batch::default()
        })
        .unwrap();
    let file = write(
        dir.path(),
        "m.toml",
        &format!("[responders]\n\"PAM4FGS\" = \"{b}\"\n\"pxpgf42\" = \"{b}\"\n"),
    );
    let m = Mapping::load(Some(&file), store.clone()).unwrap();
    let map = m.snapshot().unwrap();
    assert_eq!(
        Mapping::resolve(&map, &["alice@hospital.example"]).as_deref(),
        Some(a),
        "directory pager ids, any case"
    );
    assert_eq!(
        Mapping::resolve(&map, &["PAM4FGS"]).as_deref(),
        Some(b),
        "the file"
    );
    assert_eq!(
        Mapping::resolve(&map, &["PXPGF42"]).as_deref(),
        Some(b),
        "the operator's file wins"
    );
    assert_eq!(
        Mapping::resolve(&map, &["nobody", "ALICE@hospital.example"]).as_deref(),
        Some(a),
        "the first id that maps"
    );
    assert_eq!(
        Mapping::resolve(&map, &[b]).as_deref(),
        Some(b),
        "a principal is itself"
    );
    assert_eq!(Mapping::resolve(&map, &["nobody"]), None);
    // a file naming something that is not a principal is refused at start
    let bad = write(
        dir.path(),
        "bad.toml",
        "[responders]\n\"PAM4FGS\" = \"alice\"\n",
    );
    assert!(Mapping::load(Some(&bad), store).is_err());
}
