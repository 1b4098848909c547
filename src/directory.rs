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
//! `contact` with an email (relationship kept as its display text).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::PatientId;

/// The languages notices are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    En,
    Es,
}

impl Language {
    /// A BCP 47 tag's language (`es`, `es-MX`, `ES`), if notices exist in it.
    pub fn from_tag(tag: &str) -> Option<Language> {
        match tag.split(['-', '_']).next()?.to_ascii_lowercase().as_str() {
            "en" => Some(Language::En),
            "es" => Some(Language::Es),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Es => "es",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegate {
    pub name: Option<String>,
    pub relationship: Option<String>,
    pub email: String,
}

/// How to reach a patient. Protected: only ever stored sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub name: Option<String>,
    pub email: Option<String>,
    pub language: Language,
    pub delegate: Option<Delegate>,
}

impl Contact {
    /// Everyone the notice goes to: the patient and their delegate.
    pub fn recipients(&self) -> Vec<&str> {
        self.email
            .iter()
            .map(String::as_str)
            .chain(self.delegate.iter().map(|d| d.email.as_str()))
            .collect()
    }
}

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

/// The email of a `telecom` list (the `home` one first), or an error naming the problem.
fn email_of(telecom: Option<&Value>) -> Result<Option<String>, String> {
    let Some(list) = telecom else { return Ok(None) };
    let list = list.as_array().ok_or("telecom is not a list")?;
    let mut emails: Vec<(&Value, &str)> = list
        .iter()
        .filter(|t| t.get("system").and_then(Value::as_str) == Some("email"))
        .map(|t| (t, t.get("value").and_then(Value::as_str).unwrap_or("")))
        .collect();
    emails.sort_by_key(|(t, _)| t.get("use").and_then(Value::as_str) != Some("home"));
    match emails.first() {
        None => Ok(None),
        Some((_, e)) if valid_email(e) => Ok(Some(e.to_string())),
        Some(_) => Err("telecom email is not a valid address".into()),
    }
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
    let email = email_of(resource.get("telecom"))?;
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
    let mut delegate = None;
    for c in resource
        .get("contact")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(email) = email_of(c.get("telecom")).map_err(|e| format!("contact {e}"))? {
            delegate = Some(Delegate {
                name: c.get("name").and_then(human_name),
                relationship: c
                    .pointer("/relationship/0/text")
                    .or_else(|| c.pointer("/relationship/0/coding/0/display"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                email,
            });
            break;
        }
    }
    if email.is_none() && delegate.is_none() {
        return Err("no email for the patient or a contact".into());
    }
    Ok((
        id,
        Contact {
            name: resource.get("name").and_then(human_name),
            email,
            language,
            delegate,
        },
    ))
}

/// Reads a FHIR R4 `Bundle` of `Patient` entries (or one `Patient`). Fails only when the
/// document itself is not a bundle; bad entries are listed in `rejected`.
pub fn parse_patients(body: &[u8], id_system: &str) -> Result<Parsed, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let resources: Vec<&Value> = match doc.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => doc
            .get("entry")
            .and_then(Value::as_array)
            .map(|e| {
                e.iter()
                    .map(|x| x.get("resource").unwrap_or(&Value::Null))
                    .collect()
            })
            .unwrap_or_default(),
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
) -> anyhow::Result<Result<ImportReport, String>> {
    let parsed = match parse_patients(body, id_system) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let mut contacts = Vec::with_capacity(parsed.patients.len());
    for (id, contact) in &parsed.patients {
        let sealed = keyring.seal(
            &crate::notify::contact_name(id),
            &serde_json::to_vec(contact)?,
        )?;
        contacts.push((*id, Some(sealed)));
    }
    let imported = contacts.len();
    if imported > 0 {
        crate::store::apply_async(
            store,
            crate::store::Batch {
                contacts,
                ..Default::default()
            },
        )
        .await?;
    }
    Ok(Ok(ImportReport {
        imported,
        rejected: parsed.rejected,
    }))
}
