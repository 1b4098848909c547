//! The audit log as FHIR R4 `AuditEvent` resources, for SIEMs (`GET /v1/audit/export`,
//! NDJSON), in the shapes `tests/fhir/BALP.md` gives, built from IHE Basic Audit Log
//! Patterns' parts (DICOM event types, `purposeOfUse` BTG on the clinician, the patient entity
//! with object-role 1, the token as a `UserOauthAgent` entity). No BALP profile is claimed in
//! `meta.profile`: BALP's REST profiles describe reading FHIR data, which the resource servers
//! do (they log their own reads); ours are authorization decisions, token checks, notices,
//! sign-ins and sign-outs, verdicts, reviewers' and admin clients' views of an access, admin
//! clients' imports, chain writes that failed, the service's starts and stops, and rekeys; an
//! entry of a kind this version does not read (a later version's) as `unmapped`, its event as
//! logged.
//! Every event carries its log entry's seq, hash and previous hash (an extension), so that a
//! SIEM can tie it to the hash-chained log.
//!
//! It must not: do I/O.

use serde_json::{json, Value};

use super::{Entry, Event};
use crate::stacks::Address;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const KIND: &str = "https://breakglass.example/fhir/CodeSystem/audit-kind";
const ROLE: &str = "https://breakglass.example/fhir/CodeSystem/provider-role";
const PRINCIPAL: &str = "urn:breakglass:stacks-principal";
const PATIENT_ID: &str = "urn:breakglass:patient-id";
const ACCESS_ID: &str = "urn:breakglass:access-id";
const CLIENT_ID: &str = "urn:breakglass:client-id";
/// A chain operation of the service's, by its id (`record:<access>`, `review:<access>`…).
const OPERATION_ID: &str = "urn:breakglass:chain-operation";
/// One process of the service: host, process id and a random part (`coordination::replica_id`).
const REPLICA_ID: &str = "urn:breakglass:replica";
/// A data key, by its id (hex: `seal::Keyring::current_id`).
const DATA_KEY_ID: &str = "urn:breakglass:data-key";
/// A contract of the deployment, by its name (`access-control`, `patient-consent`).
const CONTRACT_ID: &str = "urn:breakglass:contract";
const ENTRY: &str = "https://breakglass.example/fhir/StructureDefinition/audit-log-entry";

/// An event's parts: type, subtypes, action, outcome, outcome description, whether its purpose
/// is BTG, agents, entities.
type Shape<'a> = (
    Value,
    Vec<Value>,
    &'a str,
    &'a str,
    Option<String>,
    bool,
    Vec<Value>,
    Vec<Value>,
);

/// What an export names by the service's settings: this service (its issuer URL) and the
/// identifier systems of patients and of clinicians (`directory.patient_id_system`,
/// `directory.provider_principal_system`: the systems the vault's `Patient` and the provider
/// directory use, so that a SIEM joins on them).
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub observer: &'a str,
    pub patient_id_system: &'a str,
    pub principal_system: &'a str,
}

impl<'a> Names<'a> {
    /// This service under `observer`, with the default identifier systems.
    pub fn of(observer: &'a str) -> Names<'a> {
        Names {
            observer,
            patient_id_system: PATIENT_ID,
            principal_system: PRINCIPAL,
        }
    }
}

/// The AuditEvent for `entry`, named as `names` says.
pub fn audit_event(entry: &Entry, names: &Names) -> Result<Value, serde_json::Error> {
    let mut r = audit_event_of(entry, names.observer)?;
    if (names.patient_id_system, names.principal_system) != (PATIENT_ID, PRINCIPAL) {
        named(&mut r, names);
    }
    Ok(r)
}

/// Every identifier `system` of a patient or a clinician in `v` as `names` gives them.
fn named(v: &mut Value, names: &Names) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(system)) = o.get_mut("system") {
                if system == PATIENT_ID {
                    *system = names.patient_id_system.to_string();
                } else if system == PRINCIPAL {
                    *system = names.principal_system.to_string();
                }
            }
            o.values_mut().for_each(|v| named(v, names));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| named(v, names)),
        _ => {}
    }
}

