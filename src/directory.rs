//! The patient directory, off chain: a pseudonymous patient id (the one the contracts know)
//! → how to reach them (email, preferred language, an optional delegate such as a guardian).
//! Imported from FHIR R4 `Patient` resources; kept only sealed (`seal.rs`), never logged,
//! never on chain.
//!
//! Import is per entry: a bad or partial `Patient` is rejected with its reason and the rest of
//! the bundle is imported. A `Patient` names its pseudonymous id in an `identifier` with the
//! configured system (`directory.patient_id_system`), 32 bytes hex; its email is a `telecom`
//! with `system: email` (the `use: home` one first); its language the `communication` marked
//! `preferred` (BCP 47; languages without templates fall back to English); a delegate is a
//! `contact` with an email (relationship kept as its display text). Every current email and
//! delegate is kept with the ends of its periods, in the order they are chosen in, so that
//! who is told is judged on the day a notice goes (`Contact::current`), not at the import.
//!
//! It must not: log or return contact details (they are sealed before they are stored).

use serde::Serialize;
use serde_json::Value;

use crate::domain::{Contact, Dated, Delegate, Language, PatientId, ProviderEntry};

/// An entry the import refused, and why (the reason names fields, never their values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// The entry's position in the bundle.
    pub entry: usize,
    /// The resource's own `id`, if it had one.
    pub resource_id: Option<String>,
    pub reason: String,
}

/// What a bundle holds: the patients to import and the entries refused.
#[derive(Debug, Default)]
pub struct Parsed {
    pub patients: Vec<(PatientId, Contact)>,
    pub rejected: Vec<Rejected>,
}

fn valid_email(s: &str) -> bool {
    s.parse::<lettre::Address>().is_ok()
}

fn human_name(v: &Value) -> Option<String> {
    let name = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    if let Some(text) = name.get("text").and_then(Value::as_str) {
        return Some(text.to_string());
    }
    let given: Vec<&str> = name
        .get("given")
        .and_then(Value::as_array)
        .map(|g| g.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let family = name.get("family").and_then(Value::as_str);
    let full: Vec<&str> = given.into_iter().chain(family).collect();
    (!full.is_empty()).then(|| full.join(" "))
}

/// A FHIR `period`'s end, as given.
fn end_of(period: Option<&Value>) -> Option<&str> {
    period.and_then(|p| p.get("end")).and_then(Value::as_str)
}

/// A FHIR `period`'s start, as given.
fn start_of(period: Option<&Value>) -> Option<&str> {
    period.and_then(|p| p.get("start")).and_then(Value::as_str)
}

/// Whether a FHIR `period` ended before `today` (`YYYY-MM-DD`): its `end` (a date, or a
/// dateTime, to the year, month or day) is before today at the precision it gives.
fn ended(period: Option<&Value>, today: &str) -> bool {
    end_of(period).is_some_and(|end| crate::domain::directory::ended_by(end, today))
}

/// Today's date, `YYYY-MM-DD` (UTC), as FHIR periods are compared to it.
pub fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}

/// Relationships (HL7 v2 table 0131, as FHIR's `patient-contactrelationship`) whose contact
/// is not told of an access: an employer, an agency, an insurer, a billing contact, a person
/// preparing a referral. A contact of another kind (next of kin, emergency contact, guardian
/// as text) is.
const NOT_TOLD: [&str; 6] = ["E", "F", "I", "S", "BP", "PR"];

