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

/// A synthetic International Patient Summary for a demo patient (`breakglass dev` seeds one per
/// demo patient; tests use it): a FHIR R4 document Bundle with a Composition, the Patient (named
/// only by their pseudonymous id) and one or two resources per critical data type, coded as the
/// break-glass scopes expect (`scope.rs`). Everything in it is made up.
pub fn summary(patient: &PatientId, id_system: &str) -> Json {
    let subject = serde_json::json!({ "reference": "Patient/p" });
    let concept = |system: &str, code: &str, display: &str| serde_json::json!({ "coding": [{ "system": system, "code": code, "display": display }], "text": display });
    let loinc = crate::scope::LOINC;
    let snomed = "http://snomed.info/sct";
    let entries = vec![
        serde_json::json!({ "resourceType": "Composition", "id": "c", "status": "final",
            "type": concept(loinc, "60591-5", "Patient summary Document"), "subject": subject,
            "date": "2026-01-01T00:00:00Z", "author": [{ "display": "Demo General Hospital" }],
            "title": "Emergency summary (synthetic demo data)" }),
        serde_json::json!({ "resourceType": "Patient", "id": "p",
            "identifier": [{ "system": id_system, "value": patient.to_string() }] }),
        serde_json::json!({ "resourceType": "AllergyIntolerance", "id": "a1", "patient": subject,
            "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"),
            "criticality": "high", "code": concept(snomed, "91936005", "Allergy to penicillin"),
            "reaction": [{ "manifestation": [concept(snomed, "39579001", "Anaphylaxis")] }] }),
        serde_json::json!({ "resourceType": "AllergyIntolerance", "id": "a2", "patient": subject,
            "criticality": "low", "code": concept(snomed, "300913006", "Shellfish allergy"),
            "reaction": [{ "manifestation": [concept(snomed, "247472004", "Hives")] }] }),
        serde_json::json!({ "resourceType": "MedicationStatement", "id": "m1", "status": "active", "subject": subject,
            "medicationCodeableConcept": concept("http://www.nlm.nih.gov/research/umls/rxnorm", "197361", "Amlodipine 5 mg oral tablet"),
            "dosage": [{ "text": "one tablet daily" }] }),
        serde_json::json!({ "resourceType": "Condition", "id": "c1", "subject": subject,
            "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            "code": concept(snomed, "38341003", "Hypertension") }),
        serde_json::json!({ "resourceType": "Observation", "id": "o1", "status": "final", "subject": subject,
            "code": concept(loinc, "882-1", "ABO and Rh group"),
            "valueCodeableConcept": concept(snomed, "278149003", "Blood group A Rh(D) positive") }),
        serde_json::json!({ "resourceType": "Observation", "id": "o2", "status": "final", "subject": subject,
            "category": [concept(crate::scope::OBSERVATION_CATEGORY, "laboratory", "Laboratory")],
            "code": concept(loinc, "2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
            "valueQuantity": { "value": 5.4, "unit": "mmol/L" } }),
        serde_json::json!({ "resourceType": "Consent", "id": "d1", "status": "active", "patient": subject,
            "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "adr", "Advanced Care Directive"),
            "category": [concept(loinc, "42348-3", "Advance directives")],
            "policyRule": concept("http://terminology.hl7.org/CodeSystem/consentpolicycodes", "cric", "Common rule informed consent") }),
        serde_json::json!({ "resourceType": "Immunization", "id": "i1", "status": "completed", "patient": subject,
            "vaccineCode": concept("http://hl7.org/fhir/sid/cvx", "115", "Tdap"),
            "occurrenceDateTime": "2024-05-01" }),
    ];
    serde_json::json!({
        "resourceType": "Bundle", "type": "document",
        "identifier": { "system": "urn:breakglass:summary", "value": patient.to_string() },
        "timestamp": "2026-01-01T00:00:00Z",
        "entry": entries.into_iter().map(|r| {
            let url = format!("https://demo.breakglass.example/fhir/{}/{}",
                r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""));
            serde_json::json!({ "fullUrl": url, "resource": r })
        }).collect::<Vec<_>>(),
    })
}