/// The AuditEvent for `entry` under the default identifier systems; `observer` names this
/// service (its issuer URL).
fn audit_event_of(entry: &Entry, observer: &str) -> Result<Value, serde_json::Error> {
    let parsed = entry.parsed();
    let service = json!({ "type": "Device", "identifier": { "system": "urn:ietf:rfc:3986", "value": observer }, "display": "breakglass" });
    let authserver = json!({
        "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "authserver", "display": "authorization server" }] },
        "who": service, "requestor": false,
    });
    let mut r = json!({
        "resourceType": "AuditEvent",
        "id": entry.seq.to_string(),
        "extension": [{ "url": ENTRY, "extension": [
            { "url": "seq", "valueString": entry.seq.to_string() },
            { "url": "hash", "valueString": hex::encode(entry.hash) },
            { "url": "prev", "valueString": hex::encode(entry.prev) },
        ]}],
        "recorded": instant_ms(entry.at),
        "source": {
            "observer": service,
            "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "6", "display": "Security Server" }],
        },
    });
    let event = match parsed {
        Ok(event) => event,
        // a later version's kind (a replica of it wrote during a rolling upgrade), or a kind
        // whose fields it changed: exported as logged, not refused
        Err(e) => match super::kind_of(entry) {
            Some(kind) => {
                unmapped(&mut r, &service, &kind, entry.event.get());
                return Ok(r);
            }
            None => return Err(e),
        },
    };
    let kind = json!({ "system": KIND, "code": event.kind() });
    let (type_, subtypes, action, outcome, desc, btg, agents, entities): Shape = match &event {
        Event::Grant {
            access,
            clinician,
            role,
            patient,
            data_types,
            expires_at,
            degraded,
            record,
        } => {
            let mut details: Vec<Value> = data_types
                .iter()
                .map(|d| detail("data-type", d.as_str()))
                .collect();
            details.push(detail("expires-at", &instant_ms(expires_at * 1000)));
            details.push(detail("degraded", &degraded.to_string()));
            details.extend(record.as_ref().map(|r| detail("record-digest", r)));
            (
                dcm("110113", "Security Alert"),
                vec![
                    dcm("110127", "Emergency Override Started"),
                    authz_role(),
                    kind,
                ],
                "E",
                "0",
                None,
                true,
                vec![
                    clinician_agent(Some(clinician), Some(role.as_str())),
                    authserver,
                ],
                vec![
                    patient_entity(&patient.to_string()),
                    access_entity(&access.to_string(), details),
                    token_entity(&access.to_string(), None),
                ],
            )
        }
        Event::Refusal {
            code,
            status,
            signer,
            patient,
            data_types,
        } => {
            let mut details: Vec<Value> = data_types
                .iter()
                .map(|d| detail("data-type", d.as_str()))
                .collect();
            details.push(detail("http-status", &status.to_string()));
            let mut entities = patient_entities(patient);
            entities.push(json!({
                "type": entity_type("2", "System Object"),
                "role": object_role("24", "Query"),
                "detail": details,
            }));
            (
                dcm("110113", "Security Alert"),
                vec![
                    dcm("110127", "Emergency Override Started"),
                    authz_role(),
                    kind,
                ],
                "E",
                if *status >= 500 { "8" } else { "4" },
                Some(code.clone()),
                true,
                vec![clinician_agent(signer.as_ref(), None), authserver],
                entities,
            )
        }
        Event::Introspection {
            jti,
            client,
            active,
            patient,
        } => {
            let mut entities = patient_entities(patient);
            entities.push(token_entity(
                jti,
                Some(vec![detail("active", &active.to_string())]),
            ));
            (
                dcm("110114", "User Authentication"),
                vec![
                    json!({ "system": "urn:ihe:event-type-code", "code": "ITI-102", "display": "Introspect Token" }),
                    kind,
                ],
                "E",
                if *active { "0" } else { "4" },
                (!active).then(|| "inactive".to_string()),
                true,
                vec![client_agent(client), authserver],
                entities,
            )
        }
        Event::Revocation { jti, by, patient } => {
            let mut entities = patient_entities(patient);
            entities.push(token_entity(jti, None));
            let who = reviewer_or_client(by);
            (
                dcm("110113", "Security Alert"),
                vec![dcm("110138", "Emergency Override Stopped"), kind],
                "E",
                "0",
                None,
                true,
                vec![who, authserver],
                entities,
            )
        }
        Event::Notice {
            access,
            patient,
            state,
        } => {
            let outcome = match state.as_str() {
                "sent" => "0",
                "no-contact" => "4",
                _ => "8",
            };
            (
                dcm("110106", "Export"),
                vec![kind],
                "R",
                outcome,
                (outcome != "0").then(|| state.clone()),
                true,
                vec![
                    json!({ "type": { "coding": [dcm("110153", "Source Role ID")] }, "who": service, "requestor": true }),
                    json!({
                        "type": { "coding": [dcm("110152", "Destination Role ID")] },
                        "who": { "type": "Patient", "identifier": { "system": PATIENT_ID, "value": patient.to_string() } },
                        "requestor": false,
                    }),
                ],
                vec![
                    patient_entity(&patient.to_string()),
                    access_entity(&access.to_string(), vec![detail("notice-state", state)]),
                ],
            )
        }
        Event::SignIn { reviewer, outcome } => {
            let ok = outcome == "ok";
            let mut agent = json!({
                "type": { "coding": [human_type()] },
                "requestor": true,
            });
            if let Some(r) = reviewer {
                agent["who"] = principal(r);
            }
            (
                dcm("110114", "User Authentication"),
                vec![dcm("110122", "Login"), kind],
                "E",
                if ok { "0" } else { "4" },
                (!ok).then(|| outcome.clone()),
                false,
                vec![agent, authserver],
                Vec::new(),
            )
        }
        Event::Read {
            jti,
            clinician,
            patient,
            resource_types,
            count,
        } => {
            let mut details: Vec<Value> = resource_types
                .iter()
                .map(|t| detail("resource-type", t))
                .collect();
            details.push(detail("count", &count.to_string()));
            (
                json!({ "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation" }),
                vec![
                    json!({ "system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search type" }),
                    kind,
                ],
                "E",
                "0",
                None,
                true,
                vec![
                    clinician_agent(Some(clinician), None),
                    resource_server(&service),
                ],
                vec![
                    patient_entity(&patient.to_string()),
                    json!({ "type": entity_type("2", "System Object"), "role": object_role("24", "Query"), "detail": details }),
                    token_entity(jti, None),
                ],
            )
        }
        Event::ReadRefusal {
            code,
            status,
            jti,
            clinician,
            patient,
        } => {
            let mut entities = patient_entities(patient);
            entities.push(json!({ "type": entity_type("2", "System Object"), "role": object_role("24", "Query"),
                                  "detail": [detail("http-status", &status.to_string())] }));
            if let Some(j) = jti {
                entities.push(token_entity(j, None));
            }
            (
                json!({ "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation" }),
                vec![
                    json!({ "system": "http://hl7.org/fhir/restful-interaction", "code": "search-type", "display": "search type" }),
                    kind,
                ],
                "E",
                if *status >= 500 { "8" } else { "4" },
                Some(code.clone()),
                true,
                vec![
                    clinician_agent(clinician.as_ref(), None),
                    resource_server(&service),
                ],
                entities,
            )
        }
        Event::Verdict {
            access,
            reviewer,
            verdict,
            note_hash,
            patient,
            revoked,
        } => (
            dcm("110101", "Audit Log Used"),
            vec![kind],
            "C",
            "0",
            None,
            true,
            vec![human(reviewer, Some("reviewer")), authserver],
            vec![
                patient_entity(&patient.to_string()),
                access_entity(
                    &access.to_string(),
                    vec![
                        detail("verdict", verdict),
                        detail("note-hash", note_hash),
                        detail("revoked", &revoked.to_string()),
                    ],
                ),
            ],
        ),
        Event::View {
            access,
            patient,
            by,
            reason,
        } => {
            let who = reviewer_or_client(by);
            (
                dcm("110110", "Patient Record"),
                vec![kind],
                "R",
                "0",
                None,
                true,
                vec![who, authserver],
                vec![
                    patient_entity(&patient.to_string()),
                    access_entity(
                        &access.to_string(),
                        vec![detail("reason-shown", &reason.to_string())],
                    ),
                ],
            )
        }
        Event::SignOut {
            reviewer, ended, ..
        } => {
            // ended by the service: it is the requestor, and the session's entity says why
            let mut service = authserver;
            service["requestor"] = ended.is_some().into();
            (
                dcm("110114", "User Authentication"),
                vec![dcm("110123", "Logout"), kind],
                "E",
                "0",
                None,
                false,
                vec![
                    json!({ "type": { "coding": [human_type()] }, "who": principal(reviewer), "requestor": ended.is_none() }),
                    service,
                ],
                ended
                    .iter()
                    .map(|code| {
                        json!({
                            "type": entity_type("2", "System Object"),
                            "role": object_role("13", "Security Resource"),
                            "detail": [detail("ended", code)],
                        })
                    })
                    .collect(),
            )
        }
        Event::Import {
            by,
            what,
            patient,
            count,
            hash,
        } => {
            let mut entities = patient_entities(patient);
            entities.push(json!({
                "type": entity_type("2", "System Object"),
                "role": object_role("4", "Domain Resource"),
                "detail": [detail("imported", what), detail("count", &count.to_string()), detail("sha256", hash)],
            }));
            (
                dcm("110107", "Import"),
                vec![kind],
                "C",
                "0",
                None,
                false,
                vec![client_agent(by), resource_server(&service)],
                entities,
            )
        }
        Event::Start {
            replica,
            version,
            data_key,
            token_key,
            responder,
        } => application_start(
            kind,
            &service,
            replica,
            vec![
                detail("version", version),
                detail("data-key", data_key),
                detail("token-key", token_key),
                detail("responder", &responder.to_string()),
            ],
        ),
        Event::Rekey {
            by,
            data_key,
            resealed,
        } => (
            dcm("110113", "Security Alert"),
            vec![dcm("110129", "Security Configuration"), kind],
            "U",
            "0",
            None,
            false,
            vec![client_agent(by), resource_server(&service)],
            vec![json!({
                "what": { "identifier": { "system": DATA_KEY_ID, "value": data_key } },
                "type": entity_type("2", "System Object"),
                "role": object_role("13", "Security Resource"),
                "detail": [detail("resealed", &resealed.to_string())],
            })],
        ),
        // a process that went without a stop of its own: the failure (`4`) and when it was
        // last seen
        Event::Stop { replica, lost } => (
            dcm("110100", "Application Activity"),
            vec![dcm("110121", "Application Stop"), kind],
            "E",
            if lost.is_some() { "4" } else { "0" },
            lost.map(|_| "lost: it went without a stop of its own".to_string()),
            false,
            vec![application_agent(&service)],
            vec![replica_entity(
                replica,
                lost.iter()
                    .map(|at| detail("last-seen", &instant_ms(*at)))
                    .collect(),
            )],
        ),
        // a process logged as gone that runs again: an application start of the same process,
        // with when it last said it ran before
        Event::Resume { replica, since } => application_start(
            kind,
            &service,
            replica,
            vec![detail("last-seen", &instant_ms(*since))],
        ),
        Event::ChainFailure {
            operation,
            contract,
            function,
            access,
            txid,
            height,
            result,
            cleared,
        } => {
            // the service's write to the chain (the contract the destination): failed, or
            // (cleared) a failure logged before that no longer holds
            let mut details = vec![
                detail("function", function),
                detail("height", &height.to_string()),
                detail("cleared", &cleared.to_string()),
                detail("result", result),
            ];
            details.extend(txid.as_ref().map(|t| detail("txid", t)));
            let mut entities = vec![json!({
                "what": { "identifier": { "system": OPERATION_ID, "value": operation } },
                "type": entity_type("2", "System Object"),
                "role": object_role("4", "Domain Resource"),
                "detail": details,
            })];
            entities.extend(access.iter().map(|a| {
                access_entity(&a.to_string(), vec![detail("chain-operation", operation)])
            }));
            (
                dcm("110106", "Export"),
                vec![kind],
                "C",
                if *cleared { "0" } else { "8" },
                (!cleared).then(|| result.clone()),
                access.is_some(),
                vec![
                    json!({ "type": { "coding": [dcm("110153", "Source Role ID")] }, "who": service, "requestor": true }),
                    json!({
                        "type": { "coding": [dcm("110152", "Destination Role ID")] },
                        "who": { "identifier": { "system": CONTRACT_ID, "value": contract } },
                        "requestor": false,
                    }),
                ],
                entities,
            )
        }
    };
    r["type"] = type_;
    // a session's end says when the session was open (FHIR's `period` of the activity)
    if let Event::SignOut {
        opened: Some(opened),
        until: Some(until),
        ..
    } = &event
    {
        r["period"] = json!({ "start": instant_ms(*opened), "end": instant_ms(*until) });
    }
    r["subtype"] = Value::Array(subtypes);
    r["action"] = action.into();
    r["outcome"] = outcome.into();
    if let Some(d) = desc {
        r["outcomeDesc"] = d.into();
    }
    if btg {
        r["purposeOfEvent"] = json!([btg_concept()]);
    }
    r["agent"] = Value::Array(agents);
    if !entities.is_empty() {
        r["entity"] = Value::Array(entities);
    }
    Ok(r)
}

