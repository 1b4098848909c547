//! SMART v2 granular scopes: what a break-glass token opens, resource by resource
//! (`patient/AllergyIntolerance.rs`), and within a resource type shared by several data types,
//! by a `category` or `code` (`patient/Observation.rs?code=http://loinc.org|882-1` is blood type,
//! not labs). A scope with a parameter grants only resources that carry that coding; a
//! parameter this service does not know grants nothing, never the bare resource
//! (`../shared/standards.md`).
//!
//! It must not: do I/O.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use crate::domain::DataType;

pub const LOINC: &str = "http://loinc.org";
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const DIAGNOSTIC_SERVICE: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";
pub const DOCUMENT_CATEGORY: &str =
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category";

/// Which element a scope's parameter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    Category,
    Code,
}

impl Param {
    fn as_str(self) -> &'static str {
        match self {
            Param::Category => "category",
            Param::Code => "code",
        }
    }
}

/// `patient/<resource>.rs`, optionally narrowed to resources whose `category` or `code` has
/// the coding `system|code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub resource: String,
    pub filter: Option<(Param, String, String)>,
}

impl Scope {
    fn bare(resource: &str) -> Scope {
        Scope {
            resource: resource.into(),
            filter: None,
        }
    }

    fn with(resource: &str, param: Param, system: &str, code: &str) -> Scope {
        Scope {
            resource: resource.into(),
            filter: Some((param, system.into(), code.into())),
        }
    }

    /// Whether this scope grants `resource` (a FHIR resource as JSON).
    pub fn allows(&self, resource: &Value) -> bool {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return false;
        }
        let Some((param, system, code)) = &self.filter else {
            return true;
        };
        // `category` is a list of CodeableConcepts on most resources, one on some; `code` one
        let element = &resource[param.as_str()];
        let concepts: Vec<&Value> = match element {
            Value::Array(list) => list.iter().collect(),
            Value::Object(_) => vec![element],
            _ => Vec::new(),
        };
        concepts.iter().any(|c| {
            c["coding"].as_array().is_some_and(|codings| {
                codings.iter().any(|k| {
                    k["system"].as_str() == Some(system) && k["code"].as_str() == Some(code)
                })
            })
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "patient/{}.rs", self.resource)?;
        if let Some((param, system, code)) = &self.filter {
            write!(f, "?{}={system}|{code}", param.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for Scope {
    type Err = String;

    /// A scope as this service writes them; anything else (another context, other rights, an
    /// unknown parameter) is refused, so that it can never grant more than it says.
    fn from_str(s: &str) -> Result<Scope, String> {
        let rest = s
            .strip_prefix("patient/")
            .ok_or_else(|| format!("{s}: not a patient/ scope"))?;
        let (head, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let resource = head
            .strip_suffix(".rs")
            .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
            .ok_or_else(|| format!("{s}: not a read-and-search scope of one resource type"))?;
        let filter = match query {
            None => None,
            Some(q) => {
                let (name, value) = q
                    .split_once('=')
                    .ok_or_else(|| format!("{s}: a parameter without a value"))?;
                let param = match name {
                    "category" => Param::Category,
                    "code" => Param::Code,
                    _ => return Err(format!("{s}: the parameter {name} is not understood")),
                };
                let (system, code) = value
                    .split_once('|')
                    .filter(|(sys, c)| !sys.is_empty() && !c.is_empty() && !c.contains('&'))
                    .ok_or_else(|| format!("{s}: the parameter is not system|code"))?;
                Some((param, system.to_string(), code.to_string()))
            }
        };
        Ok(Scope {
            resource: resource.into(),
            filter,
        })
    }
}

/// The scopes a data type opens.
pub fn of(data_type: DataType) -> Vec<Scope> {
    use Param::*;
    match data_type {
        DataType::Allergies => vec![Scope::bare("AllergyIntolerance")],
        DataType::Medications => vec![
            Scope::bare("MedicationStatement"),
            Scope::bare("MedicationRequest"),
        ],
        DataType::Problems => vec![Scope::bare("Condition")],
        // ABO and Rh group
        DataType::BloodType => vec![Scope::with("Observation", Code, LOINC, "882-1")],
        DataType::Vitals => vec![Scope::with(
            "Observation",
            Category,
            OBSERVATION_CATEGORY,
            "vital-signs",
        )],
        DataType::LabResults => vec![
            Scope::with("Observation", Category, OBSERVATION_CATEGORY, "laboratory"),
            Scope::with("DiagnosticReport", Category, DIAGNOSTIC_SERVICE, "LAB"),
        ],
        // the IPS advance directives section (LOINC 42348-3)
        DataType::AdvanceDirectives => vec![
            Scope::with("Consent", Category, LOINC, "42348-3"),
            Scope::with("DocumentReference", Category, LOINC, "42348-3"),
        ],
        DataType::Immunizations => vec![Scope::bare("Immunization")],
        // the whole critical set, as the IPS operation returns it
        DataType::EmergencySummary => DataType::SUMMARY_SECTIONS
            .into_iter()
            .flat_map(of)
            .collect(),
        DataType::Procedures => vec![Scope::bare("Procedure")],
        DataType::Imaging => vec![Scope::bare("ImagingStudy")],
        DataType::ClinicalNotes => vec![Scope::with(
            "DocumentReference",
            Category,
            DOCUMENT_CATEGORY,
            "clinical-note",
        )],
    }
}

/// The scopes of `data_types`, each once, in order.
pub fn of_all(data_types: &[DataType]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for s in data_types.iter().flat_map(|d| of(*d)) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// A token's `scope` claim, parsed; scopes this service does not write are left out (they
/// grant nothing here).
pub fn parse_claim(claim: &str) -> Vec<Scope> {
    claim
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blood_type_does_not_open_labs_and_every_scope_reads_back() {
        for dt in DataType::ALL {
            for s in of(*dt) {
                assert_eq!(s.to_string().parse::<Scope>().unwrap(), s, "{s}");
            }
        }
        let blood = &of(DataType::BloodType)[0];
        assert_eq!(
            blood.to_string(),
            "patient/Observation.rs?code=http://loinc.org|882-1"
        );
        let abo = json!({"resourceType": "Observation", "code": {"coding": [{"system": LOINC, "code": "882-1"}]}});
        let lab = json!({"resourceType": "Observation", "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
                         "code": {"coding": [{"system": LOINC, "code": "2345-7"}]}});
        assert!(blood.allows(&abo));
        assert!(!blood.allows(&lab));
        assert!(of(DataType::LabResults)[0].allows(&lab));
        assert!(!of(DataType::LabResults)[0].allows(&abo));
        // an unknown parameter, another context or rights grant nothing
        for bad in [
            "patient/Observation.rs?status=final",
            "user/Observation.rs",
            "patient/Observation.cruds",
            "patient/*.rs",
            "patient/Observation.rs?code=882-1",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
        assert_eq!(parse_claim("patient/*.rs patient/Condition.rs").len(), 1);
    }
}
