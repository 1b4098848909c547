//! Rendering a notice: the patient's language, plain-text and HTML parts from the templates in
//! `templates/`, a `Message-ID` fixed by the access id (and, for a notice opened again after
//! nobody could be told, by when it was opened). What it may say: who (the clinician's
//! role, never their key), which kinds of data (names only, never values), when, the stated
//! reason, the chain record, and how to contest.
//!
//! It must not: send, or name the clinical data opened (the notice says which data types, not what
//! they held).

use lettre::message::{Mailbox, MultiPart};
use lettre::Message;
use minijinja::{context, Environment};

use crate::domain::{Contact, Language};
use crate::domain::{DataType, Role};
use crate::store::AccessRecord;

/// A message ready to send: envelope and RFC 5322 bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendered {
    pub from: String,
    pub to: Vec<String>,
    /// Whose address each of `to` is (none in a message made before they were kept: then a
    /// message of two is the patient's and the delegate's, in that order, and one of one the
    /// patient's, as a contact with an email names it first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub whose: Vec<Whom>,
    pub message_id: String,
    #[serde(with = "hex_bytes")]
    pub raw: Vec<u8>,
}

/// Whose address a recipient of a notice is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whom {
    Patient,
    Delegate,
}

impl Rendered {
    /// Whose address the recipient at `place` is: as the message says, or, for one made before
    /// it said, by place (`whose`).
    pub fn whose(&self, place: u8) -> Option<Whom> {
        let place = usize::from(place);
        if !self.whose.is_empty() {
            return self.whose.get(place).copied();
        }
        match self.to.len() {
            1 | 2 => [Whom::Patient, Whom::Delegate].get(place).copied(),
            _ => None,
        }
    }
}

/// The addresses a notice goes to, whose each is: the patient's, then the delegate's (one
/// address that is both is sent to once, as the patient's).
pub fn recipients(contact: &Contact) -> Vec<(&str, Whom)> {
    let mut out: Vec<(&str, Whom)> = Vec::new();
    let named = contact
        .email
        .iter()
        .map(|e| (e.as_str(), Whom::Patient))
        .chain(
            contact
                .delegate
                .iter()
                .map(|d| (d.email.as_str(), Whom::Delegate)),
        );
    for (address, whom) in named {
        if !out.iter().any(|(a, _)| same_address(a, address)) {
            out.push((address, whom));
        }
    }
    out
}

/// Whether two addresses are one (compared whole, in any case).
pub fn same_address(a: &str, b: &str) -> bool {
    a.to_lowercase() == b.to_lowercase()
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

/// The chain record the notice points to, as the notice says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// Recorded by this transaction (its id, hex).
    Transaction(String),
    /// Recorded under the access id by a transaction this service does not know (the chain
    /// had the record already).
    AccessId,
    /// Not recorded: the contract refused the record. The notice says so, not a proof.
    NotRecorded,
    /// Not on chain yet after `notify.chain_wait_hours` (the node away, the record stuck):
    /// the notice says it is not confirmed yet, and goes out instead of waiting longer.
    Pending,
}

impl Proof {
    /// The templates' name for it.
    fn kind(&self) -> &'static str {
        match self {
            Proof::Transaction(_) => "transaction",
            Proof::AccessId => "access-id",
            Proof::NotRecorded => "not-recorded",
            Proof::Pending => "pending",
        }
    }

    fn txid(&self) -> Option<&str> {
        match self {
            Proof::Transaction(txid) => Some(txid),
            _ => None,
        }
    }
}

pub struct Templates {
    env: Environment<'static>,
}

macro_rules! templates {
    ($env:ident, $($name:literal),+) => {
        $( $env.add_template($name, include_str!(concat!("../../templates/", $name)))?; )+
    };
}

impl Templates {
    pub fn new() -> Result<Templates, minijinja::Error> {
        let mut env = Environment::new();
        templates!(
            env,
            "notice.en.subject",
            "notice.en.txt",
            "notice.en.html",
            "notice.es.subject",
            "notice.es.txt",
            "notice.es.html"
        );
        Ok(Templates { env })
    }

    fn render(&self, name: &str, ctx: &minijinja::Value) -> Result<String, minijinja::Error> {
        self.env.get_template(name)?.render(ctx)
    }
}

fn role_label(role: Role, lang: Language) -> &'static str {
    match (lang, role) {
        (Language::En, Role::Physician) => "a physician",
        (Language::En, Role::Nurse) => "a nurse",
        (Language::En, Role::Paramedic) => "a paramedic",
        (Language::En, Role::Pharmacist) => "a pharmacist",
        (Language::En, Role::Reviewer) => "a reviewer",
        (Language::En, Role::Admin) => "an administrator",
        (Language::Es, Role::Physician) => "un/a médico/a",
        (Language::Es, Role::Nurse) => "un/a enfermero/a",
        (Language::Es, Role::Paramedic) => "un/a técnico/a de emergencias",
        (Language::Es, Role::Pharmacist) => "un/a farmacéutico/a",
        (Language::Es, Role::Reviewer) => "un/a revisor/a",
        (Language::Es, Role::Admin) => "un/a administrador/a",
    }
}

