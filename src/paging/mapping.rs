//! Paging user ids and emails → principals: the operator's mapping file, then the provider
//! directory's paging ids. Nothing past `paging` sees a paging id.
//!
//! It must not: cache (both sources are read at each use, so an edit counts at once).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::files::toml_from;
use crate::store::{Store, StoreError};

/// Paging user ids and emails → principals: a mapping file, then the provider directory's
/// paging ids. Both are read at each use (webhooks and syncs are rare), so an edited mapping
/// or directory counts without a restart.
pub struct Mapping {
    file: Option<PathBuf>,
    store: Arc<dyn Store>,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("mapping {0}: {1}")]
    File(String, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Mapping {
    /// Checks the file now, so that a bad one stops the service at start.
    pub fn load(path: Option<&Path>, store: Arc<dyn Store>) -> Result<Mapping, MappingError> {
        let m = Mapping {
            file: path.map(Path::to_path_buf),
            store,
        };
        m.read_file()?;
        Ok(m)
    }

    /// The file's entries, and the ids it names two principals for (left out of them).
    #[allow(clippy::type_complexity)]
    fn read_file(
        &self,
    ) -> Result<(HashMap<String, String>, std::collections::HashSet<String>), MappingError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            responders: HashMap<String, String>,
        }
        let mut out = HashMap::new();
        let mut ambiguous = std::collections::HashSet::new();
        let Some(path) = &self.file else {
            return Ok((out, ambiguous));
        };
        let bad = |e: String| MappingError::File(path.display().to_string(), e);
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let f: File = toml_from(&text).map_err(|e| bad(e.to_string()))?;
        for (id, principal) in f.responders {
            // the paging id or email is not named (the error reaches logs and `/readyz`)
            let address = principal
                .parse::<crate::stacks::Address>()
                .map_err(|e| bad(format!("the principal {principal:?} of an entry: {e}")))?;
            // as every principal is written elsewhere (lookups compare the text); two entries
            // that differ only in case, for two principals, map to no one
            claim(&mut out, &mut ambiguous, &id, address.to_string());
        }
        settle(&mut out, &ambiguous, "the mapping file");
        Ok((out, ambiguous))
    }

    /// The mapping now, for one webhook or sync round.
    pub fn snapshot(&self) -> Result<HashMap<String, String>, MappingError> {
        let mut map = HashMap::new();
        let mut ambiguous = std::collections::HashSet::new();
        for e in self.store.directory_entries()? {
            for id in &e.paging_ids {
                claim(&mut map, &mut ambiguous, id, e.principal.to_string());
            }
        }
        // a paging id two clinicians' entries carry (a typo, an import's mistake) maps to
        // neither: its pages would reach the wrong clinician
        settle(&mut map, &ambiguous, "the provider directory");
        // the operator's file wins over the directory, and an id it names two principals for
        // maps to no one (not to the directory's)
        let (file, ambiguous) = self.read_file()?;
        map.extend(file);
        for id in &ambiguous {
            map.remove(id);
        }
        Ok(map)
    }

    /// The principal that `ids` (a user's id, email: one person's) map to; a principal itself
    /// maps to itself, written as every principal is (c32 decoding also takes lower case and
    /// look-alike letters, and lookups compare the text). None when none maps, or when two
    /// map to different principals (the sources disagree about who this is).
    pub fn resolve(map: &HashMap<String, String>, ids: &[&str]) -> Option<String> {
        let mut found: Option<String> = None;
        for id in ids {
            let principal = match id.parse::<crate::stacks::Address>() {
                Ok(address) => Some(address.to_string()),
                Err(_) => map.get(&id.to_lowercase()).cloned(),
            };
            match (&found, principal) {
                (_, None) => {}
                (None, p) => found = p,
                (Some(f), Some(p)) if *f == p => {}
                (Some(_), Some(_)) => {
                    tracing::warn!("a paged user's ids map to two principals: mapped to no one (see the mapping file and the directory's pager ids)");
                    return None;
                }
            }
        }
        found
    }
}

/// Maps paging id `id` (lower-cased) to `principal` in `map`; one it mapped to another
/// principal already goes into `ambiguous`.
fn claim(
    map: &mut HashMap<String, String>,
    ambiguous: &mut std::collections::HashSet<String>,
    id: &str,
    principal: String,
) {
    let id = id.to_lowercase();
    if map
        .insert(id.clone(), principal.clone())
        .is_some_and(|before| before != principal)
    {
        ambiguous.insert(id);
    }
}