/// The type of an entry this version does not map (`unmapped`).
const UNMAPPED: &str = "unmapped";

/// An entry whose event this version does not read (a later version's kind, or one whose
/// fields a later version changed): its kind as the subtype, the service that logged it as
/// the requestor, the patient when the event names one as events about a patient do
/// (`patient`, a 64-hex id: a SIEM finds it by patient), and the event exactly as logged (base64 of its
/// bytes: with the entry's seq, time and previous hash, a SIEM recomputes its hash). No action,
/// outcome or purpose: this version cannot say them.
fn unmapped(r: &mut Value, service: &Value, kind: &str, event: &str) {
    use base64::Engine;
    r["type"] = json!({ "system": KIND, "code": UNMAPPED, "display": "Unmapped kind" });
    r["subtype"] = json!([{ "system": KIND, "code": kind }]);
    r["agent"] = json!([application_agent(service)]);
    // the field alone read as a string (its other fields as raw JSON: a number or string this
    // version would not read elsewhere in it does not hide the patient)
    let patient = serde_json::from_str::<
        std::collections::HashMap<String, Box<serde_json::value::RawValue>>,
    >(event)
    .ok()
    .and_then(|o| serde_json::from_str::<String>(o.get("patient")?.get()).ok())
    // as events write it (lowercase hex): the entity names what the event does
    .filter(|p| {
        p.parse::<crate::domain::PatientId>()
            .is_ok_and(|id| id.to_string() == *p)
    });
    let mut entities: Vec<Value> = patient.iter().map(|p| patient_entity(p)).collect();
    entities.push(json!({
        "type": entity_type("2", "System Object"),
        "description": "the audit log entry's event, as logged",
        "detail": [
            detail("kind", kind),
            { "type": "event", "valueBase64Binary": base64::engine::general_purpose::STANDARD.encode(event) },
        ],
    }));
    r["entity"] = Value::Array(entities);
}

