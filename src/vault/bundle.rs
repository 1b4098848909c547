//! A patient's emergency summary as imported: an International Patient Summary-style FHIR R4
//! `Bundle` (a `document` with a `Composition` first, or a `collection`), with the patient's
//! `Patient` resource naming their pseudonymous id, and the clinical resources the break-glass
//! scopes can open.
//!
//! It must not: do I/O, or put a resource's content in an error (errors name the entry and the
//! element, never a value).

use serde_json::Value;

use crate::domain::PatientId;

/// The largest summary accepted, in bytes.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// What a summary may hold besides the Patient and the Composition: the IPS sections' types.
pub const RESOURCE_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Medication",
    "Condition",
    "Observation",
    "DiagnosticReport",
    "Consent",
    "DocumentReference",
    "Immunization",
    "Procedure",
    "ImagingStudy",
    "Device",
    "DeviceUseStatement",
    "Practitioner",
    "PractitionerRole",
    "Organization",
];

/// What a resource may hold inside it (`contained`): what a medication is, and who made or
/// keeps a record. None is a data type's resource, nor about the patient: one that were would
/// be served under another data type's scope (a Condition inside an AllergyIntolerance, read
/// with an allergies token).
pub const CONTAINED_TYPES: &[&str] = &[
    "Medication",
    "Practitioner",
    "PractitionerRole",
    "Organization",
];

/// The elements through which a resource names its patient.
const PATIENT_ELEMENTS: &[&str] = &["subject", "patient"];

/// A summary that passed the checks.
#[derive(Debug, Clone)]
pub struct Summary {
    pub patient: PatientId,
    /// The clinical resources (not the Patient, not the Composition), in bundle order.
    pub resources: Vec<Value>,
}

fn id_ok(id: &str) -> bool {
    // FHIR R4 id: [A-Za-z0-9\-\.]{1,64}
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Parses and checks `body` as a summary whose patient is named by an identifier of
/// `id_system`; the reason it is not one.
pub fn parse(body: &[u8], id_system: &str) -> Result<Summary, String> {
    if body.len() > MAX_BYTES {
        return Err(format!(
            "the summary is {} bytes; at most {MAX_BYTES} are accepted",
            body.len()
        ));
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if doc.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("resourceType: a summary is a FHIR R4 Bundle".into());
    }
    match doc.get("type").and_then(Value::as_str) {
        Some("document" | "collection") => {}
        Some(other) => {
            return Err(format!(
                "Bundle.type: {other:?} is not a summary's (document or collection)"
            ))
        }
        None => return Err("Bundle.type is required".into()),
    }
    // FHIR R4 as the specification's structure definitions have it (fhirbolt's generated
    // models, strict: unknown elements, wrong types and missing required elements refused)
    let strict = fhirbolt::serde::DeserializationConfig {
        mode: fhirbolt::serde::DeserializationMode::Strict,
    };
    if let Err(e) = fhirbolt::json::from_slice::<fhirbolt::model::r4::Resource>(body, Some(strict))
    {
        return Err(format!(
            "not valid FHIR R4: {}",
            without_values(&e.to_string())
        ));
    }
    let entries = doc
        .get("entry")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .ok_or("Bundle.entry: a summary has entries")?;
    let mut patient: Option<PatientId> = None;
    // how references name the summary's Patient: `Patient/<id>`, and its entry's `fullUrl`
    let mut patient_refs: Vec<String> = Vec::new();
    let mut resources = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("Bundle.entry[{i}]");
        let resource = entry
            .get("resource")
            .filter(|r| r.is_object())
            .ok_or_else(|| format!("{at}.resource is required"))?;
        let kind = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{at}.resource.resourceType is required"))?;
        if let Some(id) = resource.get("id") {
            if !id.as_str().is_some_and(id_ok) {
                return Err(format!("{at}.resource.id is not a FHIR id"));
            }
        }
        match kind {
            "Patient" => {
                let ids = resource
                    .get("identifier")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("{at}: the Patient has no identifier"))?;
                let named = ids
                    .iter()
                    .find(|i| i.get("system").and_then(Value::as_str) == Some(id_system))
                    .and_then(|i| i.get("value").and_then(Value::as_str))
                    .ok_or_else(|| {
                        format!("{at}: the Patient has no identifier of system {id_system}")
                    })?;
                let id: PatientId = named
                    .parse()
                    .map_err(|e| format!("{at}: the Patient's id: {e}"))?;
                if patient.replace(id).is_some_and(|p| p != id) {
                    return Err(format!("{at}: a second, different Patient"));
                }
                patient_refs.extend(
                    resource
                        .get("id")
                        .and_then(Value::as_str)
                        .map(|id| format!("Patient/{id}")),
                );
                patient_refs.extend(
                    entry
                        .get("fullUrl")
                        .and_then(Value::as_str)
                        .map(String::from),
                );
            }
            "Composition" => {
                if i != 0 {
                    return Err(format!("{at}: the Composition comes first in a document"));
                }
            }
            k if RESOURCE_TYPES.contains(&k) => {
                for element in ["code", "category"] {
                    if let Some(v) = resource.get(element) {
                        if !(v.is_object() || v.is_array()) {
                            return Err(format!(
                                "{at}.resource.{element} is not a CodeableConcept"
                            ));
                        }
                    }
                }
                for (j, inner) in resource
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let kind = inner.get("resourceType").and_then(Value::as_str);
                    if !kind.is_some_and(|k| CONTAINED_TYPES.contains(&k)) {
                        return Err(format!(
                            "{at}.resource.contained[{j}]: a {} may not be contained (only {}: it would be served with the resource that holds it)",
                            kind.unwrap_or("resource without a type"),
                            CONTAINED_TYPES.join(", ")
                        ));
                    }
                }
                resources.push(resource.clone());
            }
            other => {
                return Err(format!(
                    "{at}: a {other} does not belong in an emergency summary"
                ))
            }
        }
    }
    if doc.get("type").and_then(Value::as_str) == Some("document")
        && entries[0]["resource"]["resourceType"] != "Composition"
    {
        return Err("Bundle.entry[0]: a document begins with its Composition".into());
    }
    let patient = patient.ok_or("the summary has no Patient (whose summary is it?)")?;
    // each resource that names a patient names the summary's: another's would be served with
    // this patient's token
    for (i, entry) in entries.iter().enumerate() {
        for element in PATIENT_ELEMENTS {
            let Some(named) = entry["resource"].get(*element) else {
                continue;
            };
            if !names_patient(named, &patient, &patient_refs, id_system) {
                return Err(format!(
                    "Bundle.entry[{i}].resource.{element}: names another patient than the summary's Patient"
                ));
            }
        }
    }
    Ok(Summary { patient, resources })
}