/// The emails of a `telecom` list in the order they are chosen in (the `home` ones first; none
/// marked `old` or whose period ended), each with its period's end: the first must be a valid
/// address (else an error naming the problem, as it is the one used now); a later one that is
/// not is left out (it could never be sent to).
fn emails_of(telecom: Option<&Value>) -> Result<Vec<Dated<String>>, String> {
    let Some(list) = telecom else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("telecom is not a list")?;
    let today = today();
    let mut emails: Vec<(&Value, &str)> = list
        .iter()
        .filter(|t| t.get("system").and_then(Value::as_str) == Some("email"))
        .filter(|t| t.get("use").and_then(Value::as_str) != Some("old"))
        .filter(|t| !ended(t.get("period"), &today))
        .map(|t| (t, t.get("value").and_then(Value::as_str).unwrap_or("")))
        .collect();
    emails.sort_by_key(|(t, _)| t.get("use").and_then(Value::as_str) != Some("home"));
    if emails.first().is_some_and(|(_, e)| !valid_email(e)) {
        return Err("telecom email is not a valid address".into());
    }
    Ok(emails
        .into_iter()
        .filter(|(_, e)| valid_email(e))
        .map(|(t, e)| Dated {
            value: e.to_string(),
            from: start_of(t.get("period"))
                .map(str::to_string)
                .into_iter()
                .collect(),
            until: end_of(t.get("period"))
                .map(str::to_string)
                .into_iter()
                .collect(),
        })
        .collect())
}

fn patient(resource: &Value, id_system: &str) -> Result<(PatientId, Contact), String> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Patient") {
        return Err("not a Patient resource".into());
    }
    let ids = resource
        .get("identifier")
        .and_then(Value::as_array)
        .ok_or("no identifier")?;
    let value = ids
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(id_system))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .ok_or_else(|| format!("no identifier with system {id_system}"))?;
    let id: PatientId = value
        .parse()
        .map_err(|_| "the patient identifier is not 32 bytes of hex".to_string())?;
    let emails = emails_of(resource.get("telecom"))?;
    let language = resource
        .get("communication")
        .and_then(Value::as_array)
        .and_then(|c| {
            let preferred = c
                .iter()
                .find(|x| x.get("preferred").and_then(Value::as_bool) == Some(true));
            preferred.or(c.first())
        })
        .and_then(|c| c.pointer("/language/coding/0/code").and_then(Value::as_str))
        .and_then(Language::from_tag)
        .unwrap_or(Language::En);
    let mut delegates: Vec<Dated<Delegate>> = Vec::new();
    let today = today();
    for c in resource
        .get("contact")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        // a contact whose period ended, or of a kind not told (an employer, an insurer), is
        // not the delegate
        .filter(|c| !ended(c.get("period"), &today))
        .filter(|c| {
            !c.get("relationship")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("coding").and_then(Value::as_array))
                .flatten()
                .filter_map(|coding| coding.get("code").and_then(Value::as_str))
                .any(|code| NOT_TOLD.contains(&code))
        })
    {
        // the first contact with an email is the delegate now: its address must be valid; a
        // later one, the delegate once the first's period ends, is left out if it is not
        let emails = match emails_of(c.get("telecom")) {
            Ok(emails) => emails,
            Err(e) if delegates.is_empty() => return Err(format!("contact {e}")),
            Err(_) => continue,
        };
        let name = c.get("name").and_then(human_name);
        let relationship = c
            .pointer("/relationship/0/text")
            .or_else(|| c.pointer("/relationship/0/coding/0/display"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let (starts, ends) = (start_of(c.get("period")), end_of(c.get("period")));
        delegates.extend(emails.into_iter().map(|e| {
            Dated {
                value: Delegate {
                    name: name.clone(),
                    relationship: relationship.clone(),
                    email: e.value,
                },
                from: e
                    .from
                    .into_iter()
                    .chain(starts.map(str::to_string))
                    .collect(),
                until: e
                    .until
                    .into_iter()
                    .chain(ends.map(str::to_string))
                    .collect(),
            }
        }));
    }
    if emails.is_empty() && delegates.is_empty() {
        return Err("no email for the patient or a contact".into());
    }
    Ok((
        id,
        Contact {
            name: resource.get("name").and_then(human_name),
            email: emails.first().map(|e| e.value.clone()),
            language,
            delegate: delegates.first().map(|d| d.value.clone()),
            emails,
            delegates,
        },
    ))
}

/// The resources of a bundle's entries, in order (a missing one as `null`).
fn bundle_resources(doc: &Value) -> Vec<&Value> {
    doc.get("entry")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .map(|x| x.get("resource").unwrap_or(&Value::Null))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a FHIR R4 `Bundle` of `Patient` entries (or one `Patient`). Fails only when the
/// document itself is not a bundle; bad entries are listed in `rejected`.
pub fn parse_patients(body: &[u8], id_system: &str) -> Result<Parsed, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let resources: Vec<&Value> = match doc.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => bundle_resources(&doc),
        Some("Patient") => vec![&doc],
        _ => return Err("expected a FHIR Bundle or Patient resource".into()),
    };
    let mut out = Parsed::default();
    for (i, r) in resources.into_iter().enumerate() {
        match patient(r, id_system) {
            Ok(p) => out.patients.push(p),
            Err(reason) => out.rejected.push(Rejected {
                entry: i,
                resource_id: r.get("id").and_then(Value::as_str).map(str::to_string),
                reason,
            }),
        }
    }
    Ok(out)
}

