//! The Hugging Face hub path, for users with internet: fetches a model's original files
//! (safetensors + tokenizer) into the models directory, where the loaders pick them up.
//!
//! This machine's network reaches only package registries, so this path is exercised by
//! users, not by the test suite; the registry path (`scripts/setup.sh`) is the tested one.

use crate::ModelError;
use std::path::{Path, PathBuf};

/// Where a model's original weights live on the hub, and which files mnema needs.
pub fn hub_source(model: &str) -> Option<(&'static str, &'static [&'static str])> {
    match model {
        "multilingual-e5-small" => Some(("intfloat/multilingual-e5-small", &["model.safetensors", "tokenizer.json", "config.json"])),
        "all-minilm-l6-v2" => Some(("sentence-transformers/all-MiniLM-L6-v2", &["model.safetensors", "tokenizer.json", "config.json"])),
        "whisper-base" => Some(("openai/whisper-base", &["model.safetensors", "tokenizer.json", "config.json"])),
        _ => None,
    }
}

/// Downloads the model's files from the hub into `<models_dir>/<model>/` and returns their
/// paths. Files already present are kept.
pub fn fetch(models_dir: &Path, model: &str) -> Result<Vec<PathBuf>, ModelError> {
    let (repo, files) = hub_source(model).ok_or_else(|| ModelError::Unknown(format!("{model} (no hub source)")))?;
    let dest = models_dir.join(model);
    std::fs::create_dir_all(&dest).map_err(|source| ModelError::Io { path: dest.clone(), source })?;
    let hub_err = |file: &str, reason: String| ModelError::Hub { repo: repo.into(), file: file.into(), reason };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(models_dir.join(".hub-cache"))
        .with_progress(true)
        .build()
        .map_err(|e| hub_err("", e.to_string()))?;
    let repo_api = api.model(repo.to_string());
    let mut out = Vec::new();
    for f in files {
        let target = dest.join(f);
        if !target.is_file() {
            let cached = repo_api.get(f).map_err(|e| hub_err(f, e.to_string()))?;
            std::fs::copy(&cached, &target).map_err(|source| ModelError::Io { path: target.clone(), source })?;
        }
        out.push(target);
    }
    Ok(out)
}
