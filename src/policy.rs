//! Break-glass policies, in Cedar (`policies/`): who may open which data types, and for how
//! long. Loaded and validated against the schema at start; every policy must carry an `@id`
//! and every permit a positive `@window_minutes`. The files in the repository are built in as
//! the defaults.
//!
//! It must not: load a set that fails against the schema or grants everything on a stale view.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request, Schema, ValidationMode,
    Validator,
};
use serde_json::json;

use crate::domain::{covering, DataType, OnCall, Role};

pub const DEFAULT_SCHEMA: &str = include_str!("../policies/breakglass.cedarschema");
pub const DEFAULT_POLICIES: &str = include_str!("../policies/breakglass.cedar");
/// The critical (emergency) data types: the summary and its sections.
fn critical(dt: DataType) -> bool {
    dt == DataType::EmergencySummary || DataType::SUMMARY_SECTIONS.contains(&dt)
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("schema: {0}")]
    Schema(String),
    #[error("policies: {0}")]
    Parse(String),
    #[error("policies do not validate against the schema: {0}")]
    Invalid(String),
    #[error("policy {0}: {1}")]
    Annotation(String, String),
    #[error("the policies permit every grant on a stale view of the chain (context.chain_stale), which may miss a suspension or an opt-out: keep the default's `chain-state-stale` forbid, or narrow it to the data types a degraded mode may open")]
    Unguarded,
}

/// What the policies see of a request beyond the clinician and the data types
/// (`context` in Cedar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Situation<'a> {
    /// Why the clinician counts as on call; `None` when on-call is not checked.
    pub on_call: Option<&'a OnCall>,
    /// How many blocks the service's view of the chain may be behind the node's tip (when
    /// the node cannot be reached: the blocks that could have been mined since it last
    /// answered).
    pub chain_lag_blocks: u64,
    /// Whether the node answered recently.
    pub chain_reachable: bool,
    /// Beyond `follower.max_lag_blocks`: the view may miss a suspension or an opt-out.
    pub chain_stale: bool,
    /// Whether the patient id is registered in patient-consent (an unregistered one has the
    /// contract's default preferences).
    pub patient_registered: bool,
}

impl Situation<'_> {
    /// A fresh view of the chain and a registered patient, without on-call: what
    /// `breakglass policy check` shows.
    pub const NORMAL: Situation<'static> = Situation {
        on_call: None,
        chain_lag_blocks: 0,
        chain_reachable: true,
        chain_stale: false,
        patient_registered: true,
    };

    /// The context attributes a decision table is kept for, every combination of them.
    fn table_key(&self) -> (bool, bool, bool) {
        (
            self.chain_reachable,
            self.chain_stale,
            self.patient_registered,
        )
    }
}

/// Context attributes with few enough values that decisions can be made once for each.
const ENUMERABLE: [&str; 3] = ["chain_reachable", "chain_stale", "patient_registered"];

/// The decision for one request (all its data types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Permit {
        window_minutes: u32,
        rules: Vec<String>,
    },
    Deny {
        data_type: DataType,
        rule: Option<String>,
        message: String,
    },
}

pub struct Policies {
    set: PolicySet,
    schema: Schema,
    action: EntityUid,
    /// Every (role, data type, enumerable context) decided once at load, unless a policy
    /// names a provider or reads a context attribute with many values (`on_call`,
    /// `chain_lag_blocks`), in which case nothing is precomputed.
    table: Option<HashMap<TableKey, Verdict>>,
}

/// A precomputed decision's key: the role, the data type and `Situation::table_key`.
type TableKey = (Role, DataType, (bool, bool, bool));

