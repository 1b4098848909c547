;; access-control
;;
;; Who may do what in the breakglass system, and the on-chain record of every access:
;;   - governance: a contract owner (handed over in two steps: proposed, then accepted) who
;;     appoints credentialing authorities (verify, suspend, reinstate and revoke providers,
;;     never themselves), responder services (record emergency accesses and anchor the
;;     off-chain audit log), reviewers (judge emergency accesses) and data custodians (record
;;     the hash of each patient's emergency summary);
;;   - providers: self-registration with hashes of their off-chain identity and credentials,
;;     a role, and a status (pending -> verified <-> suspended; any -> revoked, terminal);
;;   - consented access requests (checked against patient-consent, logged when granted);
;;   - emergency (break-glass) access records, one per access id, and one review each (made by
;;     the reviewer, or relayed by a responder with the reviewer's SIP-018 signature: see
;;     "Relayed reviews" below);
;;   - anchors of the off-chain hash-chained audit log;
;;   - the SHA-256 of each patient's emergency summary, set by a data custodian (see "Emergency
;;     summaries" below).
;;
;; Nothing here holds protected health information: patients appear only as their
;; pseudonymous 32-byte id; reasons, notes and emergency summaries appear only as hashes.
;;
;; A refused call returns an error and changes nothing; the refused transaction itself stays
;; on chain with its error code (status abort_by_response), which is how refusals are logged.
;;
;; Direct calls only. Every public function acts for the principal that called it directly:
;; it first asserts `(is-eq tx-sender contract-caller)` (for the four status changes, in the
;; private `transition` they share) and refuses anything else with ERR-PROXY-CALL, before any
;; other check; `tx-sender` is then the acting principal (for a relayed review, the responder
;; relaying it; the review is the signer's: see "Relayed reviews" below). So a contract that
;; the owner, an authority, a responder, a reviewer, a custodian or a provider is tricked into
;; calling cannot govern, credential, record, review, anchor, set a summary's hash, register or
;; request access in their name (with `tx-sender` alone it could). A contract may still hold a
;; role and act for itself, as itself, with `as-contract` (then tx-sender and contract-caller
;; are both the contract). There is no exception: no function here is meant to be called
;; through another contract on someone's behalf. This contract only calls patient-consent's
;; read-only functions, which check no caller.
;;
;; Relayed reviews. A reviewer may sign their verdict instead of sending it: reviewers hold no
;; STX and review in a browser, with a browser key or a wallet's `stx_signStructuredMessage`, so
;; a responder service (which pays the fee and sends it exactly once, with its own nonces) relays
;; the signature as `review-emergency-access`'s last argument. The reviewer is then the
;; principal recovered from that signature, and every rule applies to them, not to the responder
;; relaying it. The signature is SIP-018 structured data over
;;   domain  { name: "breakglass", version: "1", chain-id: chain-id }
;;   message { action: "review", access-id: access-id, verdict: verdict, note-hash: note-hash }
;; (`get-review-message-hash` gives the 32-byte hash signed), so it binds the access id, the
;; verdict and the note's hash: it cannot be reused for another access or changed to another
;; verdict or note (over other data it recovers another principal, not a reviewer), nor used on
;; another chain. A review is recorded once per access, so the same signature again is refused.
;;
;; Emergency summaries. Each patient's emergency summary (an IPS-style FHIR R4 Bundle: allergies,
;; medications, problems, ...) is kept sealed off chain by the hospital's breakglass service; its
;; SHA-256 is recorded here (`set-summary-hash`), so that a summary changed off chain does not
;; match when it is read. Each set gives the patient's next version (1 for the first); a summary
;; withdrawn is cleared (`clear-summary-hash`), and versions go on from the last one set, never
;; repeating, so that a follower can order what it hears by version. Any 32-byte patient id is
;; accepted, registered with patient-consent or not: the hospital holds summaries of patients who
;; never registered, as an emergency access may name them too.
;;   A data custodian, appointed by the owner like the other roles, writes it, not the patient: the
;; hospital holds and updates the clinical data, and a patient should not have to sign every
;; medication change. The patient's control is their emergency preferences (which data types a
;; break-glass access may open, and for how long), which stay theirs, in patient-consent.
;;   The hash lives here, not in patient-consent, because patient-consent holds only what a patient
;; signs; governance and the responder's other records (accesses, reviews, anchors) live here.
;;
;; The longest emergency window is patient-consent's MAX-EMERGENCY-WINDOW, read through its
;; `get-max-emergency-window`: one definition for the longest window a patient may allow and
;; the longest an access may be recorded with.
;;
;; An emergency access names at most 8 data types (`(list 8 (string-ascii 32))`): the most one
;; access may open, the same bound as the signed break-glass request's `data-types`; it covers
;; the seven critical types plus one. A patient's preferences list up to 12, every data type
;; patient-consent knows, so that a patient can allow them all (see patient-consent's header).
;;
;; Errors (distinct across both contracts: patient-consent u100-u199, access-control u200-u299)
;;   u200 ERR-NOT-OWNER              caller is not the contract owner
;;   u201 ERR-NOT-AUTHORITY          caller is not a credentialing authority
;;   u202 ERR-NOT-RESPONDER          caller is not an authorized responder service
;;   u203 ERR-NOT-REVIEWER           the reviewer (the caller, or a relayed review's signer) is not
;;                                   a reviewer
;;   u204 ERR-ALREADY-REGISTERED     the provider principal is already registered
;;   u205 ERR-PROVIDER-NOT-FOUND     no provider registered for that principal (ever)
;;   u206 ERR-INVALID-ROLE           role not in ROLES
;;   u207 ERR-INVALID-TRANSITION     the provider's status does not allow this change
;;   u208 ERR-PROVIDER-NOT-VERIFIED  the provider (or the reviewer, whose own provider record
;;                                   must be verified to review) is not verified at this block
;;   u209 ERR-INVALID-DATA-TYPE      a data type unknown to patient-consent
;;   u210 ERR-INVALID-PURPOSE        a purpose unknown to patient-consent
;;   u211 ERR-NO-CONSENT             the patient has no active consent for this request
;;   u212 ERR-DUPLICATE-ACCESS       an emergency access with this id is already recorded
;;   u213 ERR-INVALID-WINDOW         window is 0 or above patient-consent's get-max-emergency-window
;;   u214 ERR-ACCESS-NOT-FOUND       no emergency access with this id
;;   u215 ERR-ALREADY-REVIEWED       the emergency access already has a review
;;   u216 ERR-INVALID-VERDICT        verdict not in VERDICTS
;;   u217 ERR-SELF-REVIEW            a reviewer cannot review an access they opened or recorded
;;   u218 ERR-ANCHOR-REGRESSION      an audit anchor's count is below the same responder's previous
;;                                   anchor's, or the same with another head
;;   u219 ERR-ALREADY-MEMBER         the principal already holds that governance role
;;   u220 ERR-NOT-MEMBER             the principal does not hold that governance role
;;   u221 ERR-NO-DATA-TYPES          an emergency access must name at least one data type
;;   u222 ERR-SELF-CREDENTIALING     an authority cannot change its own provider record
;;   u223 ERR-NOT-PENDING-OWNER      caller is not the principal proposed as the next owner
;;   u224 ERR-PROXY-CALL             the call came through another contract (contract-caller is not
;;                                   tx-sender); see "Direct calls only" above
;;   u225 ERR-BAD-REVIEW-SIGNATURE   a relayed review's signature recovers no public key; see
;;                                   "Relayed reviews" above
;;   u226 ERR-NOT-CUSTODIAN          caller is not a data custodian
;;   u227 ERR-SUMMARY-NOT-FOUND      no emergency summary hash is recorded for that patient id
;;
;; Events (print): every state change prints a tuple with a `topic`:
;;   "owner-proposed", "owner-changed", "authority-added", "authority-removed", "responder-added",
;;   "responder-removed", "reviewer-added", "reviewer-removed", "custodian-added",
;;   "custodian-removed", "provider-registered", "provider-verified", "provider-suspended",
;;   "provider-reinstated", "provider-revoked", "provider-role-changed",
;;   "provider-credentials-updated", "access-granted", "emergency-access-recorded",
;;   "emergency-access-reviewed", "audit-anchored", "summary-hash-set", "summary-hash-cleared".
;; "emergency-access-recorded" carries, besides the ids, `within-preferences` and `degraded`
;; (true when the responder granted the access in degraded mode, its view of the chain older
;; than its configured bound), both also stored in the access's record.
;; "emergency-access-reviewed" names the reviewer (the signer, for a relayed review) and
;; `relayed-by`: the responder that relayed it, or none when the reviewer sent it.
;; "summary-hash-set" carries the patient id, the hash, the custodian and the new version;
;; "summary-hash-cleared" the patient id, the custodian and the version cleared.

(define-constant ERR-NOT-OWNER (err u200))
(define-constant ERR-NOT-AUTHORITY (err u201))
(define-constant ERR-NOT-RESPONDER (err u202))
(define-constant ERR-NOT-REVIEWER (err u203))
(define-constant ERR-ALREADY-REGISTERED (err u204))
(define-constant ERR-PROVIDER-NOT-FOUND (err u205))
(define-constant ERR-INVALID-ROLE (err u206))
(define-constant ERR-INVALID-TRANSITION (err u207))
(define-constant ERR-PROVIDER-NOT-VERIFIED (err u208))
(define-constant ERR-INVALID-DATA-TYPE (err u209))
(define-constant ERR-INVALID-PURPOSE (err u210))
(define-constant ERR-NO-CONSENT (err u211))
(define-constant ERR-DUPLICATE-ACCESS (err u212))
(define-constant ERR-INVALID-WINDOW (err u213))
(define-constant ERR-ACCESS-NOT-FOUND (err u214))
(define-constant ERR-ALREADY-REVIEWED (err u215))
(define-constant ERR-INVALID-VERDICT (err u216))
(define-constant ERR-SELF-REVIEW (err u217))
(define-constant ERR-ANCHOR-REGRESSION (err u218))
(define-constant ERR-ALREADY-MEMBER (err u219))
(define-constant ERR-NOT-MEMBER (err u220))
(define-constant ERR-NO-DATA-TYPES (err u221))
(define-constant ERR-SELF-CREDENTIALING (err u222))
(define-constant ERR-NOT-PENDING-OWNER (err u223))
(define-constant ERR-PROXY-CALL (err u224))
(define-constant ERR-BAD-REVIEW-SIGNATURE (err u225))
(define-constant ERR-NOT-CUSTODIAN (err u226))
(define-constant ERR-SUMMARY-NOT-FOUND (err u227))

(define-constant ROLES (list "physician" "nurse" "paramedic" "pharmacist" "reviewer" "admin"))
(define-constant VERDICTS (list "appropriate" "inappropriate" "needs-follow-up"))

;; Lookup sets filled from the lists at deploy time (`index-of?` would need the argument's
;; type to equal the list literal's narrower element type).
(define-map known-roles (string-ascii 16) bool)
(define-map known-verdicts (string-ascii 16) bool)
(define-private (add-role (role (string-ascii 16))) (map-insert known-roles role true))
(define-private (add-verdict (verdict (string-ascii 16))) (map-insert known-verdicts verdict true))
(map add-role ROLES)
(map add-verdict VERDICTS)

(define-constant STATUS-PENDING "pending")
(define-constant STATUS-VERIFIED "verified")
(define-constant STATUS-SUSPENDED "suspended")
(define-constant STATUS-REVOKED "revoked")

;; Refuses a call made through another contract (see "Direct calls only" in the header).
(define-private (assert-direct-call)
  (ok (asserts! (is-eq tx-sender contract-caller) ERR-PROXY-CALL)))

;; ---------------------------------------------------------------------------
;; governance

(define-data-var contract-owner principal tx-sender)
(define-map authorities principal bool)
(define-map responders principal bool)
(define-map reviewers principal bool)
(define-map custodians principal bool)

(define-read-only (get-contract-owner) (var-get contract-owner))
(define-read-only (is-authority (who principal)) (default-to false (map-get? authorities who)))
(define-read-only (is-responder (who principal)) (default-to false (map-get? responders who)))
(define-read-only (is-reviewer (who principal)) (default-to false (map-get? reviewers who)))
(define-read-only (is-custodian (who principal)) (default-to false (map-get? custodians who)))

(define-private (assert-owner)
  (ok (asserts! (is-eq tx-sender (var-get contract-owner)) ERR-NOT-OWNER)))

;; Ownership moves in two steps, so that a mistyped or unreachable principal cannot take it
;; and freeze governance: the owner proposes the next owner, who accepts.
(define-data-var pending-owner (optional principal) none)
(define-read-only (get-pending-owner) (var-get pending-owner))

(define-public (set-contract-owner (new-owner principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (var-set pending-owner (some new-owner))
    (print { topic: "owner-proposed", owner: new-owner, by: tx-sender })
    (ok true)))

(define-public (accept-contract-owner)
  (let ((previous (var-get contract-owner)))
    (try! (assert-direct-call))
    (asserts! (is-eq (var-get pending-owner) (some tx-sender)) ERR-NOT-PENDING-OWNER)
    (var-set contract-owner tx-sender)
    (var-set pending-owner none)
    (print { topic: "owner-changed", owner: tx-sender, previous: previous })
    (ok true)))

(define-public (add-authority (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-insert authorities who true) ERR-ALREADY-MEMBER)
    (print { topic: "authority-added", principal: who })
    (ok true)))

(define-public (remove-authority (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-delete authorities who) ERR-NOT-MEMBER)
    (print { topic: "authority-removed", principal: who })
    (ok true)))

(define-public (add-responder (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-insert responders who true) ERR-ALREADY-MEMBER)
    (print { topic: "responder-added", principal: who })
    (ok true)))

(define-public (remove-responder (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-delete responders who) ERR-NOT-MEMBER)
    (print { topic: "responder-removed", principal: who })
    (ok true)))