/// Applies `batch` unless it holds nothing.
async fn write(
    store: &std::sync::Arc<dyn crate::store::Store>,
    batch: crate::store::Batch,
) -> Result<(), crate::store::StoreError> {
    if !batch.is_empty() {
        crate::store::apply_async(store, batch).await?;
    }
    Ok(())
}

async fn write_contacts(
    store: &std::sync::Arc<dyn crate::store::Store>,
    contacts: Vec<(PatientId, Option<Vec<u8>>)>,
) -> Result<(), crate::store::StoreError> {
    write(
        store,
        crate::store::Batch {
            contacts,
            ..Default::default()
        },
    )
    .await
}

/// Why an import stored nothing: the bundle (its reason names fields, never values), or the
/// service (sealing or the store).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("sealing a contact: {0}")]
    Seal(String),
}

/// What an import did: how many patients were stored, and the entries refused.
#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub imported: usize,
    pub rejected: Vec<Rejected>,
}

/// Imports a FHIR bundle of `Patient` resources into the store, each contact sealed.
pub async fn import(
    store: &std::sync::Arc<dyn crate::store::Store>,
    keyring: &crate::seal::Keyring,
    id_system: &str,
    body: &[u8],
) -> Result<ImportReport, ImportError> {
    let parsed = parse_patients(body, id_system).map_err(ImportError::Rejected)?;
    let mut contacts = Vec::with_capacity(parsed.patients.len());
    for (id, contact) in &parsed.patients {
        let plain = serde_json::to_vec(contact).map_err(|e| ImportError::Seal(e.to_string()))?;
        let sealed = keyring
            .seal(&crate::seal::names::contact(id), &plain)
            .map_err(|e| ImportError::Seal(e.to_string()))?;
        contacts.push((*id, Some(sealed)));
    }
    let imported = contacts.len();
    write_contacts(store, contacts).await?;
    Ok(ImportReport {
        imported,
        rejected: parsed.rejected,
    })
}

/// Seals every contact that is not sealed with the current data key again with it (after
/// `keys rotate-data`); then older keys can be retired. Returns how many were re-sealed.
pub async fn rekey(
    store: &std::sync::Arc<dyn crate::store::Store>,
    keyring: &crate::seal::Keyring,
) -> anyhow::Result<usize> {
    let mut contacts = Vec::new();
    for id in store.contact_ids()? {
        let Some(sealed) = store.contact(&id)? else {
            continue;
        };
        let name = crate::seal::names::contact(&id);
        if let Some(sealed) = keyring.reseal(&name, &sealed)? {
            contacts.push((id, Some(sealed)));
        }
    }
    let n = contacts.len();
    write_contacts(store, contacts).await?;
    Ok(n)
}