fn dcm(code: &str, display: &str) -> Value {
    json!({ "system": DCM, "code": code, "display": display })
}

fn authz_role() -> Value {
    json!({ "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType", "code": "AuthZ-Role", "display": "Authorization Decision using only Roles" })
}

fn btg_concept() -> Value {
    json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass" }] })
}

fn principal(p: &Address) -> Value {
    json!({ "type": "Practitioner", "identifier": { "system": PRINCIPAL, "value": p.to_string() } })
}

fn role(r: &str) -> Value {
    json!([{ "coding": [{ "system": ROLE, "code": r }] }])
}

fn human_type() -> Value {
    json!({ "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser", "display": "human user" })
}

/// The clinician who asked to break the glass: the information recipient, for BTG.
fn clinician_agent(who: Option<&Address>, r: Option<&str>) -> Value {
    let mut a = json!({
        "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient" }] },
        "requestor": true,
        "purposeOfUse": [btg_concept()],
    });
    if let Some(r) = r {
        a["role"] = role(r);
    }
    if let Some(w) = who {
        a["who"] = principal(w);
    }
    a
}

fn human(who: &Address, r: Option<&str>) -> Value {
    let mut a =
        json!({ "type": { "coding": [human_type()] }, "who": principal(who), "requestor": true });
    if let Some(r) = r {
        a["role"] = role(r);
    }
    a
}