(define-public (add-reviewer (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-insert reviewers who true) ERR-ALREADY-MEMBER)
    (print { topic: "reviewer-added", principal: who })
    (ok true)))

(define-public (remove-reviewer (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-delete reviewers who) ERR-NOT-MEMBER)
    (print { topic: "reviewer-removed", principal: who })
    (ok true)))

(define-public (add-custodian (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-insert custodians who true) ERR-ALREADY-MEMBER)
    (print { topic: "custodian-added", principal: who })
    (ok true)))

(define-public (remove-custodian (who principal))
  (begin
    (try! (assert-direct-call))
    (try! (assert-owner))
    (asserts! (map-delete custodians who) ERR-NOT-MEMBER)
    (print { topic: "custodian-removed", principal: who })
    (ok true)))

;; ---------------------------------------------------------------------------
;; providers

(define-data-var provider-count uint u0)

(define-map providers principal
  { id: uint, role: (string-ascii 16), info-hash: (buff 32), credentials-hash: (buff 32),
    status: (string-ascii 16), registered-at: uint, updated-at: uint,
    verified-by: (optional principal) })
(define-map provider-ids uint principal)

(define-read-only (get-roles) ROLES)
(define-read-only (is-valid-role (role (string-ascii 16))) (is-some (map-get? known-roles role)))
(define-read-only (get-provider (who principal)) (map-get? providers who))
(define-read-only (get-provider-by-id (id uint)) (map-get? provider-ids id))
(define-read-only (get-provider-count) (var-get provider-count))

