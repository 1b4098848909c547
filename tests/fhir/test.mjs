// npm test: the validator passes samples/good.ndjson (the shapes of BALP.md) and fails
// samples/bad.ndjson with the right messages; BALP.md's examples are good.ndjson's first lines;
// good.ndjson is the export of samples/entries.ndjson (a real hash chain, hashed as
// src/audit/mod.rs hashes), so the service's exporter can be tested against the same pair.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const sample = (name) => join(here, 'samples', name);
const ndjson = (file) => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');

// the samples are of the default identifier systems, whatever the shell's environment says of
// a service's (validate.mjs reads them from there)
const env = { ...process.env };
delete env.BREAKGLASS_DIRECTORY__PATIENT_ID_SYSTEM;
delete env.BREAKGLASS_DIRECTORY__PROVIDER_PRINCIPAL_SYSTEM;

function validate(file) {
  const r = spawnSync(process.execPath, [join(here, 'validate.mjs'), file], { encoding: 'utf8', env });
  const lines = r.stdout.trimEnd().split('\n');
  return { status: r.status, lines, stderr: r.stderr, last: lines[lines.length - 1] };
}

const KINDS = ['grant', 'introspection', 'refusal', 'notice', 'sign-in', 'verdict', 'revocation', 'read', 'read-refusal', 'view', 'sign-out', 'import', 'chain-failure', 'start', 'stop', 'resume', 'rekey'];
// BALP.md's examples: good.ndjson's first seven lines (one per kind), then the two read kinds'
// (lines 13 and 14, after the variants 8 to 12), a reviewer's view (16: an admin client's is
// 17), a sign-out (18), a summary's import (19: a directory's is 20) and a verdict's chain
// failure (23: an anchor's is 24, a cleared one 25), a start (26), a stop (27), a rekey (28)
// a resume (31), and an entry of a later version's kind, unmapped (32)
const EXAMPLE_LINES = [1, 2, 3, 4, 5, 6, 7, 13, 14, 16, 18, 19, 23, 26, 27, 28, 31, 32];
// the kind of good.ndjson's unmapped example (line 32: a kind no version has yet; line 33 is
// another, of a patient)
const LATER_KIND = 'handover';
const kindOf = (r) => r.subtype.find((c) => c.system === 'https://breakglass.example/fhir/CodeSystem/audit-kind').code;

test('good.ndjson: every line is valid FHIR R4 and has its BALP.md shape', () => {
  const r = validate(sample('good.ndjson'));
  assert.equal(r.stderr, '');
  assert.deepEqual(r.lines, ['33 passed, 0 failed']);
  assert.equal(r.status, 0);
  const kinds = ndjson(sample('good.ndjson')).map((l) => kindOf(JSON.parse(l)));
  for (const k of KINDS) assert.ok(kinds.includes(k), `good.ndjson has a ${k}`);
  assert.ok(kinds.includes(LATER_KIND) && !KINDS.includes(LATER_KIND), 'and an entry of a kind this version does not map');
});

