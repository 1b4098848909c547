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

    fn read_file(&self) -> Result<HashMap<String, String>, MappingError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            responders: HashMap<String, String>,
        }
        let mut out = HashMap::new();
        let Some(path) = &self.file else {
            return Ok(out);
        };
        let bad = |e: String| MappingError::File(path.display().to_string(), e);
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let f: File = toml_from(&text).map_err(|e| bad(e.to_string()))?;
        for (id, principal) in f.responders {
            // the paging id or email is not named (the error reaches logs and `/readyz`)
            let address = principal
                .parse::<crate::stacks::Address>()
                .map_err(|e| bad(format!("the principal {principal:?} of an entry: {e}")))?;
            // as every principal is written elsewhere (lookups compare the text)
            out.insert(id.to_lowercase(), address.to_string());
        }
        Ok(out)
    }

    /// The mapping now, for one webhook or sync round.
    pub fn snapshot(&self) -> Result<HashMap<String, String>, MappingError> {
        let mut map = HashMap::new();
        for e in self.store.directory_entries()? {
            for id in &e.paging_ids {
                map.insert(id.to_lowercase(), e.principal.to_string());
            }
        }
        // the operator's file wins over the directory
        map.extend(self.read_file()?);
        Ok(map)
    }

    /// The principal of the first of `ids` (a user id, an email) that maps; a principal
    /// itself maps to itself, written as every principal is (c32 decoding also takes lower
    /// case and look-alike letters, and lookups compare the text).
    pub fn resolve(map: &HashMap<String, String>, ids: &[&str]) -> Option<String> {
        ids.iter().find_map(|id| {
            if let Ok(address) = id.parse::<crate::stacks::Address>() {
                return Some(address.to_string());
            }
            map.get(&id.to_lowercase()).cloned()
        })
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
}