// --- providers ---------------------------------------------------------------------------

/// What a bundle of `Practitioner` and `PractitionerRole` resources holds.
#[derive(Debug, Default)]
pub struct ParsedProviders {
    pub providers: Vec<ProviderEntry>,
    pub rejected: Vec<Rejected>,
}

fn coded_text(v: Option<&Value>) -> Option<String> {
    let v = v?;
    let v = v.as_array().and_then(|a| a.first()).unwrap_or(v);
    v.get("text")
        .or_else(|| v.pointer("/coding/0/display"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A role from a PractitionerRole `code`: our own role names, or HL7 practitioner-role codes
/// (`doctor` → physician, `nurse`, `pharmacist`).
fn role_of(code: Option<&Value>) -> Option<crate::domain::Role> {
    let codings = code?.as_array()?.iter().flat_map(|c| {
        c.get("coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
    });
    for c in codings {
        let Some(code) = c.get("code").and_then(Value::as_str) else {
            continue;
        };
        let mapped = match code {
            "doctor" => "physician",
            other => other,
        };
        if let Ok(r) = mapped.parse() {
            return Some(r);
        }
    }
    None
}

fn pagers(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("system").and_then(Value::as_str) == Some("pager"))
        .filter_map(|t| t.get("value").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// Reads a FHIR R4 `Bundle` of `Practitioner` and `PractitionerRole` resources: a
/// Practitioner names its Stacks principal in an `identifier` with `principal_system`, a
/// PractitionerRole points to it (`practitioner.reference`, `Practitioner/<id>`) with the role
/// (`code`), the department (`specialty`), the organization (`organization.display`) and pager
/// ids (`telecom`). Bad entries are listed in `rejected`, the rest kept.
pub fn parse_practitioners(body: &[u8], principal_system: &str) -> Result<ParsedProviders, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    if doc.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err("expected a FHIR Bundle".into());
    }
    let resources = bundle_resources(&doc);
    let mut out = ParsedProviders::default();
    let reject = |out: &mut ParsedProviders, i: usize, r: &Value, reason: String| {
        out.rejected.push(Rejected {
            entry: i,
            resource_id: r.get("id").and_then(Value::as_str).map(str::to_string),
            reason,
        })
    };
    // practitioners first, by id
    let mut practitioners: Vec<(usize, String, Option<ProviderEntry>)> = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        match r.get("resourceType").and_then(Value::as_str) {
            Some("Practitioner") => {
                let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
                let principal = r
                    .get("identifier")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|x| x.get("system").and_then(Value::as_str) == Some(principal_system))
                    .and_then(|x| x.get("value").and_then(Value::as_str));
                let Some(principal) = principal else {
                    reject(
                        &mut out,
                        i,
                        r,
                        format!("no identifier with system {principal_system}"),
                    );
                    continue;
                };
                let Ok(principal) = principal.parse::<crate::stacks::Address>() else {
                    reject(
                        &mut out,
                        i,
                        r,
                        "the principal identifier is not a Stacks address".into(),
                    );
                    continue;
                };
                let Some(name) = r.get("name").and_then(human_name) else {
                    reject(&mut out, i, r, "no name".into());
                    continue;
                };
                practitioners.push((
                    i,
                    id.to_string(),
                    Some(ProviderEntry {
                        principal,
                        display_name: name,
                        role: crate::domain::Role::Physician,
                        department: None,
                        organization: None,
                        paging_ids: pagers(r.get("telecom")),
                    }),
                ));
            }
            Some("PractitionerRole") => {}
            _ => reject(
                &mut out,
                i,
                r,
                "not a Practitioner or PractitionerRole resource".into(),
            ),
        }
    }
    let mut with_role = vec![false; practitioners.len()];
    for (i, r) in resources.iter().enumerate() {
        if r.get("resourceType").and_then(Value::as_str) != Some("PractitionerRole") {
            continue;
        }
        let target = r
            .pointer("/practitioner/reference")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("Practitioner/"));
        let Some(k) = target.and_then(|t| practitioners.iter().position(|(_, id, _)| id == t))
        else {
            reject(
                &mut out,
                i,
                r,
                "practitioner.reference names no Practitioner of this bundle".into(),
            );
            continue;
        };
        let Some(role) = role_of(r.get("code")) else {
            reject(&mut out, i, r, "no known role in code".into());
            continue;
        };
        if let Some(entry) = practitioners[k].2.as_mut() {
            entry.role = role;
            entry.department = coded_text(r.get("specialty"));
            entry.organization = r
                .pointer("/organization/display")
                .and_then(Value::as_str)
                .map(str::to_string);
            entry.paging_ids.extend(pagers(r.get("telecom")));
            with_role[k] = true;
        }
    }
    for ((i, _, entry), has_role) in practitioners.into_iter().zip(with_role) {
        let r = resources[i];
        match entry {
            Some(e) if has_role => out.providers.push(e),
            _ => reject(
                &mut out,
                i,
                r,
                "no PractitionerRole for this Practitioner".into(),
            ),
        }
    }
    out.rejected.sort_by_key(|r| r.entry);
    Ok(out)
}

