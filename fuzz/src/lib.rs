//! Shared pieces of the fuzz targets: a private scratch directory for decoders that read
//! paths, and the model directory (for the tokenizer the chunker needs).

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// A directory only this process writes to (mode 0700), removed when the process ends normally.
static SCRATCH: LazyLock<tempfile::TempDir> =
    LazyLock::new(|| tempfile::Builder::new().prefix("mnema-fuzz-").tempdir().expect("cannot create a private temporary directory"));

/// Writes `bytes` to `name` in the process's scratch directory and returns its path. Each
/// target reuses one name, so the directory holds one input at a time.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let p = SCRATCH.path().join(name);
    std::fs::write(&p, bytes).expect("cannot write the fuzz input to the scratch directory");
    p
}

/// The model directory: `MNEMA_MODELS`, else `models/` of this checkout.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MNEMA_MODELS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"))
}
