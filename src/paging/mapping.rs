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
            principal
                .parse::<crate::stacks::Address>()
                .map_err(|e| bad(format!("{id}: {e}")))?;
            out.insert(id.to_lowercase(), principal);
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
    /// itself maps to itself.
    pub fn resolve(map: &HashMap<String, String>, ids: &[&str]) -> Option<String> {
        ids.iter().find_map(|id| {
            if id.parse::<crate::stacks::Address>().is_ok() {
                return Some(id.to_string());
            }
            map.get(&id.to_lowercase()).cloned()
        })
    }
}
