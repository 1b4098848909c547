;; patient-consent
;;
;; Consent that a patient gives, per provider, data type and purpose, with an expiry
;; in blocks; the full history of every grant and revoke; and the patient's emergency
;; (break-glass) preferences.
;;
;; Patients are pseudonymous: a principal acts for a 32-byte patient id. No name,
;; contact detail or clinical value is ever stored or printed here. A patient id is derived
;; from the principal that registers it and a salt of its choosing (`derive-patient-id`), so
;; no one can register an id that is someone else's, even one already seen on chain: the
;; patient's wallet computes its id and hands it to the hospital's directory.
;;
;; Heights are `stacks-block-height`. A consent is active while it is not revoked and
;; `stacks-block-height < expires-at`.
;;
;; Direct calls only. Every public function acts for the principal that called it directly:
;; it first asserts `(is-eq tx-sender contract-caller)` (`grant-consent` and `revoke-consent` in
;; the `-for-purpose` functions they are) and refuses anything else with ERR-PROXY-CALL, before
;; any other check; `tx-sender` is then the acting principal. A patient who is tricked into
;; calling some other contract therefore cannot have that contract grant, revoke, set
;; preferences or register in their name (with `tx-sender` alone it could). A contract may
;; still act for itself, as itself, with `as-contract` (then tx-sender and contract-caller are
;; both the contract). There is no exception: no function here is meant to be called through
;; another contract on a patient's behalf. Read-only functions check no caller: access-control
;; calls `check-consent-by-id`, `is-emergency-access-allowed`, `is-valid-data-type`,
;; `is-valid-purpose` and `get-max-emergency-window`.
;;
;; One emergency window bound: MAX-EMERGENCY-WINDOW (4,320 blocks) is defined here and only
;; here. `get-max-emergency-window` exposes it, and access-control reads it from there to bound
;; the window of the emergency accesses it records, so the longest window a patient may allow
;; and the longest window an access may be recorded with cannot drift apart.
;;
;; Data-type list caps. Clarity list types need a literal size, so the caps are numbers, and
;; two different ones on purpose:
;;   - 12 (`set-emergency-preferences`, `are-valid-data-types`, the stored preferences): the
;;     number of DATA-TYPES, every data type this contract knows, so that a patient can allow
;;     all of them. Adding a data type means raising this 12 with it (a test checks they agree).
;;   - 8 (`is-emergency-access-allowed`, and access-control's `record-emergency-access`): the
;;     most data types one emergency access may open, the same bound as the `data-types` list
;;     of the signed break-glass request a clinician's tablet sends. It covers the seven
;;     critical types (CRITICAL-DATA-TYPES, the default preferences) plus one; more than eight
;;     types for one patient take more than one access.
;;
;; Errors (distinct across both contracts: patient-consent u100-u199, access-control u200-u299)
;;   u100 ERR-NOT-REGISTERED      the caller has no patient id
;;   u101 ERR-ALREADY-REGISTERED  the caller already acts for a patient id
;;   u102 ERR-PATIENT-ID-TAKEN    another principal already acts for this patient id (only a
;;                                hash collision could: ids are derived from the principal)
;;   u103 ERR-INVALID-DATA-TYPE   data type not in DATA-TYPES
;;   u104 ERR-INVALID-EXPIRY      expires-at is not after the current block
;;   u105 ERR-NO-ACTIVE-CONSENT   revoke of a consent that is not active
;;   u106 ERR-INVALID-PURPOSE     purpose not in PURPOSES
;;   u107 ERR-INVALID-WINDOW      emergency window is 0 or above MAX-EMERGENCY-WINDOW
;;   u108 ERR-SELF-CONSENT        a patient cannot name themselves as provider
;;   u109 ERR-INVALID-PATIENT-ID  (retired: ids are derived, never chosen)
;;   u110 ERR-PROXY-CALL          the call came through another contract (contract-caller is not
;;                                tx-sender); see "Direct calls only" above
;;
;; Events (print): every state change prints a tuple whose `topic` is one of
;;   "patient-registered", "consent-granted", "consent-revoked", "emergency-preferences-set"
;; with the patient id and the ids needed to follow it off chain.

(define-constant ERR-NOT-REGISTERED (err u100))
(define-constant ERR-ALREADY-REGISTERED (err u101))
(define-constant ERR-PATIENT-ID-TAKEN (err u102))
(define-constant ERR-INVALID-DATA-TYPE (err u103))
(define-constant ERR-INVALID-EXPIRY (err u104))
(define-constant ERR-NO-ACTIVE-CONSENT (err u105))
(define-constant ERR-INVALID-PURPOSE (err u106))
(define-constant ERR-INVALID-WINDOW (err u107))
(define-constant ERR-SELF-CONSENT (err u108))
(define-constant ERR-PROXY-CALL (err u110))

;; Data types the system knows (12: the size of the preference lists below, see the header).
;; The first seven are the critical (emergency) set.
(define-constant DATA-TYPES (list
  "allergies" "medications" "problems" "blood-type" "advance-directives"
  "immunizations" "emergency-summary"
  "vitals" "lab-results" "procedures" "imaging" "clinical-notes"))
(define-constant CRITICAL-DATA-TYPES (list
  "allergies" "medications" "problems" "blood-type" "advance-directives"
  "immunizations" "emergency-summary"))

;; Purposes of use (the seed's use cases): treatment, research, insurance, transfer.
(define-constant PURPOSES (list "treatment" "research" "insurance" "transfer"))
(define-constant DEFAULT-PURPOSE "treatment")

;; Emergency window bounds, in blocks. MAX-EMERGENCY-WINDOW is the one definition both
;; contracts use (access-control reads it through `get-max-emergency-window`).
(define-constant MAX-EMERGENCY-WINDOW u4320)
(define-constant DEFAULT-EMERGENCY-WINDOW u720)


;; principal -> patient id, and back
(define-map patient-ids principal (buff 32))
(define-map patient-principals (buff 32) principal)

;; current consent state
(define-map consents
  { patient-id: (buff 32), provider: principal, data-type: (string-ascii 32), purpose: (string-ascii 16) }
  { active: bool, expires-at: uint, granted-at: uint, revoked-at: (optional uint) })

;; every grant and revoke, per patient, by index from 0
(define-map history-counts (buff 32) uint)
(define-map consent-history
  { patient-id: (buff 32), index: uint }
  { action: (string-ascii 8), provider: principal, data-type: (string-ascii 32),
    purpose: (string-ascii 16), expires-at: uint, block: uint })

(define-map emergency-preferences (buff 32)
  { allow: bool, data-types: (list 12 (string-ascii 32)), max-window: uint, updated-at: uint })

;; ---------------------------------------------------------------------------
;; validation helpers

;; Refuses a call made through another contract (see "Direct calls only" in the header).
(define-private (assert-direct-call)
  (ok (asserts! (is-eq tx-sender contract-caller) ERR-PROXY-CALL)))

;; Lookup sets, filled from the lists above at deploy time (`index-of?` would need the
;; argument's type to equal the list literal's narrower element type).
(define-map known-data-types (string-ascii 32) bool)
(define-map known-purposes (string-ascii 16) bool)
(define-private (add-data-type (data-type (string-ascii 32))) (map-insert known-data-types data-type true))
(define-private (add-purpose (purpose (string-ascii 16))) (map-insert known-purposes purpose true))
(map add-data-type DATA-TYPES)
(map add-purpose PURPOSES)

(define-read-only (is-valid-data-type (data-type (string-ascii 32)))
  (is-some (map-get? known-data-types data-type)))

(define-read-only (is-valid-purpose (purpose (string-ascii 16)))
  (is-some (map-get? known-purposes purpose)))

(define-private (all-valid-step (data-type (string-ascii 32)) (ok-so-far bool))
  (and ok-so-far (is-valid-data-type data-type)))

(define-read-only (are-valid-data-types (data-types (list 12 (string-ascii 32))))
  (fold all-valid-step data-types true))

(define-read-only (get-data-types) DATA-TYPES)
(define-read-only (get-purposes) PURPOSES)
(define-read-only (get-max-emergency-window) MAX-EMERGENCY-WINDOW)

;; ---------------------------------------------------------------------------
;; patients

(define-read-only (derive-patient-id (patient principal) (salt (buff 32)))
  (sha256 (concat (unwrap-panic (to-consensus-buff? patient)) salt)))

(define-public (register-patient (salt (buff 32)))
  (begin
    (try! (assert-direct-call))
    (let ((patient-id (derive-patient-id tx-sender salt)))
      (asserts! (is-none (map-get? patient-ids tx-sender)) ERR-ALREADY-REGISTERED)
      (asserts! (is-none (map-get? patient-principals patient-id)) ERR-PATIENT-ID-TAKEN)
      (map-set patient-ids tx-sender patient-id)
      (map-set patient-principals patient-id tx-sender)
      (print { topic: "patient-registered", patient-id: patient-id, patient: tx-sender })
      (ok patient-id))))

(define-read-only (get-patient-id (patient principal))
  (map-get? patient-ids patient))

(define-read-only (get-patient-principal (patient-id (buff 32)))
  (map-get? patient-principals patient-id))

;; ---------------------------------------------------------------------------
;; consent

(define-private (append-history (patient-id (buff 32)) (action (string-ascii 8)) (provider principal)
                                (data-type (string-ascii 32)) (purpose (string-ascii 16)) (expires-at uint))
  (let ((index (default-to u0 (map-get? history-counts patient-id))))
    (map-set consent-history { patient-id: patient-id, index: index }
      { action: action, provider: provider, data-type: data-type, purpose: purpose,
        expires-at: expires-at, block: stacks-block-height })
    (map-set history-counts patient-id (+ index u1))
    index))

(define-public (grant-consent-for-purpose (provider principal) (data-type (string-ascii 32))
                                          (purpose (string-ascii 16)) (expires-at uint))
  (begin
    (try! (assert-direct-call))
    (let ((patient-id (unwrap! (map-get? patient-ids tx-sender) ERR-NOT-REGISTERED)))
      (asserts! (not (is-eq provider tx-sender)) ERR-SELF-CONSENT)
      (asserts! (is-valid-data-type data-type) ERR-INVALID-DATA-TYPE)
      (asserts! (is-valid-purpose purpose) ERR-INVALID-PURPOSE)
      (asserts! (> expires-at stacks-block-height) ERR-INVALID-EXPIRY)
      (map-set consents
        { patient-id: patient-id, provider: provider, data-type: data-type, purpose: purpose }
        { active: true, expires-at: expires-at, granted-at: stacks-block-height, revoked-at: none })
      (let ((index (append-history patient-id "grant" provider data-type purpose expires-at)))
        (print { topic: "consent-granted", patient-id: patient-id, provider: provider, data-type: data-type,
                 purpose: purpose, expires-at: expires-at, history-index: index })
        (ok index)))))

;; Consent for treatment, the common case.
(define-public (grant-consent (provider principal) (data-type (string-ascii 32)) (expires-at uint))
  (grant-consent-for-purpose provider data-type DEFAULT-PURPOSE expires-at))

(define-public (revoke-consent-for-purpose (provider principal) (data-type (string-ascii 32))
                                           (purpose (string-ascii 16)))
  (begin
    (try! (assert-direct-call))
    (let ((patient-id (unwrap! (map-get? patient-ids tx-sender) ERR-NOT-REGISTERED))
          (key { patient-id: patient-id, provider: provider, data-type: data-type, purpose: purpose })
          (current (unwrap! (map-get? consents key) ERR-NO-ACTIVE-CONSENT)))
      (asserts! (consent-active current) ERR-NO-ACTIVE-CONSENT)
      (map-set consents key (merge current { active: false, revoked-at: (some stacks-block-height) }))
      (let ((index (append-history patient-id "revoke" provider data-type purpose (get expires-at current))))
        (print { topic: "consent-revoked", patient-id: patient-id, provider: provider, data-type: data-type,
                 purpose: purpose, history-index: index })
        (ok index)))))

(define-public (revoke-consent (provider principal) (data-type (string-ascii 32)))
  (revoke-consent-for-purpose provider data-type DEFAULT-PURPOSE))

(define-private (consent-active (consent { active: bool, expires-at: uint, granted-at: uint, revoked-at: (optional uint) }))
  (and (get active consent) (< stacks-block-height (get expires-at consent))))

(define-read-only (get-consent (patient-id (buff 32)) (provider principal) (data-type (string-ascii 32))
                               (purpose (string-ascii 16)))
  (map-get? consents { patient-id: patient-id, provider: provider, data-type: data-type, purpose: purpose }))

(define-read-only (check-consent-by-id (patient-id (buff 32)) (provider principal) (data-type (string-ascii 32))
                                       (purpose (string-ascii 16)))
  (match (get-consent patient-id provider data-type purpose)
    consent (consent-active consent)
    false))

;; Treatment consent of a patient, by the patient's principal.
(define-read-only (check-consent (patient principal) (provider principal) (data-type (string-ascii 32)))
  (match (map-get? patient-ids patient)
    patient-id (check-consent-by-id patient-id provider data-type DEFAULT-PURPOSE)
    false))

(define-read-only (get-consent-history-count (patient-id (buff 32)))
  (default-to u0 (map-get? history-counts patient-id)))

(define-read-only (get-consent-history-entry (patient-id (buff 32)) (index uint))
  (map-get? consent-history { patient-id: patient-id, index: index }))

;; ---------------------------------------------------------------------------
;; emergency preferences

(define-public (set-emergency-preferences (allow bool) (data-types (list 12 (string-ascii 32))) (max-window uint))
  (begin
    (try! (assert-direct-call))
    (let ((patient-id (unwrap! (map-get? patient-ids tx-sender) ERR-NOT-REGISTERED)))
      (asserts! (are-valid-data-types data-types) ERR-INVALID-DATA-TYPE)
      (asserts! (and (> max-window u0) (<= max-window MAX-EMERGENCY-WINDOW)) ERR-INVALID-WINDOW)
      (map-set emergency-preferences patient-id
        { allow: allow, data-types: data-types, max-window: max-window, updated-at: stacks-block-height })
      (print { topic: "emergency-preferences-set", patient-id: patient-id, allow: allow,
               data-types: data-types, max-window: max-window })
      (ok true))))

;; A patient who never set preferences gets the defaults: emergency access allowed to the
;; critical data types, for at most DEFAULT-EMERGENCY-WINDOW blocks. `is-default` says which.
(define-read-only (get-emergency-preferences (patient-id (buff 32)))
  (match (map-get? emergency-preferences patient-id)
    prefs { allow: (get allow prefs), data-types: (get data-types prefs), max-window: (get max-window prefs),
            updated-at: (get updated-at prefs), is-default: false }
    { allow: true, data-types: CRITICAL-DATA-TYPES, max-window: DEFAULT-EMERGENCY-WINDOW,
      updated-at: u0, is-default: true }))

(define-private (allowed-step (data-type (string-ascii 32))
                              (acc { allowed: (list 12 (string-ascii 32)), ok: bool }))
  (merge acc { ok: (and (get ok acc) (is-some (index-of? (get allowed acc) data-type))) }))

;; Whether the patient's preferences allow an emergency access to all of `data-types`
;; for `window` blocks.
(define-read-only (is-emergency-access-allowed (patient-id (buff 32)) (data-types (list 8 (string-ascii 32)))
                                               (window uint))
  (let ((prefs (get-emergency-preferences patient-id)))
    (and (get allow prefs)
         (<= window (get max-window prefs))
         (get ok (fold allowed-step data-types { allowed: (get data-types prefs), ok: true })))))
