//! Resolving a Hugging Face hub id (`org/name`) to a local snapshot folder: the local
//! cache first (same layout as the Python `huggingface_hub`), then a download when the
//! network is allowed. The caller decides the cache folder and offline mode (from the
//! environment, at the command-line edge).

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

use super::error::LoadError;
use super::safetensors_source::{read_index, INDEX_FILE, SINGLE_FILE};

#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache folder (`$HF_HUB_CACHE`, or `$HF_HOME/hub`, or ~/.cache/huggingface/hub).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    pub revision: String,
}

impl HubOptions {
    /// The conventional settings of the Python hub client, read from the environment, for
    /// library callers and tests; the command line reads them once, with every other
    /// knob, into `crate::config::EnvKnobs`.
    pub fn from_env() -> Self {
        HubKnobs::from_env().options()
    }
}

/// The variables of the Python `huggingface_hub` client that loratune follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubKnobs {
    /// `HF_HUB_CACHE`: the hub cache folder.
    pub hf_hub_cache: Option<PathBuf>,
    /// `HF_HOME`: without `HF_HUB_CACHE`, the cache is `$HF_HOME/hub`.
    pub hf_home: Option<PathBuf>,
    /// `HF_HUB_OFFLINE`: `1`, `true`, `yes` or `on` (any other value: off): never download.
    pub hf_hub_offline: bool,
}

impl HubKnobs {
    /// The hub variables of this process's environment.
    pub fn from_env() -> HubKnobs {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// The hub variables `get` returns (`None` for an unset one; empty counts as unset).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> HubKnobs {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        HubKnobs {
            hf_hub_cache: var("HF_HUB_CACHE").map(PathBuf::from),
            hf_home: var("HF_HOME").map(PathBuf::from),
            hf_hub_offline: matches!(
                var("HF_HUB_OFFLINE").as_deref(),
                Some("1" | "true" | "TRUE" | "yes" | "ON" | "on")
            ),
        }
    }

    /// The hub client's settings: the cache folder (`$HF_HUB_CACHE`, or `$HF_HOME/hub`, or
    /// ~/.cache/huggingface/hub) and offline mode.
    pub fn options(&self) -> HubOptions {
        let cache_dir = self
            .hf_hub_cache
            .clone()
            .or_else(|| self.hf_home.as_ref().map(|h| h.join("hub")))
            .unwrap_or_else(|| Cache::default().path().clone());
        HubOptions { cache_dir, offline: self.hf_hub_offline, revision: "main".into() }
    }
}

/// True when `spec` has the shape of a hub id: `name` or `org/name`, made of the
/// characters the hub allows.
pub fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    let ok = |p: &&str| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !p.starts_with('.')
    };
    (parts.len() == 1 || parts.len() == 2) && parts.iter().all(ok) && !spec.ends_with(".gguf")
}

/// Returns the snapshot folder holding config.json, the tokenizer files and every weight
/// file of `id`, fetching what is missing unless offline.
pub fn resolve(id: &str, opts: &HubOptions) -> Result<PathBuf, LoadError> {
    let cache = Cache::new(opts.cache_dir.clone());
    let repo = Repo::with_revision(id.to_string(), RepoType::Model, opts.revision.clone());
    let cached = cache.repo(repo.clone());
    let mut api: Option<hf_hub::api::sync::ApiRepo> = None;
    let hub_err = |msg: String| LoadError::Hub { id: id.to_string(), msg };

    let mut fetch = |file: &str, required: bool| -> Result<Option<PathBuf>, LoadError> {
        if let Some(p) = cached.get(file) {
            return Ok(Some(p));
        }
        if opts.offline {
            return if required {
                Err(hub_err(format!(
                    "{file} is not in the local hub cache ({}) and offline mode is on (HF_HUB_OFFLINE); \
                     download the model once with network access or point --model at a local folder",
                    opts.cache_dir.display()
                )))
            } else {
                Ok(None)
            };
        }
        if api.is_none() {
            let built = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
                .with_progress(false)
                .build()
                .map_err(|e| hub_err(format!("cannot set up the hub client: {e}")))?;
            api = Some(built.repo(repo.clone()));
        }
        match api.as_ref().expect("set above").get(file) {
            Ok(p) => Ok(Some(p)),
            Err(e) if required => Err(hub_err(format!(
                "{file} is not in the local hub cache ({}) and downloading it failed: {e}",
                opts.cache_dir.display()
            ))),
            Err(_) => Ok(None),
        }
    };

    let config = fetch("config.json", true)?.expect("required");
    fetch("tokenizer.json", true)?;
    fetch("tokenizer_config.json", false)?;
    fetch("generation_config.json", false)?;
    if let Some(index) = fetch(INDEX_FILE, false)? {
        for shard in shard_names(&index)? {
            fetch(&shard, true)?;
        }
    } else {
        fetch(SINGLE_FILE, true)?;
    }
    Ok(config.parent().expect("a file in a snapshot folder").to_path_buf())
}

fn shard_names(index: &Path) -> Result<Vec<String>, LoadError> {
    let mut names: Vec<String> = read_index(index)?.into_iter().map(|(_, shard)| shard).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_id_shapes() {
        assert!(looks_like_hub_id("meta-llama/Llama-2-7b-hf"));
        assert!(looks_like_hub_id("gpt2"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("./models/x"));
        assert!(!looks_like_hub_id("model.gguf"));
    }

    #[test]
    fn offline_and_not_cached_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let opts = HubOptions { cache_dir: dir.path().to_path_buf(), offline: true, revision: "main".into() };
        let e = resolve("org/absent-model", &opts).unwrap_err().to_string();
        assert!(
            e.contains("org/absent-model") && e.contains("not in the local hub cache") && e.contains("offline"),
            "{e}"
        );
    }
}
