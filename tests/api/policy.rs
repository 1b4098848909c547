//! The break-glass policies: the defaults the issue asks for, decisions over several data
//! types, and policy files that must be refused at start.

use breakglass::domain::{DataType, Role};
use breakglass::policy::{Policies, PolicyError, Situation, Verdict, DEFAULT_SCHEMA};
use DataType::*;

const WHO: &str = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";

fn window(p: &Policies, role: Role, dts: &[DataType]) -> Option<u32> {
    match p.decide(WHO, role, dts, &Situation::NORMAL).unwrap() {
        Verdict::Permit { window_minutes, .. } => Some(window_minutes),
        Verdict::Deny { .. } => None,
    }
}

#[test]
fn the_default_policies() {
    let p = Policies::defaults().unwrap();
    let critical = [
        Allergies,
        Medications,
        Problems,
        BloodType,
        AdvanceDirectives,
        Immunizations,
        EmergencySummary,
    ];
    for dt in critical {
        assert_eq!(
            window(&p, Role::Physician, &[dt]),
            Some(15),
            "physician {dt}"
        );
    }
    assert_eq!(
        window(&p, Role::Physician, &[ClinicalNotes]),
        None,
        "not critical"
    );
    for role in [Role::Nurse, Role::Paramedic] {
        for dt in [Allergies, Medications, BloodType, Problems] {
            assert_eq!(window(&p, role, &[dt]), Some(10), "{role} {dt}");
        }
        for dt in [
            AdvanceDirectives,
            Immunizations,
            EmergencySummary,
            LabResults,
        ] {
            assert_eq!(window(&p, role, &[dt]), None, "{role} {dt}");
        }
    }
    assert_eq!(
        window(&p, Role::Pharmacist, &[Medications, Allergies]),
        Some(10)
    );
    assert_eq!(window(&p, Role::Pharmacist, &[Problems]), None);
    for role in [Role::Reviewer, Role::Admin] {
        for dt in critical {
            match p.decide(WHO, role, &[dt], &Situation::NORMAL).unwrap() {
                Verdict::Deny { rule, message, .. } => {
                    assert_eq!(
                        rule.as_deref(),
                        Some("reviewers-and-admins-never-break-glass")
                    );
                    assert!(message.contains(role.as_str()));
                }
                other => panic!("{role} {dt}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_data_type_must_be_permitted_and_the_refusal_names_it() {
    let p = Policies::defaults().unwrap();
    match p
        .decide(
            WHO,
            Role::Nurse,
            &[Allergies, AdvanceDirectives, Medications],
            &Situation::NORMAL,
        )
        .unwrap()
    {
        Verdict::Deny {
            data_type,
            rule,
            message,
        } => {
            assert_eq!(data_type, AdvanceDirectives);
            assert_eq!(rule, None);
            assert_eq!(
                message,
                "role nurse may not open advance-directives (no policy permits it)"
            );
        }
        other => panic!("{other:?}"),
    }
    match p
        .decide(
            WHO,
            Role::Nurse,
            &[Allergies, Medications],
            &Situation::NORMAL,
        )
        .unwrap()
    {
        Verdict::Permit {
            window_minutes,
            rules,
        } => {
            assert_eq!(window_minutes, 10);
            assert_eq!(
                rules,
                vec!["nurses-and-paramedics-open-core-critical-data".to_string()]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn windows_take_the_longest_permit_per_type_and_the_shortest_across_types() {
    let extra = r#"
@id("physicians-allergies-briefly")
@window_minutes("5")
permit (principal, action == Breakglass::Action::"break-glass", resource == Breakglass::DataType::"allergies")
when { principal.role == "physician" };

@id("physicians-clinical-notes-briefly")
@window_minutes("3")
permit (principal, action == Breakglass::Action::"break-glass", resource == Breakglass::DataType::"clinical-notes")
when { principal.role == "physician" };
"#;
    let src = format!("{}\n{extra}", breakglass::policy::DEFAULT_POLICIES);
    let p = Policies::from_sources(DEFAULT_SCHEMA, &src).unwrap();
    // allergies: two permits decide (15 and 5 minutes); the type gets the longer
    assert_eq!(window(&p, Role::Physician, &[Allergies]), Some(15));
    // a request gets the shortest of its types
    assert_eq!(
        window(&p, Role::Physician, &[Allergies, ClinicalNotes]),
        Some(3)
    );
    match p
        .decide(
            WHO,
            Role::Physician,
            &[Allergies, ClinicalNotes],
            &Situation::NORMAL,
        )
        .unwrap()
    {
        Verdict::Permit { rules, .. } => assert_eq!(rules.len(), 3, "{rules:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_repository_policies_are_the_built_in_defaults() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let loaded = Policies::load(&dir).unwrap();
    assert_eq!(
        loaded.matrix().unwrap(),
        Policies::defaults().unwrap().matrix().unwrap()
    );
}

#[test]
fn bad_policy_files_are_refused_with_the_reason() {
    let permit = |body: &str| {
        format!("@id(\"x\")\n@window_minutes(\"5\")\npermit (principal, action == Breakglass::Action::\"break-glass\", resource) {body};")
    };
    let cases = [
        ("syntax", "permit (principal, action, resource".to_string()),
        ("unknown attribute", permit("when { principal.department == \"er\" }")),
        ("type error", permit("when { principal.role == 3 }")),
        ("no window", "@id(\"x\")\npermit (principal, action == Breakglass::Action::\"break-glass\", resource);".to_string()),
        ("zero window", "@id(\"x\")\n@window_minutes(\"0\")\npermit (principal, action == Breakglass::Action::\"break-glass\", resource);".to_string()),
        ("no id", "@window_minutes(\"5\")\npermit (principal, action == Breakglass::Action::\"break-glass\", resource);".to_string()),
    ];
    for (what, src) in cases {
        let e = Policies::from_sources(DEFAULT_SCHEMA, &src)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(
            matches!(
                e,
                PolicyError::Parse(_) | PolicyError::Invalid(_) | PolicyError::Annotation(..)
            ),
            "{what}: {e}"
        );
        assert!(!e.to_string().is_empty());
    }
    assert!(matches!(
        Policies::from_sources("namespace {", "").err().unwrap(),
        PolicyError::Schema(_)
    ));
}

#[test]
fn a_policy_naming_one_provider_applies_to_that_provider_only() {
    // however the provider is written: on one line, across lines, in a condition
    for extra in [
        r#"
@id("this-nurse-is-barred")
forbid (principal == Breakglass::Provider::"ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG", action == Breakglass::Action::"break-glass", resource);
"#,
        r#"
@id("this-nurse-is-barred")
forbid (principal == Breakglass::Provider::
  "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG", action == Breakglass::Action::"break-glass", resource);
"#,
        r#"
@id("this-nurse-is-barred")
forbid (principal, action, resource)
when { principal == Breakglass::Provider :: "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG" };
"#,
    ] {
        barred_and_no_one_else(extra);
    }
}

fn barred_and_no_one_else(extra: &str) {
    let src = format!("{}\n{extra}", breakglass::policy::DEFAULT_POLICIES);
    let p = Policies::from_sources(DEFAULT_SCHEMA, &src).unwrap();
    match p
        .decide(
            "ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG",
            Role::Nurse,
            &[Allergies],
            &Situation::NORMAL,
        )
        .unwrap()
    {
        Verdict::Deny { rule, .. } => assert_eq!(rule.as_deref(), Some("this-nurse-is-barred")),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        window(&p, Role::Nurse, &[Allergies]),
        Some(10),
        "another nurse is not barred"
    );
}

fn paged(service: &str, incident: &str, acknowledged: bool) -> breakglass::domain::OnCall {
    breakglass::domain::OnCall {
        source: "pagerduty".into(),
        service: Some(service.into()),
        since: Some(1_700_000_000),
        until: None,
        incident: (!incident.is_empty()).then(|| incident.into()),
        acknowledged,
    }
}

#[test]
fn on_call_is_a_policy_input_and_an_acknowledged_incident_can_widen_the_window() {
    // incident pre-authorization: an acknowledged incident gives physicians 30 minutes, and
    // pharmacists may break the glass only while on call for the pharmacy service
    let extra = r#"
@id("acknowledged-incident-widens-the-window")
@window_minutes("30")
permit (principal, action == Breakglass::Action::"break-glass", resource)
when {
  principal.role == "physician" && resource.critical &&
  context has on_call && context.on_call.acknowledged && context.on_call.incident != ""
};

@id("pharmacists-only-for-the-pharmacy")
forbid (principal, action == Breakglass::Action::"break-glass", resource)
when {
  principal.role == "pharmacist" &&
  !(context has on_call && context.on_call.service == "pharmacy")
};
"#;
    let src = format!("{}\n{extra}", breakglass::policy::DEFAULT_POLICIES);
    let p = Policies::from_sources(DEFAULT_SCHEMA, &src).unwrap();
    let decide = |role, on_call: Option<&breakglass::domain::OnCall>| {
        p.decide(
            WHO,
            role,
            &[Allergies],
            &Situation {
                on_call,
                ..Situation::NORMAL
            },
        )
        .unwrap()
    };
    let minutes = |v: Verdict| match v {
        Verdict::Permit { window_minutes, .. } => Some(window_minutes),
        Verdict::Deny { .. } => None,
    };
    assert_eq!(minutes(decide(Role::Physician, None)), Some(15));
    assert_eq!(
        minutes(decide(
            Role::Physician,
            Some(&paged("ed", "PGR0VU2", false))
        )),
        Some(15),
        "an unacknowledged incident does not widen"
    );
    match decide(Role::Physician, Some(&paged("ed", "PGR0VU2", true))) {
        Verdict::Permit {
            window_minutes,
            rules,
        } => {
            assert_eq!(window_minutes, 30);
            assert!(rules.contains(&"acknowledged-incident-widens-the-window".to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        minutes(decide(Role::Physician, Some(&paged("ed", "", true)))),
        Some(15),
        "no incident, no widening"
    );
    match decide(Role::Pharmacist, Some(&paged("ed", "", false))) {
        Verdict::Deny { rule, .. } => {
            assert_eq!(rule.as_deref(), Some("pharmacists-only-for-the-pharmacy"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        minutes(decide(
            Role::Pharmacist,
            Some(&paged("pharmacy", "", false))
        )),
        Some(10)
    );
}

#[test]
fn a_policy_set_that_grants_everything_on_a_stale_view_does_not_load() {
    let unguarded = breakglass::policy::DEFAULT_POLICIES.replace(
        "when { context.chain_stale };",
        "when { context.chain_stale && context.chain_lag_blocks < 0 };",
    );
    assert_ne!(unguarded, breakglass::policy::DEFAULT_POLICIES);
    assert!(matches!(
        Policies::from_sources(DEFAULT_SCHEMA, &unguarded),
        Err(PolicyError::Unguarded)
    ));
    // a set written for the schema before `chain_stale` (no such attribute) fails at load
    let old_schema = DEFAULT_SCHEMA.replace("chain_stale: Bool,", "");
    assert_ne!(old_schema, DEFAULT_SCHEMA);
    let without = breakglass::policy::DEFAULT_POLICIES
        .replace("when { context.chain_stale };", "when { false };");
    assert!(Policies::from_sources(&old_schema, &without).is_err());
}

#[test]
fn the_chain_and_the_patient_are_policy_inputs_and_a_stale_view_refuses_by_default() {
    let p = Policies::defaults().unwrap();
    let stale = Situation {
        chain_stale: true,
        chain_reachable: false,
        chain_lag_blocks: 7,
        ..Situation::NORMAL
    };
    for role in [Role::Physician, Role::Nurse] {
        match p.decide(WHO, role, &[Allergies], &stale).unwrap() {
            Verdict::Deny { rule, .. } => assert_eq!(rule.as_deref(), Some("chain-state-stale")),
            other => panic!("{other:?}"),
        }
    }
    // an unregistered patient is granted by default
    let unregistered = Situation {
        patient_registered: false,
        ..Situation::NORMAL
    };
    assert!(matches!(
        p.decide(WHO, Role::Nurse, &[Allergies], &unregistered)
            .unwrap(),
        Verdict::Permit { .. }
    ));

    // a degraded mode and a rule for unregistered patients, both decided from the table
    let src = breakglass::policy::DEFAULT_POLICIES.replace(
        "when { context.chain_stale };",
        r#"when { context.chain_stale && !([Breakglass::DataType::"allergies"].contains(resource)) };
@id("unregistered-critical-only-for-physicians")
forbid (principal, action, resource) when { !context.patient_registered && principal.role != "physician" };"#,
    );
    let p = Policies::from_sources(DEFAULT_SCHEMA, &src).unwrap();
    assert!(matches!(
        p.decide(WHO, Role::Nurse, &[Allergies], &stale).unwrap(),
        Verdict::Permit {
            window_minutes: 10,
            ..
        }
    ));
    match p
        .decide(WHO, Role::Nurse, &[Allergies, Medications], &stale)
        .unwrap()
    {
        Verdict::Deny {
            data_type, rule, ..
        } => {
            assert_eq!(
                (data_type, rule.as_deref()),
                (Medications, Some("chain-state-stale"))
            )
        }
        other => panic!("{other:?}"),
    }
    match p
        .decide(WHO, Role::Nurse, &[Allergies], &unregistered)
        .unwrap()
    {
        Verdict::Deny { rule, .. } => {
            assert_eq!(
                rule.as_deref(),
                Some("unregistered-critical-only-for-physicians")
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        p.decide(WHO, Role::Physician, &[Allergies], &unregistered)
            .unwrap(),
        Verdict::Permit { .. }
    ));

    // the lag itself, per request
    let src = format!(
        "{}\n@id(\"lagging\")\nforbid (principal, action, resource) when {{ context.chain_lag_blocks > 1 && principal.role == \"nurse\" }};",
        breakglass::policy::DEFAULT_POLICIES
    );
    let p = Policies::from_sources(DEFAULT_SCHEMA, &src).unwrap();
    let lagging = Situation {
        chain_lag_blocks: 2,
        ..Situation::NORMAL
    };
    assert!(matches!(
        p.decide(WHO, Role::Nurse, &[Allergies], &lagging).unwrap(),
        Verdict::Deny { .. }
    ));
    assert_eq!(window(&p, Role::Nurse, &[Allergies]), Some(10));
}