/// A deserializer's message with what it says of the document left out: serde says what it
/// did not expect with its value (`invalid type: string "Penicillin…", expected …`, or
/// unquoted: `invalid value: HIV positive, expected a boolean`) or its name (`unknown field
/// `…``), which may be clinical content; what it expected (the specification's element
/// names) stays.
fn without_values(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some((at, prefix)) = [
        "invalid type: ",
        "invalid value: ",
        "unknown field ",
        "unknown variant ",
    ]
    .iter()
    .filter_map(|p| rest.find(p).map(|at| (at, *p)))
    .min()
    {
        let start = at + prefix.len();
        let end = rest[start..]
            .find(", expected")
            .map_or(rest.len(), |e| start + e);
        out.push_str(&rest[..start]);
        // not even its kind: a value of another kind is said without quotes (`invalid value:
        // HIV positive, expected a boolean`)
        out.push_str("(not shown)");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Whether Reference `named` is to the summary's Patient: by one of `refs` (`Patient/<id>`,
/// its entry's `fullUrl`) or an absolute URL ending in `/Patient/<id>`, and by its identifier
/// of `id_system`, if it carries one (it must carry one or the other).
fn names_patient(named: &Value, patient: &PatientId, refs: &[String], id_system: &str) -> bool {
    let reference = named.get("reference").and_then(Value::as_str);
    let by_reference = reference.map(|r| {
        refs.iter().any(|known| {
            r == known
                || (known.starts_with("Patient/")
                    && r.contains("://")
                    && r.ends_with(&format!("/{known}")))
        })
    });
    let identifier = named.get("identifier");
    let by_identifier = identifier.map(|i| {
        i.get("system").and_then(Value::as_str) == Some(id_system)
            && i.get("value")
                .and_then(Value::as_str)
                .and_then(|v| v.parse::<PatientId>().ok())
                == Some(*patient)
    });
    match (by_reference, by_identifier) {
        (None, None) => false,
        (r, i) => r.unwrap_or(true) && i.unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEM: &str = "urn:breakglass:patient-id";

    fn demo() -> (PatientId, Value) {
        let p = PatientId([7; 32]);
        (p, crate::demo::summary(&p, SYSTEM))
    }

    #[test]
    fn the_demo_summary_is_a_summary_and_bad_ones_are_named() {
        let (p, doc) = demo();
        let body = serde_json::to_vec(&doc).unwrap();
        if let Ok(path) = std::env::var("BREAKGLASS_DUMP_SUMMARY") {
            std::fs::write(path, &body).unwrap();
        }
        let s = parse(&body, SYSTEM).unwrap();
        assert_eq!(s.patient, p);
        assert_eq!(s.resources.len(), 8);

        let bad = |f: &dyn Fn(&mut Value)| {
            let mut d = doc.clone();
            f(&mut d);
            parse(&serde_json::to_vec(&d).unwrap(), SYSTEM).unwrap_err()
        };
        assert!(parse(b"{not json", SYSTEM)
            .unwrap_err()
            .starts_with("not JSON"));
        assert!(bad(&|d| d["resourceType"] = "Patient".into()).contains("Bundle"));
        assert!(bad(&|d| d["type"] = "transaction".into()).contains("Bundle.type"));
        assert!(bad(&|d| {
            d["entry"].as_array_mut().unwrap().remove(1);
        })
        .contains("no Patient"));
        assert!(
            bad(&|d| d["entry"][1]["resource"]["identifier"][0]["system"] = "other".into())
                .contains("no identifier of system")
        );
        assert!(bad(&|d| d["entry"][2]["resource"] =
            serde_json::json!({"resourceType": "Basic", "id": "b", "code": {"text": "x"}}))
        .contains("a Basic does not belong"));
        assert!(bad(&|d| d["entry"][2]["resource"]["id"] = "a b".into()).contains("not a FHIR id"));
        // what the FHIR R4 structure definitions refuse
        assert!(bad(&|d| d["entry"][2]["resource"]["colour"] = "red".into())
            .contains("not valid FHIR R4"));
        assert!(bad(&|d| d["entry"][6]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("status")
            .map(drop)
            .unwrap_or(()))
        .contains("missing field `status`"));
        // another patient's resource, by reference or identifier, or by a reference that
        // cannot be told to be the patient's
        for named in [
            serde_json::json!({ "reference": "Patient/other" }),
            serde_json::json!({ "reference": "https://elsewhere.example/fhir/Patient/other" }),
            serde_json::json!({ "identifier": { "system": SYSTEM, "value": PatientId([8; 32]).to_string() } }),
            serde_json::json!({ "reference": "Patient/p", "identifier": { "system": SYSTEM, "value": PatientId([8; 32]).to_string() } }),
            serde_json::json!({ "display": "someone" }),
        ] {
            assert!(
                bad(&|d| d["entry"][2]["resource"]["patient"] = named.clone())
                    .contains("entry[2].resource.patient: names another patient"),
                "{named}"
            );
            assert!(
                bad(&|d| d["entry"][5]["resource"]["subject"] = named.clone())
                    .contains("entry[5].resource.subject: names another patient")
            );
        }
        // and the patient's, however named
        for named in [
            serde_json::json!({ "reference": "https://demo.breakglass.example/fhir/Patient/p" }),
            serde_json::json!({ "reference": "https://mirror.example/fhir/Patient/p" }),
            serde_json::json!({ "identifier": { "system": SYSTEM, "value": p.to_string() } }),
        ] {
            let mut d = doc.clone();
            d["entry"][2]["resource"]["patient"] = named.clone();
            assert!(
                parse(&serde_json::to_vec(&d).unwrap(), SYSTEM).is_ok(),
                "{named}"
            );
        }
        // a resource held inside another, of a data type's own (a diagnosis inside an
        // allergy, which an allergies token would read), is refused; what a medication is, held
        // in its statement, is not
        let condition = serde_json::json!([{ "resourceType": "Condition", "id": "hidden",
            "subject": { "reference": "Patient/p" }, "code": { "text": "x" } }]);
        assert!(
            bad(&|d| d["entry"][2]["resource"]["contained"] = condition.clone())
                .contains("contained[0]: a Condition may not be contained")
        );
        let mut d = doc.clone();
        d["entry"][4]["resource"]["contained"] = serde_json::json!([{ "resourceType": "Medication",
            "id": "med", "code": { "text": "x" } }]);
        d["entry"][4]["resource"]["medicationReference"] =
            serde_json::json!({ "reference": "#med" });
        d["entry"][4]["resource"]
            .as_object_mut()
            .unwrap()
            .remove("medicationCodeableConcept");
        let s = parse(&serde_json::to_vec(&d).unwrap(), SYSTEM).unwrap();
        assert_eq!(s.resources[2]["contained"][0]["resourceType"], "Medication");
        // what the document holds is not quoted back: neither a value of the wrong type nor an
        // unknown element's name (clinical content, either)
        for err in [
            bad(&|d| d["entry"][2]["resource"]["code"] = "Penicillin secret".into()),
            bad(&|d| d["entry"][2]["resource"]["criticality"] = 5417.into()),
            bad(&|d| d["entry"][2]["resource"]["Penicillin secret"] = 5.into()),
        ] {
            assert!(err.contains("not valid FHIR R4"), "{err}");
            assert!(
                !err.contains("Penicillin") && !err.contains("5417"),
                "{err}"
            );
        }
        assert_eq!(
            without_values("invalid type: string \"Penicillin\", expected a map"),
            "invalid type: (not shown), expected a map"
        );
        assert_eq!(
            without_values("invalid value: HIV positive, expected a boolean"),
            "invalid value: (not shown), expected a boolean"
        );
        assert_eq!(
            without_values("unknown field `HIV`, expected one of `id`, `meta`"),
            "unknown field (not shown), expected one of `id`, `meta`"
        );
        assert_eq!(
            without_values("invalid type: integer `5`, expected a string"),
            "invalid type: (not shown), expected a string"
        );
        let huge = vec![b' '; MAX_BYTES + 1];
        assert!(parse(&huge, SYSTEM).unwrap_err().contains("at most"));
    }
}