// [line, a message that must be printed for it]
const EXPECTED = [
  [2, '[balp] AuditEvent.extension[audit-log-entry].prev: ffff'],
  [2, 'is not the hash of entry 1 (a3037160c7fc2713c60d110e47c6e9cd31f7746bcfc949f15778e6cf2f89b4ab): the chain is broken'],
  [3, '[balp] AuditEvent.agent[0].purposeOfUse: must carry http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG'],
  [4, '[balp] AuditEvent.purposeOfEvent: must carry http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG'],
  [5, '[fhir] Resource does not have resourceType property, or value is not a valid resource type.'],
  [5, '[balp] resourceType: is "AuditEvnt", not "AuditEvent"'],
  [6, '[fhir] AuditEvent.action: Code "X" not found in value set'],
  [6, '[schema] AuditEvent.action: must be one of C, R, U, D, E'],
  [7, '[fhir] AuditEvent.outcome: Code "2" not found in value set'],
  [7, '[balp] AuditEvent.outcome: is "2"; expected "4"'],
  [8, '[balp] AuditEvent.recorded: "2026-02-30T09:30:00.123Z" is not a real UTC instant'],
  [9, '[schema] AuditEvent.recorded: is not a valid FHIR instant'],
  [10, '[balp] AuditEvent.outcome: is "0"; expected "4"'],
  [11, '[balp] AuditEvent.entity: has no patient (role http://terminology.hl7.org/CodeSystem/object-role|1)'],
  [12, '[balp] AuditEvent.entity[0].what.identifier.value: must be the 64-hex pseudonymous patient id'],
  [13, '[fhir] AuditEvent.recordedAt: Unexpected property'],
  [13, '[schema] AuditEvent: has an unknown property "recordedAt"'],
  [14, '[fhir] AuditEvent.agent[0].requestor: Missing property'],
  [15, '[balp] AuditEvent.subtype: unknown kind "noticed"'],
  [16, '[balp] AuditEvent.extension: needs one https://breakglass.example/fhir/StructureDefinition/audit-log-entry (has 0)'],
  [17, '[balp] AuditEvent.agent[0].who.identifier.value: "alice" is not a Stacks principal'],
  [18, '[json] not JSON: '],
  [19, '[balp] AuditEvent.meta.profile: claims a profile'],
  [20, '[balp] AuditEvent.entity[1]: data-type "x-rays" is not a data type'],
  [21, '[balp] AuditEvent.outcomeDesc: absent; expected "inactive"'],
  [22, '[balp] AuditEvent.purposeOfEvent: must carry http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG'],
  [23, '[balp] AuditEvent.agent: needs one service agent (type http://dicom.nema.org/resources/ontology/DCM|110152), has 0'],
  [24, '[balp] AuditEvent.agent[0].who: has no identifier (the Stacks principal)'],
  [25, '[balp] AuditEvent.entity[1]: detail "reason-shown" is "yes"; expected "true" or "false"'],
  [26, '[balp] AuditEvent.agent[0].who.identifier.value: "alice" is not a Stacks principal'],
  [27, '[balp] AuditEvent.entity: an import of patients names no patient'],
  [28, '[balp] AuditEvent.entity[1]: detail "record-digest" is'],
  [29, '[balp] AuditEvent.agent[0].requestor: must be false (the service ended the session)'],
  [30, '[balp] AuditEvent.entity: needs one access entity (role http://terminology.hl7.org/CodeSystem/object-role|13), has 0'],
  [31, '[balp] AuditEvent.outcome: is "0"; expected "8"'],
  [32, '[balp] AuditEvent.purposeOfEvent: the operation anchor:41 is of no break-glass access: no BTG'],
  [33, '[balp] AuditEvent.purposeOfEvent: a start is of no break-glass access: none'],
  [34, '[balp] AuditEvent.entity[0]: a stop has no details'],
  [35, '[balp] AuditEvent.entity[0]: detail "responder" is "alice"; expected a Stacks principal'],
  [36, '[balp] AuditEvent.agent[0].who: a rekey is run from the command line: cli:<user>, not "auditor"'],
  [37, '[balp] AuditEvent.period: the session ends (2026-01-09T11:25:31.456Z) after it opened (2026-01-09T11:05:00.123Z) and no later than it was logged (2026-01-09T11:25:00.123Z)'],
  [38, '[balp] AuditEvent.period: the session ends (2026-01-09T11:24:31.456Z) after it opened (2026-01-09T11:24:31.457Z)'],
  [39, '[balp] AuditEvent.entity[0]: detail "last-seen" is "2026-01-09T11:26:01.123Z"; expected an instant like 2026-01-09T10:30:00.000Z, no later than recorded'],
  [40, '[balp] AuditEvent.entity[0]: needs exactly one detail "last-seen" (has 2)'],
  [41, '[balp] AuditEvent.entity[0].detail: "event" with the entry\'s seq, time and prev hashes to 41accdd1'],
  [42, '[balp] AuditEvent.action: an unmapped entry has none'],
  [42, '[balp] AuditEvent.outcome: an unmapped entry has none'],
  [43, '[balp] AuditEvent.entity[0].detail: "kind" is "handoff", not the subtype\'s "handover"'],
  [44, '[balp] AuditEvent.entity[0]: the event\'s entity has only type, description and detail (has what)'],
  [45, '[balp] AuditEvent.entity: the patient entity names none; the event names 0e1ba882'],
];