/// Imports a FHIR bundle of practitioners into the provider directory.
pub async fn import_providers(
    store: &std::sync::Arc<dyn crate::store::Store>,
    principal_system: &str,
    body: &[u8],
) -> Result<ImportReport, ImportError> {
    let parsed = parse_practitioners(body, principal_system).map_err(ImportError::Rejected)?;
    let imported = parsed.providers.len();
    write(
        store,
        crate::store::Batch {
            directory: parsed
                .providers
                .into_iter()
                .map(|e| (e.principal, Some(e)))
                .collect(),
            ..Default::default()
        },
    )
    .await?;
    Ok(ImportReport {
        imported,
        rejected: parsed.rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patient's address is a current one (not one marked `old`, nor one whose period
    /// ended), and the delegate a current contact of a kind that is told (not an employer or
    /// an insurer, nor a contact whose period ended). Before, the first listed was taken: a
    /// notice with the reason and the data went to an old address, or to the employer.
    #[test]
    fn the_notice_goes_to_current_addresses_and_contacts_of_a_kind_told() {
        let id = "ab".repeat(32);
        let resource = serde_json::json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "urn:p", "value": id }],
            "telecom": [
                { "system": "email", "value": "old@example.org", "use": "old" },
                { "system": "email", "value": "ended@example.org", "period": { "end": "2020-03-01" } },
                { "system": "email", "value": "work@example.org", "use": "work",
                  "period": { "start": "2020-03-02", "end": "2999-12-31" } },
            ],
            "contact": [
                { "relationship": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "E" }] }],
                  "telecom": [{ "system": "email", "value": "hr@employer.example" }] },
                { "relationship": [{ "coding": [{ "code": "N" }] }], "period": { "end": "2021" },
                  "telecom": [{ "system": "email", "value": "ex@example.org" }] },
                { "relationship": [{ "text": "guardian" }],
                  "telecom": [{ "system": "email", "value": "guardian@example.org" }] },
            ],
        });
        let (_, contact) = patient(&resource, "urn:p").unwrap();
        assert_eq!(contact.email.as_deref(), Some("work@example.org"));
        assert_eq!(contact.emails[0].until, vec!["2999-12-31".to_string()]);
        assert_eq!(contact.emails[0].from, vec!["2020-03-02".to_string()]);
        let delegate = contact.delegate.clone().unwrap();
        assert_eq!(delegate.email, "guardian@example.org");
        assert_eq!(delegate.relationship.as_deref(), Some("guardian"));
        assert_eq!(contact.delegates.len(), 1);
        assert_eq!(contact.clone().current("2026-12-06"), contact);
    }

    /// Every address and delegate the directory names is kept with when it stops holding,
    /// and which are told is judged on the day a notice goes (`Contact::current`): a
    /// guardian's period that ends after the import (a minor come of age) leaves the next
    /// contact told in their place, an address given up the next one. Before, the import chose
    /// once, and a former guardian was told of every later access.
    #[test]
    fn addresses_and_delegates_are_judged_on_the_day_a_notice_goes() {
        let id = "ab".repeat(32);
        let resource = serde_json::json!({
            "resourceType": "Patient",
            "identifier": [{ "system": "urn:p", "value": id }],
            "telecom": [
                { "system": "email", "value": "home@example.org", "use": "home",
                  "period": { "end": "2999-01" } },
                { "system": "email", "value": "not an address" },
                { "system": "email", "value": "work@example.org", "use": "work" },
            ],
            "contact": [
                { "relationship": [{ "text": "guardian" }], "period": { "end": "2999-06-30" },
                  "telecom": [{ "system": "email", "value": "guardian@example.org" }] },
                { "relationship": [{ "text": "a later one, not an address" }],
                  "telecom": [{ "system": "email", "value": "nope" }] },
                { "relationship": [{ "coding": [{ "code": "N", "display": "next of kin" }] }],
                  "telecom": [{ "system": "email", "value": "kin@example.org",
                                "period": { "end": "3000" } }] },
            ],
        });
        let (_, contact) = patient(&resource, "urn:p").unwrap();
        let on = |day: &str| {
            let c = contact.clone().current(day);
            (
                c.email,
                c.delegate
                    .map(|d| (d.email, d.relationship.unwrap_or_default())),
            )
        };
        let some = |s: &str| Some(s.to_string());
        let guardian = some("guardian@example.org").zip(some("guardian"));
        let kin = some("kin@example.org").zip(some("next of kin"));
        assert_eq!(
            on("2999-01-31"),
            (some("home@example.org"), guardian.clone())
        );
        assert_eq!(on("2999-02-01"), (some("work@example.org"), guardian));
        assert_eq!(on("2999-07-01"), (some("work@example.org"), kin.clone()));
        assert_eq!(on("3000-12-31"), (some("work@example.org"), kin));
        assert_eq!(on("3001-01-01"), (some("work@example.org"), None));
        // a period that has not started yet: not told before it does
        let mut later = contact.clone();
        later.delegates[0].from = vec!["2999-03".into()];
        later.emails[0].from = vec!["2999-01-15T00:00:00Z".into()];
        let on = |day: &str| {
            let c = later.clone().current(day);
            (c.email, c.delegate.map(|d| d.email))
        };
        assert_eq!(
            on("2999-01-14"),
            (some("work@example.org"), some("kin@example.org"))
        );
        assert_eq!(
            on("2999-01-20"),
            (some("home@example.org"), some("kin@example.org"))
        );
        assert_eq!(
            on("2999-03-01"),
            (some("work@example.org"), some("guardian@example.org"))
        );
        // a contact sealed before the lists were kept stands as it was
        let older = Contact {
            emails: Vec::new(),
            delegates: Vec::new(),
            ..contact.clone()
        };
        assert_eq!(older.clone().current("3001-01-01"), older);
    }

    #[test]
    fn a_period_ends_at_the_precision_it_gives() {
        let p = |end: &str| serde_json::json!({ "end": end });
        let today = "2026-12-06";
        assert!(ended(Some(&p("2026-12-05")), today));
        assert!(
            !ended(Some(&p("2026-12-06")), today),
            "through its last day"
        );
        assert!(!ended(Some(&p("2026-12")), today));
        assert!(ended(Some(&p("2025")), today));
        assert!(!ended(Some(&p("2026-12-06T23:00:00Z")), today));
        assert!(!ended(Some(&serde_json::json!({ "start": "2020" })), today));
        assert!(!ended(None, today));
    }
}
