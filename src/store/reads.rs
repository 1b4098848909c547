//! The typed reads every `Store` implementation shares, written once over the reads a backend
//! provides (`RowSource`): a row by key (or many at once), and the rows of a table in key order
//! (all, or those of a key prefix); the open operations and notices through their indexes.
//! Values are the schema's encoding (`schema.rs`), whatever holds them.
//!
//! It must not: know which backend it reads.

use serde::de::DeserializeOwned;

use super::schema::*;
use super::StoreError;

/// What a backend reads: rows as the schema encodes them.
pub(super) trait RowSource {
    /// A row's value, if the table holds the key.
    fn get_raw(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every row of a table, in key order.
    fn scan(&self, table: Table) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// The rows of a table whose keys start with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &str)
        -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// The values of `keys` in a table, in their order (`None` where it holds none).
    fn get_many(&self, table: Table, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get_raw(table, k)).collect()
    }

    /// The rows of `keys` that a table holds, decoded, in their order.
    fn get_each<T: DeserializeOwned>(
        &self,
        table: Table,
        keys: &[String],
    ) -> Result<Vec<T>, StoreError> {
        keys.iter()
            .zip(self.get_many(table, keys)?)
            .filter_map(|(k, v)| v.map(|v| dec(k, &v)))
            .collect()
    }

    /// The keys of index `index` whose rows say they are due by `until` (`due_at`), in key
    /// order (every row read, unless the backend keeps the index ordered by that time).
    fn scan_due(&self, index: Table, until: u64) -> Result<Vec<String>, StoreError> {
        Ok(due_keys(self.scan(index)?, until))
    }

    /// How many rows a table holds (every row read, unless the backend counts them itself).
    fn count(&self, table: Table) -> Result<u64, StoreError> {
        Ok(self.scan(table)?.len() as u64)
    }

