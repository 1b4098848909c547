//! The paging files an operator writes: a roster (`on_call = [...]`) and webhook secrets (one
//! a line), read and checked.
//!
//! It must not: keep state (the on-call state is `OnCall`'s).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

pub(super) fn toml_from<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, Box<figment::Error>> {
    use figment::providers::Format;
    figment::Figment::from(figment::providers::Toml::string(text))
        .extract()
        .map_err(Box::new)
}

/// Reads a roster file: `on_call = ["ST...", ...]`.
pub fn load_roster(path: &Path) -> anyhow::Result<HashSet<String>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        on_call: Vec<String>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the roster {}: {e}", path.display()))?;
    let r: File = toml_from(&text)?;
    // each principal written as every principal is (lookups compare the text)
    r.on_call
        .iter()
        .map(|p| {
            p.parse::<crate::stacks::Address>()
                .map(|a| a.to_string())
                .map_err(|e| anyhow::anyhow!("roster {}: {e}", path.display()))
        })
        .collect()
}

/// Reads a secrets file: one secret a line, blank lines ignored.
pub fn load_secrets(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the secrets {}: {e}", path.display()))?;
    secrets_of(&text, path)
}

/// The secrets of a secrets file's `text`.
pub fn secrets_of(text: &str, path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let secrets: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect();
    if secrets.is_empty() {
        anyhow::bail!("{} holds no secret", path.display());
    }
    Ok(secrets)
}