(define-read-only (is-verified-provider (who principal))
  (match (map-get? providers who)
    provider (is-eq (get status provider) STATUS-VERIFIED)
    false))

(define-public (register-provider (info-hash (buff 32)) (role (string-ascii 16)) (credentials-hash (buff 32)))
  (let ((id (+ (var-get provider-count) u1)))
    (try! (assert-direct-call))
    (asserts! (is-valid-role role) ERR-INVALID-ROLE)
    (asserts! (is-none (map-get? providers tx-sender)) ERR-ALREADY-REGISTERED)
    (map-set providers tx-sender
      { id: id, role: role, info-hash: info-hash, credentials-hash: credentials-hash,
        status: STATUS-PENDING, registered-at: stacks-block-height, updated-at: stacks-block-height,
        verified-by: none })
    (map-set provider-ids id tx-sender)
    (var-set provider-count id)
    (print { topic: "provider-registered", provider: tx-sender, provider-id: id, role: role,
             info-hash: info-hash, credentials-hash: credentials-hash })
    (ok id)))

;; New credentials (a renewed licence, a new employer) need verifying again: back to pending.
;; Not while suspended (only an authority lifts a suspension) nor once revoked.
(define-public (update-provider-credentials (info-hash (buff 32)) (credentials-hash (buff 32)))
  (begin
    (try! (assert-direct-call))
    (let ((provider (unwrap! (map-get? providers tx-sender) ERR-PROVIDER-NOT-FOUND)))
      (asserts! (not (or (is-eq (get status provider) STATUS-REVOKED)
                         (is-eq (get status provider) STATUS-SUSPENDED)))
                ERR-INVALID-TRANSITION)
      (map-set providers tx-sender
        (merge provider { info-hash: info-hash, credentials-hash: credentials-hash, status: STATUS-PENDING,
                          updated-at: stacks-block-height, verified-by: none }))
      (print { topic: "provider-credentials-updated", provider: tx-sender, provider-id: (get id provider),
               info-hash: info-hash, credentials-hash: credentials-hash, status: STATUS-PENDING })
      (ok true))))