test('bad.ndjson: each broken line fails, with its line number and the reason', () => {
  const r = validate(sample('bad.ndjson'));
  assert.equal(r.stderr, '');
  assert.equal(r.status, 1);
  assert.equal(r.last, '1 passed, 44 failed');
  for (const [line, text] of EXPECTED) {
    assert.ok(
      r.lines.some((l) => l.startsWith(`line ${line}: `) && l.includes(text)),
      `line ${line} should report: ${text}\n--- output:\n${r.lines.join('\n')}`,
    );
  }
  // every failing line is reported, and line 1 (a good grant) is not
  const reported = new Set(r.lines.slice(0, -1).map((l) => Number(/^line (\d+): /.exec(l)?.[1])));
  assert.deepEqual([...reported].sort((a, b) => a - b), Array.from({ length: 44 }, (_, i) => i + 2));
});

test('an empty export is valid', () => {
  const dir = mkdtempSync(join(tmpdir(), 'fhir-audit-'));
  writeFileSync(join(dir, 'empty.ndjson'), '');
  const r = validate(join(dir, 'empty.ndjson'));
  assert.deepEqual(r.lines, ['0 passed, 0 failed']);
  assert.equal(r.status, 0);
});

test("BALP.md's examples are good.ndjson's first seven lines and lines 13, 14, 16, 18, 19, 23, 26, 27, 28, 31 and 32, one per kind and an unmapped one", () => {
  const md = readFileSync(join(here, 'BALP.md'), 'utf8');
  const examples = [...md.matchAll(/```json\n([\s\S]*?)\n```/g)]
    .map((m) => JSON.parse(m[1]))
    .filter((j) => j && j.resourceType === 'AuditEvent');
  const good = ndjson(sample('good.ndjson')).map((l) => JSON.parse(l));
  for (const ex of examples) {
    const line = Number(ex.id);
    assert.ok(EXAMPLE_LINES.includes(line), `example ${ex.id} is one of good.ndjson's lines ${EXAMPLE_LINES.join(', ')}`);
    assert.deepEqual(ex, good[line - 1], `BALP.md's ${kindOf(ex)} example differs from good.ndjson line ${line}`);
  }
  assert.deepEqual(examples.map((ex) => Number(ex.id)).sort((a, b) => a - b), EXAMPLE_LINES);
  assert.deepEqual(examples.map(kindOf).sort(), [...KINDS, LATER_KIND].sort());
});

test('good.ndjson is the export of entries.ndjson (a real hash chain)', () => {
  const entries = ndjson(sample('entries.ndjson'));
  const events = ndjson(sample('good.ndjson')).map((l) => JSON.parse(l));
  assert.equal(entries.length, events.length);
  let prev = '0'.repeat(64);
  entries.forEach((line, i) => {
    const e = JSON.parse(line);
    // the event's JSON exactly as stored (and hashed): the raw text after "event":
    const at = line.indexOf('"event":');
    assert.ok(at > 0 && line.endsWith('}'));
    const raw = line.slice(at + '"event":'.length, -1);
    const h = createHash('sha256');
    h.update(Buffer.from(e.prev, 'hex'));
    const nums = Buffer.alloc(16);
    nums.writeBigUInt64BE(BigInt(e.seq), 0);
    nums.writeBigUInt64BE(BigInt(e.at), 8);
    h.update(nums);
    h.update(raw, 'utf8');
    assert.equal(e.prev, prev, `entry ${e.seq} links to the one before`);
    assert.equal(h.digest('hex'), e.hash, `entry ${e.seq} hashes to its hash`);
    prev = e.hash;

    const r = events[i];
    const ext = Object.fromEntries(r.extension[0].extension.map((x) => [x.url, x.valueString]));
    assert.deepEqual(ext, { seq: String(e.seq), hash: e.hash, prev: e.prev });
    assert.equal(r.id, String(e.seq));
    assert.equal(r.recorded, new Date(e.at).toISOString());
    assert.equal(kindOf(r), e.event.kind);
  });
});
