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
//! `contact` with an email (relationship kept as its display text). Every email and delegate
//! whose period has not ended is kept with the starts and ends of its periods (FHIR dates, or
//! dateTimes as their UTC day, one without a zone as its own; anything else refuses the
//! patient for the first email or contact, and leaves a later one out), in the order they are
//! chosen in, so that who is told is judged on the day a notice goes (`Contact::current`), not
//! at the import.
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

/// A FHIR `period`'s start and end, each as the periods are compared (`boundary`), or an
/// error naming the one that is not a FHIR date or dateTime.
fn period_of(period: Option<&Value>) -> Result<(Option<String>, Option<String>), String> {
    let at = |name: &str| -> Result<Option<String>, String> {
        match period.and_then(|p| p.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => boundary(v)
                .map(Some)
                .ok_or_else(|| format!("period {name} is not a FHIR date or dateTime")),
            Some(_) => Err(format!("period {name} is not a FHIR date or dateTime")),
        }
    };
    Ok((at("start")?, at("end")?))
}

/// A FHIR date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) as given, or a dateTime as its day in UTC (one
/// without the zone FHIR requires, as exports often write it, as its own day): what `Dated`
/// compares to today, at the precision it gives.
fn boundary(v: &str) -> Option<String> {
    if v.contains('T') {
        if let Ok(t) = v.parse::<jiff::Timestamp>() {
            return Some(t.strftime("%Y-%m-%d").to_string());
        }
        // (to the second, as FHIR writes a dateTime: not an hour alone, nor a week date)
        let b = v.as_bytes();
        if b.len() < 19 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
            return None;
        }
        let local: jiff::civil::DateTime = v.parse().ok()?;
        return Some(local.date().to_string());
    }
    let date = match v.len() {
        4 if v.bytes().all(|b| b.is_ascii_digit()) => return Some(v.to_string()),
        7 => format!("{v}-01"),
        10 => v.to_string(),
        _ => return None,
    };
    date.parse::<jiff::civil::Date>().ok()?;
    Some(v.to_string())
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
/// marked `old` or whose period ended), each with its period's start and end (`period_of`):
/// the first must be a valid address with a valid period (else an error naming the problem,
/// as it is the one chosen first); a later one that is not is left out (it could never be sent
/// to, or never judged).
fn emails_of(telecom: Option<&Value>) -> Result<Vec<Dated<String>>, String> {
    let Some(list) = telecom else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("telecom is not a list")?;
    let today = today();
    let mut emails: Vec<(&Value, &str, _)> = list
        .iter()
        .filter(|t| t.get("system").and_then(Value::as_str) == Some("email"))
        .filter(|t| t.get("use").and_then(Value::as_str) != Some("old"))
        .map(|t| {
            let value = t.get("value").and_then(Value::as_str).unwrap_or("");
            (t, value, period_of(t.get("period")))
        })
        .filter(|(_, _, period)| {
            !matches!(period, Ok((_, Some(end))) if crate::domain::directory::ended_by(end, &today))
        })
        .collect();
    emails.sort_by_key(|(t, _, _)| t.get("use").and_then(Value::as_str) != Some("home"));
    if let Some((_, e, period)) = emails.first() {
        if !valid_email(e) {
            return Err("telecom email is not a valid address".into());
        }
        if let Err(why) = period {
            return Err(format!("telecom email {why}"));
        }
    }
    Ok(emails
        .into_iter()
        .filter(|(_, e, _)| valid_email(e))
        .filter_map(|(_, e, period)| {
            let (from, until) = period.ok()?;
            Some(Dated {
                value: e.to_string(),
                from: from.into_iter().collect(),
                until: until.into_iter().collect(),
            })
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
        // a contact of a kind not told (an employer, an insurer) is not the delegate
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
        // the first contact with an email is the delegate first: its address and periods must
        // be valid; a later one, the delegate once the first's period ends, is left out if not
        // (one without an email to keep, a phone number alone, an old address, is not looked
        // at further)
        let emails = emails_of(c.get("telecom"));
        if emails.as_ref().is_ok_and(Vec::is_empty) {
            continue;
        }
        let (starts, ends) = match period_of(c.get("period")) {
            Ok(period) => period,
            Err(e) if delegates.is_empty() => return Err(format!("contact {e}")),
            Err(_) => continue,
        };
        // one whose period ended is not told
        if ends
            .as_deref()
            .is_some_and(|end| crate::domain::directory::ended_by(end, &today))
        {
            continue;
        }
        let emails = match emails {
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
        delegates.extend(emails.into_iter().map(|e| Dated {
            value: Delegate {
                name: name.clone(),
                relationship: relationship.clone(),
                email: e.value,
            },
            from: e.from.into_iter().chain(starts.clone()).collect(),
            until: e.until.into_iter().chain(ends.clone()).collect(),
        }));
    }
    if emails.is_empty() && delegates.is_empty() {
        return Err("no email for the patient or a contact".into());
    }
    // `email` and `delegate` as they stand today, for a replica of a version before the lists
    Ok((
        id,
        Contact {
            name: resource.get("name").and_then(human_name),
            email: None,
            language,
            delegate: None,
            emails,
            delegates,
        }
        .current(&today),
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
/// `by` (an admin client's id, or `audit::command_line`) is in the audit log with them, in the
/// same write.
pub async fn import(
    store: &std::sync::Arc<dyn crate::store::Store>,
    keyring: &crate::seal::Keyring,
    id_system: &str,
    body: &[u8],
    by: &str,
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
    write(
        store,
        crate::store::Batch {
            contacts,
            audit: imported_by(by, "patients", imported, body),
            ..Default::default()
        },
    )
    .await?;
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

/// The audit entry of an import by `by` of `count` entries of `what` (none if nothing was
/// taken: nothing changed).
fn imported_by(by: &str, what: &str, count: usize, body: &[u8]) -> Vec<crate::audit::Record> {
    (count > 0)
        .then(|| {
            crate::audit::Record::now(crate::audit::Event::import(by, what, None, count, body))
        })
        .into_iter()
        .collect()
}

/// Imports a FHIR bundle of practitioners into the provider directory, `by` in the audit log
/// with them, in the same write.
pub async fn import_providers(
    store: &std::sync::Arc<dyn crate::store::Store>,
    principal_system: &str,
    body: &[u8],
    by: &str,
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
            audit: imported_by(by, "providers", imported, body),
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

    /// A period holds from its start through its end at the precision each gives; a
    /// dateTime is taken as its day in UTC (an end late on the 5th in Honolulu is the 6th in
    /// UTC); anything that is not a FHIR date or dateTime is refused at the import, not read
    /// as text that never, or always, starts or ends.
    #[test]
    fn a_period_holds_at_the_precision_it_gives() {
        use crate::domain::directory::{ended_by, started_by};
        let p = |start: Option<&str>, end: Option<&str>| {
            period_of(Some(&serde_json::json!({ "start": start, "end": end })))
        };
        let end = |v: &str| p(None, Some(v)).unwrap().1.unwrap();
        let start = |v: &str| p(Some(v), None).unwrap().0.unwrap();
        let today = "2026-12-06";
        assert!(ended_by(&end("2026-12-05"), today));
        assert!(!ended_by(&end("2026-12-06"), today), "through its last day");
        assert!(!ended_by(&end("2026-12"), today));
        assert!(ended_by(&end("2025"), today));
        assert!(!ended_by(&end("2026-12-06T23:00:00Z"), today));
        assert_eq!(end("2026-12-05T23:00:00-10:00"), "2026-12-06");
        assert!(!ended_by(&end("2026-12-05T23:00:00-10:00"), today));
        assert!(started_by(&start("2026-12"), today));
        assert!(started_by(&start("2026-12-06"), today));
        assert!(!started_by(&start("2026-12-07"), today));
        assert!(!started_by(&start("2027"), today));
        assert!(!started_by(&start("2026-12-06T23:00:00-10:00"), today));
        assert_eq!(p(None, None), Ok((None, None)));
        // a dateTime without the zone FHIR requires (as exports write it): its own day
        assert_eq!(end("2027-03-05T23:30:00"), "2027-03-05");
        for bad in [
            "TBD",
            "03/05/2027",
            "2027-13",
            "2027-02-30",
            "2027-03-05T25:00:00",
            "2027-03-05T10:00",
            "2027-03-05T10",
            "27",
        ] {
            assert!(p(Some(bad), None).is_err(), "{bad}");
            assert!(p(None, Some(bad)).is_err(), "{bad}");
        }
    }

    /// A patient whose first email's or first contact's period cannot be read is refused with
    /// a reason (as an address that is not one); a later one's is left out.
    #[test]
    fn a_period_that_is_not_a_date_is_refused_at_the_import() {
        let id = "ab".repeat(32);
        let with = |telecom: serde_json::Value, contact: serde_json::Value| {
            patient(
                &serde_json::json!({
                    "resourceType": "Patient",
                    "identifier": [{ "system": "urn:p", "value": id }],
                    "telecom": telecom,
                    "contact": contact,
                }),
                "urn:p",
            )
        };
        let email = |v: &str, end: &str| serde_json::json!({ "system": "email", "value": v, "period": { "end": end } });
        let refused = with(
            serde_json::json!([email("a@example.org", "TBD")]),
            serde_json::json!([]),
        );
        assert_eq!(
            refused.unwrap_err(),
            "telecom email period end is not a FHIR date or dateTime"
        );
        let (_, later) = with(
            serde_json::json!([
                email("a@example.org", "2999"),
                email("b@example.org", "TBD")
            ]),
            serde_json::json!([]),
        )
        .unwrap();
        assert_eq!(later.emails.len(), 1, "the later one left out");
        let guardian = serde_json::json!([
            { "relationship": [{ "text": "guardian" }], "period": { "start": "soon" },
              "telecom": [{ "system": "email", "value": "g@example.org" }] },
        ]);
        assert_eq!(
            with(serde_json::json!([]), guardian).unwrap_err(),
            "contact period start is not a FHIR date or dateTime"
        );
        // a contact without an email (a phone number alone) is not read further
        let phone = serde_json::json!([
            { "relationship": [{ "text": "neighbour" }], "period": { "start": "unknown" },
              "telecom": [{ "system": "phone", "value": "+1 555 0100" }] },
        ]);
        let (_, contact) =
            with(serde_json::json!([email("a@example.org", "2999")]), phone).unwrap();
        assert!(contact.delegates.is_empty());
        // nor one whose only email is an old one
        let old = serde_json::json!([
            { "relationship": [{ "text": "neighbour" }], "period": { "start": "unknown" },
              "telecom": [{ "system": "email", "value": "n@example.org", "use": "old" }] },
        ]);
        let (_, contact) = with(serde_json::json!([email("a@example.org", "2999")]), old).unwrap();
        assert!(contact.delegates.is_empty());
    }
}