;; Moves a provider from one of `from` statuses to `to`, by a credentialing authority calling
;; directly (the four public status changes below are only this).
(define-private (transition (who principal) (from (list 3 (string-ascii 16))) (to (string-ascii 16))
                            (topic (string-ascii 32)))
  (begin
    (try! (assert-direct-call))
    (let ((provider (unwrap! (map-get? providers who) ERR-PROVIDER-NOT-FOUND)))
      (asserts! (is-authority tx-sender) ERR-NOT-AUTHORITY)
      (asserts! (not (is-eq who tx-sender)) ERR-SELF-CREDENTIALING)
      (asserts! (is-some (index-of? from (get status provider))) ERR-INVALID-TRANSITION)
      (map-set providers who
        (merge provider { status: to, updated-at: stacks-block-height, verified-by: (some tx-sender) }))
      (print { topic: topic, provider: who, provider-id: (get id provider), role: (get role provider),
               status: to, authority: tx-sender })
      (ok true))))

(define-public (verify-provider (who principal))
  (transition who (list STATUS-PENDING) STATUS-VERIFIED "provider-verified"))

(define-public (suspend-provider (who principal))
  (transition who (list STATUS-VERIFIED) STATUS-SUSPENDED "provider-suspended"))

(define-public (reinstate-provider (who principal))
  (transition who (list STATUS-SUSPENDED) STATUS-VERIFIED "provider-reinstated"))