/// This service answering a read: the resource server.
fn resource_server(service: &Value) -> Value {
    json!({ "type": { "coding": [dcm("110152", "Destination Role ID")] }, "who": service, "requestor": false })
}

/// `by` a reviewer (a principal) or a client (its id).
fn reviewer_or_client(by: &str) -> Value {
    match by.parse::<Address>() {
        Ok(reviewer) => human(&reviewer, Some("reviewer")),
        Err(_) => client_agent(by),
    }
}

fn client_agent(client: &str) -> Value {
    json!({
        "type": { "coding": [dcm("110150", "Application")] },
        "who": { "type": "Device", "identifier": { "system": CLIENT_ID, "value": client } },
        "requestor": true,
    })
}

/// A process of the service started (or runs again: a resume): DICOM Application Activity,
/// Application Start, the service as the application, the process with `details`.
fn application_start<'a>(
    kind: Value,
    service: &Value,
    replica: &str,
    details: Vec<Value>,
) -> Shape<'a> {
    (
        dcm("110100", "Application Activity"),
        vec![dcm("110120", "Application Start"), kind],
        "E",
        "0",
        None,
        false,
        vec![application_agent(service)],
        vec![replica_entity(replica, details)],
    )
}

/// The service as the application that started or stopped (DICOM's Application Activity), or
/// that logged an entry this version does not map.
fn application_agent(service: &Value) -> Value {
    json!({ "type": { "coding": [dcm("110150", "Application")] }, "who": service, "requestor": true })
}

