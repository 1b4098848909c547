;; Properties and invariants of access-control, run by rendezvous:
;;   npx rv . access-control test        (properties: `test-` functions with random arguments)
;;   npx rv . access-control invariant   (random call sequences, then `invariant-` checks)
;; Rendezvous appends this file to the contract in its own simnet; it is never deployed.
;; The `fuzz-` functions map random numbers onto valid roles, data types, verdicts and a small
;; set of access and patient ids, so that random call sequences reach real state changes and
;; collisions.

;; State seeded at deploy: wallet_1 and wallet_2 are authorities; wallet_2, wallet_3 and wallet_4
;; responders; wallet_3 and wallet_4 reviewers; wallet_2 and wallet_7 data custodians; wallet_5
;; (physician) and wallet_6 (nurse) verified providers with ids 1 and 2, and wallet_3 (reviewer)
;; with id 3; wallet_4 a reviewer with no provider record, who may not review (u208); the first
;; fuzz patient (sha256 u0) has a summary hash at version 1, set by wallet_2. The deployer stays
;; owner.
(map-set authorities 'ST1SJ3DTE5DN7X54YDH5D64R3BCB6A2AG2ZQ8YPD5 true)
(map-set authorities 'ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG true)
(map-set responders 'ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG true)
(map-set responders 'ST2JHG361ZXG51QTKY2NQCVBPPRRE2KZB1HR05NNC true)
(map-set responders 'ST2NEB84ASENDXKYGJPQW86YXQCEFEX2ZQPG87ND true)
(map-set reviewers 'ST2JHG361ZXG51QTKY2NQCVBPPRRE2KZB1HR05NNC true)
(map-set reviewers 'ST2NEB84ASENDXKYGJPQW86YXQCEFEX2ZQPG87ND true)
(map-set custodians 'ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG true)
(map-set custodians 'ST3PF13W7Z0RRM42A8VZRVFQ75SV1K26RXEP8YGKJ true)
(map-set summary-hashes (sha256 u0)
  { hash: (sha256 u100), custodian: 'ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG, block: stacks-block-height, version: u1 })
(map-set summary-versions (sha256 u0) u1)
(define-constant FUZZ-PROVIDERS (list 'ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB 'ST3AM1A56AK2C1XAFJ4115ZSV26EB49BVQ10MGCS0))
(map-set providers 'ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB
  { id: u1, role: "physician", info-hash: (sha256 u1), credentials-hash: (sha256 u1), status: STATUS-VERIFIED,
    registered-at: stacks-block-height, updated-at: stacks-block-height, verified-by: none })
(map-set providers 'ST3AM1A56AK2C1XAFJ4115ZSV26EB49BVQ10MGCS0
  { id: u2, role: "nurse", info-hash: (sha256 u2), credentials-hash: (sha256 u2), status: STATUS-VERIFIED,
    registered-at: stacks-block-height, updated-at: stacks-block-height, verified-by: none })
(map-set providers 'ST2JHG361ZXG51QTKY2NQCVBPPRRE2KZB1HR05NNC
  { id: u3, role: "reviewer", info-hash: (sha256 u3), credentials-hash: (sha256 u3), status: STATUS-VERIFIED,
    registered-at: stacks-block-height, updated-at: stacks-block-height, verified-by: none })
(map-set provider-ids u1 'ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB)
(map-set provider-ids u2 'ST3AM1A56AK2C1XAFJ4115ZSV26EB49BVQ10MGCS0)
(map-set provider-ids u3 'ST2JHG361ZXG51QTKY2NQCVBPPRRE2KZB1HR05NNC)
(var-set provider-count u3)

(define-constant FUZZ-DATA-TYPES (list "allergies" "medications" "problems" "blood-type" "advance-directives"
                                       "immunizations" "emergency-summary" "clinical-notes"))
(define-constant FUZZ-INDEXES (list u0 u1 u2 u3 u4 u5 u6 u7 u8 u9 u10 u11 u12 u13 u14 u15
                                    u16 u17 u18 u19 u20 u21 u22 u23 u24 u25 u26 u27 u28 u29 u30 u31))

(define-private (fuzz-role (n uint)) (unwrap-panic (element-at? ROLES (mod n (len ROLES)))))
(define-private (fuzz-verdict (n uint)) (unwrap-panic (element-at? VERDICTS (mod n (len VERDICTS)))))
(define-private (fuzz-data-types (n uint))
  (let ((first (unwrap-panic (element-at? FUZZ-DATA-TYPES (mod n u8))))
        (second (unwrap-panic (element-at? FUZZ-DATA-TYPES (mod (/ n u8) u8)))))
    (if (is-eq (mod n u2) u0) (list first) (list first second))))
;; One of the seeded providers (verified unless a random run suspended or revoked them).
(define-private (fuzz-provider (n uint))
  (unwrap-panic (element-at? FUZZ-PROVIDERS (mod n u2))))
;; Sixteen possible access ids, so that duplicates happen.
(define-private (fuzz-access-id (n uint))
  (sha256 (mod n u16)))
;; Four possible patient ids for summary hashes (the first seeded with one), so that sets,
;; clears and later sets meet.
(define-constant FUZZ-PATIENTS (list u0 u1 u2 u3))
(define-private (fuzz-patient-id (n uint))
  (sha256 (mod n u4)))
;; A valid window: 1 to patient-consent's longest.
(define-private (fuzz-window (n uint))
  (+ u1 (mod n (contract-call? .patient-consent get-max-emergency-window))))

;; ---------------------------------------------------------------------------
;; adapters for invariant runs

(define-public (fuzz-register-provider (role uint) (seed uint))
  (register-provider (sha256 seed) (fuzz-role role) (sha256 (+ seed u1))))

(define-public (fuzz-set-provider-role (who principal) (role uint))
  (set-provider-role who (fuzz-role role)))

;; Brings a seeded provider back to verified (authorities only), so records keep happening.
(define-public (fuzz-restore (pick uint))
  (let ((provider (fuzz-provider pick)))
    (if (is-eq (get status (map-get? providers provider)) (some STATUS-SUSPENDED))
      (reinstate-provider provider)
      (verify-provider provider))))

;; Two times in three for a seeded provider, else for any account (mostly unregistered or pending).
(define-public (fuzz-record (access uint) (pick uint) (any-provider principal) (data-types uint) (window uint)
                            (degraded bool))
  (record-emergency-access (fuzz-access-id access)
                           (if (is-eq (mod pick u3) u0) any-provider (fuzz-provider pick)) (sha256 (mod access u3)) (fuzz-data-types data-types)
                           (fuzz-window window) (sha256 window) degraded))

(define-public (fuzz-review (access uint) (verdict uint))
  (review-emergency-access (fuzz-access-id access) (fuzz-verdict verdict) (sha256 verdict) none))

(define-public (fuzz-set-summary-hash (patient uint) (seed uint))
  (set-summary-hash (fuzz-patient-id patient) (sha256 seed)))

(define-public (fuzz-clear-summary-hash (patient uint))
  (clear-summary-hash (fuzz-patient-id patient)))

;; Notes each fuzz patient's summary version as it is now, for the invariant that versions only
;; grow (an invariant reads the state after each call, never the state before it).
(define-map fuzz-seen-summary-versions (buff 32) uint)
(define-private (note-summary-version (n uint) (noted uint))
  (begin
    (map-set fuzz-seen-summary-versions (fuzz-patient-id n) (get-summary-version (fuzz-patient-id n)))
    (+ noted u1)))
(define-public (fuzz-note-summary-versions)
  (ok (fold note-summary-version FUZZ-PATIENTS u0)))

;; Calls through a contract into patient-consent. Rendezvous calls every function of this
;; contract directly from a wallet, so in it tx-sender and contract-caller are that wallet; a
;; `contract-call?` from here into patient-consent is then a call through another contract
;; (there, contract-caller is this contract and tx-sender still the wallet), exactly what a
;; hostile contract the wallet was tricked into calling would make. In this simnet nothing calls
;; patient-consent except through this contract. (The reverse cannot be written: patient-consent
;; is deployed first and cannot call access-control, and a contract cannot call into itself,
;; Clarity refuses the re-entry; access-control's own refusals are covered by tests/proxy.test.ts.)
(define-constant PC-ERR-PROXY-CALL (err u110))
(define-private (fuzz-purpose (n uint))
  (unwrap-panic (element-at? (contract-call? .patient-consent get-purposes) (mod n u4))))

;; One of patient-consent's six public functions, through this contract.
(define-public (fuzz-through-contract (pick uint) (salt (buff 32)) (provider principal) (dt uint) (purpose uint)
                                      (allow bool) (window uint))
  (let ((n (mod pick u6))
        (data-type (unwrap-panic (element-at? FUZZ-DATA-TYPES (mod dt u8))))
        (why (fuzz-purpose purpose)))
    (if (is-eq n u0) (begin (try! (contract-call? .patient-consent register-patient salt)) (ok true))
    (if (is-eq n u1) (begin (try! (contract-call? .patient-consent grant-consent provider data-type (+ stacks-block-height window))) (ok true))
    (if (is-eq n u2) (begin (try! (contract-call? .patient-consent grant-consent-for-purpose provider data-type why (+ stacks-block-height window))) (ok true))
    (if (is-eq n u3) (begin (try! (contract-call? .patient-consent revoke-consent provider data-type)) (ok true))
    (if (is-eq n u4) (begin (try! (contract-call? .patient-consent revoke-consent-for-purpose provider data-type why)) (ok true))
      (begin (try! (contract-call? .patient-consent set-emergency-preferences allow (list data-type) window)) (ok true)))))))))

;; ---------------------------------------------------------------------------
;; properties

;; patient-consent refuses every call made through another contract with u110, before any other
;; check (whatever the arguments), and the caller's patient state stays as it was.
(define-public (test-patient-consent-refuses-calls-through-a-contract (salt (buff 32)) (provider principal) (dt uint)
                                                                       (purpose uint) (allow bool) (window uint))
  (let ((data-type (unwrap-panic (element-at? FUZZ-DATA-TYPES (mod dt u8))))
        (why (fuzz-purpose purpose))
        (patient-id (contract-call? .patient-consent derive-patient-id tx-sender salt))
        (registered (contract-call? .patient-consent get-patient-id tx-sender))
        (history (contract-call? .patient-consent get-consent-history-count patient-id))
        (preferences (contract-call? .patient-consent get-emergency-preferences patient-id)))
    ;; the premise: the wallet called this property directly, so this contract is the proxy
    (asserts! (is-eq tx-sender contract-caller) (err u970))
    (asserts! (is-eq (contract-call? .patient-consent register-patient salt) PC-ERR-PROXY-CALL) (err u971))
    (asserts! (is-eq (contract-call? .patient-consent grant-consent provider data-type (+ stacks-block-height window))
                     PC-ERR-PROXY-CALL) (err u972))
    (asserts! (is-eq (contract-call? .patient-consent grant-consent-for-purpose provider data-type why
                                                     (+ stacks-block-height window))
                     PC-ERR-PROXY-CALL) (err u973))
    (asserts! (is-eq (contract-call? .patient-consent revoke-consent provider data-type) PC-ERR-PROXY-CALL) (err u974))
    (asserts! (is-eq (contract-call? .patient-consent revoke-consent-for-purpose provider data-type why) PC-ERR-PROXY-CALL)
              (err u975))
    (asserts! (is-eq (contract-call? .patient-consent set-emergency-preferences allow (list data-type) window)
                     PC-ERR-PROXY-CALL) (err u976))
    (asserts! (is-eq (contract-call? .patient-consent get-patient-id tx-sender) registered) (err u977))
    (asserts! (is-eq (contract-call? .patient-consent get-consent-history-count patient-id) history) (err u978))
    (asserts! (is-eq (contract-call? .patient-consent get-emergency-preferences patient-id) preferences) (err u979))
    (ok true)))

;; An emergency access is never recorded for a principal that never registered as a provider,
;; and a registered provider's is recorded whatever their status, with that status.
(define-public (test-emergency-access-needs-a-registered-provider (access (buff 32)) (provider principal)
                                                                  (data-types uint) (window uint) (degraded bool))
  (if (or (not (is-responder tx-sender)) (is-some (map-get? emergency-accesses access)))
    (ok false)
    (let ((entry (map-get? providers provider))
          (result (record-emergency-access access provider (sha256 window) (fuzz-data-types data-types)
                                           (fuzz-window window) (sha256 window) degraded)))
      (match entry
        registered (begin
          (asserts! (is-ok result) (err u932))
          (asserts! (is-eq (get provider-status (map-get? emergency-accesses access))
                           (some (get status registered)))
                    (err u933))
          (asserts! (is-eq (get degraded (map-get? emergency-accesses access)) (some degraded)) (err u934))
          (ok true))
        (begin
          (asserts! (is-eq result ERR-PROVIDER-NOT-FOUND) (err u930))
          (asserts! (is-none (map-get? emergency-accesses access)) (err u931))
          (ok true))))))

;; A verified provider's access is recorded exactly once: the same id again is a duplicate.
(define-public (test-emergency-access-recorded-once (access (buff 32)) (pick uint) (data-types uint))
  (let ((provider (fuzz-provider pick))
        (count-before (var-get emergency-count)))
    (asserts! (and (is-responder tx-sender) (is-verified-provider provider)
                   (is-none (map-get? emergency-accesses access)))
              (ok false))
    (begin
      (try! (record-emergency-access access provider (sha256 u1) (fuzz-data-types data-types) u10 (sha256 u2) false))
      (asserts! (is-eq (record-emergency-access access provider (sha256 u1) (fuzz-data-types data-types) u10 (sha256 u2) true)
                       ERR-DUPLICATE-ACCESS)
                (err u940))
      (asserts! (is-eq (var-get emergency-count) (+ count-before u1)) (err u941))
      (ok true))))

;; The responder that recorded an access never reviews it, whatever the verdict (wallet_3 and
;; wallet_4 are responders and reviewers): u217, or u208 first for a reviewer whose own provider
;; record is not verified (wallet_4, or wallet_3 once a random run suspended it); that a review
;; is recorded once is an invariant below.
(define-public (test-no-review-by-its-recorder (access-id (buff 32)) (pick uint) (verdict uint))
  (let ((provider (fuzz-provider pick)))
    (asserts! (and (is-reviewer tx-sender) (is-responder tx-sender) (is-verified-provider provider)
                   (is-none (map-get? emergency-accesses access-id)))
              (ok false))
    (try! (record-emergency-access access-id provider (sha256 pick) (list "allergies") u10 (sha256 verdict) false))
    (asserts! (is-eq (review-emergency-access access-id (fuzz-verdict verdict) (sha256 verdict) none)
                     (if (is-verified-provider tx-sender) ERR-SELF-REVIEW ERR-PROVIDER-NOT-VERIFIED))
              (err u950))
    (asserts! (is-none (map-get? emergency-reviews access-id)) (err u951))
    (ok true)))

;; A reviewer whose own provider record is not verified never reviews (u208), and nothing is
;; recorded: an access recorded before (any responder's), else one they record as a responder.
(define-public (test-an-unverified-reviewer-never-reviews (access-id (buff 32)) (pick uint) (verdict uint))
  (begin
    (asserts! (and (is-reviewer tx-sender) (not (is-verified-provider tx-sender))
                   (is-none (map-get? emergency-reviews access-id))
                   (or (is-some (map-get? emergency-accesses access-id))
                       (and (is-responder tx-sender) (is-verified-provider (fuzz-provider pick)))))
              (ok false))
    (if (is-none (map-get? emergency-accesses access-id))
      (try! (record-emergency-access access-id (fuzz-provider pick) (sha256 pick) (list "allergies") u10
                                     (sha256 verdict) false))
      u0)
    (asserts! (is-eq (review-emergency-access access-id (fuzz-verdict verdict) (sha256 verdict) none)
                     ERR-PROVIDER-NOT-VERIFIED)
              (err u955))
    (asserts! (is-none (map-get? emergency-reviews access-id)) (err u956))
    (ok true)))

;; A relayed review is recorded only with a reviewer's signature: random bytes recover no key
;; (u225) or a key no reviewer holds (u203), and nothing is recorded; relayed by a principal
;; that is not a responder, it is refused (u202) before the access is even looked up.
(define-public (test-relayed-review-needs-a-reviewer-signature (access-id (buff 32)) (pick uint) (verdict uint)
                                                               (signature (buff 65)))
  (let ((provider (fuzz-provider pick)))
    (asserts! (and (is-verified-provider provider) (is-none (map-get? emergency-accesses access-id))) (ok false))
    (if (is-responder tx-sender)
      (begin
        (try! (record-emergency-access access-id provider (sha256 pick) (list "allergies") u10 (sha256 verdict) false))
        (let ((result (review-emergency-access access-id (fuzz-verdict verdict) (sha256 verdict) (some signature))))
          (asserts! (or (is-eq result ERR-BAD-REVIEW-SIGNATURE) (is-eq result ERR-NOT-REVIEWER)) (err u980))
          (asserts! (is-none (map-get? emergency-reviews access-id)) (err u981))
          (ok true)))
      (begin
        (asserts! (is-eq (review-emergency-access access-id (fuzz-verdict verdict) (sha256 verdict) (some signature))
                         ERR-NOT-RESPONDER)
                  (err u982))
        (ok true)))))

;; Only a custodian sets or clears a summary hash: anyone else is refused (u226), whatever the
;; patient id (one of the fuzz patients half the time, the first with a hash seeded), and the
;; hash and version stay as they were.
(define-public (test-only-custodians-set-summary-hashes (patient-id (buff 32)) (pick uint) (hash (buff 32)))
  (let ((patient (if (is-eq (mod pick u2) u0) (fuzz-patient-id (/ pick u2)) patient-id))
        (summary (get-summary-hash patient))
        (version (get-summary-version patient)))
    (asserts! (not (is-custodian tx-sender)) (ok false))
    (asserts! (is-eq (set-summary-hash patient hash) ERR-NOT-CUSTODIAN) (err u990))
    (asserts! (is-eq (clear-summary-hash patient) ERR-NOT-CUSTODIAN) (err u991))
    (asserts! (is-eq (get-summary-hash patient) summary) (err u992))
    (asserts! (is-eq (get-summary-version patient) version) (err u993))
    (ok true)))

;; A custodian's set is the patient's next version, a clear leaves no hash but keeps the count,
;; and the set after it goes on from there: a version is never reused.
(define-public (test-summary-hash-version-grows (patient uint) (seed uint))
  (let ((patient-id (fuzz-patient-id patient))
        (before (get-summary-version patient-id)))
    (asserts! (is-custodian tx-sender) (ok false))
    (asserts! (is-eq (set-summary-hash patient-id (sha256 seed)) (ok (+ before u1))) (err u994))
    (asserts! (is-eq (get-summary-hash patient-id)
                     (some { hash: (sha256 seed), custodian: tx-sender, block: stacks-block-height,
                             version: (+ before u1) }))
              (err u995))
    (try! (clear-summary-hash patient-id))
    (asserts! (is-none (get-summary-hash patient-id)) (err u996))
    (asserts! (is-eq (clear-summary-hash patient-id) ERR-SUMMARY-NOT-FOUND) (err u997))
    (asserts! (is-eq (set-summary-hash patient-id (sha256 (+ seed u1))) (ok (+ before u2))) (err u998))
    (ok true)))

;; Only authorities change a provider's status.
(define-public (test-only-authorities-verify (seed uint))
  (if (is-authority tx-sender)
    (ok false)
    (begin
      (if (is-none (map-get? providers tx-sender))
        (try! (register-provider (sha256 seed) "nurse" (sha256 seed)))
        u0)
      (asserts! (is-eq (verify-provider tx-sender) ERR-NOT-AUTHORITY) (err u960))
      (asserts! (is-eq (suspend-provider tx-sender) ERR-NOT-AUTHORITY) (err u961))
      (asserts! (is-eq (reinstate-provider tx-sender) ERR-NOT-AUTHORITY) (err u962))
      (asserts! (is-eq (revoke-provider tx-sender) ERR-NOT-AUTHORITY) (err u963))
      (ok true))))

;; ---------------------------------------------------------------------------
;; invariants

;; For each of the latest 32 recorded accesses: the provider is registered, and if their record
;; has not changed since the block the access was recorded in, the status recorded is theirs now.
(define-private (recorded-with-status (k uint) (holds bool))
  (let ((count (var-get emergency-count)))
    (and holds
         (or (>= k count)
             (let ((record (unwrap-panic (map-get? emergency-accesses
                                           (unwrap-panic (map-get? emergency-by-index (- count u1 k))))))
                   (provider (unwrap-panic (map-get? providers (get provider record)))))
               (or (>= (get updated-at provider) (get recorded-at record))
                   (is-eq (get status provider) (get provider-status record))))))))

(define-read-only (invariant-emergency-access-records-the-provider-status)
  (fold recorded-with-status FUZZ-INDEXES true))

(define-private (calls (fn (string-ascii 100)))
  (default-to u0 (get called (map-get? context fn))))

;; Each access is reviewed at most once, so successful reviews never outnumber accesses.
(define-read-only (invariant-review-recorded-once)
  (<= (+ (calls "review-emergency-access") (calls "fuzz-review")) (var-get emergency-count)))

;; Every successful record call added exactly one access, and only those did.
(define-read-only (invariant-emergency-count-matches-records)
  (is-eq (var-get emergency-count) (+ (calls "record-emergency-access") (calls "fuzz-record"))))

;; No call through this contract ever changed patient-consent: none succeeded, and no account
;; became a patient (in this simnet every call to patient-consent goes through this contract).
(define-constant FUZZ-ACCOUNTS (list
  'ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM 'ST1SJ3DTE5DN7X54YDH5D64R3BCB6A2AG2ZQ8YPD5
  'ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG 'ST2JHG361ZXG51QTKY2NQCVBPPRRE2KZB1HR05NNC
  'ST2NEB84ASENDXKYGJPQW86YXQCEFEX2ZQPG87ND 'ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB
  'ST3AM1A56AK2C1XAFJ4115ZSV26EB49BVQ10MGCS0 'ST3PF13W7Z0RRM42A8VZRVFQ75SV1K26RXEP8YGKJ
  'ST3NBRSFKX28FQ2ZJ1MAKX58HKHSDGNV5N7R21XCP))

(define-private (not-a-patient (who principal) (holds bool))
  (and holds (is-none (contract-call? .patient-consent get-patient-id who))))

(define-read-only (invariant-patient-consent-never-acted-through-a-contract)
  (and (is-eq (calls "fuzz-through-contract") u0)
       (fold not-a-patient FUZZ-ACCOUNTS true)))

;; Provider ids are dense: the count names the latest id, and no id beyond it exists.
(define-read-only (invariant-provider-ids-dense)
  (let ((count (var-get provider-count)))
    (and (is-none (map-get? provider-ids (+ count u1)))
         (or (is-eq count u0) (is-some (map-get? provider-ids count))))))

;; A fuzz patient's summary version never goes below what `fuzz-note-summary-versions` last saw,
;; a stored hash is always the latest version, and every successful `fuzz-set-summary-hash`
;; (nothing else: other calls name random patient ids) added exactly one to one patient's count
;; (the first started at the seeded 1).
(define-private (summary-version-holds (n uint) (holds bool))
  (let ((patient-id (fuzz-patient-id n))
        (version (get-summary-version patient-id)))
    (and holds
         (>= version (default-to u0 (map-get? fuzz-seen-summary-versions patient-id)))
         (match (get-summary-hash patient-id) summary (is-eq (get version summary) version) true))))

(define-private (add-summary-version (n uint) (total uint))
  (+ total (get-summary-version (fuzz-patient-id n))))

(define-read-only (invariant-summary-versions-only-grow)
  (and (fold summary-version-holds FUZZ-PATIENTS true)
       (is-eq (fold add-summary-version FUZZ-PATIENTS u0) (+ u1 (calls "fuzz-set-summary-hash")))))