(define-public (revoke-provider (who principal))
  (transition who (list STATUS-PENDING STATUS-VERIFIED STATUS-SUSPENDED) STATUS-REVOKED "provider-revoked"))

(define-public (set-provider-role (who principal) (role (string-ascii 16)))
  (begin
    (try! (assert-direct-call))
    (let ((provider (unwrap! (map-get? providers who) ERR-PROVIDER-NOT-FOUND)))
      (asserts! (is-authority tx-sender) ERR-NOT-AUTHORITY)
      (asserts! (not (is-eq who tx-sender)) ERR-SELF-CREDENTIALING)
      (asserts! (is-valid-role role) ERR-INVALID-ROLE)
      (asserts! (not (is-eq (get status provider) STATUS-REVOKED)) ERR-INVALID-TRANSITION)
      (map-set providers who (merge provider { role: role, updated-at: stacks-block-height }))
      (print { topic: "provider-role-changed", provider: who, provider-id: (get id provider), role: role,
               previous-role: (get role provider), authority: tx-sender })
      (ok true))))

;; ---------------------------------------------------------------------------
;; consented access requests

(define-data-var access-count uint u0)

(define-map access-log uint
  { provider: principal, patient-id: (buff 32), data-type: (string-ascii 32), purpose: (string-ascii 16),
    block: uint })

(define-read-only (get-access-count) (var-get access-count))
(define-read-only (get-access-log-entry (id uint)) (map-get? access-log id))

;; A verified provider asks for one data type of a patient for a purpose; granted only when
;; the patient's consent for that provider, data type and purpose is active.
(define-public (request-access (patient-id (buff 32)) (data-type (string-ascii 32)) (purpose (string-ascii 16)))
  (let ((id (+ (var-get access-count) u1)))
    (try! (assert-direct-call))
    (asserts! (is-verified-provider tx-sender) ERR-PROVIDER-NOT-VERIFIED)
    (asserts! (contract-call? .patient-consent is-valid-data-type data-type) ERR-INVALID-DATA-TYPE)
    (asserts! (contract-call? .patient-consent is-valid-purpose purpose) ERR-INVALID-PURPOSE)
    (asserts! (contract-call? .patient-consent check-consent-by-id patient-id tx-sender data-type purpose)
              ERR-NO-CONSENT)
    (map-set access-log id
      { provider: tx-sender, patient-id: patient-id, data-type: data-type, purpose: purpose,
        block: stacks-block-height })
    (var-set access-count id)
    (print { topic: "access-granted", access-log-id: id, provider: tx-sender, patient-id: patient-id,
             data-type: data-type, purpose: purpose })
    (ok id)))