    /// Makes the open indexes whole if they were never built (`open_index_rows`: a store
    /// written before them). The embedded store builds them when it opens.
    fn open_indexed(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The rows of `table` that `index` names (those due by `until`, if given: `scan_due`; but
    /// those whose keys `skip` skips: they are not read), decoded, that `keep` keeps: an index
    /// may name a row closed since (its build raced the write that closed it), never miss an
    /// open one. A row that does not decode is left out (logged), not the read's failure.
    fn indexed<T: DeserializeOwned>(
        &self,
        index: Table,
        table: Table,
        until: Option<u64>,
        skip: impl Fn(&str) -> bool,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        self.open_indexed()?;
        let named = match until {
            Some(until) => self.scan_due(index, until)?,
            None => self.scan(index)?.into_iter().map(|(k, _)| k).collect(),
        };
        let keys: Vec<String> = named.into_iter().filter(|k| !skip(k)).collect();
        let mut out = Vec::with_capacity(keys.len());
        let mut closed = Vec::new();
        let values = self.get_many(table, &keys)?;
        for (key, value) in keys.into_iter().zip(values) {
            match value {
                Some(v) => match dec::<T>(&key, &v) {
                    Ok(row) if keep(&row) => out.push(row),
                    Ok(_) => closed.push((key, Some(v))),
                    // one row that does not decode (a later version's, a fault of the disk)
                    // does not keep every other open operation or notice from its worker: it
                    // is left out, said at each read, and stays indexed until a write
                    // replaces it
                    Err(StoreError::Corrupt(key, why)) => {
                        if first_said(table, &key) {
                            tracing::error!(table, key, error = %why, "an open row does not decode: left out; the others are read");
                        } else {
                            tracing::debug!(
                                table,
                                key,
                                "an open row that does not decode left out again"
                            );
                        }
                    }
                    Err(e) => return Err(e),
                },
                None => closed.push((key, None)),
            }
        }
        if !closed.is_empty() {
            // not this read's failure: the next read prunes them again
            if let Err(e) = self.prune(index, table, &closed) {
                tracing::warn!(error = %e, index, "pruning an open index failed");
            }
        }
        Ok(out)
    }

    /// Drops from `index` the keys it names whose rows in `table` were found closed (with that
    /// value, or gone: `None`), each only if its row is still as found (a row opened again
    /// since is named by its own write, and stays). An index names a closed row only when it
    /// was built from a scan that raced the row's closing (`open_indexed`); the embedded store
    /// builds its indexes alone, when it opens, and has none to prune.
    fn prune(
        &self,
        _index: Table,
        _table: Table,
        _closed: &[(String, Option<Vec<u8>>)],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, StoreError> {
        self.get_raw(table, key)?.map(|v| dec(key, &v)).transpose()
    }

    /// A table's keys, each parsed (a principal, a patient id, an access id).
    fn parsed_keys<T: std::str::FromStr<Err = String>>(
        &self,
        table: Table,
    ) -> Result<Vec<T>, StoreError> {
        self.scan(table)?
            .into_iter()
            .map(|(k, _)| k.parse().map_err(|e: String| StoreError::Corrupt(k, e)))
            .collect()
    }
}

/// The keys of an index's `rows` that are due by `until` (`due_at`), in their order.
pub(super) fn due_keys(rows: Vec<(String, Vec<u8>)>, until: u64) -> Vec<String> {
    rows.into_iter()
        .filter(|(_, v)| due_at(v) <= until)
        .map(|(k, _)| k)
        .collect()
}

/// The `Store` trait's reads, for an `impl Store` block of a type that implements `RowSource` (with
/// the store module's names in scope).
macro_rules! typed_reads {
    () => {
        fn tip(&self) -> Result<Option<Tip>, StoreError> {
            self.get(META, TIP)
        }

        fn provider(&self, principal: &Address) -> Result<Option<ProviderState>, StoreError> {
            self.get(PROVIDERS, &principal.to_string())
        }

        fn providers(&self) -> Result<Vec<Address>, StoreError> {
            self.parsed_keys(PROVIDERS)
        }

        fn preferences(&self, patient: &PatientId) -> Result<Option<Preferences>, StoreError> {
            self.get(PREFERENCES, &patient.to_string())
        }

        fn patients(&self) -> Result<Vec<PatientId>, StoreError> {
            self.parsed_keys(PREFERENCES)
        }

        fn consent(&self, key: &ConsentKey) -> Result<Option<Consent>, StoreError> {
            Ok(self
                .get::<(ConsentKey, Consent)>(CONSENTS, &key.id())?
                .map(|(_, c)| c))
        }

        fn consents(&self) -> Result<Vec<ConsentKey>, StoreError> {
            self.scan(CONSENTS)?
                .iter()
                .map(|(k, v)| dec::<(ConsentKey, Consent)>(k, v).map(|(key, _)| key))
                .collect()
        }

        fn responder(&self, principal: &Address) -> Result<Option<bool>, StoreError> {
            self.get(RESPONDERS, &principal.to_string())
        }

        fn responders(&self) -> Result<Vec<Address>, StoreError> {
            self.parsed_keys(RESPONDERS)
        }

        fn reviewer(&self, principal: &Address) -> Result<Option<bool>, StoreError> {
            self.get(REVIEWERS, &principal.to_string())
        }

        fn reviewers(&self) -> Result<Vec<Address>, StoreError> {
            self.parsed_keys(REVIEWERS)
        }

        fn submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
            self.get(SUBMISSIONS, id)
        }

        fn open_submissions(&self) -> Result<Vec<Submission>, StoreError> {
            let mut out = self.indexed(
                OPEN_SUBMISSIONS,
                SUBMISSIONS,
                None,
                |_| false,
                Submission::is_open,
            )?;
            out.sort_by_key(|s: &Submission| s.created_at_ms);
            Ok(out)
        }

        fn submissions(&self) -> Result<Vec<Submission>, StoreError> {
            self.submissions_prefixed("")
        }

        fn submissions_prefixed(&self, prefix: &str) -> Result<Vec<Submission>, StoreError> {
            let rows = if prefix.is_empty() {
                self.scan(SUBMISSIONS)?
            } else {
                self.scan_prefix(SUBMISSIONS, prefix)?
            };
            let mut out = Vec::new();
            for (k, v) in rows {
                out.push(dec::<Submission>(&k, &v)?);
            }
            out.sort_by_key(|s| s.created_at_ms);
            Ok(out)
        }

        fn nonce(&self) -> Result<Option<u64>, StoreError> {
            self.get(META, "nonce")
        }

        fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
            let mut out = Vec::new();
            for (k, v) in self.scan_prefix(META, REPLICA_PREFIX)? {
                // (one that does not read, of a later version say, holds none of the others up)
                match dec::<ReplicaSeen>(&k, &v) {
                    Ok(seen) => out.push(ReplicaRow {
                        id: k[REPLICA_PREFIX.len()..].to_string(),
                        seen,
                        bytes: v,
                    }),
                    Err(e) => tracing::warn!(error = %e, "a replica's row passed over"),
                }
            }
            Ok(out)
        }

        fn access(&self, id: &AccessId) -> Result<Option<AccessRecord>, StoreError> {
            self.get(ACCESSES, &id.to_string())
        }

        fn access_ids(&self) -> Result<Vec<AccessId>, StoreError> {
            self.parsed_keys(ACCESSES)
        }

        fn accesses(&self, ids: &[AccessId]) -> Result<Vec<AccessRecord>, StoreError> {
            let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
            self.get_each(ACCESSES, &keys)
        }

        fn submissions_named(&self, ids: &[String]) -> Result<Vec<Option<Submission>>, StoreError> {
            ids.iter()
                .zip(self.get_many(SUBMISSIONS, ids)?)
                .map(|(k, v)| v.map(|v| dec(k, &v)).transpose())
                .collect()
        }

        fn replay(&self, key: &str) -> Result<Option<u64>, StoreError> {
            self.get(REPLAY, key)
        }

        fn replays(&self) -> Result<Vec<(String, u64)>, StoreError> {
            self.scan(REPLAY)?
                .into_iter()
                .map(|(k, v)| {
                    let until = dec(&k, &v)?;
                    Ok((k, until))
                })
                .collect()
        }

        fn revoked(&self, jti: &str) -> Result<Option<u64>, StoreError> {
            self.get(REVOKED, jti)
        }

        fn contact(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
            self.get_raw(CONTACTS, &patient.to_string())
        }

        fn contact_ids(&self) -> Result<Vec<PatientId>, StoreError> {
            self.parsed_keys(CONTACTS)
        }

        fn notice(&self, access_id: &AccessId) -> Result<Option<Notice>, StoreError> {
            self.get(NOTICES, &access_id.to_string())
        }

        fn granted(&self, ids: &[AccessId]) -> Result<Vec<Granted>, StoreError> {
            let keys: Vec<String> = ids.iter().map(ToString::to_string).collect();
            let records: Vec<String> = keys.iter().map(|k| format!("record:{k}")).collect();
            let accesses = self.get_many(ACCESSES, &keys)?;
            let notices = self.get_many(NOTICES, &keys)?;
            let operations = self.get_many(SUBMISSIONS, &records)?;
            let mut out = Vec::new();
            for (((key, access), notice), operation) in
                keys.iter().zip(accesses).zip(notices).zip(operations)
            {
                if let Some(access) = access {
                    out.push(Granted {
                        access: dec(key, &access)?,
                        noticed: notice.is_some(),
                        recorded: operation.is_some(),
                    });
                }
            }
            Ok(out)
        }

        fn followed(&self) -> Result<Option<u64>, StoreError> {
            self.get(META, FOLLOWED)
        }

        fn directory_entry(
            &self,
            principal: &Address,
        ) -> Result<Option<crate::domain::ProviderEntry>, StoreError> {
            self.get(DIRECTORY, &principal.to_string())
        }

        fn directory_entries(&self) -> Result<Vec<crate::domain::ProviderEntry>, StoreError> {
            self.scan(DIRECTORY)?
                .iter()
                .map(|(k, v)| dec(k, v))
                .collect()
        }

        fn paging_row(&self, key: &str) -> Result<Option<serde_json::Value>, StoreError> {
            self.get(PAGING, key)
        }

        fn paging(&self) -> Result<Vec<(String, Option<serde_json::Value>)>, StoreError> {
            Ok(self
                .scan(PAGING)?
                .into_iter()
                .map(|(k, v)| {
                    let v = serde_json::from_slice(&v).ok();
                    (k, v)
                })
                .collect())
        }

        fn notices(&self) -> Result<Vec<Notice>, StoreError> {
            self.scan(NOTICES)?.iter().map(|(k, v)| dec(k, v)).collect()
        }

        fn open_notices(&self) -> Result<Vec<Notice>, StoreError> {
            self.indexed(OPEN_NOTICES, NOTICES, None, |_| false, Notice::is_open)
        }

        fn uncontacted(&self) -> Result<Vec<(AccessId, PatientId)>, StoreError> {
            self.open_indexed()?;
            Ok(self
                .scan(UNCONTACTED)?
                .into_iter()
                .filter_map(|(k, v)| {
                    let patient = std::str::from_utf8(&v).ok()?.parse().ok()?;
                    Some((k.parse().ok()?, patient))
                })
                .collect())
        }

        fn uncontacted_count(&self) -> Result<u64, StoreError> {
            self.open_indexed()?;
            self.count(UNCONTACTED)
        }

        fn have_contacts(&self, patients: &[PatientId]) -> Result<Vec<bool>, StoreError> {
            let keys: Vec<String> = patients.iter().map(ToString::to_string).collect();
            Ok(self
                .get_many(CONTACTS, &keys)?
                .iter()
                .map(Option::is_some)
                .collect())
        }

        fn open_counts(&self) -> Result<(u64, u64), StoreError> {
            self.open_indexed()?;
            Ok((self.count(OPEN_SUBMISSIONS)?, self.count(OPEN_NOTICES)?))
        }

        fn open_notices_but(
            &self,
            known: &std::collections::HashSet<AccessId>,
            until: Option<u64>,
        ) -> Result<Vec<Notice>, StoreError> {
            self.indexed(
                OPEN_NOTICES,
                NOTICES,
                until,
                |key| key.parse().is_ok_and(|id: AccessId| known.contains(&id)),
                Notice::is_open,
            )
        }

        fn audit_head(&self) -> Result<Option<crate::audit::Head>, StoreError> {
            self.get(META, AUDIT_HEAD)
        }

        fn summary(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
            self.get_raw(SUMMARIES, &patient.to_string())
        }

        fn previous_summary(&self, patient: &PatientId) -> Result<Option<Vec<u8>>, StoreError> {
            self.get_raw(PREVIOUS_SUMMARIES, &patient.to_string())
        }

        fn summary_patients(&self) -> Result<Vec<PatientId>, StoreError> {
            self.parsed_keys(SUMMARIES)
        }

        fn summary_digest(&self, patient: &PatientId) -> Result<Option<SummaryDigest>, StoreError> {
            self.get(SUMMARY_DIGESTS, &patient.to_string())
        }

        fn summary_hash(
            &self,
            patient: &PatientId,
        ) -> Result<Option<Option<SummaryHash>>, StoreError> {
            self.get(SUMMARY_HASHES, &patient.to_string())
        }

        fn summary_hash_ids(&self) -> Result<Vec<PatientId>, StoreError> {
            self.parsed_keys(SUMMARY_HASHES)
        }

        fn verdict(&self, access_id: &AccessId) -> Result<Option<Verdict>, StoreError> {
            let Some(mut v) = self.get::<Verdict>(VERDICTS, &access_id.to_string())? else {
                return Ok(None);
            };
            // each later attempt was given after the one before failed (rare: one read each)
            while let Some(next) =
                self.get::<Verdict>(VERDICTS, &format!("{access_id}:{}", v.attempt + 1))?
            {
                v = next;
            }
            Ok(Some(v))
        }

        fn every_verdict(&self) -> Result<Vec<Verdict>, StoreError> {
            self.scan(VERDICTS)?
                .iter()
                .map(|(k, v)| dec(k, v))
                .collect()
        }

        fn verdicts(&self) -> Result<Vec<Verdict>, StoreError> {
            let mut latest: std::collections::BTreeMap<AccessId, Verdict> = Default::default();
            for v in self.every_verdict()? {
                if latest
                    .get(&v.access_id)
                    .is_none_or(|l| l.attempt < v.attempt)
                {
                    latest.insert(v.access_id, v);
                }
            }
            Ok(latest.into_values().collect())
        }

        fn audit_entries(
            &self,
            from: u64,
            limit: usize,
        ) -> Result<Vec<crate::audit::Entry>, StoreError> {
            // entries are numbered without gaps up to the head, which is written with them
            let from = from.max(1);
            let last = self.audit_head()?.map_or(0, |head| head.seq);
            let until = last.min(from.saturating_add(limit as u64).saturating_sub(1));
            let keys: Vec<String> = (from..=until).map(audit_key).collect();
            self.get_each(AUDIT, &keys)
        }

        fn audit_row_exists(&self, seq: u64) -> Result<bool, StoreError> {
            Ok(self
                .get_many(AUDIT, &[audit_key(seq)])?
                .into_iter()
                .any(|row| row.is_some()))
        }

        fn audit_index(&self) -> Result<Vec<(AccessId, u64)>, StoreError> {
            self.scan(AUDIT_BY_ACCESS)?
                .into_iter()
                .map(|(k, _)| {
                    k.split_once(':')
                        .and_then(|(a, seq)| Some((a.parse().ok()?, seq.parse().ok()?)))
                        .ok_or_else(|| {
                            StoreError::Corrupt(k.clone(), "not <access id>:<entry number>".into())
                        })
                })
                .collect()
        }

        fn audit_of(&self, access_id: &AccessId) -> Result<Vec<crate::audit::Entry>, StoreError> {
            let prefix = format!("{access_id}:");
            let keys: Vec<String> = self
                .scan_prefix(AUDIT_BY_ACCESS, &prefix)?
                .into_iter()
                .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_string))
                .collect();
            self.get_each(AUDIT, &keys)
        }
    };
}
pub(super) use typed_reads;

/// Whether this is the first time this process says that the open row `key` of `table` does
/// not decode: said once at error level (each read would say it again, several times a
/// second), after that at debug. Up to 1,024 rows are remembered; past that, said again.
fn first_said(table: Table, key: &str) -> bool {
    static SAID: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    let said = said.get_or_insert_with(Default::default);
    if said.len() >= 1024 {
        said.clear();
    }
    said.insert(format!("{table}/{key}"))
}