/// One process of the service (a replica), with `details` when it has any.
fn replica_entity(replica: &str, details: Vec<Value>) -> Value {
    let mut e = json!({
        "what": { "identifier": { "system": REPLICA_ID, "value": replica } },
        "type": entity_type("2", "System Object"),
        "role": object_role("4", "Domain Resource"),
    });
    if !details.is_empty() {
        e["detail"] = Value::Array(details);
    }
    e
}

fn entity_type(code: &str, display: &str) -> Value {
    json!({ "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": code, "display": display })
}

fn object_role(code: &str, display: &str) -> Value {
    json!({ "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": code, "display": display })
}

/// The patient's entity, if the event names one.
fn patient_entities(patient: &Option<crate::domain::PatientId>) -> Vec<Value> {
    patient
        .iter()
        .map(|p| patient_entity(&p.to_string()))
        .collect()
}

fn patient_entity(patient: &str) -> Value {
    json!({
        "what": { "type": "Patient", "identifier": { "system": PATIENT_ID, "value": patient } },
        "type": entity_type("1", "Person"),
        "role": object_role("1", "Patient"),
    })
}

fn access_entity(access: &str, details: Vec<Value>) -> Value {
    json!({
        "what": { "identifier": { "system": ACCESS_ID, "value": access } },
        "type": entity_type("2", "System Object"),
        "role": object_role("13", "Security Resource"),
        "detail": details,
    })
}

/// The token (its `jti`, which is its access's id).
fn token_entity(jti: &str, details: Option<Vec<Value>>) -> Value {
    let mut e = json!({
        "what": { "identifier": { "value": format!("urn:ietf:params:oauth:jti:{jti}") } },
        "type": { "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes", "code": "UserOauthAgent", "display": "User OAuth Agent participant" },
    });
    if let Some(d) = details {
        e["detail"] = Value::Array(d);
    }
    e
}

fn detail(kind: &str, value: &str) -> Value {
    json!({ "type": kind, "valueString": value })
}