;; ---------------------------------------------------------------------------
;; emergency access

(define-map emergency-accesses (buff 32)
  { provider: principal, provider-role: (string-ascii 16), provider-status: (string-ascii 16),
    patient-id: (buff 32), data-types: (list 8 (string-ascii 32)), window: uint, reason-hash: (buff 32),
    responder: principal, recorded-at: uint, expires-at: uint, within-preferences: bool, degraded: bool,
    index: uint })

(define-map emergency-reviews (buff 32)
  { reviewer: principal, verdict: (string-ascii 16), note-hash: (buff 32), block: uint })

(define-data-var emergency-count uint u0)
(define-map emergency-by-index uint (buff 32))
(define-map patient-emergency-counts (buff 32) uint)
(define-map patient-emergency-index { patient-id: (buff 32), index: uint } (buff 32))

(define-read-only (get-emergency-access (access-id (buff 32))) (map-get? emergency-accesses access-id))
(define-read-only (get-emergency-review (access-id (buff 32))) (map-get? emergency-reviews access-id))
(define-read-only (get-emergency-count) (var-get emergency-count))
(define-read-only (get-emergency-access-id (index uint)) (map-get? emergency-by-index index))
(define-read-only (get-patient-emergency-count (patient-id (buff 32)))
  (default-to u0 (map-get? patient-emergency-counts patient-id)))
(define-read-only (get-patient-emergency-access-id (patient-id (buff 32)) (index uint))
  (map-get? patient-emergency-index { patient-id: patient-id, index: index }))

(define-private (valid-data-type-step (data-type (string-ascii 32)) (ok-so-far bool))
  (and ok-so-far (contract-call? .patient-consent is-valid-data-type data-type)))

;; A responder service records a break-glass access it granted off chain. The record is kept
;; whatever the patient's preferences and the provider's status say when it is mined (it is a
;; record of what happened: the responder checked both when it granted, and the provider may
;; have been suspended since); whether the access stayed within the preferences, and the
;; provider's status at recording, are stored for reviewers. Only a principal that never
;; registered as a provider is refused (u205).
;;
;; `degraded` is true when the responder granted the access while its view of the chain was
;; older than its configured bound (a hospital policy allowed that, in degraded mode): the
;; consent, preferences and provider status it checked may have been stale. It is stored and
;; printed as given, for reviewers.
;;
;; Checks run cheapest first, all before any patient-consent call: the caller (direct, a
;; responder), the duplicate, the list and window shapes and the provider, from this contract's
;; own state; then what only patient-consent knows (the data types, the longest window), and
;; last, once every check passed, whether the access stayed within the patient's preferences.
(define-public (record-emergency-access (access-id (buff 32)) (provider principal) (patient-id (buff 32))
                                        (data-types (list 8 (string-ascii 32))) (window uint)
                                        (reason-hash (buff 32)) (degraded bool))
  (begin
    (try! (assert-direct-call))
    (asserts! (is-responder tx-sender) ERR-NOT-RESPONDER)
    ;; a duplicate is checked before anything that can change over time, so that a
    ;; rebroadcast of an access already recorded is always told so
    (asserts! (is-none (map-get? emergency-accesses access-id)) ERR-DUPLICATE-ACCESS)
    (asserts! (> (len data-types) u0) ERR-NO-DATA-TYPES)
    (asserts! (> window u0) ERR-INVALID-WINDOW)
    (let ((entry (unwrap! (map-get? providers provider) ERR-PROVIDER-NOT-FOUND))
          (role (get role entry))
          (status (get status entry)))
      (asserts! (fold valid-data-type-step data-types true) ERR-INVALID-DATA-TYPE)
      (asserts! (<= window (contract-call? .patient-consent get-max-emergency-window)) ERR-INVALID-WINDOW)
      (let ((within (contract-call? .patient-consent is-emergency-access-allowed patient-id data-types window))
            (index (var-get emergency-count))
            (patient-index (get-patient-emergency-count patient-id)))
        (map-set emergency-accesses access-id
          { provider: provider, provider-role: role, provider-status: status, patient-id: patient-id,
            data-types: data-types, window: window, reason-hash: reason-hash, responder: tx-sender,
            recorded-at: stacks-block-height, expires-at: (+ stacks-block-height window),
            within-preferences: within, degraded: degraded, index: index })
        (map-set emergency-by-index index access-id)
        (var-set emergency-count (+ index u1))
        (map-set patient-emergency-index { patient-id: patient-id, index: patient-index } access-id)
        (map-set patient-emergency-counts patient-id (+ patient-index u1))
        (print { topic: "emergency-access-recorded", access-id: access-id, provider: provider,
                 provider-role: role, provider-status: status, patient-id: patient-id,
                 data-types: data-types, window: window, responder: tx-sender,
                 recorded-at: stacks-block-height, expires-at: (+ stacks-block-height window),
                 reason-hash: reason-hash, within-preferences: within, degraded: degraded, index: index })
        (ok index)))))