fn verified(lang: Language) -> &'static str {
    match lang {
        Language::En => "with credentials verified on chain",
        Language::Es => "con credenciales verificadas en la cadena",
    }
}

fn data_type_label(dt: DataType, lang: Language) -> &'static str {
    use DataType::*;
    match (lang, dt) {
        (Language::En, Allergies) => "allergies",
        (Language::En, Medications) => "medications",
        (Language::En, Problems) => "problems and diagnoses",
        (Language::En, BloodType) => "blood type",
        (Language::En, AdvanceDirectives) => "advance directives",
        (Language::En, Immunizations) => "immunizations",
        (Language::En, EmergencySummary) => "emergency summary",
        (Language::En, Vitals) => "vital signs",
        (Language::En, LabResults) => "lab results",
        (Language::En, Procedures) => "procedures",
        (Language::En, Imaging) => "imaging",
        (Language::En, ClinicalNotes) => "clinical notes",
        (Language::Es, Allergies) => "alergias",
        (Language::Es, Medications) => "medicación",
        (Language::Es, Problems) => "problemas y diagnósticos",
        (Language::Es, BloodType) => "grupo sanguíneo",
        (Language::Es, AdvanceDirectives) => "instrucciones previas",
        (Language::Es, Immunizations) => "vacunas",
        (Language::Es, EmergencySummary) => "resumen de emergencia",
        (Language::Es, Vitals) => "constantes vitales",
        (Language::Es, LabResults) => "resultados de laboratorio",
        (Language::Es, Procedures) => "procedimientos",
        (Language::Es, Imaging) => "imagen médica",
        (Language::Es, ClinicalNotes) => "notas clínicas",
    }
}

fn timestamp(secs: u64) -> String {
    jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// The provider as the notice names them: from the directory when its entry is verified
/// against the chain, else by role alone.
pub fn who(
    role: Role,
    verified_entry: Option<&crate::domain::ProviderEntry>,
    lang: Language,
) -> String {
    let role_text = role_label(role, lang);
    match verified_entry {
        Some(e) => {
            let mut s = format!("{}, {role_text}", e.display_name);
            if let Some(d) = &e.department {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(o) = &e.organization {
                s.push_str(&format!(", {o}"));
            }
            format!("{s}, {}", verified(lang))
        }
        None => format!("{role_text} {}", verified(lang)),
    }
}

pub struct NoticeSettings<'a> {
    pub from: &'a str,
    pub explorer_tx_url: Option<&'a str>,
    pub contest: &'a str,
    /// When the notice was opened again, if it was: nobody could be told at first, and the
    /// patient's contact was imported since (`Notice::reopened`). The message says it comes
    /// late, and has a Message-ID of its own (`<access id.reopened@domain>`): a message made
    /// before the notice closed may have reached someone, and one Message-ID names one message.
    pub reopened: Option<u64>,
}

/// The notice of `access` for `contact`.
pub fn render(
    templates: &Templates,
    settings: &NoticeSettings,
    access: &AccessRecord,
    reason: &str,
    provider: Option<&crate::domain::ProviderEntry>,
    contact: &Contact,
    proof: &Proof,
) -> anyhow::Result<Rendered> {
    let lang = contact.language;
    let from: Mailbox = settings.from.parse()?;
    let domain = from.email.domain().to_string();
    let message_id = match settings.reopened {
        Some(at) => format!("<{}.{at}@{domain}>", access.id),
        None => format!("<{}@{domain}>", access.id),
    };
    let ctx = context! {
        name => &contact.name,
        who => who(access.role, provider, lang),
        data_types => access.data_types.iter().map(|d| data_type_label(*d, lang)).collect::<Vec<_>>(),
        when => timestamp(access.granted_at),
        until => timestamp(access.expires_at),
        reason => reason,
        access_id => access.id.to_string(),
        proof => proof.kind(),
        txid => proof.txid(),
        explorer_url => proof.txid().and_then(|t| settings.explorer_tx_url.map(|u| u.replace("{txid}", t))),
        contest => settings.contest,
        late => settings.reopened.is_some(),
    };
    let code = lang.code();
    let subject = templates.render(&format!("notice.{code}.subject"), &ctx)?;
    let text = templates.render(&format!("notice.{code}.txt"), &ctx)?;
    let html = templates.render(&format!("notice.{code}.html"), &ctx)?;
    let mut builder = Message::builder()
        .from(from.clone())
        .message_id(Some(message_id.clone()))
        .subject(subject.trim())
        .date_now();
    // no `To:` here: each recipient's copy names them alone (`mailer::addressed`), so that the
    // patient and their delegate do not see each other's address
    let recipients = recipients(contact);
    let envelope = lettre::address::Envelope::new(
        Some(from.email.clone()),
        recipients
            .iter()
            .map(|(to, _)| to.parse())
            .collect::<Result<Vec<lettre::Address>, _>>()?,
    )?;
    builder = builder.envelope(envelope);
    let message = builder.multipart(MultiPart::alternative_plain_html(text, html))?;
    Ok(Rendered {
        from: from.email.to_string(),
        to: recipients.iter().map(|(r, _)| r.to_string()).collect(),
        whose: recipients.iter().map(|(_, w)| *w).collect(),
        message_id,
        raw: message.formatted(),
    })
}
