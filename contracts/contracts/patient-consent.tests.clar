;; Properties and invariants of patient-consent, run by rendezvous:
;;   npx rv . patient-consent test        (properties: `test-` functions with random arguments)
;;   npx rv . patient-consent invariant   (random call sequences, then `invariant-` checks)
;; Rendezvous appends this file to the contract in its own simnet; it is never deployed.
;; The `fuzz-` functions map random numbers onto valid data types and purposes so that random
;; call sequences reach the contract's real state changes, not only its input checks.
;;
;; Calls through another contract (refused with u110) cannot be tested from here: rendezvous
;; calls these functions directly from a wallet, and internal calls keep contract-caller equal to
;; tx-sender (`as-contract` makes both the contract). access-control.tests.clar, whose contract
;; can call this one, has the property (`test-patient-consent-refuses-calls-through-a-contract`)
;; and an invariant; tests/proxy.test.ts deploys a hostile contract.

;; The simnet accounts rendezvous calls from.
(define-constant FUZZ-ACCOUNTS (list
  'ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM 'ST1SJ3DTE5DN7X54YDH5D64R3BCB6A2AG2ZQ8YPD5
  'ST2CY5V39NHDPWSXMW9QDT3HC3GD6Q6XX4CFRK9AG 'ST2JHG361ZXG51QTKY2NQCVBPPRRE2KZB1HR05NNC
  'ST2NEB84ASENDXKYGJPQW86YXQCEFEX2ZQPG87ND 'ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB
  'ST3AM1A56AK2C1XAFJ4115ZSV26EB49BVQ10MGCS0 'ST3PF13W7Z0RRM42A8VZRVFQ75SV1K26RXEP8YGKJ
  'ST3NBRSFKX28FQ2ZJ1MAKX58HKHSDGNV5N7R21XCP))

(define-private (fuzz-data-type (n uint))
  (unwrap-panic (element-at? DATA-TYPES (mod n (len DATA-TYPES)))))
(define-private (fuzz-purpose (n uint))
  (unwrap-panic (element-at? PURPOSES (mod n (len PURPOSES)))))
(define-constant FUZZ-SALT 0x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a)
(define-private (fuzz-patient-id (who principal))
  (derive-patient-id who FUZZ-SALT))

;; Registers the caller under an id derived from its principal (ok either way).
(define-private (ensure-registered)
  (match (map-get? patient-ids tx-sender)
    existing (ok existing)
    (register-patient FUZZ-SALT)))

;; ---------------------------------------------------------------------------
;; adapters for invariant runs

(define-public (fuzz-register)
  (register-patient FUZZ-SALT))

(define-public (fuzz-grant (provider principal) (dt uint) (purpose uint) (ttl uint))
  (grant-consent-for-purpose provider (fuzz-data-type dt) (fuzz-purpose purpose)
                             (+ stacks-block-height u1 (mod ttl u50))))

;; Revokes one of the caller's four latest history entries' consents (often still active).
(define-public (fuzz-revoke (back uint))
  (let ((patient-id (unwrap! (map-get? patient-ids tx-sender) ERR-NOT-REGISTERED))
        (n (get-consent-history-count patient-id)))
    (match (get-consent-history-entry patient-id (- n (min n (+ u1 (mod back u4)))))
      entry (revoke-consent-for-purpose (get provider entry) (get data-type entry) (get purpose entry))
      ERR-NO-ACTIVE-CONSENT)))

(define-private (min (a uint) (b uint)) (if (< a b) a b))

;; ---------------------------------------------------------------------------
;; properties

;; Whatever was granted, a revoke makes the consent check false at once.
(define-public (test-revoked-consent-never-checks-true (provider principal) (dt uint) (purpose uint) (ttl uint))
  (if (is-eq provider tx-sender)
    (ok false)
    (let ((patient-id (try! (ensure-registered)))
          (data-type (fuzz-data-type dt))
          (why (fuzz-purpose purpose)))
      (try! (grant-consent-for-purpose provider data-type why (+ stacks-block-height u1 (mod ttl u10000))))
      (asserts! (check-consent-by-id patient-id provider data-type why) (err u900))
      (try! (revoke-consent-for-purpose provider data-type why))
      (asserts! (not (check-consent-by-id patient-id provider data-type why)) (err u901))
      (asserts! (is-eq (revoke-consent-for-purpose provider data-type why) ERR-NO-ACTIVE-CONSENT) (err u902))
      (ok true))))

;; A grant never covers another provider, data type or purpose.
(define-public (test-consent-is-granular (provider principal) (other principal) (dt uint) (purpose uint))
  (if (or (is-eq provider tx-sender) (is-eq provider other))
    (ok false)
    (let ((patient-id (try! (ensure-registered)))
          (data-type (fuzz-data-type dt))
          (other-type (fuzz-data-type (+ dt u1)))
          (why (fuzz-purpose purpose))
          (other-why (fuzz-purpose (+ purpose u1))))
      (if (or (check-consent-by-id patient-id other data-type why)
              (check-consent-by-id patient-id provider other-type why)
              (check-consent-by-id patient-id provider data-type other-why))
        (ok false)
        (begin
          (try! (grant-consent-for-purpose provider data-type why (+ stacks-block-height u100)))
          (asserts! (not (check-consent-by-id patient-id other data-type why)) (err u910))
          (asserts! (not (check-consent-by-id patient-id provider other-type why)) (err u911))
          (asserts! (not (check-consent-by-id patient-id provider data-type other-why)) (err u912))
          (ok true))))))

;; Preferences never allow a window longer than their maximum, nor a type outside their list.
(define-public (test-preferences-bound-emergency-access (allow bool) (dt uint) (window uint))
  (let ((patient-id (try! (ensure-registered)))
        (max-window (+ u1 (mod window MAX-EMERGENCY-WINDOW)))
        (allowed-type (fuzz-data-type dt))
        (other-type (fuzz-data-type (+ dt u1))))
    (try! (set-emergency-preferences allow (list allowed-type) max-window))
    (asserts! (is-eq (is-emergency-access-allowed patient-id (list allowed-type) max-window) allow) (err u920))
    (asserts! (not (is-emergency-access-allowed patient-id (list allowed-type) (+ max-window u1))) (err u921))
    (asserts! (not (is-emergency-access-allowed patient-id (list allowed-type other-type) u1)) (err u922))
    (ok true)))

;; ---------------------------------------------------------------------------
;; invariants

;; A patient's latest history entry, if a revoke, is not active: no later grant revived it.
(define-private (latest-revoke-holds (who principal) (holds bool))
  (and holds
       (match (map-get? patient-ids who)
         patient-id
           (let ((n (get-consent-history-count patient-id)))
             (or (is-eq n u0)
                 (let ((entry (unwrap-panic (get-consent-history-entry patient-id (- n u1)))))
                   (or (not (is-eq (get action entry) "revoke"))
                       (not (check-consent-by-id patient-id (get provider entry) (get data-type entry)
                                                 (get purpose entry)))))))
         true)))

(define-read-only (invariant-revoked-consent-never-checks-true)
  (fold latest-revoke-holds FUZZ-ACCOUNTS true))

(define-private (add-history-count (who principal) (total uint))
  (match (map-get? patient-ids who)
    patient-id (+ total (get-consent-history-count patient-id))
    total))

(define-private (calls (fn (string-ascii 100)))
  (default-to u0 (get called (map-get? context fn))))

;; Every successful grant and revoke is in the history, and nothing else is.
(define-read-only (invariant-history-records-every-change)
  (is-eq (fold add-history-count FUZZ-ACCOUNTS u0)
         (+ (calls "grant-consent") (calls "grant-consent-for-purpose") (calls "fuzz-grant")
            (calls "revoke-consent") (calls "revoke-consent-for-purpose") (calls "fuzz-revoke"))))

;; The principal <-> patient id links always agree both ways.
(define-private (link-agrees (who principal) (holds bool))
  (and holds
       (match (map-get? patient-ids who)
         patient-id (is-eq (map-get? patient-principals patient-id) (some who))
         true)))

(define-read-only (invariant-patient-links-agree)
  (fold link-agrees FUZZ-ACCOUNTS true))