(define-read-only (get-verdicts) VERDICTS)

;; SIP-018 signed structured data: sha256("SIP018" ++ sha256(domain) ++ sha256(message)), each
;; hashed over its consensus serialization. The domain is fixed at deploy, on this chain.
(define-constant SIP018-PREFIX 0x534950303138)
(define-constant REVIEW-DOMAIN-HASH
  (sha256 (unwrap-panic (to-consensus-buff? { name: "breakglass", version: "1", chain-id: chain-id }))))

;; The 32-byte hash a reviewer signs to have a responder relay their review (see "Relayed
;; reviews" in the header), for clients and tests to check theirs against.
(define-read-only (get-review-message-hash (access-id (buff 32)) (verdict (string-ascii 16)) (note-hash (buff 32)))
  (sha256 (concat SIP018-PREFIX (concat REVIEW-DOMAIN-HASH
    (sha256 (unwrap-panic (to-consensus-buff?
      { action: "review", access-id: access-id, verdict: verdict, note-hash: note-hash })))))))

;; The principal whose key made `signature` (65 bytes, RSV: recovery id last) over the review
;; message; u225 when it recovers no key. Any other signature recovers some other principal.
(define-private (review-signer (access-id (buff 32)) (verdict (string-ascii 16)) (note-hash (buff 32))
                               (signature (buff 65)))
  (let ((message-hash (get-review-message-hash access-id verdict note-hash))
        (public-key (unwrap! (secp256k1-recover? message-hash signature) ERR-BAD-REVIEW-SIGNATURE)))
    (ok (unwrap! (principal-of? public-key) ERR-BAD-REVIEW-SIGNATURE))))

;; A reviewer's verdict on an emergency access, once per access. `reviewer-signature` none: the
;; reviewer is the caller. (some signature): the caller is a responder relaying a review the
;; reviewer signed in their browser (reviewers hold no STX; the responder pays, and its
;; submitter sends the transaction exactly once), and the reviewer is the signer, recovered
;; from the signature over the access id, verdict and note hash (see "Relayed reviews" in the
;; header). Either way the same rules then apply to the reviewer: a reviewer whose provider
;; record is verified at this block (one suspended or revoked by an authority, or never
;; credentialed, cannot judge: u208, as a signature made before a suspension and relayed after
;; it), a known verdict, neither the access's provider nor the responder that recorded it, and
;; the first review.
;;
;; Checks run cheapest first: the caller (direct; a responder when relayed), the access, then
;; the signature's recovery (the only costly step, only for a relayed review of an access that
;; exists), then the reviewer's rules.
(define-public (review-emergency-access (access-id (buff 32)) (verdict (string-ascii 16)) (note-hash (buff 32))
                                        (reviewer-signature (optional (buff 65))))
  (begin
    (try! (assert-direct-call))
    (asserts! (or (is-none reviewer-signature) (is-responder tx-sender)) ERR-NOT-RESPONDER)
    (let ((access (unwrap! (map-get? emergency-accesses access-id) ERR-ACCESS-NOT-FOUND))
          (reviewer (match reviewer-signature
                      signature (try! (review-signer access-id verdict note-hash signature))
                      tx-sender))
          (relayed-by (if (is-some reviewer-signature) (some tx-sender) none)))
      (asserts! (is-reviewer reviewer) ERR-NOT-REVIEWER)
      (asserts! (is-verified-provider reviewer) ERR-PROVIDER-NOT-VERIFIED)
      (asserts! (is-some (map-get? known-verdicts verdict)) ERR-INVALID-VERDICT)
      (asserts! (not (or (is-eq reviewer (get provider access)) (is-eq reviewer (get responder access))))
                ERR-SELF-REVIEW)
      (asserts! (map-insert emergency-reviews access-id
                  { reviewer: reviewer, verdict: verdict, note-hash: note-hash, block: stacks-block-height })
                ERR-ALREADY-REVIEWED)
      (print { topic: "emergency-access-reviewed", access-id: access-id, reviewer: reviewer, verdict: verdict,
               note-hash: note-hash, provider: (get provider access), patient-id: (get patient-id access),
               relayed-by: relayed-by })
      (ok true))))