/// Whether a policy (its Cedar JSON form) names a `Provider` entity (`principal ==
/// Provider::"..."`, a literal in a condition) or reads `context` other than through the
/// `ENUMERABLE` attributes: then its decision is not a function of the role, the data type
/// and those.
fn decided_per_request(json: &serde_json::Value) -> bool {
    match json {
        serde_json::Value::Object(m) => {
            let provider = ["entity", "__entity"].iter().any(|k| {
                m.get(*k)
                    .and_then(|e| e.get("type"))
                    .and_then(serde_json::Value::as_str)
                    .is_some_and(|t| t.rsplit("::").next() == Some("Provider"))
            });
            // `context.attr` and `context has attr`
            let read = [".", "has"].iter().find_map(|op| {
                let access = m.get(*op)?;
                let left = access.get("left")?.get("Var")?.as_str()?;
                (left == "context").then(|| access.get("attr").and_then(|a| a.as_str()))
            });
            match read {
                Some(Some(attr)) if ENUMERABLE.contains(&attr) => false,
                Some(_) => true,
                None => {
                    let context =
                        m.get("Var").and_then(serde_json::Value::as_str) == Some("context");
                    provider || context || m.values().any(decided_per_request)
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().any(decided_per_request),
        _ => false,
    }
}

impl Policies {
    pub fn from_sources(schema_src: &str, policies_src: &str) -> Result<Policies, PolicyError> {
        let (schema, _warnings) = Schema::from_cedarschema_str(schema_src)
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        let set =
            PolicySet::from_str(policies_src).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(PolicyError::Invalid(errors.join("; ")));
        }
        for p in set.policies() {
            let id = p
                .annotation("id")
                .ok_or_else(|| PolicyError::Annotation(p.id().to_string(), "has no @id".into()))?;
            if p.effect() == cedar_policy::Effect::Permit {
                match p.annotation("window_minutes").map(str::parse::<u32>) {
                    Some(Ok(m)) if m > 0 => {}
                    _ => {
                        return Err(PolicyError::Annotation(
                            id.into(),
                            "a permit needs @window_minutes with a positive number".into(),
                        ))
                    }
                }
            }
        }
        let action = EntityUid::from_str(r#"Breakglass::Action::"break-glass""#)
            .map_err(|e| PolicyError::Schema(e.to_string()))?;
        // a policy that names a provider or reads on-call or the lag decides per request;
        // read from its JSON form, whatever the source's spacing
        let mut per_request = false;
        for p in set.policies() {
            let json = p
                .to_json()
                .map_err(|e| PolicyError::Parse(format!("{}: {e}", p.id())))?;
            per_request |= decided_per_request(&json);
        }
        let mut policies = Policies {
            set,
            schema,
            action,
            table: None,
        };
        if !per_request {
            let mut table = HashMap::new();
            for role in Role::ALL {
                for dt in DataType::ALL {
                    for bits in 0..8u8 {
                        let situation = Situation {
                            chain_reachable: bits & 1 != 0,
                            chain_stale: bits & 2 != 0,
                            patient_registered: bits & 4 != 0,
                            ..Situation::NORMAL
                        };
                        table.insert(
                            (*role, *dt, situation.table_key()),
                            policies.evaluate(
                                "ST000000000000000000002AMW42H",
                                *role,
                                &[*dt],
                                &situation,
                            )?,
                        );
                    }
                }
            }
            policies.table = Some(table);
        }
        policies.check_stale_guard()?;
        Ok(policies)
    }

    /// Refuses a set that refuses nothing on a stale view of the chain (one written before
    /// `context.chain_stale`, or that dropped the default's forbid): it would grant on state
    /// that may miss a suspension. Evaluating every role and data type here also makes a set
    /// that fails against the schema fail at start, not at its first request.
    fn check_stale_guard(&self) -> Result<(), PolicyError> {
        let stale = Situation {
            chain_stale: true,
            chain_reachable: false,
            chain_lag_blocks: 1_000_000,
            ..Situation::NORMAL
        };
        let mut permits = false;
        for role in Role::ALL {
            for dt in DataType::ALL {
                let sample = "ST000000000000000000002AMW42H";
                let fresh = self.evaluate(sample, *role, &[*dt], &Situation::NORMAL)?;
                if matches!(fresh, Verdict::Permit { .. }) {
                    permits = true;
                    if matches!(
                        self.evaluate(sample, *role, &[*dt], &stale)?,
                        Verdict::Deny { .. }
                    ) {
                        return Ok(());
                    }
                }
            }
        }
        if permits {
            Err(PolicyError::Unguarded)
        } else {
            Ok(())
        }
    }

    /// The built-in defaults (the repository's `policies/`).
    pub fn defaults() -> Result<Policies, PolicyError> {
        Policies::from_sources(DEFAULT_SCHEMA, DEFAULT_POLICIES)
    }

    /// `breakglass.cedarschema` and every `*.cedar` file of `dir`.
    pub fn load(dir: &Path) -> Result<Policies, PolicyError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| PolicyError::Read(p.display().to_string(), e))
        };
        let schema = read(&dir.join("breakglass.cedarschema"))?;
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| PolicyError::Read(dir.display().to_string(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect();
        files.sort();
        let mut policies = String::new();
        for f in files {
            policies.push_str(&read(&f)?);
            policies.push('\n');
        }
        Policies::from_sources(&schema, &policies)
    }

    fn rule_name(&self, id: &cedar_policy::PolicyId) -> String {
        self.set
            .annotation(id, "id")
            .unwrap_or(id.as_ref())
            .to_string()
    }

    /// Decides a request: every data type it opens (`domain::covering`: the emergency
    /// summary opens its sections too) must be permitted; the window is the shortest of the
    /// permits that decided. `situation` is the policies' `context`.
    pub fn decide(
        &self,
        provider: &str,
        role: Role,
        data_types: &[DataType],
        situation: &Situation,
    ) -> Result<Verdict, PolicyError> {
        let verdict = self.decide_each(provider, role, &covering(data_types), situation)?;
        Ok(match verdict {
            Verdict::Deny {
                data_type,
                rule,
                message,
            } if !data_types.contains(&data_type) => Verdict::Deny {
                data_type,
                rule,
                message: format!(
                    "{message}, a section of the {} asked for",
                    DataType::EmergencySummary
                ),
            },
            v => v,
        })
    }

    /// `decide` over data types already covering what they open.
    fn decide_each(
        &self,
        provider: &str,
        role: Role,
        data_types: &[DataType],
        situation: &Situation,
    ) -> Result<Verdict, PolicyError> {
        let Some(table) = &self.table else {
            return self.evaluate(provider, role, data_types, situation);
        };
        let mut window = u32::MAX;
        let mut rules: Vec<String> = Vec::new();
        for dt in data_types {
            match table.get(&(role, *dt, situation.table_key())) {
                Some(Verdict::Permit {
                    window_minutes,
                    rules: r,
                }) => {
                    window = window.min(*window_minutes);
                    for name in r {
                        if !rules.contains(name) {
                            rules.push(name.clone());
                        }
                    }
                }
                Some(deny) => return Ok(deny.clone()),
                None => return self.evaluate(provider, role, data_types, situation),
            }
        }
        Ok(Verdict::Permit {
            window_minutes: if window == u32::MAX { 0 } else { window },
            rules,
        })
    }

    /// Asks Cedar (what `decide` precomputes per role and data type).
    fn evaluate(
        &self,
        provider: &str,
        role: Role,
        data_types: &[DataType],
        situation: &Situation,
    ) -> Result<Verdict, PolicyError> {
        let mut context = json!({
            "chain_lag_blocks": i64::try_from(situation.chain_lag_blocks).unwrap_or(i64::MAX),
            "chain_reachable": situation.chain_reachable,
            "chain_stale": situation.chain_stale,
            "patient_registered": situation.patient_registered,
        });
        if let Some(o) = situation.on_call {
            context["on_call"] = json!({
                "source": o.source,
                "service": o.service.clone().unwrap_or_default(),
                "since": o.since.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
                "until": o.until.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
                "incident": o.incident.clone().unwrap_or_default(),
                "acknowledged": o.acknowledged,
            });
        }
        let principal = EntityUid::from_str(&format!("Breakglass::Provider::{}", json!(provider)))
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        let mut entities = vec![
            json!({ "uid": { "type": "Breakglass::Provider", "id": provider }, "attrs": { "role": role.as_str() }, "parents": [] }),
        ];
        for dt in data_types {
            entities.push(json!({
                "uid": { "type": "Breakglass::DataType", "id": dt.as_str() },
                "attrs": { "critical": critical(*dt) },
                "parents": []
            }));
        }
        let entities = Entities::from_json_value(json!(entities), Some(&self.schema))
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        let mut window = u32::MAX;
        let mut rules = Vec::new();
        for dt in data_types {
            let resource =
                EntityUid::from_str(&format!("Breakglass::DataType::{}", json!(dt.as_str())))
                    .map_err(|e| PolicyError::Parse(e.to_string()))?;
            let request = Request::new(
                principal.clone(),
                self.action.clone(),
                resource,
                Context::from_json_value(context.clone(), Some((&self.schema, &self.action)))
                    .map_err(|e| PolicyError::Parse(e.to_string()))?,
                Some(&self.schema),
            )
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
            let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
            let reasons: Vec<_> = response.diagnostics().reason().cloned().collect();
            if response.decision() == Decision::Deny {
                let rule = reasons.first().map(|id| self.rule_name(id));
                let message = match &rule {
                    Some(r) => format!("role {role} may not open {dt} (policy {r})"),
                    None => format!("role {role} may not open {dt} (no policy permits it)"),
                };
                return Ok(Verdict::Deny {
                    data_type: *dt,
                    rule,
                    message,
                });
            }
            // the longest any deciding permit allows for this type; the request gets the
            // shortest over its types
            let allowed = reasons
                .iter()
                .filter_map(|id| {
                    self.set
                        .annotation(id, "window_minutes")?
                        .parse::<u32>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            window = window.min(allowed);
            for id in &reasons {
                let name = self.rule_name(id);
                if !rules.contains(&name) {
                    rules.push(name);
                }
            }
        }
        Ok(Verdict::Permit {
            window_minutes: if window == u32::MAX { 0 } else { window },
            rules,
        })
    }

    /// What each role may open and for how long, for `breakglass policy check`.
    pub fn matrix(&self) -> Result<serde_json::Value, PolicyError> {
        let mut out = serde_json::Map::new();
        for role in Role::ALL {
            let mut row = serde_json::Map::new();
            for dt in DataType::ALL {
                let v = match self.decide(
                    "ST000000000000000000002AMW42H",
                    *role,
                    &[*dt],
                    &Situation::NORMAL,
                )? {
                    Verdict::Permit { window_minutes, .. } => {
                        json!(format!("{window_minutes} min"))
                    }
                    Verdict::Deny { rule, .. } => {
                        json!(rule.map_or("no".to_string(), |r| format!("no ({r})")))
                    }
                };
                row.insert(dt.to_string(), v);
            }
            out.insert(role.to_string(), json!(row));
        }
        Ok(json!(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_decided_once_per_role_and_data_type() {
        // the break-glass path reads a table for them, and asks Cedar only when a policy
        // names a provider or reads on-call or the lag
        assert!(Policies::defaults().unwrap().table.is_some());
        let lag = format!(
            "{DEFAULT_POLICIES}\n@id(\"x\")\nforbid (principal, action, resource) when {{ context.chain_lag_blocks > 1 }};"
        );
        assert!(Policies::from_sources(DEFAULT_SCHEMA, &lag)
            .unwrap()
            .table
            .is_none());
        // the context's booleans are few enough to decide for each combination
        let registered = format!(
            "{DEFAULT_POLICIES}\n@id(\"x\")\nforbid (principal, action, resource) when {{ !context.patient_registered && !(context has on_call) }};"
        );
        assert!(
            Policies::from_sources(DEFAULT_SCHEMA, &registered)
                .unwrap()
                .table
                .is_none(),
            "`has on_call` reads on-call"
        );
        let registered = format!(
            "{DEFAULT_POLICIES}\n@id(\"x\")\nforbid (principal, action, resource) when {{ !context.patient_registered && context.chain_reachable }};"
        );
        assert!(Policies::from_sources(DEFAULT_SCHEMA, &registered)
            .unwrap()
            .table
            .is_some());
        let on_call = format!(
            "{DEFAULT_POLICIES}\n@id(\"x\")\nforbid (principal, action, resource) when {{ context has on_call }};"
        );
        assert!(Policies::from_sources(DEFAULT_SCHEMA, &on_call)
            .unwrap()
            .table
            .is_none());
    }

    /// The emergency summary opens its sections: a policy that keeps one closed keeps the
    /// summary closed, whether the table or Cedar decides.
    #[test]
    fn the_summary_is_permitted_only_where_each_of_its_sections_is() {
        let who = "ST000000000000000000002AMW42H";
        let defaults = Policies::defaults().unwrap();
        assert!(matches!(
            defaults.decide(
                who,
                Role::Physician,
                &[DataType::EmergencySummary],
                &Situation::NORMAL
            ),
            Ok(Verdict::Permit {
                window_minutes: 15,
                ..
            })
        ));
        let no_directives = format!(
            "{DEFAULT_POLICIES}\n@id(\"no-directives\")\nforbid (principal, action, resource == Breakglass::DataType::\"advance-directives\");"
        );
        // and the same policy read by Cedar at each request (it names a provider)
        let by_cedar = format!(
            "{no_directives}\n@id(\"y\")\nforbid (principal == Breakglass::Provider::\"nobody\", action, resource);"
        );
        for source in [&no_directives, &by_cedar] {
            let policies = Policies::from_sources(DEFAULT_SCHEMA, source).unwrap();
            assert_eq!(policies.table.is_some(), source == &no_directives);
            match policies
                .decide(
                    who,
                    Role::Physician,
                    &[DataType::EmergencySummary],
                    &Situation::NORMAL,
                )
                .unwrap()
            {
                Verdict::Deny {
                    data_type,
                    rule,
                    message,
                } => {
                    assert_eq!(data_type, DataType::AdvanceDirectives);
                    assert_eq!(rule.as_deref(), Some("no-directives"));
                    assert!(
                        message.contains("a section of the emergency-summary"),
                        "{message}"
                    );
                }
                v => panic!("the summary opened past its section's forbid: {v:?}"),
            }
            // its other sections alone are still permitted
            assert!(matches!(
                policies.decide(
                    who,
                    Role::Physician,
                    &[DataType::Allergies],
                    &Situation::NORMAL
                ),
                Ok(Verdict::Permit { .. })
            ));
        }
    }
}