/// A FHIR `instant` with milliseconds, in UTC.
fn instant_ms(at_ms: u64) -> String {
    jiff::Timestamp::from_millisecond(at_ms as i64)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exporter agrees, line for line, with the reference AuditEvents of
    /// `tests/fhir/samples/good.ndjson` (checked by a FHIR R4 validator in `tests/fhir`), made
    /// from the log entries beside them.
    #[test]
    fn the_export_matches_the_validated_samples() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fhir/samples/");
        let entries = std::fs::read_to_string(format!("{dir}entries.ndjson")).unwrap();
        let good = std::fs::read_to_string(format!("{dir}good.ndjson")).unwrap();
        let mut n = 0;
        for (line, (entry, expected)) in entries.lines().zip(good.lines()).enumerate() {
            let entry: Entry = serde_json::from_str(entry).unwrap();
            assert_eq!(entry.computed_hash(), entry.hash, "line {}", line + 1);
            let made = audit_event(&entry, &Names::of("https://breakglass.example")).unwrap();
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(made, expected, "line {}:\n{made:#}\n{expected:#}", line + 1);
            n += 1;
        }
        assert_eq!(n, good.lines().count());
        assert_eq!(n, entries.lines().count(), "an event for every entry");
        assert!(n >= 7, "one sample of each kind at least");
    }

    /// An entry whose event this version does not read is exported as logged when it names
    /// its kind (a later version's kind, or a known kind whose fields a later version changed:
    /// good.ndjson's line 32 is a new kind's), and refused when it does not name one a code can
    /// hold. Before, any entry this version could not read failed the export (500).
    #[test]
    fn an_entry_this_version_does_not_read_is_exported_as_logged_if_it_names_its_kind() {
        use base64::Engine;
        let entry = |event: Value| {
            let head = super::super::Head::default();
            let raw = serde_json::value::to_raw_value(&event).unwrap();
            let at = 1_767_958_080_123;
            Entry {
                seq: 1,
                at,
                prev: head.hash,
                hash: super::super::hash(&head.hash, 1, at, raw.get()),
                event: raw,
            }
        };
        let names = Names::of("https://breakglass.example");
        // a grant as a later version might log it (its access no longer an id), of a patient
        let patient = "ab".repeat(32);
        let changed = entry(json!({ "kind": "grant", "access": 5, "patient": patient }));
        let made = audit_event(&changed, &names).unwrap();
        assert_eq!(made["type"]["code"], UNMAPPED);
        assert_eq!(
            made["subtype"],
            json!([{ "system": KIND, "code": "grant" }])
        );
        assert!(made.get("action").is_none() && made.get("outcome").is_none());
        assert_eq!(
            made["agent"],
            json!([application_agent(&made["source"]["observer"])])
        );
        assert_eq!(made["entity"][0], patient_entity(&patient));
        assert_eq!(
            made["entity"][1]["detail"][0],
            detail("kind", "grant"),
            "{made}"
        );
        // a patient not written as events write one is not named (the event still carries it)
        for odd in [json!("AB".repeat(32)), json!("ab"), json!(7)] {
            let made =
                audit_event(&entry(json!({ "kind": "later", "patient": odd })), &names).unwrap();
            assert_eq!(made["entity"].as_array().unwrap().len(), 1, "{made}");
        }
        let logged = made["entity"][1]["detail"][1]["valueBase64Binary"]
            .as_str()
            .unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(logged)
                .unwrap(),
            changed.event.get().as_bytes()
        );
        for unnamed in [
            json!({ "what": "later" }),
            json!({ "kind": "Hand Over" }),
            json!({ "kind": "" }),
            json!({ "kind": 7 }),
            json!(["grant"]),
        ] {
            assert!(
                audit_event(&entry(unnamed.clone()), &names).is_err(),
                "{unnamed}"
            );
        }
        // a field this version would not read elsewhere (a number beyond f64) hides no patient
        let mut odd = entry(json!({}));
        odd.event = serde_json::value::RawValue::from_string(format!(
            r#"{{"kind":"later","n":1e400,"patient":"{patient}"}}"#
        ))
        .unwrap();
        assert_eq!(
            audit_event(&odd, &names).unwrap()["entity"][0],
            patient_entity(&patient)
        );
        // nor a kind named twice (readers keeping the first or the last would disagree)
        let mut twice = entry(json!({}));
        twice.event =
            serde_json::value::RawValue::from_string(r#"{"kind":"a","kind":"b"}"#.into()).unwrap();
        assert!(audit_event(&twice, &names).is_err());
    }

    /// A hospital's own identifier systems (its MPI's for patients, its directory's for
    /// clinicians) name the patients and clinicians of every event, as the vault's `Patient`
    /// and the directory do: a SIEM joins the export with them. Before, the defaults always.
    #[test]
    fn the_export_names_patients_and_clinicians_in_the_configured_systems() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fhir/samples/");
        let entries = std::fs::read_to_string(format!("{dir}entries.ndjson")).unwrap();
        let names = Names {
            observer: "https://breakglass.example",
            patient_id_system: "urn:oid:2.16.840.1.113883.3.999.1",
            principal_system: "https://hospital.example/fhir/NamingSystem/stacks",
        };
        let (mut patients, mut clinicians) = (0, 0);
        for entry in entries.lines() {
            let entry: Entry = serde_json::from_str(entry).unwrap();
            let made = audit_event(&entry, &names).unwrap().to_string();
            let default = audit_event(&entry, &Names::of(names.observer))
                .unwrap()
                .to_string();
            assert!(
                !made.contains(PATIENT_ID) && !made.contains(PRINCIPAL),
                "{made}"
            );
            patients += made.matches(names.patient_id_system).count();
            clinicians += made.matches(names.principal_system).count();
            assert_eq!(
                made.matches(names.patient_id_system).count(),
                default.matches(PATIENT_ID).count()
            );
            assert_eq!(
                made.matches(names.principal_system).count(),
                default.matches(PRINCIPAL).count()
            );
        }
        assert!(patients > 0 && clinicians > 0);
    }
}