;; ---------------------------------------------------------------------------
;; audit anchors: the head of the off-chain hash-chained audit log and how many entries it covers

(define-data-var anchor-count uint u0)
(define-map anchors uint { head: (buff 32), count: uint, block: uint, responder: principal })

(define-read-only (get-anchor-count) (var-get anchor-count))
(define-read-only (get-anchor (index uint)) (map-get? anchors index))
(define-read-only (get-latest-anchor)
  (if (is-eq (var-get anchor-count) u0) none (map-get? anchors (- (var-get anchor-count) u1))))
;; Each responder anchors its own log: its anchors grow on their own, and another responder's
;; (of another log) neither hold them back nor stand for them.
(define-map latest-anchor-index principal uint)
(define-read-only (get-latest-anchor-of (responder principal))
  (match (map-get? latest-anchor-index responder) index (map-get? anchors index) none))

(define-public (anchor-audit (head (buff 32)) (count uint))
  (let ((index (var-get anchor-count)))
    (try! (assert-direct-call))
    (asserts! (is-responder tx-sender) ERR-NOT-RESPONDER)
    ;; the responder's audit log only grows: an anchor covering fewer entries than its last is
    ;; refused, and one covering as many must name the same head (another would fork the
    ;; anchored history)
    (asserts! (match (get-latest-anchor-of tx-sender)
                last (or (> count (get count last))
                         (and (is-eq count (get count last)) (is-eq head (get head last))))
                true)
              ERR-ANCHOR-REGRESSION)
    (map-set anchors index { head: head, count: count, block: stacks-block-height, responder: tx-sender })
    (map-set latest-anchor-index tx-sender index)
    (var-set anchor-count (+ index u1))
    (print { topic: "audit-anchored", head: head, count: count, anchor-index: index, responder: tx-sender })
    (ok index)))

;; ---------------------------------------------------------------------------
;; emergency summaries: the SHA-256 of each patient's sealed off-chain summary, set by a data
;; custodian (see "Emergency summaries" in the header)

(define-map summary-hashes (buff 32) { hash: (buff 32), custodian: principal, block: uint, version: uint })
;; The latest version set for each patient, kept when the hash is cleared: versions never repeat.
(define-map summary-versions (buff 32) uint)

(define-read-only (get-summary-hash (patient-id (buff 32))) (map-get? summary-hashes patient-id))
(define-read-only (get-summary-version (patient-id (buff 32)))
  (default-to u0 (map-get? summary-versions patient-id)))

(define-public (set-summary-hash (patient-id (buff 32)) (hash (buff 32)))
  (let ((version (+ (get-summary-version patient-id) u1)))
    (try! (assert-direct-call))
    (asserts! (is-custodian tx-sender) ERR-NOT-CUSTODIAN)
    (map-set summary-hashes patient-id
      { hash: hash, custodian: tx-sender, block: stacks-block-height, version: version })
    (map-set summary-versions patient-id version)
    (print { topic: "summary-hash-set", patient-id: patient-id, hash: hash, custodian: tx-sender,
             version: version })
    (ok version)))

;; A summary withdrawn: its hash is removed (the version count stays, so the next set goes on
;; from it).
(define-public (clear-summary-hash (patient-id (buff 32)))
  (begin
    (try! (assert-direct-call))
    (asserts! (is-custodian tx-sender) ERR-NOT-CUSTODIAN)
    (let ((summary (unwrap! (map-get? summary-hashes patient-id) ERR-SUMMARY-NOT-FOUND)))
      (map-delete summary-hashes patient-id)
      (print { topic: "summary-hash-cleared", patient-id: patient-id, custodian: tx-sender,
               version: (get version summary) })
      (ok true))))