/// Leaves out of `map` the paging ids that named two principals in `source` (logged by count:
/// paging ids can be staff emails).
fn settle(
    map: &mut HashMap<String, String>,
    ambiguous: &std::collections::HashSet<String>,
    source: &str,
) {
    if ambiguous.is_empty() {
        return;
    }
    tracing::warn!(
        ids = ambiguous.len(),
        source,
        "paging ids that name two principals map to no one"
    );
    for id in ambiguous {
        map.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A principal spelled another way (lower case, c32's look-alike letters) maps to the
    /// principal as every lookup writes it; so does a mapping file's.
    #[test]
    fn principals_are_written_one_way_whatever_their_spelling() {
        let canonical = "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM";
        // c32 reads the text after its `S` in either case
        let lower = format!("S{}", canonical[1..].to_lowercase());
        // c32 reads O as 0
        let look_alike = canonical.replace('0', "O");
        let empty = HashMap::new();
        for spelling in [canonical.to_string(), lower.clone(), look_alike] {
            assert_eq!(
                Mapping::resolve(&empty, &[spelling.as_str()]).as_deref(),
                Some(canonical),
                "{spelling}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mapping.toml");
        std::fs::write(&file, format!("[responders]\n\"PXYZ123\" = \"{lower}\"\n")).unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let mapping = Mapping::load(Some(&file), store).unwrap();
        assert_eq!(
            mapping
                .snapshot()
                .unwrap()
                .get("pxyz123")
                .map(String::as_str),
            Some(canonical)
        );
        // a bad principal's error names the principal, not the paging id
        std::fs::write(
            &file,
            "[responders]\n\"ana@hospital.example\" = \"ST-not\"\n",
        )
        .unwrap();
        let e = mapping.snapshot().unwrap_err().to_string();
        assert!(e.contains("ST-not") && !e.contains("ana@"), "{e}");
    }

    /// A paging id two clinicians' directory entries carry maps to neither (before, the later
    /// principal in key order took the other's pages), and a paged user whose ids the sources
    /// map to two principals maps to no one (before, the first id's won, the directory's
    /// user id over the operator's file's email).
    #[test]
    fn a_paging_id_that_names_two_clinicians_maps_to_neither() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(crate::store::RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let (a, b) = (
            "ST1PQHQKV0RJXZFY1DGX8MNSNYVE3VGZJSRTPGZGM",
            "ST2REHHS5J3CERCRBEPMGH7921Q6PYKAADT7JP2VB",
        );
        let entry = |principal: &str, ids: &[&str]| crate::domain::ProviderEntry {
            principal: principal.parse().unwrap(),
            display_name: "someone".into(),
            role: crate::domain::Role::Nurse,
            department: None,
            organization: None,
            paging_ids: ids.iter().map(|i| i.to_string()).collect(),
        };
        store
            .apply(crate::store::Batch {
                directory: vec![
                    (a.parse().unwrap(), Some(entry(a, &["PX1", "PA"]))),
                    (b.parse().unwrap(), Some(entry(b, &["px1", "PB"]))),
                ],
                ..Default::default()
            })
            .unwrap();
        let file = dir.path().join("mapping.toml");
        // (and the file names PA in two spellings for two principals: no one, not the
        // directory's)
        std::fs::write(
            &file,
            format!(
                "[responders]\n\"bo@h.example\" = \"{a}\"\n\"pa\" = \"{a}\"\n\"PA\" = \"{b}\"\n"
            ),
        )
        .unwrap();
        let map = Mapping::load(Some(&file), store)
            .unwrap()
            .snapshot()
            .unwrap();
        assert_eq!(map.get("px1"), None);
        assert_eq!(map.get("pa"), None);
        assert_eq!(Mapping::resolve(&map, &["PX1"]), None);
        // one person's ids: one that maps beside one that maps to no one, and two mapped apart
        assert_eq!(
            Mapping::resolve(&map, &["PA", "bo@h.example"]).as_deref(),
            Some(a)
        );
        assert_eq!(Mapping::resolve(&map, &["PB", "bo@h.example"]), None);
        assert_eq!(
            Mapping::resolve(&map, &["PB", "nobody@h.example"]).as_deref(),
            Some(b)
        );
    }
}
