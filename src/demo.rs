//! `breakglass demo request`: a tablet stand-in for newcomers. It signs a break-glass request
//! with a demo clinician's key (from the devnet's demo identities) exactly as a wallet would,
//! sends it to the running service and prints the answer.
//!
//! It must not: be used by the service (it is the tablet's stand-in for newcomers).

use std::path::Path;

use serde_json::Value as Json;

use crate::domain::PatientId;
use crate::keys::parse_key;
use crate::request;

pub struct DemoRequest<'a> {
    pub demo_file: &'a Path,
    pub url: &'a str,
    pub role: &'a str,
    pub patient: &'a str,
    pub data_types: &'a [String],
    pub reason: &'a str,
    pub chain_id: u32,
}

/// Returns the HTTP status and the answer's JSON.
pub async fn request(r: DemoRequest<'_>) -> anyhow::Result<(u16, Json)> {
    let text = std::fs::read_to_string(r.demo_file).map_err(|e| {
        anyhow::anyhow!(
            "reading {} ({e}); start `breakglass dev` first",
            r.demo_file.display()
        )
    })?;
    let demo: Json = serde_json::from_str(&text)?;
    let provider = demo["providers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["role"] == r.role))
        .ok_or_else(|| anyhow::anyhow!("no demo clinician with role {:?}", r.role))?;
    let key = parse_key(provider["private_key"].as_str().unwrap_or_default())?;
    let patient: PatientId = match r.patient {
        "demo" | "opted-out" => {
            let allows = r.patient == "demo";
            let p = demo["patients"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["emergency_access"] == allows))
                .ok_or_else(|| anyhow::anyhow!("no such demo patient"))?;
            p["patient_id"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(anyhow::Error::msg)?
        }
        hex_id => hex_id.parse().map_err(anyhow::Error::msg)?,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let nonce = u64::from(secp256k1::rand::random::<u32>());
    let types: Vec<&str> = r.data_types.iter().map(String::as_str).collect();
    let message = request::message(&patient, &types, r.reason, nonce, now, Some("demo-tablet"));
    let body = request::sign(&key, r.chain_id, &message);
    let res = reqwest::Client::new()
        .post(format!("{}/v1/break-glass", r.url.trim_end_matches('/')))
        .json(&body)
        .send()
        .await?;
    let status = res.status().as_u16();
    Ok((status, res.json().await.unwrap_or(Json::Null)))
}
